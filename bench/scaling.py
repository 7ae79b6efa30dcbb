"""How the packet stage scales: time against K and nodes, peak memory against batch size and K (SPEC 5).

    python bench/scaling.py [--arch mnist_conv3|cifar_conv4] [--threads N] [--smoke-test]

Model: the arch at random init, eval mode, float32; base point a smooth mean image; interval [0, 1];
the first K of a fixed random order of the input dimensions, so each K holds the smaller ones.
- time against K for gauss (32 nodes) and piecewise, and seconds per dimension (linear growth is flat s/dim);
- time against nodes for gauss at a fixed K;
- peak memory against batch_size (fixed K) and against K (fixed batch_size), both estimators: each configuration
  runs in a fresh process, after a one-dimension warm-up call; on the CPU the peak is the resident
  high-water mark (VmHWM, reset before the call) above the resident size before it, with glibc set to
  return freed blocks to the OS (`allocator.return_freed_memory`: what raysweep's processes keep would
  otherwise count the heap's fragmentation, which grows with the number of passes), on a GPU
  torch.cuda.max_memory_allocated above what was allocated before it. The SPEC's target: set by the
  batch size, not by K. (piecewise walks batch_size / 16 lines at a time.)
Times are medians of 3 runs after one warm-up run.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import NamedTuple

import torch

from common import DEVICE, model_and_base, parser, print_table, setup, timed
from raysweep.run import allocator
from raysweep.core.lines import PacketStats
from raysweep.core.packets import packet_stats


class Sizes(NamedTuple):
    ks: tuple[int, ...]  # K for the time table
    nodes: tuple[int, ...]  # gauss nodes for the time table
    nodes_k: int  # fixed K of the nodes table
    batches: tuple[int, ...]  # batch sizes for the memory-against-batch table
    batch_k: int  # fixed K of the memory-against-batch table
    memory_ks: tuple[int, ...]  # K for the memory-against-K table
    memory_batch: int  # fixed batch size of that table


SIZES = Sizes(
    ks=(8, 16, 32, 64, 128), nodes=(16, 32, 64, 128, 256), nodes_k=32,
    batches=(256, 1024, 4096, 16384), batch_k=784, memory_ks=(16, 64, 256, 784), memory_batch=1024,
)
SMOKE = Sizes(ks=(2, 4), nodes=(16, 32), nodes_k=2, batches=(64,), batch_k=2, memory_ks=(2,), memory_batch=1024)


def run_stage(
    arch: str, estimator: str, k: int, nodes: int = 32, batch_size: int | None = None
) -> Callable[[], PacketStats]:
    """A closure running packet_stats on the first k dimensions, model and base point built once."""
    model, x_base = model_and_base(arch)
    dims = torch.randperm(x_base.numel(), generator=torch.Generator().manual_seed(1))[:k]
    return lambda: packet_stats(model, x_base, dims, 0.0, 1.0, estimator=estimator, nodes=nodes, batch_size=batch_size)


def peak_mib(arch: str, estimator: str, k: int, batch_size: int, threads: int) -> float:
    """In a fresh process: peak memory of one packet_stats call above the state before it, in MiB.

    On the CPU this is the process's resident high-water mark (VmHWM), reset just before the call.
    Not ru_maxrss: on Linux a spawned child's ru_maxrss starts at its parent's peak, carried over exec.
    """
    torch.set_num_threads(threads)
    run_stage(arch, estimator, 1, batch_size=batch_size)()  # one-time allocations of a first call are not the stage's
    stage = run_stage(arch, estimator, k, batch_size=batch_size)
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        stage()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    allocator.return_freed_memory()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    before = _status_kib("VmRSS")
    stage()
    return (_status_kib("VmHWM") - before) / 1024


def _status_kib(field: str) -> int:
    """A memory field of /proc/self/status, in KiB."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


def main() -> None:
    p = parser(__doc__)
    # not resnet9: its piecewise walk over [0, 1] takes ~20 minutes per dimension on one core
    p.add_argument("--arch", choices=("mnist_conv3", "cifar_conv4"), default="mnist_conv3")
    args = p.parse_args()
    setup(args.threads)
    sizes = SMOKE if args.smoke_test else SIZES
    arch = args.arch
    repeats = 1 if args.smoke_test else 3

    rows = []
    for k in sizes.ks:
        gauss_s, _ = timed(run_stage(arch, "gauss", k), repeats=repeats)
        piece_s, piece = timed(run_stage(arch, "piecewise", k), repeats=repeats)
        rows.append([
            str(k), f"{gauss_s:.3f}", f"{gauss_s / k * 1000:.2f}", f"{piece_s:.3f}", f"{piece_s / k * 1000:.2f}",
            f"{float(piece.evaluations.double().mean()):.1f}",
        ])
    print(f"## {arch}: time against K (interval [0, 1], default batch)")
    print_table(["K", "gauss32 s", "gauss32 ms/dim", "piecewise s", "piecewise ms/dim", "piecewise evals/dim"], rows)

    rows = []
    for nodes in sizes.nodes:
        seconds, _ = timed(run_stage(arch, "gauss", sizes.nodes_k, nodes=nodes), repeats=repeats)
        rows.append([str(nodes), f"{seconds:.3f}", f"{seconds / sizes.nodes_k * 1000:.2f}",
                     f"{sizes.nodes_k * (nodes + 2) / seconds:.0f}"])
    print(f"\n## {arch}: gauss time against nodes, K = {sizes.nodes_k}")
    print_table(["nodes", "seconds", "ms/dim", "rows/s"], rows)

    threads = torch.get_num_threads()
    configs = [(estimator, sizes.batch_k, batch) for estimator in ("gauss", "piecewise") for batch in sizes.batches]
    configs += [(estimator, k, sizes.memory_batch) for estimator in ("gauss", "piecewise") for k in sizes.memory_ks]
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        peaks = [pool.submit(peak_mib, arch, estimator, k, batch, threads).result() for estimator, k, batch in configs]
    where = "GPU max_memory_allocated" if DEVICE.type == "cuda" else "resident high-water mark growth, freed blocks returned"
    print(f"\n## {arch}: peak memory of one packet_stats call ({where}, MiB; fresh process each)")
    print_table(["estimator", "K", "batch_size", "peak MiB"], [
        [estimator, str(k), str(batch), f"{peak:.1f}"]
        for (estimator, k, batch), peak in zip(configs, peaks)
    ])


if __name__ == "__main__":
    main()

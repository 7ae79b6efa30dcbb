"""Packet-stage throughput against the network's own forward+JVP throughput (SPEC 5, second target).

    python bench/throughput.py [--threads N] [--repeats 3] [--smoke-test]

Per architecture (random init, eval mode, float32, base point: a smooth mean image):
- limit: network rows/s of torch.func.jvp(model, (x,), (tangent,)) with one-hot coordinate tangents,
  at the batch the gauss packet stage runs (the default batch, or all its rows if fewer);
- packet stage: raysweep.core.packets.packet_stats for gauss (32 nodes), piecewise and auto (error
  control on: tol 1e-2, on the paper's pixel interval [0, 1] whatever the architecture's width) on K
  dimensions; pairs/s (pairs = K x 10 classes), network rows/s (every evaluation: gauss's half rule for
  its error estimate, auto's probe is not counted but timed, its refinement is) and limit / stage rows/s
  (the SPEC's target on a GPU: within 2x);
- forward+JVP rows/s against the batch size, and the batch packet_stats picks by itself here.
Times are medians of --repeats runs after one warm-up run. On a GPU the sizes are larger (GPU_SIZES:
every pixel of mnist_conv3 and cifar_conv4) and both the limit and the stage run in true float32 (no TF32).

On Linux, glibc would hand big freed tensors back to the OS and fault them in again on every pass;
raysweep's trials and packet tasks, and these scripts, raise its thresholds first (raysweep.run.allocator).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from common import DEVICE, interval, model_and_base, parser, print_table, setup, timed
from raysweep.core import models
from raysweep.core.lines import default_batch, line_inputs
from raysweep.core.packets import PIECEWISE_ROWS_PER_LINE, packet_stats

NODES = 32  # gauss nodes per dimension


class Sizes(NamedTuple):
    dims: int  # K dimensions per packet-stage run
    width: float  # interval width around the base pixel; 1 is [0, 1]
    batches: tuple[int, ...]  # forward+JVP batch sweep


SIZES = {  # a few seconds per measurement on one CPU core
    "mnist_conv3": Sizes(256, 1.0, (64, 256, 1024, 4096)),
    "cifar_conv4": Sizes(128, 1.0, (64, 256, 1024, 4096)),
    # resnet9 has ~10^4 linear pieces per unit of pixel interval at random init (~40 ms per walk step
    # on one core), so piecewise is timed on a narrow interval; rows/s is what compares.
    "resnet9": Sizes(2, 0.002, (8, 32, 128)),
}
GPU_SIZES = {  # every pixel of the MNIST- and CIFAR-shaped nets; resnet9's piecewise walk stays narrow
    "mnist_conv3": Sizes(784, 1.0, (1024, 4096, 16384, 65536)),
    "cifar_conv4": Sizes(3072, 1.0, (1024, 4096, 16384, 65536)),
    "resnet9": Sizes(512, 0.002, (256, 1024, 4096, 16384)),
}
SMOKE = Sizes(1, 0.001, (8, 16))


def jvp_rows_per_s(model: nn.Module, x_base: torch.Tensor, batch: int, repeats: int, warmup: int) -> float:
    """Rows/s of one forward-mode pass over `batch` coordinate-line inputs, as packet_stats feeds them."""
    gen = torch.Generator().manual_seed(0)
    dims = torch.randint(0, x_base.numel(), (batch,), generator=gen)
    x, tangent = line_inputs(x_base.reshape(-1), dims, torch.rand(batch, generator=gen))
    x, tangent = x.view(batch, *x_base.shape), tangent.view(batch, *x_base.shape)

    def run() -> None:
        with torch.no_grad(), models.exact_float32():  # as packet_stats runs it
            torch.func.jvp(model, (x,), (tangent,))

    seconds, _ = timed(run, repeats=repeats, warmup=warmup)
    return batch / seconds


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--estimators", default="gauss,piecewise,auto", help="comma list of the packet estimators to time")
    p.add_argument("--archs", default=None, help="comma list of architectures (default: all)")
    args = p.parse_args()
    setup(args.threads)
    repeats, warmup = (1, 0) if args.smoke_test else (args.repeats, 1)
    stage_rows, sweep_rows, defaults = [], [], []
    for arch, sizes in (GPU_SIZES if DEVICE.type == "cuda" else SIZES).items():
        if args.archs and arch not in args.archs.split(","):
            continue
        sizes = SMOKE if args.smoke_test else sizes
        model, x_base = model_and_base(arch)
        default = default_batch(model, x_base)
        dims = torch.randperm(x_base.numel(), generator=torch.Generator().manual_seed(1))[: sizes.dims]
        pairs = sizes.dims * 10
        gauss_rows = sizes.dims * (NODES + 2)
        batch = min(default, gauss_rows)
        limit = jvp_rows_per_s(model, x_base, batch, repeats, warmup)
        stage_rows.append([arch, "fwd+jvp limit", "", "", str(batch), "", "", f"{limit:.0f}", ""])
        for estimator in args.estimators.split(","):
            width = 1.0 if estimator == "auto" else sizes.width
            lo, hi = interval(x_base, dims, width)
            seconds, stats = timed(
                lambda: packet_stats(model, x_base, dims, lo, hi, estimator=estimator, nodes=NODES, batch_size=default),
                repeats=repeats,
                warmup=warmup,
            )
            rows = int(stats.evaluations.sum())
            label = {"gauss": f"gauss {NODES}", "auto": f"auto -> {stats.estimator}"}.get(estimator, estimator)
            walk_batch = str(batch) if stats.estimator == "gauss" else f"<={min(sizes.dims, default // PIECEWISE_ROWS_PER_LINE)}"
            stage_rows.append([
                arch, label, str(sizes.dims), f"{width:g}", walk_batch, f"{seconds:.3f}", f"{pairs / seconds:.0f}",
                f"{rows / seconds:.0f}", f"{limit / (rows / seconds):.1f}",
            ])
            print("# " + " | ".join(stage_rows[-1]), f"(limit {limit:.0f} rows/s)", flush=True)
        for n in sizes.batches:
            sweep_rows.append([arch, str(n), f"{jvp_rows_per_s(model, x_base, n, repeats, warmup):.0f}"])
        defaults.append(f"{arch} {default}")
    print("## packet stage against the forward+JVP limit (pairs = K x 10 classes; rows = network inputs)")
    print_table(["arch", "stage", "K", "width", "batch", "seconds", "pairs/s", "rows/s", "limit/stage"], stage_rows)
    print("\n## forward+JVP rows/s against batch size")
    print_table(["arch", "batch", "rows/s"], sweep_rows)
    print(f"batch packet_stats picks by itself on {DEVICE.type}: {', '.join(defaults)}")


if __name__ == "__main__":
    main()

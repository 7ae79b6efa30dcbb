"""What 1% costs on the paper's intervals: every estimator's true error, evaluations and time, per architecture.

    python bench/accuracy.py [--arch mnist_conv3|cifar_conv4|resnet9 ...] [--dims 4] [--exact] [--threads N] [--smoke-test]

For each architecture, float32 as a trial measures it, a handful of central pixels (`--dims`) over the
whole pixel interval [0, 1] and all 10 classes, around the mean training image:
- mnist_conv3: trained 2 epochs on Fashion-MNIST (`--fashion-mnist DIR`, the folder of the four IDX
  files; default /usr/share/datasets/fashion-mnist).
- cifar_conv4: trained 1 epoch on `synthetic:3x32x32:5000:1000` images.
- resnet9: random init, BatchNorm statistics of `synthetic:3x32x32` images (a few CPU epochs do not train
  it; see bench/estimator.py).
Reference: the same net in float64, integrated by piecewise where auto would walk (exact up to
round-off: every breakpoint located, every linear piece in closed form), else by gauss with 4096 nodes
(resnet9: about 10^4 kinks per unit of pixel, too many to walk on a CPU in minutes; that rule's own
error estimate is printed in the table's header), or everywhere by piecewise with `--exact`.
Methods: gauss at 32, 64, 128 and 256 nodes (the fixed rule, error estimate included), piecewise,
and auto at tol=1e-2 (its choice, its refinement). Columns: network evaluations per dimension (all
classes ride along), the worst true relative error on sx and sp over the pairs, the pairs within 1%,
the pairs whose error estimate covers the true error, the pairs flagged at tol=1e-2, seconds.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import torch

from common import parser, print_table, setup
from estimator import central_pixels, trained_model
from raysweep.core.packets import choose, packet_stats
from raysweep.core.piecewise import Unsupported

TOL = 1e-2
REFERENCE_NODES = 4096


class Setup(NamedTuple):
    dataset: str
    epochs: int


SETUPS = {
    "mnist_conv3": Setup("fashion-mnist", 2),
    "cifar_conv4": Setup("synthetic:3x32x32:5000:1000", 1),
    "resnet9": Setup("synthetic:3x32x32", 0),
}


def relative(stats, ref) -> torch.Tensor:
    """(D, C, 2) true relative errors of sx and sp."""
    return torch.stack([(stats.sx - ref.sx).abs() / ref.sx, (stats.sp - ref.sp).abs() / ref.sp], -1)


def covered(stats, ref) -> torch.Tensor:
    return torch.stack([stats.err_sx >= (stats.sx - ref.sx).abs(), stats.err_sp >= (stats.sp - ref.sp).abs()], -1)


def measure(arch: str, dims_count: int, fashion: str, smoke: bool, exact: bool) -> tuple[str, list[list[str]]]:
    cfg = SETUPS[arch]
    dataset = cfg.dataset
    epochs = min(cfg.epochs, 1) if smoke else cfg.epochs
    if arch == "mnist_conv3" and smoke:
        dataset = "digits"
    model, x_base = trained_model(arch, dataset, epochs, 128 if smoke else None, root=fashion)
    dims = central_pixels(x_base.shape, dims_count)
    a, b = torch.zeros(len(dims), dtype=torch.float64), torch.ones(len(dims), dtype=torch.float64)
    if smoke:
        b = b / 10
    m64, x64 = model.double(), x_base.double()
    # The walk is the exact reference where auto would walk; resnet9's ~10^4 kinks per unit of pixel make its
    # float64 walk over [0, 1] take tens of minutes on 2 cores, so there a fine float64 Gauss rule is it
    # unless --exact asks for the walk.
    if exact or choose(m64, x64, dims, a, b) == "piecewise":
        ref = packet_stats(m64, x64, dims, a, b, estimator="piecewise")
        reference = "piecewise in float64 (exact)"
    else:
        nodes = 64 if smoke else REFERENCE_NODES
        ref = packet_stats(m64, x64, dims, a, b, estimator="gauss", nodes=nodes, batch_size=2048)
        reference = (f"gauss {nodes} in float64, whose own estimated error is at most "
                     f"{float((ref.err_sx / ref.sx).max()):.1e} on sx, {float((ref.err_sp / ref.sp).max()):.1e} on sp")
    model.float()
    rows = []
    methods = [("gauss", n) for n in ((8, 16) if smoke else (32, 64, 128, 256))] + [("piecewise", 32), ("auto", 32)]
    for estimator, nodes in methods:
        start = time.perf_counter()
        try:
            stats = packet_stats(model, x_base, dims, a, b, estimator=estimator, nodes=nodes, tol=TOL)
        except Unsupported as exc:
            rows.append([arch, estimator, "refused", "", "", "", "", "", str(exc).split(":")[0][:40]])
            continue
        seconds = time.perf_counter() - start
        err = relative(stats, ref)
        pairs = err.shape[0] * err.shape[1]
        label = f"{estimator} {nodes}" if estimator == "gauss" else (f"auto -> {stats.estimator}" if estimator == "auto" else estimator)
        flagged = int(stats.misses(TOL, b - a).sum())
        rows.append([
            arch, label, f"{float(stats.evaluations.double().mean()):.0f}",
            f"{float(err[..., 0].max()):.1e}", f"{float(err[..., 1].max()):.1e}",
            f"{int((err.amax(-1) <= 0.01).sum())}/{pairs}", f"{int(covered(stats, ref).all(-1).sum())}/{pairs}",
            f"{flagged}/{pairs}", f"{seconds:.2f}",
        ])
        print("# " + " | ".join(rows[-1]), flush=True)
    trained_how = f"trained {epochs} epoch(s) on {dataset}" if epochs else f"random init, BatchNorm from {dataset}"
    return f"{arch}: {trained_how}; {len(dims)} pixels x 10 classes on [0, {float(b[0]):g}]; reference {reference}", rows


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--arch", nargs="+", choices=tuple(SETUPS), default=list(SETUPS))
    p.add_argument("--dims", type=int, default=4, help="central pixels per architecture (default 4)")
    p.add_argument("--exact", action="store_true",
                   help="walk every float64 reference, resnet9's too (tens of minutes on a CPU), not gauss 4096")
    p.add_argument("--fashion-mnist", default="/usr/share/datasets/fashion-mnist",
                   help="folder of the Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist)")
    args = p.parse_args()
    setup(args.threads)
    columns = ["arch", "method", "evals/dim", "worst sx err", "worst sp err", "within 1%", "estimate covers",
               f"flagged at tol={TOL:g}", "seconds"]
    # --smoke-test leaves resnet9 out: its float32 walk takes minutes on a CPU even over 0.1 of pixel
    for arch in [a for a in args.arch if not (args.smoke_test and a == "resnet9")]:
        header, rows = measure(arch, 1 if args.smoke_test else args.dims, args.fashion_mnist, args.smoke_test, args.exact)
        print(f"\n## {header}")
        print_table(columns, rows)


if __name__ == "__main__":
    main()

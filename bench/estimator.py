"""Packet estimators against the paper's method, at a matched error (SPEC 5, first target).

    python bench/estimator.py [--arch mnist_conv3|resnet9] [--dims N] [--max-mc N] [--threads N] [--smoke-test]

Models (float32, trained ReLU nets):
- mnist_conv3 (default): trained 3 epochs on `digits`; interval [0, 1]; 4 pixels by default.
  Reference: the same net in float64 with 8192 Gauss-Legendre nodes per dimension.
- resnet9: random init, with BatchNorm statistics of the `synthetic:3x32x32` training images
  (torch.optim.swa_utils.update_bn). A few CPU epochs do not train it: their BatchNorm running averages,
  still partly at their initial values, give logits of ~1e4, whose float32 cross-entropy is 0, and then the
  paper's method returns NaN. 1 pixel by default. The net has ~10^4 linear pieces per unit of pixel
  interval, so each pixel moves over a 0.02-wide interval around its base value.
  Reference: piecewise on the same net in float64. It is exact up to round-off, not a finer rule: in
  float64 the walk locates every breakpoint from the activations themselves and integrates each linear
  piece in closed form, with no node count to refine. (A Gauss rule fine enough to check it would need
  thousands of float64 resnet9 passes per pixel.) The gauss and paper rows converging towards it as
  they are refined are the independent check.
Pairs: `--dims` random central pixels x all 10 classes, around the mean training image.
Methods, each timed on this CPU:
- paper: uniform Monte-Carlo nodes, every (class, dimension) pair on its own, g' by reverse mode
  (one forward+backward per node and pair); the smallest N (powers of 2 from 64) whose worst pair is
  within 1% of the reference on both sx and sp, with a fixed seed, up to --max-mc.
- gauss at 32..256 nodes (error curve), and piecewise (exact pieces), one JVP pass per node
  serving all classes of a dimension.
Evaluations count network passes per (class, dimension) pair.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import torch
from torch import nn

from common import interval, parser, setup, trained
from raysweep.core import data, quadrature
from raysweep.core.lines import PacketStats, moments
from raysweep.core.packets import packet_stats


class Setup(NamedTuple):
    dataset: str  # training data; its mean training image is the base point
    epochs: int  # training epochs with the arch's recipe (at most 1 with --smoke-test); 0 keeps the random init
    width: float  # interval width around the base pixel; 1 is [0, 1]
    reference: str  # float64 reference: "gauss" (REFERENCE_NODES nodes) or "piecewise"
    dims: int  # default --dims
    max_mc: int  # default --max-mc


SETUPS = {
    "mnist_conv3": Setup("digits", 3, 1.0, "gauss", 4, 16384),
    "resnet9": Setup("synthetic:3x32x32", 0, 0.02, "piecewise", 1, 1024),
}
REFERENCE_NODES = 8192
SMOKE_TRAIN = 128  # training images with --smoke-test


def trained_model(
    arch: str, dataset: str, epochs: int, limit_train: int | None, root: str | None = None
) -> tuple[nn.Module, torch.Tensor]:
    """The arch trained `epochs` epochs on `dataset` (files under `root`) with its recipe, BatchNorm statistics
    recomputed on the training images (a no-op without BatchNorm), in eval mode; and the mean training image."""
    ds = data.load(dataset, root, download=False, limit_train=limit_train)
    model = trained(arch, ds, epochs)
    torch.optim.swa_utils.update_bn(ds.x_train.split(256), model)
    return model.eval(), ds.x_train.mean(0)


PAPER_BATCH = 1024  # nodes per reverse pass of the paper's method (resnet9 at 4096 in one pass needs > 24 GiB)


def central_pixels(shape: torch.Size, count: int) -> torch.Tensor:
    """`count` random flat indices among the central 12x12 pixels of every channel, sorted."""
    c, h, w = shape
    centre = [ch * h * w + r * w + col for ch in range(c) for r in range(h // 2 - 6, h // 2 + 6)
              for col in range(w // 2 - 6, w // 2 + 6)]
    pick = torch.Generator().manual_seed(1)
    return torch.tensor(centre)[torch.randperm(len(centre), generator=pick)[:count]].sort().values


def paper_pair(
    model: nn.Module, x_base: torch.Tensor, dim: int, label: int, n: int, a: float, b: float, generator: torch.Generator
) -> PacketStats:
    """The paper's way for one pair: n uniform nodes on [a, b], loss and reverse-mode gradient per node."""
    a_t, b_t = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    t, w = quadrature.rule("mc", n, a_t, b_t, generator=generator)
    losses, grads = [], []
    for nodes in t[0].float().split(PAPER_BATCH):  # batches only bound the memory of the reverse passes
        x = x_base.reshape(1, -1).repeat(nodes.numel(), 1)
        x[:, dim] = nodes
        x.requires_grad_(True)
        part = nn.functional.cross_entropy(
            model(x.view(nodes.numel(), *x_base.shape)), torch.full((nodes.numel(),), label), reduction="none"
        )
        losses.append(part.detach())
        grads.append(torch.autograd.grad(part.sum(), x)[0][:, dim])
    loss, grad = torch.cat(losses), torch.cat(grads)
    ends = x_base.reshape(1, -1).repeat(2, 1)
    ends[:, dim] = torch.tensor([a, b])
    with torch.no_grad():
        g_ends = nn.functional.cross_entropy(model(ends.view(2, *x_base.shape)), torch.full((2,), label), reduction="none")
    g = loss.double()[None, :, None]
    dg = grad.double()[None, :, None]
    return moments(t, w, g, dg, g_ends[0].double().view(1, 1), g_ends[1].double().view(1, 1), a_t, b_t)


def worst_error(stats_sx, stats_sp, ref, rows) -> float:
    sx = ((stats_sx - ref.sx[rows]).abs() / ref.sx[rows]).max()
    sp = ((stats_sp - ref.sp[rows]).abs() / ref.sp[rows]).max()
    return float(max(sx, sp))


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--arch", choices=tuple(SETUPS), default="mnist_conv3")
    p.add_argument("--dims", type=int, default=None, help="pixels (default: 4 for mnist_conv3, 1 for resnet9)")
    p.add_argument("--max-mc", type=int, default=None, help="cap on the paper's nodes per pair (16384; resnet9 1024)")
    args = p.parse_args()
    setup(args.threads)
    cfg = SETUPS[args.arch]
    dims_count, max_mc = args.dims or cfg.dims, args.max_mc or cfg.max_mc
    if args.smoke_test:
        dims_count, max_mc = 1, 64
    epochs, limit_train = (min(1, cfg.epochs), SMOKE_TRAIN) if args.smoke_test else (cfg.epochs, None)
    model, x_base = trained_model(args.arch, cfg.dataset, epochs, limit_train)
    dims = central_pixels(x_base.shape, dims_count)
    width = cfg.width / 10 if args.smoke_test else cfg.width
    a, b = interval(x_base, dims, width)
    ref = packet_stats(model.double(), x_base.double(), dims, a, b, estimator=cfg.reference, nodes=REFERENCE_NODES,
                       batch_size=16384)
    model.float()
    C = ref.sx.shape[1]
    rows = torch.arange(len(dims))[:, None].expand(-1, C)
    reference = f"gauss {REFERENCE_NODES}" if cfg.reference == "gauss" else "piecewise"
    span = "[0, 1]" if width == 1 else f"{width:g} wide around the base pixel"
    trained = f"trained {epochs} epoch(s) on {cfg.dataset}" if epochs else f"random init, BatchNorm from {cfg.dataset}"
    print(f"# {args.arch} {trained}; {len(dims)} pixels x {C} classes = {len(dims) * C} pairs; "
          f"interval {span}; reference: {reference} in float64")
    print(f"{'method':<22} {'evals/pair':>11} {'worst rel err':>14} {'seconds':>9}")
    results = {}
    for estimator, nodes in [("gauss", 32), ("gauss", 64), ("gauss", 128), ("gauss", 256), ("piecewise", 0)]:
        start = time.perf_counter()
        stats = packet_stats(model, x_base, dims, a, b, estimator=estimator, nodes=nodes or 32)
        seconds = time.perf_counter() - start
        per_dim = float(stats.evaluations.double().mean()) if stats.evaluations is not None else nodes + 2
        err = worst_error(stats.sx, stats.sp, ref, (rows, torch.arange(C)))
        label = f"{estimator} {nodes}" if nodes else estimator
        results[label] = (per_dim / C, err, seconds)
        print(f"{label:<22} {per_dim / C:>11.1f} {err:>14.2e} {seconds:>9.3f}")
    n = min(64, max_mc)
    while True:
        generator = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        sx = torch.empty_like(ref.sx)
        sp = torch.empty_like(ref.sp)
        for i, dim in enumerate(dims.tolist()):
            for label in range(C):
                pair = paper_pair(model, x_base, dim, label, n, float(a[i]), float(b[i]), generator)
                sx[i, label], sp[i, label] = pair.sx[0, 0], pair.sp[0, 0]
        seconds = time.perf_counter() - start
        err = worst_error(sx, sp, ref, (rows, torch.arange(C)))
        print(f"{'paper (mc, reverse) ' + str(n):<22} {n + 2:>11.1f} {err:>14.2e} {seconds:>9.3f}")
        results["paper"] = (n + 2, err, seconds)
        if err <= 0.01 or n >= max_mc:
            break
        n *= 2
    paper_evals, paper_err, paper_s = results["paper"]
    pw_evals, pw_err, pw_s = results["piecewise"]
    reached = "reached" if paper_err <= 0.01 else f"NOT reached (worst {paper_err:.1%} at the cap)"
    print(f"paper method: 1% {reached} at {paper_evals - 2} nodes per pair")
    print(f"piecewise vs paper: {paper_evals / pw_evals:.0f}x fewer evaluations, {paper_s / pw_s:.0f}x less time "
          f"(targets: 100x, 30x), piecewise worst error {pw_err:.1e}")


if __name__ == "__main__":
    main()

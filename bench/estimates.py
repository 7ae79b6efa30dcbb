"""How safe and how sharp the packets' error estimates are (SPEC 1.3): coverage and estimate / true error.

    python bench/estimates.py [--threads N] [--smoke-test]

1. gauss on analytic nets (MLPs 25-16-16-4 in float64, first layer's weights times a gain: tanh, GELU,
   softplus of growing sharpness; 6 inputs x 4 classes, seeds 0 and 1), against gauss with 384 nodes
   (at float64 round-off on all of them, ~3e-14 relative): at 8 to 64 nodes, the estimate as
   packet_stats gives it (the half rule's difference scaled by the last doubling's ratio) and as a net
   gets it whose forward `analytic` cannot read (the same net behind a module of its own).
2. piecewise in float32 on mnist_conv3 (1 epoch on digits) and cifar_conv4 (1 epoch on synthetic
   CIFAR-shaped images), 6 central pixels x 10 classes on [0, w] for w = 1, 0.1, 0.01, against the same
   net in float64 (piecewise: exact up to float64 round-off).
Columns: the share of values (sx and sp of every pair) whose estimate covers the true error (up to 1e-10
relative: below it the references cannot tell); the median estimate / true error over the values whose
true error is above that; the worst true relative error.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from common import parser, print_table, setup
from estimator import central_pixels, trained_model
from raysweep.core.packets import packet_stats

ANALYTIC = {  # activation, gain
    "tanh": (nn.Tanh, 3), "tanh, gain 10": (nn.Tanh, 10), "GELU, gain 10": (nn.GELU, 10),
    "softplus beta 20": (lambda: nn.Softplus(beta=20), 3), "softplus beta 50": (lambda: nn.Softplus(beta=50), 3),
    "softplus beta 100": (lambda: nn.Softplus(beta=100), 3),
}
REFERENCE_NODES = 384
MEASURABLE = 1e-10


class Opaque(nn.Module):
    """The same net behind a forward of its own, which could hide a kink: `analytic` does not vouch for it."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def mlp(act, gain: float, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(25, 16), act(), nn.Linear(16, 16), act(), nn.Linear(16, 4))
    with torch.no_grad():
        net[1].weight.mul_(gain)
    return net.double().eval()


def score(pairs: list[tuple]) -> list[str]:
    """pairs: (stats, reference) -> [covered, median estimate/true, worst true relative error]."""
    covered, ratios, worst = [], [], 0.0
    for stats, ref in pairs:
        for name in ("sx", "sp"):
            true = (getattr(stats, name) - getattr(ref, name)).abs()
            estimate = getattr(stats, f"err_{name}")
            relative = true / getattr(ref, name).abs()
            covered.append((estimate + MEASURABLE * getattr(ref, name).abs() >= true).flatten())
            ratios.append((estimate / true)[relative > MEASURABLE].flatten())
            worst = max(worst, float(relative.max()))
    covered, ratios = torch.cat(covered), torch.cat(ratios)
    median = f"{float(ratios.median()):.3g}" if ratios.numel() else "(none measurable)"
    return [f"{float(covered.double().mean()):.1%}", median, f"{worst:.1e}"]


def analytic_rows(smoke: bool) -> list[list[str]]:
    dims = list(range(1, 25, 4))
    families = dict(list(ANALYTIC.items())[-1:]) if smoke else ANALYTIC
    nets = {name: [mlp(act, gain, seed) for seed in (0, 1)] for name, (act, gain) in families.items()}
    bases = [torch.rand(1, 5, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) for seed in (0, 1)]
    refs = {name: [packet_stats(net, x, dims, 0.0, 1.0, estimator="gauss", nodes=REFERENCE_NODES)
                   for net, x in zip(group, bases)] for name, group in nets.items()}
    rows = []
    for nodes in (8, 16) if smoke else (8, 16, 32, 64):
        for label, wrap in (("as analytic", lambda net: net), ("opaque", Opaque)):
            every = []
            for name, group in nets.items():
                pairs = [(packet_stats(wrap(net), x, dims, 0.0, 1.0, estimator="gauss", nodes=nodes), ref)
                         for net, x, ref in zip(group, bases, refs[name])]
                every += pairs
                if label == "as analytic":
                    rows.append([f"gauss {nodes}", name, label, *score(pairs)])
            rows.append([f"gauss {nodes}", "all of them", label, *score(every)])
    return rows


def piecewise_rows(smoke: bool) -> list[list[str]]:
    rows = []
    setups = [("mnist_conv3", "digits")] + ([] if smoke else [("cifar_conv4", "synthetic:3x32x32:5000:1000")])
    for arch, dataset in setups:
        model, x_base = trained_model(arch, dataset, 1, 128)
        dims = central_pixels(x_base.shape, 2 if smoke else 6)
        wide, x_wide = copy.deepcopy(model).double(), x_base.double()
        for width in (0.1,) if smoke else (1.0, 0.1, 0.01):
            ref = packet_stats(wide, x_wide, dims, 0.0, width, estimator="piecewise")
            stats = packet_stats(model, x_base, dims, 0.0, width, estimator="piecewise")
            rows.append([arch, f"[0, {width:g}]", *score([(stats, ref)])])
    return rows


def main() -> None:
    args = parser(__doc__).parse_args()
    setup(args.threads)
    print("\n## gauss on analytic nets, float64")
    print_table(["rule", "net", "estimate", "covers", "median estimate/true", "worst error"], analytic_rows(args.smoke_test))
    print("\n## piecewise in float32 against float64")
    print_table(["arch", "interval", "covers", "median estimate/true", "worst error"], piecewise_rows(args.smoke_test))


if __name__ == "__main__":
    main()

"""The piecewise estimator: exact linear pieces of ReLU/MaxPool nets, integrated in closed form."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raysweep.core import models
from raysweep.core.packets import packet_stats
from raysweep.core.piecewise import pattern_changes, walk
from oracles import assert_bound_holds

FIELDS = ("sx", "sp", "mean_x", "mean_p", "beta", "boundary_term")


def relu_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(25, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        net[1].weight.mul_(4)  # many kinks on [0, 1]
    return net.double().eval()


def conv_pool_bn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(6 * 4 * 4, 5),
    ).double()
    net[1].running_mean.uniform_(-0.2, 0.2)
    net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def relative_error(stats, ref, name: str) -> float:
    return float(((getattr(stats, name) - getattr(ref, name)).abs() / getattr(ref, name).abs().clamp(min=1e-12)).max())


@pytest.mark.parametrize("build, shape", [(relu_mlp, (1, 5, 5)), (conv_pool_bn, (1, 8, 8))])
def test_piecewise_matches_a_fine_reference_with_few_evaluations(build, shape) -> None:
    net = build(0)
    x_base = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dims = [0, 7, 12, 20]
    reference = packet_stats(net, x_base, dims, 0.0, 1.0, estimator="gauss", nodes=8_000, batch_size=16_384)
    stats = packet_stats(net, x_base, dims, 0.0, 1.0, estimator="piecewise")
    assert relative_error(stats, reference, "sx") < 1e-6
    # The 8,000-node reference itself errs ~4e-4 on sp at the kinks; plain gauss at 256 nodes errs ~1e-2.
    assert relative_error(stats, reference, "sp") < 1e-3
    coarse = packet_stats(net, x_base, dims, 0.0, 1.0, estimator="gauss", nodes=256)
    assert relative_error(stats, reference, "sp") < relative_error(coarse, reference, "sp")
    assert float(stats.evaluations.double().mean()) < 256


def test_net_without_kinks_is_one_piece_and_exact() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(25, 4)).double().eval()
    x_base = torch.rand((1, 5, 5), dtype=torch.float64)
    stats = packet_stats(net, x_base, [3, 9], 0.0, 1.0, estimator="piecewise")
    smooth = packet_stats(net, x_base, [3, 9], 0.0, 1.0, estimator="gauss", nodes=64)  # analytic integrand: gauss is exact here
    assert stats.evaluations.tolist() == [2, 2]  # one piece, and the check at b
    for name in FIELDS:
        torch.testing.assert_close(getattr(stats, name), getattr(smooth, name), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_finite_interval_bound_holds_with_piecewise(seed: int) -> None:
    for net, shape in ((relu_mlp(seed), (1, 5, 5)), (conv_pool_bn(seed), (1, 8, 8))):
        x_base = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        stats = packet_stats(net, x_base, range(25), 0.0, 1.0, estimator="piecewise")
        assert_bound_holds(stats.product, stats.bound)


def test_pieces_tile_the_interval() -> None:
    net = relu_mlp(2)
    x_base = torch.rand((1, 5, 5), dtype=torch.float64)
    a, b = torch.tensor([0.0, -1.0], dtype=torch.float64), torch.tensor([1.0, 2.0], dtype=torch.float64)
    pieces = walk(net, x_base, torch.tensor([4, 11]), a, b)
    for d in range(2):
        n = int(pieces.count[d])
        assert pieces.start[d, 0] == a[d] and pieces.end[d, n - 1] == b[d]
        torch.testing.assert_close(pieces.start[d, 1:n], pieces.end[d, : n - 1])


def test_builtin_models_are_walkable_in_float32() -> None:
    torch.manual_seed(0)
    model = models.build("mnist_conv3").eval()
    x_base = torch.rand(1, 28, 28)
    stats = packet_stats(model, x_base, [200, 400], 0.0, 1.0, estimator="piecewise")
    assert torch.isfinite(stats.sx).all()
    assert_bound_holds(stats.product, stats.bound)


def test_smooth_activations_are_refused() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(25, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()
    with pytest.raises(ValueError, match="not known to be piecewise affine: use estimator='gauss'"):
        packet_stats(net, torch.rand(1, 5, 5, dtype=torch.float64), [0], 0.0, 1.0, estimator="piecewise")


@pytest.mark.parametrize("pool", [nn.MaxPool2d(3, 2, padding=1), nn.MaxPool2d(2, dilation=2), nn.MaxPool2d(3, 2, ceil_mode=True)])
def test_max_pools_whose_windows_the_walk_cannot_read_are_refused(pool: nn.MaxPool2d) -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), pool, nn.Flatten(), nn.LazyLinear(3)).double()
    x_base = torch.rand(1, 8, 8, dtype=torch.float64)
    net(x_base[None])  # materialise the lazy layer
    with pytest.raises(ValueError, match="without padding, dilation or ceil_mode.*use estimator='gauss'"):
        packet_stats(net.eval(), x_base, [0], 0.0, 1.0, estimator="piecewise")


class HiddenTanh(nn.Module):
    """A container whose own forward applies a nonlinearity no module declares."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(25, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(3 * self.inner(x.flatten(1))))


def test_nonlinearity_hidden_in_a_forward_is_caught_by_continuity() -> None:
    torch.manual_seed(0)
    net = HiddenTanh().double().eval()
    with pytest.raises(ValueError, match="logits jump"):
        packet_stats(net, torch.rand(1, 5, 5, dtype=torch.float64), [0, 1, 2], 0.0, 1.0, estimator="piecewise")


def test_float32_walk_of_several_lines_matches_float64() -> None:
    # Regression: in float32 a breakpoint can be located a hair early; the point meant to lie just
    # past it then lies in the old piece, whose slope the next (long) piece silently inherited.
    torch.manual_seed(3)
    model = models.build("mnist_conv3").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    x_base = torch.rand(1, 28, 28)
    dims = list(range(300, 600, 20))
    f32 = packet_stats(model, x_base, dims, 0.0, 1.0, estimator="piecewise")
    f64 = packet_stats(model.double(), x_base.double(), dims, 0.0, 1.0, estimator="piecewise")
    assert relative_error(f32, f64, "sp") < 1e-3
    assert_bound_holds(f32.product, f32.bound)


def test_batch_size_changes_memory_not_values() -> None:
    # batch_size sets how many lines walk together (batch_size / 16) and how many node rows
    # the closed-form losses take at once; neither may change a packet.
    net = conv_pool_bn(2)
    x_base = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    dims = list(range(0, 64, 3))
    whole = packet_stats(net, x_base, dims, 0.0, 1.0, estimator="piecewise", batch_size=4096)
    small = packet_stats(net, x_base, dims, 0.0, 1.0, estimator="piecewise", batch_size=16)  # one line, 16 rows
    for name in FIELDS:
        torch.testing.assert_close(getattr(small, name), getattr(whole, name), rtol=1e-12, atol=1e-15)
    assert torch.equal(small.evaluations, whole.evaluations)


def test_pattern_changes_bound_the_pieces_and_find_them_all_when_fine() -> None:
    net = conv_pool_bn(4)
    x_base = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    dims = torch.tensor([9, 27, 36])
    a, b = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    count = walk(net, x_base, dims, a, b).count
    assert int(count.min()) > 3  # kinks of ReLU and max-pool winners on every line
    coarse = pattern_changes(net, x_base, dims, a, b, points=5)
    fine = pattern_changes(net, x_base, dims, a, b, points=20_001)  # spacing far below every piece here
    assert (coarse <= count - 1).all() and (coarse < fine).any()
    assert torch.equal(fine, count - 1)

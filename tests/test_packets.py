"""The packet estimator against closed forms, an independent quadrature, and its own bound."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from raysweep.core import quadrature
from oracles import assert_bound_holds, moments_of, reverse_mode
from raysweep.core.lines import PacketStats, line_losses, loss_and_slope, moments
from raysweep.core.packets import packet_stats

SHAPE = (1, 5, 5)
DIMS = [0, 7, 12, 18, 24]


def small_net(activation: type[nn.Module], seed: int, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(25, 16), activation(), nn.Linear(16, 16), activation(), nn.Linear(16, 4))
    return net.to(dtype).eval()


def base_point(seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.rand(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def analytic_moments(g, dg, a: float, b: float) -> PacketStats:
    """`moments` fed with a 200-node Gauss rule on a known g, for closed-form checks."""
    a_, b_ = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    t, w = quadrature.rule("gauss", 200, a_, b_)
    col = lambda f, x: f(x)[..., None]  # noqa: E731  (D, n, C=1)
    return moments(t, w, col(g, t), col(dg, t), col(g, a_), col(g, b_), a_, b_)


def reference(net: nn.Module, x_base: torch.Tensor, dim: int, label: int, a: float, b: float) -> dict[str, float]:
    """sx, sp, <x>, <p>, B by scipy's adaptive quadrature, g' by reverse-mode autograd, float64."""
    return moments_of(*reverse_mode(net, x_base, dim, label), a, b)


def test_flat_packet_has_uniform_spread() -> None:
    net = small_net(nn.Tanh, 0)
    with torch.no_grad():
        net[1].weight[:, 12] = 0  # the loss no longer depends on x_12
    stats = packet_stats(net, base_point(0), [12], 0.2, 0.9, nodes=8)
    torch.testing.assert_close(stats.sx, torch.full((1, 4), 0.7 / math.sqrt(12), dtype=torch.float64))
    torch.testing.assert_close(stats.mean_x, torch.full((1, 4), 0.55, dtype=torch.float64))
    assert stats.sp.abs().max() < 1e-12
    torch.testing.assert_close(stats.boundary_term, torch.ones(1, 4, dtype=torch.float64))
    assert stats.bound.max() < 1e-12


def test_linear_loss_matches_closed_form() -> None:
    # g(t) = t on [0, 1]: beta = 1/3, <x> = 3/4, sx² = 3/80, <p> = 3/2, sp² = 3/4, B = 3/4.
    stats = analytic_moments(lambda t: t, torch.ones_like, 0.0, 1.0)
    expected = {"beta": 1 / 3, "mean_x": 0.75, "sx": math.sqrt(3 / 80), "mean_p": 1.5, "sp": math.sqrt(0.75), "boundary_term": 0.75}
    for name, value in expected.items():
        assert getattr(stats, name).item() == pytest.approx(value, rel=1e-12), name
    assert stats.bound.item() == pytest.approx(1 / 8)


def test_vanishing_packet_obeys_the_papers_half() -> None:
    # psi = sqrt(2) sin(pi t): B = 0, sx² = 1/12 - 1/(2 pi²), sp = pi, so sx sp = sqrt(pi²/12 - 1/2) > 1/2.
    stats = analytic_moments(lambda t: torch.sin(math.pi * t), lambda t: math.pi * torch.cos(math.pi * t), 0.0, 1.0)
    assert stats.boundary_term.item() == pytest.approx(0.0, abs=1e-12)
    assert stats.sp.item() == pytest.approx(math.pi, rel=1e-12)
    assert stats.product.item() == pytest.approx(math.sqrt(math.pi**2 / 12 - 0.5), rel=1e-12)
    assert stats.product.item() >= 0.5


def test_papers_half_fails_on_a_bounded_interval_while_the_finite_bound_holds() -> None:
    # A linear loss, g(t) = t, is perfectly regular yet sx·sp = sqrt(9/320) ≈ 0.168 < 1/2;
    # the finite-interval bound |1 - B|/2 = 1/8 holds.
    stats = analytic_moments(lambda t: t, torch.ones_like, 0.0, 1.0)
    assert stats.product.item() < 0.5
    assert stats.product.item() >= stats.bound.item()
    # The same happens on a real (random) network: almost every pixel packet is far below 1/2.
    stats = packet_stats(small_net(nn.Tanh, 1), base_point(1), range(25), 0.0, 1.0)
    assert (stats.product < 0.5).float().mean() > 0.9
    assert_bound_holds(stats.product, stats.bound)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gauss_agrees_with_adaptive_quadrature_on_smooth_nets(seed: int) -> None:
    net, x_base = small_net(nn.Tanh, seed), base_point(seed)
    with torch.no_grad():
        for layer in (net[1], net[3]):
            layer.weight.mul_(3)  # packets with visible curvature, not near-flat ones
    stats = packet_stats(net, x_base, DIMS[:3], 0.0, 1.0, estimator="gauss", nodes=32)
    for row, dim in enumerate(DIMS[:3]):
        for label in (0, 3):
            ref = reference(net, x_base, dim, label, 0.0, 1.0)
            for name, value in ref.items():
                got = getattr(stats, name)[row, label].item()
                assert got == pytest.approx(value, rel=1e-4, abs=1e-9), (dim, label, name)


def test_forward_mode_slope_equals_per_class_reverse_mode() -> None:
    net, x_base = small_net(nn.ReLU, 3), base_point(3)
    t = torch.tensor([[0.1, 0.5, 0.93], [0.2, 0.4, 0.77]], dtype=torch.float64)
    dims = torch.tensor([4, 19])
    g, dg = line_losses(net, x_base, dims, t)
    for r, dim in enumerate(dims.tolist()):
        for k, tk in enumerate(t[r].tolist()):
            for label in range(4):
                x = x_base.clone().reshape(-1)
                x[dim] = tk
                x = x.view(1, *SHAPE).requires_grad_(True)
                loss = nn.functional.cross_entropy(net(x), torch.tensor([label]))
                (grad,) = torch.autograd.grad(loss, x)
                assert g[r, k, label].item() == pytest.approx(loss.item(), rel=1e-12)
                assert dg[r, k, label].item() == pytest.approx(grad.reshape(-1)[dim].item(), rel=1e-10, abs=1e-14)


def test_confident_labels_keep_their_tiny_loss_in_float32() -> None:
    z = torch.tensor([[40.0, 0.0, -3.0]])
    dz = torch.tensor([[1.0, -2.0, 0.5]])
    loss, slope = loss_and_slope(z, dz)
    naive = (torch.logsumexp(z, -1, keepdim=True) - z)[0, 0]
    assert naive.item() == 0.0  # float32 loses it
    expected = math.log1p(math.exp(-40) + math.exp(-43))
    assert loss[0, 0].item() == pytest.approx(expected, rel=1e-9)
    p = torch.softmax(z.double(), -1)
    torch.testing.assert_close(slope, (p * dz.double()).sum(-1, keepdim=True) - dz.double())


def test_loss_clip_caps_the_loss_and_zeroes_its_slope() -> None:
    z = torch.tensor([[5.0, 0.0], [0.0, 0.1]])
    dz = torch.tensor([[1.0, 1.5], [2.0, -1.0]])
    loss, slope = loss_and_slope(z, dz, loss_clip=1.0)
    assert loss.max() <= 1.0
    assert slope[0, 1].item() == 0.0  # label 1 of row 0 has loss ~5, clipped
    assert slope[0, 0].item() != 0.0


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU, nn.Softplus])
def test_finite_interval_bound_holds_on_random_nets(activation: type[nn.Module]) -> None:
    # Only a deterministic rule is held to 1e-6 of the bound: the bound is an identity between exact
    # integrals, and Monte-Carlo meets it only up to its sampling error.
    for seed in range(3):
        net, x_base = small_net(activation, seed), base_point(seed)
        with torch.no_grad():
            net[1].weight.mul_(4)
        stats = packet_stats(net, x_base, range(25), 0.0, 1.0, estimator="gauss", nodes=64)
        assert_bound_holds(stats.product, stats.bound)


def test_monte_carlo_converges_to_gauss_within_its_standard_errors() -> None:
    net, x_base = small_net(nn.Tanh, 4), base_point(4)
    exact = packet_stats(net, x_base, DIMS, 0.0, 1.0, estimator="gauss", nodes=48)
    mc = packet_stats(
        net, x_base, DIMS, 0.0, 1.0, estimator="mc", nodes=4096, replicates=16, generator=torch.Generator().manual_seed(0)
    )
    for name in ("sx", "sp"):
        z = (getattr(mc, name) - getattr(exact, name)).abs() / getattr(mc, f"err_{name}")
        assert z.max() < 5, name  # 20 pairs, so a 5-sigma miss is a bug, not bad luck
        assert (getattr(mc, f"err_{name}") / getattr(exact, name)).max() < 0.05
    assert mc.estimator == "mc" and exact.estimator == "gauss" and (exact.err_sx < mc.err_sx).all()


def test_batched_equals_one_dimension_at_a_time() -> None:
    net, x_base = small_net(nn.ReLU, 5), base_point(5)
    together = packet_stats(net, x_base, DIMS, 0.0, 1.0, batch_size=7)
    for row, dim in enumerate(DIMS):
        alone = packet_stats(net, x_base, [dim], 0.0, 1.0, batch_size=1000)
        for name in ("sx", "sp", "mean_x", "mean_p", "beta", "boundary_term", "bound"):
            torch.testing.assert_close(getattr(together, name)[row], getattr(alone, name)[0], rtol=1e-10, atol=1e-15)


def test_per_dimension_intervals_are_respected() -> None:
    net, x_base = small_net(nn.Tanh, 6), base_point(6)
    a, b = torch.tensor([0.0, -1.0]), torch.tensor([1.0, 3.0])
    both = packet_stats(net, x_base, [3, 9], a, b)
    second = packet_stats(net, x_base, [9], -1.0, 3.0)
    torch.testing.assert_close(both.sx[1], second.sx[0])
    assert ((both.mean_x[1] > -1) & (both.mean_x[1] < 3)).all()


def test_model_mode_is_restored_and_eval_is_used() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(25, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).double()
    net.train()
    stats = packet_stats(net, base_point(0), [1, 2], 0.0, 1.0, nodes=8)  # train-mode BatchNorm would fail under jvp
    assert net.training
    assert torch.isfinite(stats.sx).all()


def test_float32_model_keeps_a_small_sp() -> None:
    net = small_net(nn.Tanh, 7, dtype=torch.float32)
    with torch.no_grad():
        net[1].weight[:, 5] *= 1e-2  # a nearly flat packet: sp is tiny next to ∫psi'²
    x_base = base_point(7, torch.float32)
    stats32 = packet_stats(net, x_base, [5], 0.0, 1.0)
    stats64 = packet_stats(net.double(), x_base.double(), [5], 0.0, 1.0)
    # ∫psi'² exceeds sp² by > 1e6, so the float32 difference ∫psi'² - <p>² would be noise.
    assert ((stats64.sp**2 + stats64.mean_p**2) / stats64.sp**2).min() > 1e6
    torch.testing.assert_close(stats32.sp, stats64.sp, rtol=1e-3, atol=0)


def test_unknown_estimator_names_the_choices() -> None:
    with pytest.raises(ValueError, match="gauss, mc"):
        packet_stats(small_net(nn.Tanh, 0), base_point(0), [0], 0.0, 1.0, estimator="simpson")
    with pytest.raises(ValueError, match="supported: gauss, mc"):
        quadrature.rule("trapezoid", 4, torch.zeros(1), torch.ones(1))

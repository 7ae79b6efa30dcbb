"""Independent oracles for packet statistics: SPEC 1.2's formulas by scipy's adaptive quadrature,
on losses and slopes from float64 reverse-mode autograd, sharing no code with raysweep.core.packets."""

from __future__ import annotations

import math

import torch
from scipy import integrate
from torch import nn


def moments_of(g, dg, a: float, b: float, points=None) -> dict[str, float]:
    """The packet of g on [a, b] by scipy.integrate.quad, straight from SPEC 1.2's formulas."""
    quad = lambda f: integrate.quad(f, a, b, epsabs=1e-13, epsrel=1e-10, limit=400, points=points)[0]  # noqa: E731
    beta = quad(lambda t: g(t) ** 2)
    mean_x = quad(lambda t: t * g(t) ** 2) / beta
    sx = math.sqrt(quad(lambda t: (t - mean_x) ** 2 * g(t) ** 2) / beta)
    mean_p = quad(lambda t: g(t) * dg(t)) / beta
    sp = math.sqrt(quad(lambda t: (dg(t) - mean_p * g(t)) ** 2) / beta)
    boundary = ((b - mean_x) * g(b) ** 2 - (a - mean_x) * g(a) ** 2) / beta
    return {"sx": sx, "sp": sp, "mean_x": mean_x, "mean_p": mean_p, "boundary_term": boundary}


def reverse_mode(net: nn.Module, x_base: torch.Tensor, dim: int, label: int):
    """g(t) and g'(t) of one pair by float64 reverse-mode autograd, one point at a time."""

    def both(t: float) -> tuple[float, float]:
        x = x_base.clone().reshape(-1)
        xi = torch.tensor(t, dtype=torch.float64, requires_grad=True)
        x = torch.cat([x[:dim], xi[None], x[dim + 1 :]]).view(1, *x_base.shape)
        loss = nn.functional.cross_entropy(net(x), torch.tensor([label]))
        (slope,) = torch.autograd.grad(loss, xi)
        return loss.item(), slope.item()

    return (lambda t: both(t)[0]), (lambda t: both(t)[1])


BOUND_RTOL = 1e-6  # SPEC 1.3: the finite-interval bound holds to 1e-6, relative to the bound itself
B_ROUNDOFF = 1e-15  # times |B|: float64's round-off of 1 - B, which is all a near-flat packet's bound is


def assert_bound_holds(product, bound, boundary_term=None) -> None:
    """sx·sp >= |1 - B|/2 up to 1e-6 of the bound (or, given B, the round-off of 1 - B), so the check
    bites at any scale: feature-space bounds are ~1e-7, where an absolute 1e-6 passes any values at all."""
    product, bound = torch.as_tensor(product, dtype=torch.float64), torch.as_tensor(bound, dtype=torch.float64)
    assert (bound > 0).all(), "a zero bound checks nothing"
    slack = 0.0 if boundary_term is None else B_ROUNDOFF * torch.as_tensor(boundary_term, dtype=torch.float64).abs()
    short = (bound * (1 - BOUND_RTOL) - slack - product) / bound
    assert short.max().item() <= 0, f"sx·sp falls {short.max().item():.3g} of the bound short of it"

"""Quadrature rules on [a, b]: named, returning (points, weights).

Every integral of one (class, dimension) pair uses the same nodes t_k and
weights w_k, so that ∫ f dt ≈ Σ_k w_k f(t_k) (SPEC 1.3).
"""

from __future__ import annotations

import torch
from scipy.special import roots_legendre

from raysweep.choices import RULES


def check_method(method: str) -> None:
    if method not in RULES:
        raise ValueError(f"unknown quadrature method {method!r}; supported: {', '.join(RULES)}")


def rule(
    method: str,
    n: int,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of an n-point rule on each interval [a_d, b_d].

    Args:
        method: ``"gauss"`` (Gauss-Legendre, exact for polynomials of degree
            2n-1) or ``"mc"`` (t uniform on [a, b], w = (b - a)/n).
        n: number of nodes per interval, n >= 1.
        a, b: interval ends, shape (D,), float64.
        generator: randomness for ``"mc"``.

    Returns:
        (t, w), each shaped (D, n), float64, on the device of ``a``.
    """
    check_method(method)
    if n < 1:
        raise ValueError(f"a quadrature rule needs at least one node, got n={n}")
    half = ((b - a) / 2)[:, None]  # (D, 1)
    if method == "gauss":
        x, w = roots_legendre(n)  # asymptotic formulas for large n, unlike numpy's O(n^3) leggauss
        x = torch.as_tensor(x, dtype=torch.float64, device=a.device)
        w = torch.as_tensor(w, dtype=torch.float64, device=a.device)
        return ((a + b) / 2)[:, None] + half * x, half * w
    u = torch.rand((a.shape[0], n), generator=generator, dtype=torch.float64, device="cpu").to(a.device)
    return a[:, None] + 2 * half * u, (2 * half / n).expand(-1, n)

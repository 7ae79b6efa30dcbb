"""The neural packet of one (class, dimension) pair and its spreads Δx, Δp.

For label Y and input dimension i, every other coordinate is held at the base
point and x_i = t runs over [a, b] (SPEC 1.2):

    g(t)   = l(X_base with x_i = t, Y)            cross-entropy, optionally clipped at C
    beta   = ∫ g² dt                              (paper Eq. 22)
    psi    = g / sqrt(beta)                       (the neural packet, Eq. 7)
    <x>    = ∫ t psi² dt,       sx = sqrt(∫ (t - <x>)² psi² dt)          (Δx_i)
    psi'   = g' / sqrt(beta),   g' = ∂l/∂x_i by forward-mode AD
    <p>    = ∫ psi psi' dt      (Eq. 12),   sp = sqrt(∫ psi'² dt - <p>²)  (Δp_i)

and the exact finite-interval bound sx·sp >= |1 - B|/2 with
B = (b - <x>) psi(b)² - (a - <x>) psi(a)².

This module is pure torch: no Ray, no file formats.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import nn

from raysweep.choices import ESTIMATORS, mc_problem
from raysweep.core import models, piecewise, quadrature
from raysweep.core.lines import PacketStats, default_batch, line_losses, moments

DEFAULT_REPLICATES = 8  # independent Monte-Carlo batches behind the standard errors
PIECEWISE_ROWS_PER_LINE = 16  # piecewise walks batch_size / this many lines at once (about 1.5 MiB each on mnist_conv3)


def packet_stats(
    model: nn.Module,
    x_base: torch.Tensor,
    dims: Sequence[int] | torch.Tensor,
    a: float | torch.Tensor,
    b: float | torch.Tensor,
    *,
    estimator: str = "gauss",
    nodes: int = 32,
    replicates: int = DEFAULT_REPLICATES,
    loss_clip: float | None = None,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
) -> PacketStats:
    """Δx and Δp of every (dimension, class) pair of ``model`` around ``x_base``.

    Args:
        model: maps a batch (n, *x_base.shape) to logits (n, C). It is run in
            eval mode (train-mode BatchNorm breaks forward-mode AD) and true
            float32 (no TF32 on GPUs); its mode is restored afterwards.
        x_base: the base point (mean training input, or mean feature vector).
        dims: flat indices into x_base.
        a, b: interval ends, floats or tensors shaped (len(dims),).
        estimator: ``"gauss"`` (Gauss-Legendre) or ``"mc"`` (the paper's
            uniform Monte-Carlo, with standard errors from ``replicates``
            independent batches of nodes/replicates samples each).
        nodes: evaluations per dimension inside (a, b); 2 more at a and b
            give psi(a), psi(b) for the bound.
        loss_clip: clip the loss at this constant (paper supp. footnote 1); not with ``"piecewise"``.
        batch_size: network inputs per pass; sets the peak memory (not len(dims)).
        generator: randomness for ``"mc"``.

    Returns:
        PacketStats with tensors shaped (len(dims), C).

    Example:
        >>> stats = packet_stats(model.eval(), x_train.mean(0), [300, 301], 0.0, 1.0)
        >>> (stats.sx * stats.sp >= stats.bound).all()
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; supported: {', '.join(ESTIMATORS)}")
    if estimator == "piecewise" and loss_clip is not None:
        # The clip bends the loss inside a linear piece, where the sub-pieces' Gauss rules do not look
        # for it: on a two-logit linear model that cost 1.8% on sp and 4.9% on <p> (tests/test_references.py).
        raise ValueError("estimator 'piecewise' does not locate the kink that loss_clip puts inside a linear piece: "
                         "use estimator='gauss' with loss_clip")
    if estimator == "mc" and (problem := mc_problem(nodes, replicates)):
        raise ValueError(f"estimator 'mc': {problem}")
    dims = torch.as_tensor(dims, dtype=torch.long).reshape(-1)
    a = torch.as_tensor(a, dtype=torch.float64, device=x_base.device).expand(dims.shape).clone()
    b = torch.as_tensor(b, dtype=torch.float64, device=x_base.device).expand(dims.shape).clone()
    with models.eval_mode(model), models.exact_float32():
        if estimator == "piecewise":
            # Lines walk together; a group's memory grows with its pieces, so groups are set by the batch size.
            batch = batch_size or default_batch(model, x_base)
            lines = max(1, batch // PIECEWISE_ROWS_PER_LINE)
            parts = [
                piecewise.stats(
                    model, x_base, dims[i : i + lines], a[i : i + lines], b[i : i + lines],
                    loss_clip=loss_clip, batch_size=batch,
                )
                for i in range(0, max(dims.numel(), 1), lines)
            ]
            return PacketStats(**{
                f.name: torch.cat([getattr(p, f.name) for p in parts]) if getattr(parts[0], f.name) is not None else None
                for f in dataclasses.fields(PacketStats)
            })
        t, w = quadrature.rule(estimator, nodes, a, b, generator=generator)
        g, dg = line_losses(
            model, x_base, dims, torch.cat([t, a[:, None], b[:, None]], 1), loss_clip=loss_clip, batch_size=batch_size
        )
    g_a, g_b = g[:, -2], g[:, -1]
    g, dg = g[:, :-2], dg[:, :-2]
    stats = moments(t, w, g, dg, g_a, g_b, a, b)
    if estimator == "gauss":
        return stats
    per = nodes // replicates
    reps = [
        moments(t[:, s : s + per], w[:, s : s + per] * replicates, g[:, s : s + per], dg[:, s : s + per], g_a, g_b, a, b)
        for s in range(0, nodes, per)
    ]
    return dataclasses.replace(stats, se_sx=_standard_error([r.sx for r in reps]), se_sp=_standard_error([r.sp for r in reps]))



def _standard_error(replicate_values: list[torch.Tensor]) -> torch.Tensor:
    """Standard error of the mean of R independent replicate estimates: std / sqrt(R)."""
    return torch.stack(replicate_values).std(0) / len(replicate_values) ** 0.5

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

Every value comes with an estimate of its own error (err_sx, err_sp; SPEC 1.3, revised
2026-12-01). Monte-Carlo: the standard error over independent replicate batches.
Gauss: GAUSS_SAFETY times the difference to the rule of half the nodes (which costs half
as many evaluations again), on an analytic net times the ratio by which the last doubling
cut the error (`_gauss_error`). Gauss-Legendre converges erratically where g' jumps (ReLU
kinks): the bare difference fell short of the true error on a fifth of a ReLU net's pairs,
4 times it on 5%, 6 times it on 3-4% (tests/test_errors.py measures the coverage).
Piecewise: the difference between its sub-piece rule and one of half the nodes, the effect
of moving every breakpoint by how far float round-off may have put it (`piecewise.moved`;
no more network evaluations), and PIECE_ROUNDOFF times the line's largest relative logit
jump at a breakpoint times its pieces.
Every estimate has a floor of ROUNDOFF epsilons of the model's dtype, relative: float32
nets carry round-off of 1e-8 to 2e-5 relative that no comparison of rules can see.

`auto` (the default) takes piecewise where the net is ReLU/MaxPool with few kinks per line,
else gauss; with gauss it refines every dimension whose estimated relative error misses
`tol` by doubling its nodes, up to REFINE_CAP; what still misses is left for the caller to
flag (`PacketStats.misses`).

This module is pure torch: no Ray, no file formats.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import nn

from raysweep.choices import AUTO, ESTIMATORS, mc_problem
from raysweep.core import models, piecewise, quadrature
from raysweep.core.lines import PacketStats, default_batch, line_losses, moments

DEFAULT_REPLICATES = 8  # independent Monte-Carlo batches behind the standard errors
DEFAULT_TOL = 1e-2  # relative error auto refines to
PIECEWISE_ROWS_PER_LINE = 16  # piecewise walks batch_size / this many lines at once (about 1.5 MiB each on mnist_conv3)
AUTO_PROBE_LINES = 2  # lines auto probes to choose between piecewise and gauss
AUTO_MAX_PIECES = 256  # pieces per probed line above which auto takes gauss
REFINE_CAP = 512  # Gauss nodes per dimension auto refines up to
GAUSS_SAFETY = 6.0  # gauss error estimate: this times |Q_n - Q_{n/2}| (see `_gauss_error`)
ANALYTIC_MODULES = (nn.Tanh, nn.Sigmoid, nn.Softplus, nn.GELU, nn.SiLU, nn.Mish)  # activations analytic on the reals
ROUNDOFF = 16.0  # round-off floor of every estimate, in epsilons of the model's dtype
PIECE_ROUNDOFF = 4.0  # piecewise: this times a line's largest relative logit jump times its pieces (`piecewise.stats`)


def packet_stats(
    model: nn.Module,
    x_base: torch.Tensor,
    dims: Sequence[int] | torch.Tensor,
    a: float | torch.Tensor,
    b: float | torch.Tensor,
    *,
    estimator: str = AUTO,
    nodes: int = 32,
    tol: float = DEFAULT_TOL,
    replicates: int = DEFAULT_REPLICATES,
    loss_clip: float | None = None,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
) -> PacketStats:
    """Δx and Δp of every (dimension, class) pair of ``model`` around ``x_base``, each with its error estimate.

    Args:
        model: maps a batch (n, *x_base.shape) to logits (n, C). It is run in
            eval mode (train-mode BatchNorm breaks forward-mode AD) and true
            float32 (no TF32 on GPUs); its mode is restored afterwards.
        x_base: the base point (mean training input, or mean feature vector).
        dims: flat indices into x_base.
        a, b: interval ends, floats or tensors shaped (len(dims),).
        estimator: ``"auto"`` (piecewise where it applies, else gauss refined to ``tol``; see
            `choose`), ``"piecewise"`` (exact linear pieces of a ReLU/MaxPool net),
            ``"gauss"`` (Gauss-Legendre with ``nodes``) or ``"mc"`` (the paper's uniform
            Monte-Carlo, standard errors from ``replicates`` batches of nodes/replicates each).
        nodes: gauss and mc evaluations per dimension inside (a, b) (auto starts gauss there);
            gauss adds nodes/2 for its error estimate (and nodes/4 on an `analytic` net), and
            every rule 2 at a and b for the bound.
        tol: relative error on sx and sp that auto refines gauss to (`PacketStats.misses`).
        loss_clip: clip the loss at this constant (paper supp. footnote 1); not with ``"piecewise"``.
        batch_size: network inputs per pass; sets the peak memory (not len(dims)).
        generator: randomness for ``"mc"``.

    Returns:
        PacketStats with tensors shaped (len(dims), C), ``estimator`` naming the one used.

    Example:
        >>> stats = packet_stats(model.eval(), x_train.mean(0), [300, 301], 0.0, 1.0)
        >>> (stats.sx * stats.sp >= stats.bound).all(), stats.estimator, stats.err_sp.max()
    """
    if estimator not in (AUTO, *ESTIMATORS):
        raise ValueError(f"unknown estimator {estimator!r}; supported: {', '.join((AUTO, *ESTIMATORS))}")
    if estimator == "piecewise" and loss_clip is not None:
        # The clip bends the loss inside a linear piece, where the sub-pieces' Gauss rules do not look
        # for it: on a two-logit linear model that cost 1.8% on sp and 4.9% on <p> (tests/test_references.py).
        raise ValueError("estimator 'piecewise' does not locate the kink that loss_clip puts inside a linear piece: "
                         "use estimator='gauss' with loss_clip")
    if estimator == "mc" and (problem := mc_problem(nodes, replicates)):
        raise ValueError(f"estimator 'mc': {problem}")
    if not tol > 0:
        raise ValueError(f"tol={tol}: a relative error tolerance is positive, e.g. 1e-2")
    dims = torch.as_tensor(dims, dtype=torch.long).reshape(-1)
    a = torch.as_tensor(a, dtype=torch.float64, device=x_base.device).expand(dims.shape).clone()
    b = torch.as_tensor(b, dtype=torch.float64, device=x_base.device).expand(dims.shape).clone()
    eps = torch.finfo(x_base.dtype).eps
    with models.eval_mode(model), models.exact_float32():
        chosen = choose(model, x_base, dims, a, b, loss_clip=loss_clip) if estimator == AUTO else estimator
        if chosen == "piecewise":
            return _piecewise(model, x_base, dims, a, b, eps, loss_clip=loss_clip, batch_size=batch_size)
        if chosen == "mc":
            return _monte_carlo(model, x_base, dims, a, b, eps, nodes, replicates, loss_clip, batch_size, generator)
        smooth = analytic(model)
        stats, half = _gauss(model, x_base, dims, a, b, eps, nodes, loss_clip, batch_size, smooth)
        if estimator == AUTO:
            stats = _refine(stats, half, model, x_base, dims, a, b, eps, nodes, tol, loss_clip, batch_size, smooth)
    return stats


def choose(
    model: nn.Module, x_base: torch.Tensor, dims: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
    *, loss_clip: float | None = None,
) -> str:
    """auto's choice: piecewise where the net is ReLU/MaxPool and its lines have few pieces, else gauss.

    gauss whenever the loss is clipped (the walk does not see the clip's kink). Otherwise
    the first AUTO_PROBE_LINES lines are probed: walked with at most AUTO_MAX_PIECES pieces
    each. Denser kinks (resnet9 has about 10^4 per unit of pixel) make the walk cost more
    than fine Gauss rules, and float32 cannot resolve them (BENCHMARKS.md). Lines that
    change activation pattern between AUTO_MAX_PIECES + 1 evenly spaced points at every
    gap have too many pieces for sure, which one batched pass shows without the walk's
    AUTO_MAX_PIECES sequential steps (resnet9 on a 2-core CPU: 4 s instead of 32 s).
    """
    if loss_clip is not None:
        return "gauss"
    n = min(AUTO_PROBE_LINES, dims.numel())
    device = x_base.device
    probe = (model, x_base, dims[:n], a[:n].to(device), b[:n].to(device))
    try:
        with models.eval_mode(model), models.exact_float32():
            if int(piecewise.pattern_changes(*probe, points=AUTO_MAX_PIECES + 1).max()) >= AUTO_MAX_PIECES:
                return "gauss"
            piecewise.walk(*probe, max_pieces=AUTO_MAX_PIECES)
    except piecewise.Unsupported:  # not ReLU/MaxPool, too many pieces, or a nonlinearity the walk cannot see
        return "gauss"
    return "piecewise"


def _rule(model, x_base, dims, a, b, method, n, loss_clip, batch_size, generator=None):
    """Moments of an n-node rule on each line, with the nodes, weights, losses and slopes behind them."""
    t, w = quadrature.rule(method, n, a, b, generator=generator)
    g, dg = line_losses(model, x_base, dims, torch.cat([t, a[:, None], b[:, None]], 1), loss_clip=loss_clip,
                        batch_size=batch_size)
    g_a, g_b, g, dg = g[:, -2], g[:, -1], g[:, :-2], dg[:, :-2]
    return moments(t, w, g, dg, g_a, g_b, a, b), (t, w, g, dg, g_a, g_b)


def analytic(model: nn.Module) -> bool:
    """True where the net is known to be analytic in its input: nn.Sequential containers of affine
    layers and ANALYTIC_MODULES only. There Gauss-Legendre converges geometrically and `_gauss_error`
    may extrapolate; a container with its own forward could hide a relu, so it counts as not known."""
    return all(
        type(module) is nn.Sequential if next(module.children(), None) is not None
        else isinstance(module, piecewise.AFFINE_MODULES + ANALYTIC_MODULES)
        for module in model.modules()
    )


def _gauss(model, x_base, dims, a, b, eps, n, loss_clip, batch_size, smooth) -> tuple[PacketStats, PacketStats]:
    """Gauss-Legendre with n nodes, its error from the rule of n/2 (and, on an analytic net, of n/4:
    `_gauss_error`); returns it and the rule of n/2."""
    sizes = [n, max(1, n // 2)] + ([max(1, n // 4)] if smooth else [])
    fine, half, *older = [_rule(model, x_base, dims, a, b, "gauss", m, loss_clip, batch_size)[0] for m in sizes]
    evaluations = torch.full(dims.shape, sum(m + 2 for m in sizes), dtype=torch.long)  # every rule adds a and b
    return _with_errors(fine, *_gauss_error(fine, half, older[0] if older else None), eps, evaluations, "gauss"), half


def _gauss_error(fine: PacketStats, half: PacketStats, older: PacketStats | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The error of the rule `fine` for sx and sp: GAUSS_SAFETY × |fine - half| (the error of the half
    rule), times, where the rule before it (`older`, analytic nets only) is given, the ratio
    |fine - half| / |half - older| (at most 1) by which the last doubling of the nodes cut the error.

    Why not on every net: where g' jumps (ReLU kinks) Gauss-Legendre converges erratically and the
    ratio of one doubling says little of the next (the scaled estimate covered 78-80% of a ReLU MLP's
    pairs). On analytic nets the convergence is geometric, and the plain difference, the error of the
    half rule, is 10^2 to 10^4 times the error of the rule reported (BENCHMARKS.md, "How sharp").
    """
    err_sx, err_sp = _differences(fine, half, GAUSS_SAFETY)
    if older is None:
        return err_sx, err_sp
    ratio = lambda name: _ratio(getattr(fine, name), getattr(half, name), getattr(older, name))  # noqa: E731
    return err_sx * ratio("sx"), err_sp * ratio("sp")


def _ratio(fine: torch.Tensor, half: torch.Tensor, older: torch.Tensor) -> torch.Tensor:
    """|fine - half| / |half - older|, at most 1 (and 1 where the rules before agree exactly)."""
    last, before = (fine - half).abs(), (half - older).abs()
    return torch.where(before > 0, last / before, 1.0).clamp(max=1.0)


def _refine(stats, half, model, x_base, dims, a, b, eps, n, tol, loss_clip, batch_size, smooth) -> PacketStats:
    """Double the nodes of every dimension that misses `tol` until it meets it or reaches REFINE_CAP;
    the error of each new rule is taken from the ones before (`_gauss_error`; only the new rule is
    evaluated)."""
    width = (b - a).cpu()
    while 2 * n <= REFINE_CAP:
        redo = stats.misses(tol, width).any(1)
        if not redo.any():
            break
        n *= 2
        rows = redo.nonzero().squeeze(1).to(dims.device)
        fine, _ = _rule(model, x_base, dims[rows], a[rows], b[rows], "gauss", n, loss_clip, batch_size)
        before = stats.part(redo)
        errors = _gauss_error(fine, before, half.part(redo) if smooth else None)
        refined = _with_errors(fine, *errors, eps, before.evaluations + n + 2, "gauss")
        stats, half = stats.with_part(redo, refined), half.with_part(redo, before)
    return stats


def _monte_carlo(model, x_base, dims, a, b, eps, n, replicates, loss_clip, batch_size, generator) -> PacketStats:
    """The paper's uniform Monte-Carlo; the error is the standard error over `replicates` batches."""
    stats, (t, w, g, dg, g_a, g_b) = _rule(model, x_base, dims, a, b, "mc", n, loss_clip, batch_size, generator)
    per = n // replicates
    reps = [
        moments(t[:, s : s + per], w[:, s : s + per] * replicates, g[:, s : s + per], dg[:, s : s + per], g_a, g_b, a, b)
        for s in range(0, n, per)
    ]
    return _with_errors(stats, _standard_error([r.sx for r in reps]), _standard_error([r.sp for r in reps]), eps,
                        torch.full(dims.shape, n + 2, dtype=torch.long), "mc")


def _piecewise(model, x_base, dims, a, b, eps, *, loss_clip, batch_size) -> PacketStats:
    """The exact linear pieces (`piecewise.stats`), lines walking together in groups set by the batch size
    (a group's memory grows with its pieces)."""
    batch = batch_size or default_batch(model, x_base)
    lines = max(1, batch // PIECEWISE_ROWS_PER_LINE)
    parts = []
    for i in range(0, max(dims.numel(), 1), lines):
        fine, half, shifted, slack = piecewise.stats(model, x_base, dims[i : i + lines], a[i : i + lines],
                                                     b[i : i + lines], loss_clip=loss_clip, batch_size=batch)
        (rule_sx, rule_sp), (place_sx, place_sp) = _differences(fine, half, 1.0), _differences(fine, shifted, 1.0)
        parts.append(_with_errors(fine, torch.maximum(rule_sx, place_sx), torch.maximum(rule_sp, place_sp), eps,
                                  fine.evaluations, "piecewise", slack=PIECE_ROUNDOFF * slack))
    return PacketStats(**{
        f.name: torch.cat([getattr(p, f.name) for p in parts]) if isinstance(getattr(parts[0], f.name), torch.Tensor)
        else getattr(parts[0], f.name)
        for f in dataclasses.fields(PacketStats)
    })


def _differences(fine: PacketStats, coarse: PacketStats, safety: float) -> tuple[torch.Tensor, torch.Tensor]:
    """safety × |fine - coarse| for sx and sp: the error estimate from a coarser rule."""
    return safety * (fine.sx - coarse.sx).abs(), safety * (fine.sp - coarse.sp).abs()


def _with_errors(stats: PacketStats, err_sx: torch.Tensor, err_sp: torch.Tensor, eps: float, evaluations: torch.Tensor,
                 estimator: str, slack: torch.Tensor | None = None) -> PacketStats:
    """`stats` with these errors, each raised to its round-off floor (`_roundoff`; `slack` (D,) raises the
    floor to that relative error), its evaluations and the estimator's name."""
    floor_sx, floor_sp = _roundoff(stats, eps)
    if slack is not None:
        slack = slack.to(stats.sx)[:, None]
        floor_sx, floor_sp = torch.maximum(floor_sx, slack * stats.sx.abs()), torch.maximum(floor_sp, slack * stats.sp.abs())
    return dataclasses.replace(stats, err_sx=torch.maximum(err_sx, floor_sx), err_sp=torch.maximum(err_sp, floor_sp),
                               evaluations=evaluations.cpu(), estimator=estimator)


def _roundoff(stats: PacketStats, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ROUNDOFF epsilons of the model's dtype, relative to sx and sp. (sp² is integrated in centred
    form, so its cancellation does not amplify this; tests/test_packets.py checks a nearly flat packet.)"""
    return ROUNDOFF * eps * stats.sx.abs(), ROUNDOFF * eps * stats.sp.abs()


def _standard_error(replicate_values: list[torch.Tensor]) -> torch.Tensor:
    """Standard error of the mean of R independent replicate estimates: std / sqrt(R)."""
    return torch.stack(replicate_values).std(0) / len(replicate_values) ** 0.5

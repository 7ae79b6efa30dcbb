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
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from raysweep import models, quadrature

ESTIMATORS = ("gauss", "mc", "piecewise")
PIECE_NODES = 8  # Gauss nodes per sub-piece of a linear piece (piecewise)
PIECE_SPREAD = 4.0  # sub-pieces keep the spread of logit changes within this (piecewise)
DEFAULT_REPLICATES = 8  # independent Monte-Carlo batches behind the standard errors
CPU_BATCH = 1024  # network inputs per forward-mode pass on the CPU (on the plateau: BENCHMARKS.md)
PIECEWISE_ROWS_PER_LINE = 16  # piecewise walks batch_size / this many lines at once (about 1.5 MiB each on mnist_conv3)


@dataclass(frozen=True)
class PacketStats:
    """Per-pair packet statistics, every tensor shaped (len(dims), num_classes), float64.

    ``se_sx``/``se_sp`` are standard errors for ``estimator="mc"`` and None otherwise.
    """

    sx: torch.Tensor
    sp: torch.Tensor
    mean_x: torch.Tensor
    mean_p: torch.Tensor
    beta: torch.Tensor
    boundary_term: torch.Tensor  # B = (b - <x>) psi(b)² - (a - <x>) psi(a)² (SPEC 1.2; not `B`: DuckDB folds it to `b`)
    bound: torch.Tensor  # |1 - B| / 2, the exact finite-interval bound on sx·sp
    se_sx: torch.Tensor | None = None
    se_sp: torch.Tensor | None = None
    evaluations: torch.Tensor | None = None  # (len(dims),) network evaluations per dimension (piecewise)

    @property
    def product(self) -> torch.Tensor:
        """sx·sp, the left side of the uncertainty relation."""
        return self.sx * self.sp


def line_losses(
    model: nn.Module,
    x_base: torch.Tensor,
    dims: torch.Tensor,
    t: torch.Tensor,
    *,
    loss_clip: float | None = None,
    batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss g and its slope g' = ∂l/∂x_i for every label, along coordinate lines.

    Row r of ``t`` moves coordinate ``dims[r]`` of ``x_base``; each node is one
    network input, and one forward-mode pass with tangent e_i gives the logits z
    and dz/dx_i, hence the loss of every label at once (SPEC 1.3):
    l_Y = log Σ_k exp(z_k) - z_Y and l_Y' = Σ_k softmax(z)_k dz_k - dz_Y.

    Args:
        model: maps (m, *x_base.shape) to logits (m, C); should be in eval mode.
        x_base: one input, any shape.
        dims: (D,) flat indices into x_base.
        t: (D, n) values of the moving coordinate.

    Returns:
        (g, dg), each (D, n, C), float64.
    """
    shape = x_base.shape
    flat = x_base.reshape(-1)
    rows = dims.to(flat.device).repeat_interleave(t.shape[1])  # (D*n,)
    values = t.reshape(-1).to(device=flat.device, dtype=flat.dtype)
    step = batch_size or default_batch(model, x_base)
    g, dg = [], []
    for start in range(0, rows.numel(), step):
        x, tangent = line_inputs(flat, rows[start : start + step], values[start : start + step])
        m = x.shape[0]
        with torch.no_grad():
            z, dz = torch.func.jvp(lambda inp: model(inp.view(m, *shape)), (x,), (tangent,))
        gl, dgl = loss_and_slope(z, dz, loss_clip=loss_clip)
        g.append(gl)
        dg.append(dgl)
    C = g[0].shape[-1]
    return torch.cat(g).view(*t.shape, C), torch.cat(dg).view(*t.shape, C)


def line_inputs(flat: torch.Tensor, dims: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row r: the flat base point with coordinate dims[r] set to values[r], and the tangent e_{dims[r]}.

    Returns (x, tangent), each (len(dims), flat.numel()), in flat's dtype and device.
    """
    dims = dims.to(flat.device)
    idx = torch.arange(dims.numel(), device=flat.device)
    x = flat.expand(dims.numel(), -1).clone()
    x[idx, dims] = values.to(device=flat.device, dtype=flat.dtype)
    tangent = torch.zeros_like(x)
    tangent[idx, dims] = 1
    return x, tangent


def loss_and_slope(
    z: torch.Tensor, dz: torch.Tensor, *, loss_clip: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of logits z (m, C) against every label, and its derivative along dz.

    Written relative to z_Y so that a confident label keeps its tiny loss: in
    float32, logsumexp(z) - z_Y rounds to 0 once the margin passes ~16, and
    then beta and psi are lost. With d_Yk = z_k - z_Y (k != Y):
        l_Y  = softplus(logsumexp_k d_Yk),   l_Y' = Σ_{k != Y} softmax(z)_k (dz_k - dz_Y).
    Clipping at C (paper supp. footnote 1) makes l = min(l, C), l' = 0 above C.

    Returns:
        (l, l'), each (m, C), float64.
    """
    z, dz = z.double(), dz.double()
    C = z.shape[-1]
    diff = z[:, None, :] - z[:, :, None]  # (m, Y, k): z_k - z_Y
    eye = torch.eye(C, dtype=torch.bool, device=z.device)
    loss = nn.functional.softplus(torch.logsumexp(diff.masked_fill(eye, float("-inf")), dim=-1))
    p = torch.softmax(z, dim=-1)[:, None, :]  # (m, 1, k)
    slope = (p * (dz[:, None, :] - dz[:, :, None])).masked_fill(eye, 0).sum(-1)
    if loss_clip is not None:
        slope = torch.where(loss < loss_clip, slope, torch.zeros_like(slope))
        loss = loss.clamp(max=loss_clip)
    return loss, slope


def moments(
    t: torch.Tensor,
    w: torch.Tensor,
    g: torch.Tensor,
    dg: torch.Tensor,
    g_a: torch.Tensor,
    g_b: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
) -> PacketStats:
    """Packet statistics from samples of g and g' at nodes t with weights w.

    Args:
        t, w: (D, n) nodes and weights of one rule per dimension.
        g, dg: (D, n, C) loss and slope at the nodes.
        g_a, g_b: (D, C) loss at the interval ends.
        a, b: (D,) interval ends.

    sp is computed in centred form, sp² = ∫ (psi' - <p> psi)² dt, which equals
    ∫ psi'² - <p>² because the rule integrates psi² to exactly 1 (beta uses the
    same nodes); unlike the difference it cannot cancel to a negative or zero.
    """
    t, w = t[..., None], w[..., None]  # (D, n, 1)
    beta = (w * g**2).sum(1)  # (D, C)
    norm = beta.sqrt()[:, None, :]
    psi, dpsi = g / norm, dg / norm
    mean_x = (w * t * psi**2).sum(1)
    sx = (w * (t - mean_x[:, None, :]) ** 2 * psi**2).sum(1).sqrt()
    mean_p = (w * psi * dpsi).sum(1)
    sp = (w * (dpsi - mean_p[:, None, :] * psi) ** 2).sum(1).sqrt()
    a, b = a[:, None], b[:, None]
    B = ((b - mean_x) * g_b**2 - (a - mean_x) * g_a**2) / beta
    return PacketStats(sx=sx, sp=sp, mean_x=mean_x, mean_p=mean_p, beta=beta, boundary_term=B, bound=(1 - B).abs() / 2)


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
    if estimator == "mc" and (replicates < 2 or nodes % replicates):
        raise ValueError(f"mc needs nodes divisible by replicates >= 2, got nodes={nodes}, replicates={replicates}")
    dims = torch.as_tensor(dims, dtype=torch.long).reshape(-1)
    a = torch.as_tensor(a, dtype=torch.float64, device=x_base.device).expand(dims.shape).clone()
    b = torch.as_tensor(b, dtype=torch.float64, device=x_base.device).expand(dims.shape).clone()
    with models.eval_mode(model), models.exact_float32():
        if estimator == "piecewise":
            # Lines walk together; a group's memory grows with its pieces, so groups are set by the batch size.
            batch = batch_size or default_batch(model, x_base)
            lines = max(1, batch // PIECEWISE_ROWS_PER_LINE)
            parts = [
                _piecewise_stats(
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


def _piecewise_stats(
    model: nn.Module, x_base: torch.Tensor, dims: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
    *, loss_clip: float | None, batch_size: int,
) -> PacketStats:
    """Packets from the exact linear pieces of a ReLU/MaxPool net (see `piecewise`).

    Each piece's logits are exactly affine in t, so g and g' are closed-form there;
    pieces are cut into sub-pieces over which no logit difference changes by more
    than PIECE_SPREAD, each integrated with PIECE_NODES Gauss-Legendre nodes. The
    losses at those nodes are computed `batch_size` rows at a time, so that their
    (batch_size, C, C) temporaries, not the number of pieces, set the peak memory.
    """
    from raysweep import piecewise

    pieces = piecewise.walk(model, x_base, dims, a, b)
    D, P, C = pieces.z.shape
    length = (pieces.end - pieces.start).clamp(min=0)  # (D, P); padding has length 0
    spread = (pieces.v.amax(-1) - pieces.v.amin(-1)).abs()
    # Sub-pieces per piece; the zero-length padding gets none.
    cuts = torch.where(length > 0, (length * spread / PIECE_SPREAD).ceil().clamp(1, 64), 0).long()
    # One row per sub-piece: which (line, piece) owns it, its index within the piece, its interval.
    cuts = cuts.reshape(-1)
    owner = torch.arange(D * P, device=a.device).repeat_interleave(cuts)
    k = _rank_within(owner, cuts)
    h = (length.reshape(-1) / cuts)[owner]
    lo = pieces.start.reshape(-1)[owner] + k * h
    t, w = quadrature.rule("gauss", PIECE_NODES, lo, lo + h)  # (S, Q)
    v = pieces.v.reshape(D * P, C)[owner][:, None, :]  # (S, 1, C)
    z = pieces.z.reshape(D * P, C)[owner][:, None, :] + (t - pieces.at.reshape(-1)[owner][:, None])[..., None] * v
    z, v = z.reshape(-1, C), v.expand_as(z).reshape(-1, C)
    parts = [loss_and_slope(zc, vc, loss_clip=loss_clip) for zc, vc in zip(z.split(batch_size), v.split(batch_size))]
    g, dg = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    # Back to (D, nodes) per line, padding with zero weights.
    line = owner // P
    per_line = torch.bincount(line, minlength=D)
    slot = _rank_within(line, per_line)
    cols = (slot[:, None] * PIECE_NODES + torch.arange(PIECE_NODES, device=a.device)).reshape(-1)
    rows = line.repeat_interleave(PIECE_NODES)
    n = max(int(per_line.max()), 1) * PIECE_NODES  # a line without pieces (a == b) keeps zero weights: NaN rows
    T = torch.zeros(D, n, dtype=torch.float64, device=a.device)
    W = torch.zeros_like(T)
    G = torch.zeros(D, n, C, dtype=torch.float64, device=a.device)
    DG = torch.zeros_like(G)
    T[rows, cols], W[rows, cols] = t.reshape(-1), w.reshape(-1)
    G[rows, cols], DG[rows, cols] = g.view(-1, C), dg.view(-1, C)
    last = (pieces.count - 1).clamp(min=0)
    ends = torch.arange(D, device=a.device)
    z_a = pieces.z[:, 0] + (a - pieces.at[:, 0])[:, None] * pieces.v[:, 0]
    z_b = pieces.z[ends, last] + (b - pieces.at[ends, last])[:, None] * pieces.v[ends, last]
    g_a, _ = loss_and_slope(z_a, pieces.v[:, 0], loss_clip=loss_clip)
    g_b, _ = loss_and_slope(z_b, pieces.v[ends, last], loss_clip=loss_clip)
    stats = moments(T, W, G, DG, g_a, g_b, a, b)
    return dataclasses.replace(stats, evaluations=pieces.evaluations.cpu())


def _rank_within(group: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """For rows sorted by group with `sizes[j]` rows in group j: each row's index inside its group."""
    starts = sizes.cumsum(0) - sizes
    return torch.arange(group.numel(), device=group.device) - starts[group]


def _standard_error(replicate_values: list[torch.Tensor]) -> torch.Tensor:
    """Standard error of the mean of R independent replicate estimates: std / sqrt(R)."""
    return torch.stack(replicate_values).std(0) / len(replicate_values) ** 0.5


def default_batch(model: nn.Module, x_base: torch.Tensor, probe: int = 64) -> int:
    """Rows per pass. On a GPU: half the free memory over the measured cost of one row."""
    device = x_base.device
    if device.type != "cuda":
        return CPU_BATCH
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    x = x_base.expand(probe, *x_base.shape).clone()
    with torch.no_grad():
        torch.func.jvp(model, (x,), (torch.ones_like(x),))
    per_row = max(1, (torch.cuda.max_memory_allocated(device) - before) // probe)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(probe, min(1 << 17, free // 2 // per_row)))

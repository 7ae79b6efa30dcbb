"""Exact linear regions of a ReLU/MaxPool net along coordinate lines (like ExactLine, Sotoudeh
and Thakur, NeurIPS 2019), for the `piecewise` packet estimator.

Along x_i = t, a network built of affine maps (Conv, Linear, eval-mode BatchNorm,
residual adds), ReLU and max-pooling is affine in t between breakpoints where some
ReLU input or some max-pool window's winner changes. Inside one such piece the
logits are exactly z(t) = z(t0) + (t - t0) v, so one forward-mode evaluation per
piece gives g and g' in closed form over the whole piece: the integrals then need
no further network evaluations, and Gauss rules per piece converge exponentially.

The walk starts at a, evaluates just inside the current piece, and reads from
every ReLU and max-pool input (value p, tangent dp, via forward-mode hooks) the
nearest t where one of them crosses: that is where the piece ends. Continuity of
z across every breakpoint is checked, so a nonlinearity the walk cannot see (tanh,
a functional relu) is reported instead of silently mis-integrated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

from raysweep.core import quadrature
from raysweep.core.lines import PacketStats, line_inputs, loss_and_slope, moments

PIECEWISE_MODULES = (nn.ReLU, nn.MaxPool2d)
AFFINE_MODULES = (
    nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten, nn.Unflatten,
    nn.Identity, nn.Dropout, nn.Sequential,
)
STEP_IN = 1e-6  # evaluate this fraction of (b - a) inside a piece, well above float32's resolution
MAX_PIECES = 20_000  # per dimension; more means the net is not what the walk assumes
PIECE_NODES = 8  # Gauss nodes per sub-piece of a linear piece
PIECE_SPREAD = 4.0  # sub-pieces keep the spread of logit changes within this
SAME_SLOPE = 1e-6  # relative: a "new" piece whose slope matches the last one was evaluated in the old piece
PLACE_SAFETY = 8.0  # `stats` moves each breakpoint by this times its `place` for the round-off's share of the error
MAX_STEP_IN = 1e-5  # stop stepping further in here (a slope that stays equal is a breakpoint the logits ignore); further would jump past breakpoints where they are dense (resnet9)


class Unsupported(ValueError):
    """The walk cannot integrate this net or line exactly; the message names the estimator to use instead."""


class TooManyPieces(Unsupported):
    """A line has more linear pieces than the walk was allowed to visit."""


@dataclass(frozen=True)
class Pieces:
    """Linear pieces of D lines, padded to P pieces; padding has start == end."""

    start: torch.Tensor  # (D, P) float64
    end: torch.Tensor  # (D, P)
    at: torch.Tensor  # (D, P) where the affine form was evaluated
    z: torch.Tensor  # (D, P, C) logits at `at`
    v: torch.Tensor  # (D, P, C) dz/dt on the piece
    count: torch.Tensor  # (D,) pieces per line
    z_end: torch.Tensor  # (D, C) logits evaluated at b, to check the last piece's affine form
    evaluations: torch.Tensor  # (D,) network evaluations per line: pieces, retries, and the one at b
    gap: torch.Tensor | None = None  # (D,) the largest relative jump of the logits at a breakpoint (`walk` fills it)
    place: torch.Tensor | None = None  # (D, P) how far round-off may have put each piece's end (0 at b; `_ahead`)

    def logits(self, t: torch.Tensor) -> torch.Tensor:
        """z at t shaped (D, P, Q), for t inside the corresponding pieces: (D, P, Q, C)."""
        return self.z[:, :, None, :] + (t - self.at[:, :, None])[..., None] * self.v[:, :, None, :]


def check_supported(model: nn.Module) -> None:
    """Raise Unsupported naming a leaf module the walk cannot treat as affine or piecewise affine.

    Modules of other kinds may declare `piecewise_affine = True` (raysweep's Normalize does).
    """
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue  # containers: their own arithmetic is checked by continuity after the walk
        if isinstance(module, nn.MaxPool2d) and (
            _pair(module.padding) != (0, 0) or _pair(module.dilation) != (1, 1) or module.ceil_mode
        ):
            raise Unsupported(
                f"estimator 'piecewise' reads max-pool windows without padding, dilation or ceil_mode, and module "
                f"{name!r} ({module}) has them: use estimator='gauss'"
            )
        if isinstance(module, PIECEWISE_MODULES + AFFINE_MODULES) or getattr(module, "piecewise_affine", False):
            continue
        raise Unsupported(
            f"estimator 'piecewise' needs a ReLU/MaxPool net; module {name!r} ({type(module).__name__}) "
            "is not known to be piecewise affine: use estimator='gauss'"
        )


def walk(
    model: nn.Module, x_base: torch.Tensor, dims: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
    *, max_pieces: int = MAX_PIECES,
) -> Pieces:
    """The linear pieces of every line x_base + (t - x_base[d]) e_d, t in [a_d, b_d]; model in eval mode.

    A breakpoint predicted from float32 activations can land a hair early, so the point
    meant to lie just past it may still lie in the old piece. A new piece must therefore
    show a new slope; if it does not, the walk steps ten times further in and tries again.
    """
    check_supported(model)
    dims = dims.to(a.device)
    D = dims.numel()
    flat = x_base.reshape(-1)
    t = a.clone()
    width = b - a
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("start", "end", "at", "z", "v", "valid", "place")}
    active = width > 0
    count = torch.zeros(D, dtype=torch.long, device=a.device)
    evaluations = torch.ones(D, dtype=torch.long, device=a.device)  # the check at b
    step_in = torch.full_like(t, STEP_IN)  # per line: how far inside the piece to evaluate, in units of width
    last_v: torch.Tensor | None = None  # (D, C) slope of each line's latest piece
    recorder = _CrossingRecorder()
    handles = [m.register_forward_pre_hook(recorder.hook) for m in model.modules() if isinstance(m, PIECEWISE_MODULES)]
    try:
        while bool(active.any()):
            if int(count.max()) >= max_pieces:
                raise TooManyPieces(f"more than {max_pieces} linear pieces on one line: use estimator='gauss'")
            # Evaluate just inside the piece, at a point the input's dtype represents exactly.
            at = torch.minimum(t + step_in * width, b).to(flat.dtype).double()
            at = torch.where(at > t, at, t + step_in * width)
            rows = active.nonzero().squeeze(1)
            z, v, step, place = _evaluate(model, flat, x_base.shape, dims[rows], at[rows], recorder)
            if last_v is None:
                last_v = torch.zeros(D, z.shape[1], dtype=torch.float64, device=a.device)
            stale = (count[rows] > 0) & (step_in[rows] < MAX_STEP_IN) & (
                (v - last_v[rows]).abs().amax(-1) <= SAME_SLOPE * (1 + last_v[rows].abs().amax(-1))
            )
            fresh = rows[~stale]
            step_in[rows[stale]] *= 10
            step_in[fresh] = STEP_IN
            valid = torch.zeros(D, dtype=torch.bool, device=a.device)
            valid[fresh] = True
            end = t.clone()
            end[fresh] = torch.minimum(at[fresh] + step[~stale], b[fresh])
            uncertain = torch.zeros_like(t)
            uncertain[fresh] = torch.where(end[fresh] < b[fresh], place[~stale].double(), 0.0)
            full_z = torch.zeros(D, z.shape[1], dtype=torch.float64, device=a.device)
            full_v = torch.zeros_like(full_z)
            full_z[rows], full_v[rows] = z, v
            for key, value in (("start", t), ("end", end), ("at", at), ("z", full_z), ("v", full_v), ("valid", valid),
                               ("place", uncertain)):
                out[key].append(value.clone())
            last_v[fresh] = v[~stale]
            evaluations[rows] += 1
            count[fresh] += 1
            t = end
            active = active & (t < b)
        z_end = _evaluate(model, flat, x_base.shape, dims, b, recorder)[0]
    finally:
        for handle in handles:
            handle.remove()
    # Each line's valid pieces first, in order; the rest is zero-length padding.
    valid = torch.stack(out["valid"], 1)  # (D, iterations)
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices
    gather = lambda x: x.gather(1, order if x.dim() == 2 else order[..., None].expand_as(x))  # noqa: E731
    start, end = gather(torch.stack(out["start"], 1)), gather(torch.stack(out["end"], 1))
    sorted_valid = gather(valid)
    end = torch.where(sorted_valid, end, start)
    pieces = Pieces(
        start, end, gather(torch.stack(out["at"], 1)),
        gather(torch.stack(out["z"], 1)), gather(torch.stack(out["v"], 1)), count, z_end, evaluations,
        place=torch.where(sorted_valid, gather(torch.stack(out["place"], 1)), 0.0),
    )
    return replace(pieces, gap=_check_continuity(pieces))


@torch.no_grad()
def pattern_changes(
    model: nn.Module, x_base: torch.Tensor, dims: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, points: int,
) -> torch.Tensor:
    """Per line, in how many of the gaps between `points` evenly spaced points on [a_d, b_d] some ReLU
    input changes sign or some max-pool window changes winner: a lower bound on the line's linear
    pieces minus one (several breakpoints may share a gap), from one forward pass of
    len(dims) * points rows, without the walk's one sequential step per piece. Model in eval mode.
    """
    check_supported(model)
    D = dims.numel()
    t = a[:, None] + (b - a)[:, None] * torch.linspace(0, 1, points, dtype=torch.float64, device=a.device)
    x, _ = line_inputs(x_base.reshape(-1), dims.to(a.device).repeat_interleave(points), t.reshape(-1))
    changed = torch.zeros(D, points - 1, dtype=torch.bool, device=x.device)

    def hook(module: nn.Module, args: tuple) -> None:
        p = args[0]
        state = _windows(module, p).argmax(-1) if isinstance(module, nn.MaxPool2d) else p > 0
        state = state.reshape(D, points, -1)
        changed.logical_or_((state[:, 1:] != state[:, :-1]).any(-1))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, PIECEWISE_MODULES)]
    try:
        model(x.view(D * points, *x_base.shape))
    finally:
        for handle in handles:
            handle.remove()
    return changed.sum(1)


class _CrossingRecorder:
    """Forward pre-hook: per batch row, the smallest positive t-distance at which any ReLU input or
    max-pool window winner changes, from the primal p and tangent dp of the module's input, and how
    far float round-off may have put it (`_ahead`)."""

    def __init__(self) -> None:
        self.nearest: torch.Tensor | None = None
        self.place: torch.Tensor | None = None

    def hook(self, module: nn.Module, args: tuple) -> None:
        p, dp = fwAD.unpack_dual(args[0])
        if dp is None:
            return
        p, dp = p.detach(), dp.detach()
        if isinstance(module, nn.MaxPool2d):
            distance, place = _maxpool_crossings(module, p, dp)
        else:
            distance, place = _ahead(-p.flatten(1) / dp.flatten(1), dp.flatten(1), p.flatten(1).abs().amax(1))
        if self.nearest is None:
            self.nearest, self.place = distance, place
        else:
            self.place = torch.where(distance < self.nearest, place, self.place)
            self.nearest = torch.minimum(self.nearest, distance)


def _maxpool_crossings(module: nn.MaxPool2d, p: torch.Tensor, dp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance until some element of a window overtakes the window's current maximum, and its round-off."""
    wp, wd = _windows(module, p), _windows(module, dp)
    winner = wp.argmax(-1, keepdim=True)
    gap = wp - wp.gather(-1, winner)  # <= 0
    closing = wd - wd.gather(-1, winner)  # > 0 where the gap shrinks
    rows = p.shape[0]
    return _ahead((-gap / closing).reshape(rows, -1), closing.reshape(rows, -1), wp.reshape(rows, -1).abs().amax(1))


def _ahead(distance: torch.Tensor, rate: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the smallest positive distance, and how far float round-off may have put it.

    A crossing lies ahead only where the distance -value/slope is positive: value and slope of
    opposite signs; 0/0 (NaN), behind, or at zero is none. In the activations' own dtype: its one
    rounding of the division is far below STEP_IN, the margin by which the walk steps past a
    predicted breakpoint. The value itself is a sum whose round-off is about eps times the
    activations' scale (the row's largest |value|: `scale`), so the place is uncertain by that over
    the `rate` at which the crossing closes (measured against float64 places on mnist_conv3 and
    cifar_conv4: the true error was 0.14-0.19 of this for the median breakpoint, 1.2 at most).
    """
    nearest, index = torch.where(distance > 0, distance, math.inf).min(1)
    place = torch.finfo(rate.dtype).eps * scale / rate.gather(1, index[:, None]).squeeze(1).abs()
    return nearest.double(), torch.where(torch.isfinite(nearest), place.double(), 0.0)


def _windows(module: nn.MaxPool2d, x: torch.Tensor) -> torch.Tensor:
    """The pooling windows of x (N, C, H, W) as (N, C * windows, kernel elements).

    Tensor.unfold takes strided views, so only the final reshape copies (F.unfold's im2col
    over N * C one-channel images was 30x slower on resnet9's 512-channel head).
    """
    (kh, kw), (sh, sw) = (_pair(module.kernel_size), _pair(module.stride or module.kernel_size))
    return x.unfold(2, kh, sh).unfold(3, kw, sw).reshape(x.shape[0], -1, kh * kw)


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _evaluate(model, flat, shape, dims, at, recorder):
    """Logits and their t-slope at `at` (rounded to the input's dtype), the distance to the next breakpoint
    and how far round-off may have put that."""
    m = dims.numel()
    x, tangent = line_inputs(flat, dims, at)
    recorder.nearest = recorder.place = None
    with torch.no_grad(), fwAD.dual_level():
        out = model(fwAD.make_dual(x, tangent).view(m, *shape))
        z, v = fwAD.unpack_dual(out)
    if recorder.nearest is None:
        step, place = torch.full((m,), math.inf, device=flat.device), torch.zeros(m, device=flat.device)
    else:
        step, place = recorder.nearest, recorder.place
    return z.double(), v.double(), step.to(at.device), place.to(at.device)


def _check_continuity(pieces: Pieces, rtol: float = 1e-3) -> torch.Tensor:
    """z is continuous in t: each piece's affine form must meet the next one's at their shared end,
    and the last one must predict the logits evaluated at b. Returns each line's largest relative
    jump: the float round-off of its affine forms."""
    scale = 1 + pieces.z.abs().amax((1, 2))  # (D,)
    D = pieces.count.numel()
    last = (pieces.count - 1).clamp(min=0)
    rows = torch.arange(D, device=last.device)
    predicted = pieces.z[rows, last] + (pieces.end[rows, last] - pieces.at[rows, last])[:, None] * pieces.v[rows, last]
    gap = torch.where(pieces.count > 0, (predicted - pieces.z_end).abs().amax(-1) / scale, 0)
    if pieces.z.shape[1] > 1:
        real = pieces.end[:, 1:] > pieces.start[:, 1:]  # a following piece exists
        left = pieces.z[:, :-1] + (pieces.end[:, :-1] - pieces.at[:, :-1])[..., None] * pieces.v[:, :-1]
        right = pieces.z[:, 1:] + (pieces.start[:, 1:] - pieces.at[:, 1:])[..., None] * pieces.v[:, 1:]
        gap = torch.maximum(gap, torch.where(real, (left - right).abs().amax(-1) / scale[:, None], 0).amax(1))
    if gap.numel() and float(gap.max()) > rtol:
        raise Unsupported(
            f"the logits jump by {float(gap.max()):.2g} (relative) at a breakpoint: the net has a nonlinearity "
            "the piecewise walk cannot see (e.g. a functional relu or tanh); use estimator='gauss'"
        )
    return gap


def stats(
    model: nn.Module, x_base: torch.Tensor, dims: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
    *, loss_clip: float | None, batch_size: int,
) -> tuple[PacketStats, PacketStats, PacketStats, torch.Tensor]:
    """Packets from the exact linear pieces of a ReLU/MaxPool net (found by `walk`): with PIECE_NODES
    Gauss nodes per sub-piece; with half as many (the quadrature's error; no more network evaluations);
    with every breakpoint moved on by PLACE_SAFETY times how far round-off may have put it (`moved`);
    and each line's largest relative logit jump at a breakpoint times its pieces (a slope is a logit
    difference over a piece's width; pieces are about (b - a)/count wide, so the jump's share of a slope
    grows with the count: on resnet9 in float32, 657 pieces on 0.1 of pixel, jump 1e-6, sp off by 2e-3).
    """
    pieces = walk(model, x_base, dims, a, b)
    fine, half = _integrate(pieces, a, b, (PIECE_NODES, PIECE_NODES // 2), loss_clip, batch_size)
    (shifted,) = _integrate(moved(pieces, PLACE_SAFETY), a, b, (PIECE_NODES,), loss_clip, batch_size)
    return fine, half, shifted, pieces.gap * pieces.count


def moved(pieces: Pieces, factor: float) -> Pieces:
    """The pieces with each breakpoint moved on by how far from it the truth may lie: `factor` times its
    `place`, or where the walk had to retry, the whole way to where it first saw the next piece's slope
    (the breakpoint lies between its last stale point and that one). No further than the next breakpoint;
    each piece's affine form extends as it is."""
    if pieces.z.shape[1] < 2:
        return pieces
    follows = pieces.end[:, 1:] > pieces.start[:, 1:]
    lead = pieces.at[:, 1:] - pieces.start[:, 1:]
    there = torch.minimum(pieces.end[:, :-1] + torch.maximum(factor * pieces.place[:, :-1], lead), pieces.end[:, 1:])
    start, end = pieces.start.clone(), pieces.end.clone()
    end[:, :-1] = torch.where(follows, there, end[:, :-1])
    start[:, 1:] = torch.where(follows, there, start[:, 1:])
    return replace(pieces, start=start, end=end)


def _integrate(pieces: Pieces, a: torch.Tensor, b: torch.Tensor, nodes: tuple[int, ...], loss_clip: float | None,
               batch_size: int) -> list[PacketStats]:
    """The packets of these affine pieces, once for each q in `nodes` Gauss-Legendre nodes per sub-piece
    (the sub-pieces and the losses at a and b are laid out once for all of them).

    Each piece's logits are exactly affine in t, so g and g' are closed-form there;
    pieces are cut into sub-pieces over which no logit difference changes by more
    than PIECE_SPREAD, each integrated with Gauss-Legendre nodes. The losses at those
    nodes are computed `batch_size` rows at a time, so that their (batch_size, C, C)
    temporaries, not the number of pieces, set the peak memory.
    """
    D, P, C = pieces.z.shape
    length = (pieces.end - pieces.start).clamp(min=0)  # (D, P); padding has length 0
    spread = (pieces.v.amax(-1) - pieces.v.amin(-1)).abs()
    # Sub-pieces per piece; the zero-length padding gets none.
    cuts = torch.where(length > 0, (length * spread / PIECE_SPREAD).ceil().clamp(1, 64), 0).long().reshape(-1)
    # One row per sub-piece: which (line, piece) owns it, its index within the piece, its interval.
    owner = torch.arange(D * P, device=a.device).repeat_interleave(cuts)
    k = _rank_within(owner, cuts)
    h = (length.reshape(-1) / cuts)[owner]
    lo = pieces.start.reshape(-1)[owner] + k * h
    last = (pieces.count - 1).clamp(min=0)
    ends = torch.arange(D, device=a.device)
    z_a = pieces.z[:, 0] + (a - pieces.at[:, 0])[:, None] * pieces.v[:, 0]
    z_b = pieces.z[ends, last] + (b - pieces.at[ends, last])[:, None] * pieces.v[ends, last]
    g_a, _ = loss_and_slope(z_a, pieces.v[:, 0], loss_clip=loss_clip)
    g_b, _ = loss_and_slope(z_b, pieces.v[ends, last], loss_clip=loss_clip)
    z_owner, v_owner = pieces.z.reshape(D * P, C)[owner][:, None, :], pieces.v.reshape(D * P, C)[owner][:, None, :]
    at_owner = pieces.at.reshape(-1)[owner][:, None]  # (S, 1, C), (S, 1, C), (S, 1)
    # Back to (D, nodes) per line, padding with zero weights: each sub-piece's line and slot in it.
    line = owner // P
    per_line = torch.bincount(line, minlength=D)
    slot = _rank_within(line, per_line)

    def integrate(q: int) -> PacketStats:
        t, w = quadrature.rule("gauss", q, lo, lo + h)  # (S, q)
        z = z_owner + (t - at_owner)[..., None] * v_owner
        z, v = z.reshape(-1, C), v_owner.expand_as(z).reshape(-1, C)
        parts = [loss_and_slope(zc, vc, loss_clip=loss_clip) for zc, vc in zip(z.split(batch_size), v.split(batch_size))]
        g, dg = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        cols = (slot[:, None] * q + torch.arange(q, device=a.device)).reshape(-1)
        rows = line.repeat_interleave(q)
        n = max(int(per_line.max()) if per_line.numel() else 0, 1) * q  # a line without pieces (a == b): NaN rows
        T = torch.zeros(D, n, dtype=torch.float64, device=a.device)
        W = torch.zeros_like(T)
        G = torch.zeros(D, n, C, dtype=torch.float64, device=a.device)
        DG = torch.zeros_like(G)
        T[rows, cols], W[rows, cols] = t.reshape(-1), w.reshape(-1)
        G[rows, cols], DG[rows, cols] = g.view(-1, C), dg.view(-1, C)
        return replace(moments(T, W, G, DG, g_a, g_b, a, b), evaluations=pieces.evaluations.cpu())

    return [integrate(q) for q in nodes]


def _rank_within(group: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """For rows sorted by group with `sizes[j]` rows in group j: each row's index inside its group."""
    starts = sizes.cumsum(0) - sizes
    return torch.arange(group.numel(), device=group.device) - starts[group]

"""One coordinate line through the base point: its inputs, the loss and slope along it, the packet moments.

Along x_i = t (every other coordinate at the base point) a network gives logits z(t)
and, by forward-mode AD, dz/dt; from them the loss g and slope g' of every label
(SPEC 1.3), and from samples of g, g' at the nodes of a rule the packet's moments
(paper Eq. 7, 12, 22; SPEC 1.2). Every estimator (`packets`, `piecewise`) ends here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

CPU_BATCH = 1024  # network inputs per forward-mode pass on the CPU (on the plateau: BENCHMARKS.md)
FLOOR = 1e-3  # spreads below this fraction of a flat packet's scale count as that scale in relative errors


@dataclass(frozen=True)
class PacketStats:
    """Per-pair packet statistics, every tensor shaped (len(dims), num_classes), float64.

    ``err_sx``, ``err_sp`` estimate each value's own error (SPEC 1.3): Monte-Carlo's standard
    error; for gauss the difference to the rule of half the nodes; for piecewise its
    sub-piece quadrature and float round-off (see `core.packets`). ``evaluations`` counts
    the network evaluations of each dimension, ``estimator`` names what computed them.
    """

    sx: torch.Tensor
    sp: torch.Tensor
    mean_x: torch.Tensor
    mean_p: torch.Tensor
    beta: torch.Tensor
    boundary_term: torch.Tensor  # B = (b - <x>) psi(b)² - (a - <x>) psi(a)² (SPEC 1.2; not `B`: DuckDB folds it to `b`)
    bound: torch.Tensor  # |1 - B| / 2, the exact finite-interval bound on sx·sp
    err_sx: torch.Tensor | None = None
    err_sp: torch.Tensor | None = None
    evaluations: torch.Tensor | None = None  # (len(dims),) network evaluations per dimension
    estimator: str = ""

    @property
    def product(self) -> torch.Tensor:
        """sx·sp, the left side of the uncertainty relation."""
        return self.sx * self.sp

    def misses(self, tol: float, width: torch.Tensor) -> torch.Tensor:
        """(D, C) True where the estimated relative error of sx or sp exceeds `tol`.

        Relative to max(value, FLOOR × its scale on an interval of `width` (D,)): the spreads
        of a nearly flat packet go to 0 (sp) and have no relative error to speak of.
        """
        w = width.to(self.sx)[:, None]
        return (self.err_sx > tol * torch.clamp(self.sx, min=FLOOR * w)) | (
            self.err_sp > tol * torch.clamp(self.sp, min=FLOOR / w)
        ) | ~torch.isfinite(self.err_sx * self.err_sp)

    def part(self, rows: torch.Tensor) -> PacketStats:
        """The statistics of some dimensions (a bool mask or indices over the first axis)."""
        return PacketStats(**{
            f.name: (getattr(self, f.name)[rows] if isinstance(getattr(self, f.name), torch.Tensor) else getattr(self, f.name))
            for f in fields(PacketStats)
        })

    def with_part(self, rows: torch.Tensor, other: PacketStats) -> PacketStats:
        """These statistics with the dimensions `rows` (a bool mask) taken from `other`."""
        out = {}
        for f in fields(PacketStats):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, torch.Tensor):
                mine = mine.clone()
                mine[rows.to(mine.device)] = theirs.to(mine)
            out[f.name] = mine
        return PacketStats(**out)


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

"""L-inf attacks (PGD, FGSM) and clean / robust accuracy.

PGD follows Madry et al., "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018; FGSM is Goodfellow et al., "Explaining and Harnessing
Adversarial Examples", ICLR 2015, i.e. PGD with one step of size eps and no
random start. Budgets are in the units of the model's input: pixels in [0, 1]
for the built-in models (they normalise inside), feature units for attacks on a
classifier head (see `threat.Attack.scaled`).

Settings of the paper: CIFAR-10 ``pgd:eps=8/255,alpha=2/255,steps=4`` (the
torchattacks PGD example), MNIST Fig. 1 ``pgd:eps=0.1,alpha=0.025,steps=4``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raysweep.core.models import eval_mode
from raysweep.core.threat import Attack
from raysweep.errors import UserError

Bound = float | Tensor


def _project(x_adv: Tensor, x: Tensor, eps: float, lo: Tensor, hi: Tensor) -> Tensor:
    """Clip onto the eps-ball around x, then onto the box [lo, hi].

    For L-inf both sets are coordinate-wise intervals, so when x lies in the box
    this is the exact projection onto their intersection; the box goes last so the
    result is a valid input even when x itself is not.
    """
    return torch.clamp(torch.clamp(x_adv, x - eps, x + eps), lo, hi)


def _uniform_noise(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    """U[-eps, eps] noise shaped like x, drawn on the generator's device."""
    device = generator.device if generator is not None else x.device
    noise = torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype)
    return ((2 * noise - 1) * eps).to(x.device)


def _input_gradient(loss: Callable[[Tensor], Tensor], x_adv: Tensor) -> Tensor:
    """d loss(x_adv) / d x_adv, leaving every parameter's .grad untouched."""
    x_adv = x_adv.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(x_adv), x_adv)
    return grad


def _ascend(model: nn.Module, loss: Callable[[Tensor], Tensor], x: Tensor, start: Tensor, *, eps: float,
            alpha: float, steps: int, lo: Tensor, hi: Tensor) -> Tensor:
    """`steps` times x_{t+1} = P(x_t + alpha sign(grad loss(x_t))) from `start`, in eval mode."""
    x_adv = start
    with eval_mode(model):
        for _ in range(steps):
            x_adv = _project(x_adv + alpha * _input_gradient(loss, x_adv).sign(), x, eps, lo, hi)
    return x_adv.detach()


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    random_start: bool = True,
    lo: Bound = 0.0,
    hi: Bound = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """L-inf projected gradient descent on the cross-entropy (Madry et al. 2018).

    ``x_0 = P(x + U[-eps, eps])`` if ``random_start`` else ``x``, then ``steps`` times
    ``x_{t+1} = P(x_t + alpha * sign(grad_x CE(model(x_t), y)))``, where ``P`` clips
    onto ``[x - eps, x + eps]`` and then onto the box ``[lo, hi]``.

    Args:
        model: maps a batch ``(n, *shape)`` to logits ``(n, classes)``; it runs in
            eval mode and every module's ``training`` flag is restored afterwards.
        x: clean inputs ``(n, *shape)``, inside ``[lo, hi]``.
        y: integer labels ``(n,)``.
        eps: L-inf budget, >= 0, in input units.
        alpha: step size in input units.
        steps: number of gradient steps, >= 0.
        random_start: start from a uniform point of the ball (default True).
        lo, hi: box bounds, floats or tensors shaped like one input ``shape``
            (broadcast over the batch); defaults 0.0 and 1.0 (pixels).
        generator: source of the random start, for reproducibility.

    Returns:
        Detached adversarial inputs ``(n, *shape)``, within eps of x and in the box.
    """
    if eps < 0 or steps < 0:
        raise UserError(f"pgd needs eps >= 0 and steps >= 0, got eps={eps}, steps={steps}")
    x = x.detach()
    lo_t = torch.as_tensor(lo, dtype=x.dtype, device=x.device)
    hi_t = torch.as_tensor(hi, dtype=x.dtype, device=x.device)
    start = _project(x + _uniform_noise(x, eps, generator), x, eps, lo_t, hi_t) if random_start else x
    return _ascend(model, lambda z: F.cross_entropy(model(z), y), x, start, eps=eps, alpha=alpha, steps=steps,
                   lo=lo_t, hi=hi_t)


TRADES_START = 1e-3  # s.d. of the Gaussian start of TRADES' inner maximisation (Zhang et al.'s code)


def trades_examples(
    model: nn.Module, x: Tensor, *, eps: float, alpha: float, steps: int, lo: Bound = 0.0, hi: Bound = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """TRADES' adversarial inputs (Zhang et al. 2019): from x + N(0, 1e-3²), `steps` signed steps of
    size alpha up KL(f(x) ‖ f(x')) with f(x)'s probabilities held fixed, each projected onto the
    eps-ball and the box; eval mode, flags restored. No label is needed."""
    x = x.detach()
    lo_t = torch.as_tensor(lo, dtype=x.dtype, device=x.device)
    hi_t = torch.as_tensor(hi, dtype=x.dtype, device=x.device)
    with eval_mode(model), torch.no_grad():
        clean = F.softmax(model(x), dim=1)
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
    start = _project(x + TRADES_START * noise, x, eps, lo_t, hi_t)
    kl = lambda z: F.kl_div(F.log_softmax(model(z), dim=1), clean, reduction="sum")  # noqa: E731
    return _ascend(model, kl, x, start, eps=eps, alpha=alpha, steps=steps, lo=lo_t, hi=hi_t)


def fgsm(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, lo: Bound = 0.0, hi: Bound = 1.0
) -> Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015) under L-inf.

    ``clip(x + eps * sign(grad_x CE(model(x), y)), lo, hi)``: `pgd` with one step of
    size eps and no random start. Shapes, ``lo``/``hi`` and the eval-mode handling
    are as in `pgd`; returns detached inputs ``(n, *shape)``.
    """
    return pgd(model, x, y, eps=eps, alpha=eps, steps=1, random_start=False, lo=lo, hi=hi)



def perturb(
    attack: Attack,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    lo: Bound = 0.0,
    hi: Bound = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Adversarial inputs for (x, y) under ``attack``; see `pgd` and `fgsm` for the contract."""
    if attack.name == "fgsm":
        return fgsm(model, x, y, eps=attack.eps, lo=lo, hi=hi)
    return pgd(model, x, y, eps=attack.eps, alpha=attack.alpha, steps=attack.steps, lo=lo, hi=hi, generator=generator)


def _batches(x: Tensor, y: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    if len(x) == 0 or len(x) != len(y) or batch_size < 1:
        raise UserError(
            f"accuracy needs matching non-empty x and y and batch_size >= 1, "
            f"got {len(x)} inputs, {len(y)} labels, batch_size {batch_size}"
        )
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


@torch.no_grad()
def _correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Boolean mask of argmax predictions equal to the labels."""
    return model(x).argmax(dim=1) == y


def accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 1024) -> float:
    """Fraction of (x, y) classified correctly, in eval mode without gradients.

    x: ``(n, *shape)``, y: ``(n,)``; every module's training flag is restored.
    """
    with eval_mode(model):
        correct = sum(int(_correct(model, xb, yb).sum()) for xb, yb in _batches(x, y, batch_size))
    return correct / len(x)


def robust_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack: Attack,
    *,
    lo: Bound = 0.0,
    hi: Bound = 1.0,
    batch_size: int = 1024,
    generator: torch.Generator | None = None,
) -> float:
    """Fraction of (x, y) still classified correctly under ``attack``, batched.

    A point counts as robust when both x and its adversarial input are classified
    correctly: x lies in its own eps-ball, so an adversary may always keep it. This
    makes robust accuracy <= clean accuracy exactly, and equal at eps = 0.
    """
    correct = 0
    with eval_mode(model):
        for xb, yb in _batches(x, y, batch_size):
            x_adv = perturb(attack, model, xb, yb, lo=lo, hi=hi, generator=generator)
            correct += int((_correct(model, xb, yb) & _correct(model, x_adv, yb)).sum())
    return correct / len(x)

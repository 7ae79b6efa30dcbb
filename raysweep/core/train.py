"""Training recipes and the training step: one documented, standard recipe per architecture.

The paper does not give its optimiser; these are the usual ones for such nets:
- mnist_conv3, cifar_conv4: Adam (Kingma and Ba, 2015) at 1e-3, batches of 128,
  no augmentation, constant rate: the plain recipe behind the paper's ~99% and
  ~65% reference points.
- resnet9: SGD with Nesterov momentum 0.9, one-cycle rate (Smith, 2018) peaking at
  0.1, weight decay 5e-4, batches of 512, random crop (reflect pad 4) and flip,
  label smoothing 0.1: the DAWNBench ResNet9 family, above 90% on CIFAR-10.
Anything named by import path gets the Adam recipe.

On a GPU the training step may run in bfloat16 autocast with channels_last inputs
(SPEC 5 allows both for training; the weights stay float32 and packets are always
measured in float32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from raysweep.core import attacks, data
from raysweep.core.regime import STANDARD, Regime
from raysweep.choices import PRECISIONS
from raysweep.errors import UserError


@dataclass(frozen=True)
class Recipe:
    optimizer: str  # adam | sgd
    lr: float  # peak learning rate
    batch_size: int  # images per step
    weight_decay: float = 0.0  # L2 coefficient
    momentum: float = 0.9  # sgd only, Nesterov
    schedule: str = "constant"  # constant | onecycle (per step)
    flip: bool = False  # random horizontal flips
    crop: int = 0  # reflect padding of random crops, pixels
    label_smoothing: float = 0.0
    gpu_bf16: bool = False  # precision=auto trains in bf16 on a GPU (pays only for big convolutions, BENCHMARKS.md)


ADAM = Recipe("adam", lr=1e-3, batch_size=128)
RECIPES: dict[str, Recipe] = {
    "mnist_conv3": ADAM,
    "cifar_conv4": ADAM,
    "resnet9": Recipe(
        "sgd", lr=0.1, batch_size=512, weight_decay=5e-4, schedule="onecycle", flip=True, crop=4, label_smoothing=0.1,
        gpu_bf16=True,
    ),
}


def recipe_for(arch: str, *, lr: float | None = None, batch_size: int | None = None, weight_decay: float | None = None) -> Recipe:
    """The architecture's recipe with any overrides that were set."""
    base = RECIPES.get(arch, ADAM)
    changes = {k: v for k, v in (("lr", lr), ("batch_size", batch_size), ("weight_decay", weight_decay)) if v is not None}
    return replace(base, **changes)


def make_optimizer(
    model: nn.Module, recipe: Recipe, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """The recipe's optimiser and per-step schedule; fused kernels where every parameter is on a GPU
    (one launch per step instead of one per tensor: small heads are launch-bound there)."""
    params = list(model.parameters())
    fused = bool(params) and all(p.is_cuda for p in params)
    if recipe.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, nesterov=True, weight_decay=recipe.weight_decay,
            fused=fused or None,
        )
    else:
        opt = torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay, fused=fused or None)
    if recipe.schedule == "onecycle":
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total_steps)
    return opt, None


def step_arithmetic(device: torch.device, precision: str, recipe: Recipe, *, images: bool = True) -> tuple[str, bool]:
    """(precision, channels_last) of the training step on `device`.

    On a GPU image batches go channels_last (NHWC, what cuDNN's tensor-core convolutions
    read), and "auto" is bf16 autocast where the recipe says it pays (resnet9: 0.73 s
    against 0.95 s per epoch on an H200; the small nets' 128-image steps are launch-bound
    and only gain casts). On the CPU "auto" is float32: bf16 is emulated there and slower.
    """
    on_gpu = device.type == "cuda"
    if precision == "auto":
        precision = "bf16" if on_gpu and recipe.gpu_bf16 else "float32"
    return precision, on_gpu and images


def craft(model: nn.Module, x: torch.Tensor, y: torch.Tensor, regime: Regime,
          generator: torch.Generator | None) -> torch.Tensor | None:
    """The regime's training inputs against the current weights, crafted in eval mode (BatchNorm's
    running statistics see no attacked batch while crafting): PGD's or TRADES' examples in the
    pixel box [0, 1]; None for standard training."""
    if regime.name == STANDARD:
        return None
    a = regime.attack
    if regime.name == "pgd":
        return attacks.pgd(model, x, y, eps=a.eps, alpha=a.alpha, steps=a.steps, generator=generator)
    return attacks.trades_examples(model, x, eps=a.eps, alpha=a.alpha, steps=a.steps, generator=generator)


def regime_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, crafted: torch.Tensor | None, regime: Regime,
                label_smoothing: float = 0.0) -> torch.Tensor:
    """The loss one training step minimises, the model in train mode:
    standard CE(f(x), y); pgd CE(f(x_adv), y) (Madry et al. 2018);
    trades CE(f(x), y) + beta · KL(f(x) ‖ f(x_adv)), KL averaged over the batch (Zhang et al. 2019, Eq. 5)."""
    ce = lambda logits: nn.functional.cross_entropy(logits, y, label_smoothing=label_smoothing)  # noqa: E731
    if regime.name == STANDARD:
        return ce(model(x))
    if regime.name == "pgd":
        return ce(model(crafted))
    logits = model(x)
    kl = nn.functional.kl_div(nn.functional.log_softmax(model(crafted), dim=1), nn.functional.softmax(logits, dim=1),
                              reduction="batchmean")
    return ce(logits) + regime.beta * kl


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches per epoch (a short last batch is dropped: BatchNorm needs > 1 sample)."""
    return max(1, n // min(batch_size, n))


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: Recipe,
    *,
    generator: torch.Generator,
    epoch: int,
    stage: str = "train",
    precision: str = "float32",
    channels_last: bool = False,
    regime: Regime = Regime(STANDARD),
) -> float:
    """One pass over (x, y) in shuffled full batches under `regime` (`regime_loss`); returns the
    mean training loss.

    precision "bf16" runs forward and loss under bfloat16 autocast (weights and their
    updates stay float32); channels_last feeds image batches in NHWC layout, which the
    model's parameters should share (`model.to(memory_format=torch.channels_last)`).
    The loss is summed on the device and read once per epoch, so steps queue without
    waiting for each other. Raises UserError naming the epoch and stage if the loss
    stops being finite.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: use one of {', '.join(PRECISIONS)}")
    model.train()
    n = x.shape[0]
    bs = min(recipe.batch_size, n)
    order = torch.randperm(n, generator=generator).to(x.device)
    steps = steps_per_epoch(n, bs)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    # Training batches all have one shape, so cuDNN may time its kernels once and keep the fastest;
    # only here: elsewhere (the piecewise walk) every pass has a new shape and would be timed again.
    benchmark, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, channels_last
    try:
        for step in range(steps):
            idx = order[step * bs : (step + 1) * bs]
            xb = x[idx]
            if recipe.flip or recipe.crop:
                xb = data.augment(xb, flip=recipe.flip, crop=recipe.crop, generator=generator)
            if channels_last and xb.dim() == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = y[idx]
            crafted = craft(model, xb, yb, regime, generator)  # eval mode inside, train mode again after
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = regime_loss(model, xb, yb, crafted, regime, recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += loss.detach()
    finally:
        torch.backends.cudnn.benchmark = benchmark
    mean = float(total) / steps  # full batches only: the mean of step means is the mean over images
    if not math.isfinite(mean):
        raise UserError(
            f"epoch {epoch}: the {stage} loss became {mean} (stage: {stage}); "
            f"lower the learning rate (lr=..., now {recipe.lr}) or check the data"
        )
    return mean

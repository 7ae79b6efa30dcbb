"""Training recipes and the training step: one documented, standard recipe per architecture.

The paper does not give its optimiser; these are the usual ones for such nets:
- mnist_conv3, cifar_conv4: Adam (Kingma and Ba, 2015) at 1e-3, batches of 128,
  no augmentation, constant rate: the plain recipe behind the paper's ~99% and
  ~65% reference points.
- resnet9: SGD with Nesterov momentum 0.9, one-cycle rate (Smith, 2018) peaking at
  0.1, weight decay 5e-4, batches of 512, random crop (reflect pad 4) and flip,
  label smoothing 0.1: the DAWNBench ResNet9 family, above 90% on CIFAR-10.
Anything named by import path gets the Adam recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from raysweep import data
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


ADAM = Recipe("adam", lr=1e-3, batch_size=128)
RECIPES: dict[str, Recipe] = {
    "mnist_conv3": ADAM,
    "cifar_conv4": ADAM,
    "resnet9": Recipe(
        "sgd", lr=0.1, batch_size=512, weight_decay=5e-4, schedule="onecycle", flip=True, crop=4, label_smoothing=0.1
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
    params = model.parameters()
    if recipe.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, nesterov=True, weight_decay=recipe.weight_decay
        )
    else:
        opt = torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.schedule == "onecycle":
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total_steps)
    return opt, None


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
) -> float:
    """One pass over (x, y) in shuffled full batches; returns the mean training loss.

    Raises UserError naming the epoch and stage if the loss stops being finite.
    """
    model.train()
    n = x.shape[0]
    bs = min(recipe.batch_size, n)
    order = torch.randperm(n, generator=generator).to(x.device)
    total, seen = 0.0, 0
    for step in range(steps_per_epoch(n, bs)):
        idx = order[step * bs : (step + 1) * bs]
        xb = x[idx]
        if recipe.flip or recipe.crop:
            xb = data.augment(xb, flip=recipe.flip, crop=recipe.crop, generator=generator)
        loss = nn.functional.cross_entropy(model(xb), y[idx], label_smoothing=recipe.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item() * idx.numel()
        seen += idx.numel()
    mean = total / seen
    if not math.isfinite(mean):
        raise UserError(
            f"epoch {epoch}: the {stage} loss became {mean} (stage: {stage}); "
            f"lower the learning rate (lr=..., now {recipe.lr}) or check the data"
        )
    return mean

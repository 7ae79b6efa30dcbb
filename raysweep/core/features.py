"""Feature space (paper supp. 2.2): a frozen extractor and a freshly trained head.

Each epoch the extractor is frozen, the features of the training and test sets
are computed once, and a classifier head with re-initialised random weights is
trained on the cached training features. Accuracy, robust accuracy and packets
in feature space are then measured with that head.

Budget rule: a pixel budget eps is relative to the pixel box [0, 1]; in feature
space it is scaled by the mean over features of their range max - min on the
training set (`FeatureSpace.scale`), and the clip box is each feature's
[min, max]. The scale is recorded with every feature-space row.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from raysweep.core import models, train


@dataclass(frozen=True)
class FeatureSpace:
    head: nn.Module  # re-initialised classifier, trained on frozen features
    f_train: torch.Tensor  # (N, F) training features
    f_test: torch.Tensor  # (M, F) test features
    lo: torch.Tensor  # (F,) per-feature minimum over the training set
    hi: torch.Tensor  # (F,) per-feature maximum over the training set
    scale: float  # attack-budget factor: mean of hi - lo
    train_loss: float  # head's mean training loss in its last epoch


@torch.no_grad()
def extract(extractor: nn.Module, x: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """Features of x, (N, F), computed in eval mode; the module's mode is restored."""
    with models.eval_mode(extractor):
        return torch.cat([extractor(x[i : i + batch_size]).flatten(1) for i in range(0, x.shape[0], batch_size)])


def fresh_head(classifier: nn.Module, seed: int) -> nn.Module:
    """A copy of the classifier with every parameter re-drawn from its init, seeded."""
    head = copy.deepcopy(classifier)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in head.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return head


def train_head(
    classifier: nn.Module,
    f_train: torch.Tensor,
    y_train: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    epoch: int,
    recipe: train.Recipe = train.ADAM,
) -> tuple[nn.Module, float]:
    """A fresh copy of `classifier` (`fresh_head`) trained `epochs` epochs on the features under
    `recipe`, in eval mode, and its mean training loss in the last of them. `epoch` is the trial's,
    for the message should the loss stop being finite."""
    head = fresh_head(classifier, seed)
    optimizer, _ = train.make_optimizer(head, recipe, 1)
    generator = torch.Generator().manual_seed(seed)
    loss = float("nan")
    for _ in range(epochs):
        loss = train.train_epoch(
            head, optimizer, None, f_train, y_train, recipe, generator=generator, epoch=epoch, stage="feature-head"
        )
    return head.eval(), loss


def build(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    epoch: int,
) -> FeatureSpace:
    """Freeze `model.features`, retrain a fresh copy of `model.classifier` on its features."""
    f_train = extract(model.features, x_train)
    f_test = extract(model.features, x_test)
    head, loss = train_head(model.classifier, f_train, y_train, epochs=epochs, seed=seed, epoch=epoch)
    lo, hi = f_train.min(0).values, f_train.max(0).values
    return FeatureSpace(head, f_train, f_test, lo, hi, float((hi - lo).mean()), loss)

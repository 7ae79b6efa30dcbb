"""The feature-space head: what retraining it costs, and how well it fits, per batch size (SPEC 1.5 and 5).

    python bench/head.py [--arch ARCH] [--dataset NAME] [--root DIR] [--train-epochs N] [--threads N] [--smoke-test]

Every epoch a trial freezes the extractor, re-initialises the classifier and retrains it for
`head_epochs` (10) epochs on the training features (`features.train_head`). This script trains the net
`--train-epochs` epochs with its own recipe, extracts the features once, and retrains a fresh head
(the same seed each time) under the trial's recipe (Adam 1e-3, batches of 128) and under larger
batches with larger rates, which take fewer optimiser steps: on a GPU a small head's steps are
launch-bound, so its time follows the step count. Per recipe: steps, seconds, the loss over the
whole training set, and test accuracy (one run each).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from common import DEVICE, parser, print_table, setup, timed, trained
from raysweep.core import attacks, data, features, train
from raysweep.core.config import PacketConfig

RECIPES = ((128, 1e-3), (512, 2e-3), (1024, 3e-3), (4096, 1e-2))  # (batch size, Adam rate); the first is the trial's
HEAD_EPOCHS = PacketConfig.head_epochs  # as trials retrain it


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--arch", default="mnist_conv3")
    p.add_argument("--dataset", default="fashion-mnist", help="a name raysweep loads (default: fashion-mnist)")
    p.add_argument("--root", default=None, help="folder of the dataset's files (e.g. /usr/share/datasets/fashion-mnist)")
    p.add_argument("--train-epochs", type=int, default=2, help="epochs of the net before its features are taken")
    args = p.parse_args()
    setup(args.threads)
    if args.smoke_test:
        args.dataset, args.root, args.train_epochs = "digits", None, 1
    ds = data.load(args.dataset, args.root, device=DEVICE)
    model = trained(args.arch, ds, args.train_epochs)
    f_train = features.extract(model.features, ds.x_train)
    f_test = features.extract(model.features, ds.x_test)
    clean = attacks.accuracy(model, ds.x_test, ds.y_test)
    print(f"## {args.arch} on {args.dataset}, trained {args.train_epochs} epoch(s): test accuracy {clean:.4f}; "
          f"{f_train.shape[0]} x {f_train.shape[1]} training features; head retrained {HEAD_EPOCHS} epochs")
    rows = []
    for batch, lr in RECIPES[:2] if args.smoke_test else RECIPES:
        recipe = dataclasses.replace(train.ADAM, batch_size=batch, lr=lr)
        seconds, (head, _) = timed(
            lambda: features.train_head(model.classifier, f_train, ds.y_train, epochs=HEAD_EPOCHS, seed=0, epoch=1, recipe=recipe),
            repeats=1, warmup=0,
        )
        with torch.no_grad():
            loss = float(nn.functional.cross_entropy(head(f_train), ds.y_train))
        steps = HEAD_EPOCHS * train.steps_per_epoch(f_train.shape[0], batch)
        rows.append([f"adam {lr:g}, batch {batch}", str(steps), f"{seconds:.2f}", f"{loss:.4f}",
                     f"{attacks.accuracy(head, f_test, ds.y_test):.4f}"])
    print_table(["head recipe", "steps", "seconds", "train loss", "test acc"], rows)


if __name__ == "__main__":
    main()

"""Training recipes by their properties (issue 14): resnet9's one-cycle schedule, label smoothing,
the lr=, batch_size=, weight_decay= overrides, and a resume that restores the schedule's place.
(Augmentation's box and variety: tests/test_data.py.)"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from raysweep.core import train
from raysweep.core.trial import Trial
from raysweep.run import local
from raysweep.run.presets import resolve
from raysweep.store import RunStore
from rows import assert_same_rows, undisturbed

# resnet9 on small generated CIFAR-shaped images: its SGD recipe with the one-cycle schedule.
RESNET9 = {"arch": "resnet9", "dataset": "synthetic:3x32x32:64:16", "epochs": "3", "batch_size": "32", "lr": "0.01", "dims": "2",
           "estimator": "gauss", "nodes": "8", "embed_points": "8", "head_epochs": "1", "threads": "1"}


def test_resnet9s_one_cycle_rises_from_a_25th_to_its_peak_at_30_percent_then_anneals() -> None:
    recipe = train.recipe_for("resnet9")
    optimizer, scheduler = train.make_optimizer(nn.Linear(2, 2), recipe, total_steps=100)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    peak = int(np.argmax(rates))
    assert rates[peak] == pytest.approx(recipe.lr) == pytest.approx(0.1)  # Smith's one-cycle, peak 0.1
    assert peak == 29 and rates[0] == pytest.approx(0.1 / 25)  # torch's pct_start=0.3, div_factor=25
    assert (np.diff(rates[: peak + 1]) > 0).all() and (np.diff(rates[peak:]) < 0).all()
    assert rates[-1] < 1e-3 * rates[0]  # annealed far below the start
    # Adam's nets keep a constant rate and no schedule.
    assert train.make_optimizer(nn.Linear(2, 2), train.recipe_for("mnist_conv3"), 100)[1] is None


def test_label_smoothing_gives_the_smoothed_cross_entropy_of_a_known_case() -> None:
    # Two classes, logits (0, ln 3): p = (1/4, 3/4); label 1 with smoothing e = 0.1 costs
    # -(1 - e) ln(3/4) - (e / 2)(ln(1/4) + ln(3/4)).
    model = nn.Linear(1, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([0.0, math.log(3)]))
    recipe = replace(train.recipe_for("resnet9"), flip=False, crop=0, batch_size=4)
    assert recipe.label_smoothing == 0.1
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)
    x, y = torch.ones(4, 1), torch.ones(4, dtype=torch.long)
    loss = train.train_epoch(model, frozen, None, x, y, recipe, generator=torch.Generator(), epoch=1)
    expected = -0.9 * math.log(3 / 4) - 0.05 * (math.log(1 / 4) + math.log(3 / 4))
    assert loss == pytest.approx(expected, rel=1e-6)
    plain = train.train_epoch(model, frozen, None, x, y, replace(recipe, label_smoothing=0.0),
                              generator=torch.Generator(), epoch=1)
    assert plain == pytest.approx(-math.log(3 / 4), rel=1e-6)


def test_lr_batch_size_and_weight_decay_overrides_reach_the_optimiser() -> None:
    (config,) = resolve("smoke", {**RESNET9, "epochs": "2", "lr": "0.05", "batch_size": "16", "weight_decay": "0.01"}).trials()
    trial = Trial(config)
    group = trial.optimizer.param_groups[0]
    assert trial.recipe.batch_size == 16 and group["max_lr"] == 0.05 and group["weight_decay"] == 0.01
    assert trial.scheduler.total_steps == 2 * (64 // 16)  # per step, over every epoch
    assert group["lr"] == pytest.approx(0.05 / 25)


def test_resume_mid_schedule_gives_the_rows_of_an_uninterrupted_run(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "run"))
    store.create({})
    trials = resolve("smoke", RESNET9).trials()

    def stop_after_epoch_1(line: str) -> None:
        if "epoch 1/3" in line:  # printed after epoch 1's files and checkpoint
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        local.run_trials(store, trials, progress=stop_after_epoch_1)
    assert store.epochs_written(trials[0].name) == [1]
    state = store.load_checkpoint(trials[0].name, before=2)
    assert state["scheduler"]["last_epoch"] == 2  # two steps of the one-cycle schedule taken
    local.run_trials(store, trials, progress=lambda line: None)
    assert_same_rows(undisturbed(tmp_path, RESNET9), store)

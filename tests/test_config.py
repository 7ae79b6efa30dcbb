"""Presets, key=value overrides and the trial grid."""

from __future__ import annotations

import pytest

from raysweep.run.config import parse_overrides, trial_config
from raysweep.run.presets import PRESETS, resolve
from raysweep.errors import UserError


def test_demo_preset_is_one_digits_trial() -> None:
    (trial,) = resolve("demo", {}).trials()
    assert (trial.arch, trial.data.dataset, trial.seed) == ("mnist_conv3", "digits", 0)
    assert trial.train.epochs == int(PRESETS["demo"]["epochs"])


def test_overrides_apply_on_top_of_a_preset() -> None:
    overrides = parse_overrides(["dataset=mnist", "data_root=/data/mnist", "epochs=15"])
    (trial,) = resolve("demo", overrides).trials()
    assert (trial.arch, trial.data.dataset, trial.data.data_root, trial.train.epochs) == ("mnist_conv3", "mnist", "/data/mnist", 15)
    assert trial.packets.dims == int(PRESETS["demo"]["dims"])  # untouched preset value survives


def test_paper_preset_pairs_architectures_with_datasets() -> None:
    trials = resolve("paper", {}).trials()
    assert [(t.arch, t.data.dataset) for t in trials] == [
        ("mnist_conv3", "mnist"), ("cifar_conv4", "cifar10"), ("resnet9", "cifar10")
    ]
    assert all(t.train.epochs == 50 and t.packets.dims is None for t in trials)


def test_seeds_multiply_the_grid_and_names_are_unique() -> None:
    trials = resolve("paper", parse_overrides(["seed=0,1"])).trials()
    assert len(trials) == 6
    assert len({t.name for t in trials}) == 6


def test_single_value_pairs_with_every_entry_of_the_other() -> None:
    trials = resolve("demo", parse_overrides(["dataset=digits,synthetic"])).trials()
    assert [(t.arch, t.data.dataset) for t in trials] == [("mnist_conv3", "digits"), ("mnist_conv3", "synthetic")]


def test_values_are_typed_by_field() -> None:
    (trial,) = resolve("demo", parse_overrides(["dims=all", "loss_clip=5", "download=false", "lr=0.01"])).trials()
    assert trial.packets.dims is None and trial.packets.loss_clip == 5.0 and trial.data.download is False and trial.train.lr == 0.01


def test_trial_name_is_one_safe_path_component() -> None:
    assert trial_config(arch="pkg.mod:Net", dataset="synthetic:3x8x8").name == "pkg.mod_Net-synthetic_3x8x8-s0"


@pytest.mark.parametrize(
    "items, match",
    [
        (["epochs"], "not key=value"),
        (["=3"], "not key=value"),
        (["epoch=3"], r"unknown key 'epoch'.*\(did you mean epochs\?\); valid keys: arch, dataset, seed"),
    ],
)
def test_malformed_overrides_name_the_fix(items: list[str], match: str) -> None:
    with pytest.raises(UserError, match=match):
        parse_overrides(items)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"epochs": "ten"}, "epochs='ten' is not a valid int"),
        ({"nodes": "0"}, "nodes=0: must be at least 1"),
        ({"dims": "-3"}, "dims=-3: must be at least 1"),
        ({"download": "maybe"}, "not a valid bool"),
        ({"spaces": "pixel,latent"}, "comma list of pixel, feature"),
        ({"arch": "a,b,c", "dataset": "x,y"}, "pair up by position"),
        ({"seed": ""}, "seed= is empty"),
        ({"lr": "-1"}, "lr=-1.0: must be positive"),
    ],
)
def test_bad_values_name_the_fix(overrides: dict[str, str], match: str) -> None:
    with pytest.raises(UserError, match=match):
        resolve("demo", overrides).trials()


def test_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(UserError, match="demo, paper, robust, smoke"):
        resolve("fast", {})

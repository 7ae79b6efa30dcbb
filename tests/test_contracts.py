"""SPEC's fixed interfaces, as others check them from outside: names, defaults, columns.

The lists below are SPEC's own words (sections 1.3, 1.6 and 2, as revised 2026-12-01);
raysweep may add to a dataset's columns but not drop or rename one.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

import raysweep.attacks
import raysweep.models
import raysweep.packets
from raysweep import schema
from raysweep.core.threat import MNIST_PGD, PAPER_PGD
from raysweep.run import local
from raysweep.run.presets import resolve
from raysweep.store import RunStore

SPEC_PACKETS = ("trial epoch space class dim a b sx sp mean_x mean_p beta boundary_term bound estimator nodes "
                "err_sx err_sp").split()
SPEC_EPOCHS = "trial arch dataset seed epoch space attack eps alpha steps test_acc robust_acc train_loss seconds".split()
SPEC_STATS = "sx sp mean_x mean_p beta boundary_term bound err_sx err_sp".split()
README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def defaults(fn) -> dict:
    return {name: p.default for name, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def test_packet_stats_is_called_as_spec_1_3_says() -> None:
    params = list(inspect.signature(raysweep.packets.packet_stats).parameters)
    assert params[:5] == ["model", "x_base", "dims", "a", "b"]
    assert {k: defaults(raysweep.packets.packet_stats)[k] for k in ("estimator", "nodes", "tol")} == {
        "estimator": "auto", "nodes": 32, "tol": 1e-2}
    fields = [f.name for f in dataclasses.fields(raysweep.packets.PacketStats)]
    assert set(SPEC_STATS) <= set(fields) and "B" not in fields


def test_attacks_and_models_are_called_as_spec_1_6_says() -> None:
    assert defaults(raysweep.attacks.pgd) == {"random_start": True, "lo": 0.0, "hi": 1.0, "generator": None}
    assert list(inspect.signature(raysweep.attacks.pgd).parameters)[:6] == ["model", "x", "y", "eps", "alpha", "steps"]
    assert list(inspect.signature(raysweep.attacks.fgsm).parameters) == ["model", "x", "y", "eps", "lo", "hi"]
    assert defaults(raysweep.models.build) == {"num_classes": 10}


def test_the_datasets_hold_spec_2s_columns_and_readme_names_every_one() -> None:
    assert SPEC_PACKETS == [c for c in schema.PACKETS.names if c in SPEC_PACKETS]  # in SPEC's order
    assert set(SPEC_EPOCHS) <= set(schema.EPOCHS.names)
    output = README[README.index("## Output"):].split("\n## ")[0]
    for dataset in schema.DATASETS.values():
        assert not [c.name for c in dataset.stored if c.name not in output], dataset.name
    assert schema.PARTITION == "trial" and "trial=<trial>" in output


# SPEC 2's columns with the type each one's meaning implies, written out here (not from schema.py):
# what a reader of the datasets may rely on.
S, I, F = pa.types.is_string, pa.types.is_integer, pa.types.is_floating
SPEC_TYPES = {
    "epochs": {"trial": S, "arch": S, "dataset": S, "seed": I, "epoch": I, "space": S, "attack": S, "eps": F,
               "alpha": F, "steps": I, "test_acc": F, "robust_acc": F, "train_loss": F, "seconds": F},
    "packets": {"trial": S, "epoch": I, "space": S, "class": I, "dim": I, "a": F, "b": F, "sx": F, "sp": F,
                "mean_x": F, "mean_p": F, "beta": F, "boundary_term": F, "bound": F, "estimator": S, "nodes": I,
                "err_sx": F, "err_sp": F},
}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> RunStore:
    store = RunStore(str(tmp_path_factory.mktemp("contract") / "run"))
    store.create({})
    overrides = {"epochs": "1", "limit_train": "64", "limit_test": "16", "attacks": f"{PAPER_PGD}+fgsm:eps=0.1"}
    local.run_trials(store, resolve("smoke", overrides).trials(), progress=lambda line: None)
    return store


@pytest.mark.parametrize("table", sorted(SPEC_TYPES))
def test_written_files_have_spec_2s_columns_with_their_types(written: RunStore, table: str) -> None:
    found = ds.dataset(f"{written.uri}/{table}", format="parquet", partitioning="hive").schema
    for column, is_kind in SPEC_TYPES[table].items():
        kind = found.field(column).type
        kind = kind.value_type if pa.types.is_dictionary(kind) else kind  # a partition column may be a dictionary
        assert is_kind(kind), f"{table}.{column} is {kind}, SPEC 2 means {is_kind.__name__.removeprefix('is_')}"


# README's "Presets:" sentence, and what each preset must then be.
README_PRESETS = ("Presets: `demo` (digits, mnist_conv3, 20 epochs), `paper` (mnist_conv3 on MNIST, cifar_conv4 and resnet9\n"
                  "on CIFAR-10, 50 epochs, all dimensions), `robust` (mnist_conv3 on Fashion-MNIST trained standard, with PGD\n"
                  "and with TRADES, 2 seeds, 15 epochs: 6 trials), `smoke` (seconds, generated images).")
PROMISED = {
    "demo": {"pairs": [("mnist_conv3", "digits")], "epochs": 20},
    "paper": {"pairs": [("mnist_conv3", "mnist"), ("cifar_conv4", "cifar10"), ("resnet9", "cifar10")], "epochs": 50,
              "dims": "all", "attacks": [PAPER_PGD, MNIST_PGD]},  # SPEC 1.5's budgets: 8/255 (Fig. 2) and 0.1
    "robust": {"pairs": [("mnist_conv3", "fashion-mnist")] * 6, "epochs": 15, "seeds": [0, 1] * 3,
               "training": ["standard"] * 2 + [MNIST_PGD] * 2 + ["trades:eps=0.1,alpha=0.025,steps=4,beta=6"] * 2},
    "smoke": {"pairs": [("mnist_conv3", "synthetic")]},
}


@pytest.mark.parametrize("preset", sorted(PROMISED))
def test_presets_are_what_readme_says(preset: str) -> None:
    assert README_PRESETS in README
    trials, promised = resolve(preset, {}).trials(), PROMISED[preset]
    assert [(t.arch, t.data.dataset) for t in trials] == promised["pairs"]
    for t in trials:
        if "epochs" in promised:
            assert t.train.epochs == promised["epochs"]
        if "dims" in promised:
            assert t.packets.dims is None  # all dimensions
        if "attacks" in promised:
            assert [a.source for a in t.attacks] == promised["attacks"]
    for key, get in (("seeds", lambda t: t.seed), ("training", lambda t: t.train.training)):
        if key in promised:
            assert [get(t) for t in trials] == promised[key]

"""SPEC's fixed interfaces, as others check them from outside: names, defaults, columns.

The lists below are SPEC's own words (sections 1.3, 1.6 and 2, as revised 2026-12-01);
raysweep may add to a dataset's columns but not drop or rename one.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import raysweep.attacks
import raysweep.models
import raysweep.packets
from raysweep import schema

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

"""The rows of a run, compared with those of an undisturbed `--executor local` run of the same config."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from raysweep.run import local
from raysweep.run.presets import resolve
from raysweep.store import RunStore

KEYS = {"packets": ["trial", "epoch", "space", "class", "dim"], "epochs": ["trial", "epoch", "space", "attack"]}


def undisturbed(tmp_path: Path, overrides: dict[str, str]) -> RunStore:
    """The smoke preset with `overrides`, run in-process from start to end, in tmp_path/undisturbed."""
    store = RunStore(str(tmp_path / "undisturbed"))
    store.create({})
    local.run_trials(store, resolve("smoke", overrides).trials(), progress=lambda line: None)
    return store


def assert_same_rows(expected: RunStore, got: RunStore) -> None:
    """Bit for bit (`check_exact`), no key missing or doubled; `seconds` is wall time and differs."""
    for table, keys in KEYS.items():
        a, b = expected.read(table), got.read(table)
        assert not b.duplicated(keys).any(), f"doubled {table} rows"
        if table == "epochs":
            a, b = a.drop(columns="seconds"), b.drop(columns="seconds")
        pd.testing.assert_frame_equal(a, b, check_exact=True)

"""One or several run directories as DataFrames, for figures and reports (no model, no Ray).

Runs may be partial (still running, stopped, a crashed trial): what is there is
loaded, and `Results.notes` says what is missing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd

from raysweep.errors import UserError
from raysweep.schema import EPOCHS, TABLES
from raysweep.store import RunStore


@dataclass(frozen=True)
class Results:
    epochs: pd.DataFrame  # contract columns + run, one row per (run, trial, epoch, space, attack)
    packets: pd.DataFrame  # contract columns + run + arch, dataset, seed and swept fields of the trial
    embeddings: pd.DataFrame  # contract columns + run
    notes: tuple[str, ...]  # what is missing: partial trials, empty tables
    attacks: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per run: its attacks in the configured order

    @property
    def swept(self) -> list[str]:
        """The swept config fields of the runs (SPEC 7): the columns of `epochs/` beyond the contract."""
        contract = {c.name for c in EPOCHS.columns} | {"run"}
        return [c for c in self.epochs.columns if c not in contract]

    def attack_order(self, run: str, present: Sequence[str]) -> list[str]:
        """The attacks of `present` in the order the run's config gives them (any unknown ones last, sorted)."""
        order = list(self.attacks.get(run, ()))
        return [a for a in order if a in set(present)] + sorted(set(present) - set(order))


def load(runs: Sequence[str]) -> Results:
    """Read every run; a run's label is its directory name (made unique if two share one)."""
    if not runs:
        raise UserError("give at least one run directory")
    frames: dict[str, list[pd.DataFrame]] = {table: [] for table in TABLES}
    notes: list[str] = []
    labels = _labels(runs)
    attacks: dict[str, tuple[str, ...]] = {}
    for uri, label in zip(runs, labels):
        store = RunStore(uri)
        manifest = store.manifest()
        specs = [a.strip() for t in manifest.get("trials", {}).values() for a in str(t.get("attacks", "")).split("+")]
        attacks[label] = tuple(dict.fromkeys(a for a in specs if a))
        tables = {table: store.read(table) for table in TABLES}
        for table, frame in tables.items():
            frames[table].append(frame.assign(run=label))
        notes += _missing(label, manifest, tables["epochs"])
    epochs = pd.concat(frames["epochs"], ignore_index=True)
    contract = {c.name for c in EPOCHS.columns} | {"run"}
    trial_info = epochs[["run", "trial", "arch", "dataset", "seed", *(c for c in epochs.columns if c not in contract)]]
    trial_info = trial_info.drop_duplicates(["run", "trial"])
    packets = pd.concat(frames["packets"], ignore_index=True).merge(trial_info, on=["run", "trial"], how="left")
    embeddings = pd.concat(frames["embeddings"], ignore_index=True)
    if epochs.empty:
        notes.append("no epoch has finished in any run yet: nothing to draw")
    return Results(epochs, packets, embeddings, tuple(notes), attacks)


def _missing(label: str, manifest: dict, epochs: pd.DataFrame) -> list[str]:
    notes = []
    for name, config in manifest.get("trials", {}).items():
        done = sorted(epochs.loc[epochs["trial"] == name, "epoch"].unique())
        want = int(config["epochs"])
        if not done:
            notes.append(f"{label}/{name}: no epochs yet (not started, running, or failed before epoch 1)")
        elif len(done) < want:
            notes.append(f"{label}/{name}: {len(done)} of {want} epochs (still running, stopped or failed); shown as far as it got")
    return notes


def _labels(runs: Sequence[str]) -> list[str]:
    labels: list[str] = []
    for uri in runs:
        path = uri.partition("?")[0].rstrip("/")  # a URI's query (endpoint, region) is not part of its name
        base = os.path.basename(path) or uri
        labels.append(base if base not in labels else f"{base}-{len(labels)}")
    return labels

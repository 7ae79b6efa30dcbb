"""The table of ΔX and ΔP (paper Eq. 23) per run, trial, epoch and space, with that epoch's accuracies
under the first configured attack: printed, and written as spreads.csv.

    python analysis/spreads.py RUN [RUN ...] [--out DIR]

The headline class is the paper's: class 8 on MNIST-style data, the mean over classes on
CIFAR-10 (`raysweep.analysis.aggregates`); the `label` column says which.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from raysweep.analysis import script, tradeoff
from raysweep.analysis.results import Results


def table(results: Results) -> pd.DataFrame:
    """One row per (run, trial, epoch, space): ΔX, ΔP, label, and test and robust accuracy of the first attack."""
    epochs = results.epochs
    first = {run: results.attack_order(run, part["attack"].unique())[0] for run, part in epochs.groupby("run")}
    accuracy = epochs[epochs["attack"] == epochs["run"].map(first)]
    keys = ["run", "trial", "epoch", "space"]
    return tradeoff.spreads_by_epoch(results).merge(accuracy[[*keys, "attack", "test_acc", "robust_acc"]], on=keys, how="left")


def write(results: Results, out: Path) -> list[Path]:
    frame = table(results)
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "spreads.csv", index=False)
    return [out / "spreads.csv"]


def main(argv: list[str] | None = None) -> int:
    return script.run(__doc__, lambda results, args: write(results, args.out), argv)


if __name__ == "__main__":
    sys.exit(main())

"""Trials compared (SPEC 7): ΔP and ΔX against robust and test accuracy at the last epoch, one point per
group of a sweep's trials (its swept values), the mean over seeds with 95% t-intervals over seeds as
error bars, and the seeds themselves as faint dots; per space and attack. Also sweep.csv.

    python analysis/sweep.py RUN [RUN ...] [--out DIR] [--format png|svg|pdf] [--at 5,10]

`--at` also compares the trials at those epochs (sweep_epoch-5.png, sweep_epoch-5.csv, ...).

`raysweep figures` draws it with this code when a run sweeps a field beyond seeds; adapt a copy freely.
The numbers are `raysweep.analysis.tradeoff.across_trials`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from raysweep.analysis import script, tradeoff
from raysweep.analysis.plotting import attack_label, save
from raysweep.analysis.results import Results
from raysweep.choices import SPACES
from raysweep.errors import UserError

PANELS = [("robust_acc", "DP"), ("robust_acc", "DX"), ("test_acc", "DP")]


def draw(results: Results, out: Path, fmt: str = "png", at: Sequence[int] = ()) -> list[Path]:
    """sweep.csv and sweep.<fmt> at each trial's last epoch, and sweep_epoch-N.* for each epoch of `at`
    (nothing when no field beyond seeds is swept)."""
    if not results.swept:
        return []
    have = sorted(results.epochs["epoch"].unique())
    missing = [e for e in at if e not in have]
    if missing:  # before anything is drawn
        raise UserError(f"--at {missing[0]}: no trial has epoch {missing[0]} (epochs {have[0]}-{have[-1]} are there)")
    joined = tradeoff.joined(results)  # once for every epoch drawn
    paths = []
    for epoch in (None, *at):
        paths += _draw_at(results, joined, out, fmt, epoch)
    return paths


def _draw_at(results: Results, joined: pd.DataFrame, out: Path, fmt: str, epoch: int | None) -> list[Path]:
    table = tradeoff.across_trials(results, epoch, joined)
    stem = "sweep" if epoch is None else f"sweep_epoch-{epoch}"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"{stem}.csv", index=False)
    data = tradeoff.at_epoch(joined, epoch)
    table["group"] = _labels(table, results.swept)
    data["group"] = _labels(data, results.swept)
    palette = dict(zip(sorted(table["group"].unique()), sns.color_palette("colorblind", table["group"].nunique())))
    rows = [(space, attack) for space in SPACES for attack in table.loc[table["space"] == space, "attack"].unique()]
    fig, axes = plt.subplots(len(rows), len(PANELS), figsize=(4.6 * len(PANELS), 3.8 * len(rows)), squeeze=False)
    for r, (space, attack) in enumerate(rows):
        means = table[(table["space"] == space) & (table["attack"] == attack)]
        seeds = data[(data["space"] == space) & (data["attack"] == attack)]
        for c, (x, y) in enumerate(PANELS):
            ax = axes[r, c]
            for group, row in means.set_index("group").iterrows():
                ax.errorbar(100 * row[x] if "acc" in x else row[x], row[y],
                            xerr=_half(row, x, scale=100 if "acc" in x else 1), yerr=_half(row, y),
                            fmt="o", color=palette[group], capsize=3, markersize=7, label=group)
            part = seeds.assign(**{x: 100 * seeds[x]} if "acc" in x else {})
            ax.scatter(part[x], part[y], c=[palette[g] for g in part["group"]], s=12, alpha=0.45, linewidths=0)
            budget = "ε × r" if space == "feature" else "ε"
            ax.set(xlabel=f"{x.replace('_acc', ' accuracy')} (%)", ylabel=f"Δ{y[1]} at epoch {means['epoch'].max()}",
                   title=f"{space} space, {attack_label(attack)} ({budget})")
            ax.ticklabel_format(useOffset=False)
            ax.title.set_fontsize(9)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, title=" · ".join(results.swept), loc="upper left", bbox_to_anchor=(1.0, 0.98), fontsize=8)
    when = "the last epoch" if epoch is None else f"epoch {epoch}"
    fig.suptitle(f"Trials compared at {when}: mean over seeds, 95% t-interval over seeds, seeds as dots", y=1.0)
    return [out / f"{stem}.csv", save(fig, out / f"{stem}.{fmt}")]


def _labels(frame: pd.DataFrame, swept: list[str]) -> pd.Series:
    return frame[swept].astype(str).agg(" · ".join, axis=1) if len(frame) else pd.Series(dtype=str)


def _half(row: pd.Series, measure: str, scale: float = 1.0) -> list[list[float]] | None:
    if pd.isna(row[f"{measure}_lo"]):
        return None
    return [[scale * (row[measure] - row[f"{measure}_lo"])], [scale * (row[f"{measure}_hi"] - row[measure])]]


def main(argv: list[str] | None = None) -> int:
    def at(parser) -> None:
        parser.add_argument("--at", type=lambda text: [int(e) for e in text.split(",")], default=[],
                            help="epochs to compare the trials at besides the last, e.g. 5,10")

    return script.run(__doc__, lambda results, args: draw(results, args.out, args.format, args.at), argv, extra=at)


if __name__ == "__main__":
    sys.exit(main())

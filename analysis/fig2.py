"""Fig. 2 of the paper (SPEC 1.8): per (run, architecture, space), test and robust accuracy
against epoch, and ΔX against ΔP with the epoch as colour; one file per panel and a combined grid.

    python analysis/fig2.py RUN [RUN ...] [--out DIR] [--format png|svg|pdf]

`raysweep figures` draws it with this code; adapt a copy freely. The data are
`tradeoff.joined(results)`: one row per (run, trial, epoch, space, attack) with the
accuracies and that epoch's headline ΔX, ΔP (`raysweep.analysis.aggregates`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import MaxNLocator
import seaborn as sns

from raysweep.analysis import script, tradeoff
from raysweep.analysis.plotting import attack_label, save
from raysweep.analysis.results import Results
from raysweep.choices import SPACES, safe_name


def draw(results: Results, out: Path, fmt: str = "png") -> list[Path]:
    """Accuracy and ΔX-ΔP panels per (run, arch, dataset, space), and the combined grid `fig2`."""
    data = tradeoff.joined(results)
    order = {space: i for i, space in enumerate(SPACES)}  # the paper's order
    by = tradeoff.groups(results)  # a sweep's trials apart: one row of panels per swept value
    groups = sorted(data.groupby(by, dropna=False), key=lambda kv: (*map(str, kv[0][:3]), order.get(kv[0][3], 2), *map(str, kv[0][4:])))
    if not groups:
        return []
    paths = []
    for key, frame in groups:
        stem = "fig2_" + "_".join(safe_name(str(k)) for k in key[:4])
        stem += "".join(f"_{safe_name(c)}-{safe_name(str(v))}" for c, v in tradeoff.swept_fields(by, key))
        for panel, draw in (("accuracy", _accuracy), ("spreads", _spreads)):
            fig, ax = plt.subplots(figsize=(5.2, 3.8))
            draw(ax, frame, key, by)
            paths.append(save(fig, out / f"{stem}_{panel}.{fmt}"))
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 3.9 * len(groups)), squeeze=False)
    for row, (key, frame) in enumerate(groups):
        for col, draw in enumerate((_accuracy, _spreads)):
            ax = axes[row, col]
            draw(ax, frame, key, by)
            ax.text(-0.2, 1.06, chr(ord("A") + 2 * row + col), transform=ax.transAxes, fontsize=14, fontweight="bold")
    paths.append(save(fig, out / f"fig2.{fmt}"))
    return paths


def _title(key: tuple, by: list[str]) -> str:
    """'arch on dataset, space space', and a sweep's values on a line of their own."""
    run, arch, dataset, space = key[:4]
    swept = tradeoff.swept_values(by, key)
    return f"{arch} on {dataset}, {space} space" + (f"\n{swept}" if swept else "")


def _accuracy(ax: plt.Axes, frame: pd.DataFrame, key: tuple, by: list[str]) -> None:
    space = key[3]
    clean = frame.drop_duplicates(["trial", "epoch"]).assign(series="test (clean)", accuracy=lambda f: 100 * f["test_acc"])
    robust = frame.assign(series=lambda f: f["attack"].map(lambda a: _robust_label(a, space, f)),
                          accuracy=lambda f: 100 * f["robust_acc"])
    long = pd.concat([clean, robust], ignore_index=True)
    sns.lineplot(data=long, x="epoch", y="accuracy", hue="series", errorbar="sd", ax=ax,
                 palette=sns.color_palette("colorblind", long["series"].nunique()), marker="o", markersize=3)
    seeds = tradeoff.count(frame["trial"].nunique(), "seed")
    ax.set(xlabel="epoch", ylabel="accuracy (%)", ylim=(-2, 102), title=f"{_title(key, by)} ({seeds})")
    ax.title.set_fontsize(10 if len(by) == 4 else 8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7, loc="best", title="r: the mean feature range" if space == "feature" else None, title_fontsize=7)


def _robust_label(attack: str, space: str, frame: pd.DataFrame) -> str:
    """The legend of a robust-accuracy line; in feature space with the budget the attack really had."""
    if space != "feature":
        return "robust, " + attack_label(attack)
    last = frame[(frame["attack"] == attack) & (frame["epoch"] == frame["epoch"].max())]["eps"].mean()
    return f"robust, {attack_label(attack)} × r (= {last:.3g} at the end)"


def _spreads(ax: plt.Axes, frame: pd.DataFrame, key: tuple, by: list[str]) -> None:
    space = key[3]
    spreads = frame.drop_duplicates(["trial", "epoch"]).sort_values(["trial", "epoch"])
    unit = "pixel units" if space == "pixel" else "feature units"
    for _, part in spreads.groupby("trial"):
        ax.plot(part["DX"], part["DP"], color="0.75", linewidth=0.8, zorder=1)
    points = ax.scatter(spreads["DX"], spreads["DP"], c=spreads["epoch"], cmap="viridis", s=18, zorder=2)
    bar = plt.colorbar(points, ax=ax, label="epoch")
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    label = spreads["label"].iloc[0]
    ax.set(xlabel=f"ΔX = (Σᵢ Δxᵢ)^½  (√{unit})", ylabel=f"ΔP = (Σᵢ Δpᵢ)^½  (1/√{unit})",
           title=f"ΔX against ΔP, {label} ({tradeoff.count(spreads['trial'].nunique(), 'seed')}):\n{_title(key, by)}")
    ax.title.set_fontsize(10 if len(by) == 4 else 8)
    ax.ticklabel_format(useOffset=False)


def main(argv: list[str] | None = None) -> int:
    return script.run(__doc__, lambda results, args: draw(results, args.out, args.format), argv)


if __name__ == "__main__":
    sys.exit(main())

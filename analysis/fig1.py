"""Fig. 1 of the paper (SPEC 1.8), per trial: the network's class regions over a map of its test points,
clean and attacked, and the region of class 8 at chosen epochs.

    python analysis/fig1.py RUN [RUN ...] [--out DIR] [--format png|svg|pdf] [--epochs 1,21,41]

`raysweep figures` draws it with this code; adapt a copy freely.

Positions: one t-SNE per trial, of the last epoch's clean PCA-50 test features, so every point keeps
its place in every panel and epochs compare. An attacked point is drawn at its clean twin's place:
what changes between A and B is the network's prediction, not the position (the map cannot show
where in feature space the attack moved a point). Regions: each place is shaded with the prediction
the network itself gives the nearest drawn point (clean in A and C, attacked in B and D), its depth
that prediction's confidence; not a vote of neighbours' labels. Points are coloured by that same
prediction, a cross where it is wrong, ringed where the attack changed it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import to_rgb
from sklearn.manifold import TSNE
from sklearn.neighbors import NearestNeighbors

from raysweep.analysis import script
from raysweep.analysis.aggregates import HEADLINE_CLASS
from raysweep.analysis.plotting import PALETTE, attack_label, class_names, save
from raysweep.analysis.results import Results
from raysweep.choices import safe_name

GRID = 150  # shading resolution per axis
CAPTION = ("Positions: one t-SNE per trial of the last epoch's clean test features (every panel, every epoch). "
           "Shading and point colour: the network's prediction (A, C clean; B, D attacked, drawn at the clean point's place); "
           "x: prediction wrong; ring: the attack changed the prediction.")


def places(frame: pd.DataFrame) -> pd.DataFrame:
    """One place per test point for the whole trial: a t-SNE of the last epoch's clean PCA coordinates."""
    last = frame[(frame["epoch"] == frame["epoch"].max()) & (frame["kind"] == "clean")].sort_values("point")
    coords = np.stack(last["coords"].to_numpy()).astype(np.float64)
    perplexity = max(2.0, min(30.0, (len(coords) - 1) / 3))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0).fit_transform(coords)
    return pd.DataFrame({"point": last["point"].to_numpy(), "x": xy[:, 0], "y": xy[:, 1]})


def panel(frame: pd.DataFrame, where: pd.DataFrame, epoch: int, kind: str) -> pd.DataFrame:
    """The points of one panel: place, true label, the network's prediction and confidence on the `kind`
    (clean or attacked) input at `epoch`, whether that prediction is wrong, and whether the attack changed it."""
    at = frame[frame["epoch"] == epoch]
    clean = at[at["kind"] == "clean"].set_index("point")["pred"]
    shown = at[at["kind"] == kind].set_index("point")[["label", "pred", "confidence"]]
    points = where.set_index("point").join(shown, how="inner")
    points["wrong"] = points["pred"] != points["label"]
    points["changed"] = points["pred"] != clean.reindex(points.index)
    return points.reset_index()


def regions(points: pd.DataFrame, extent: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per grid cell: the prediction at the nearest drawn point and its confidence (0 far from every point)."""
    gx, gy = np.meshgrid(np.linspace(extent[0], extent[1], GRID), np.linspace(extent[2], extent[3], GRID))
    xy = points[["x", "y"]].to_numpy()
    finder = NearestNeighbors(n_neighbors=min(2, len(xy))).fit(xy)
    dist, idx = finder.kneighbors(np.column_stack([gx.ravel(), gy.ravel()]), n_neighbors=1)
    pred = points["pred"].to_numpy()[idx[:, 0]]
    depth = points["confidence"].to_numpy()[idx[:, 0]].copy()
    reach = np.median(finder.kneighbors(xy)[0][:, -1]) * 4
    depth[dist[:, 0] > reach] = 0.0
    return pred.reshape(GRID, GRID), depth.reshape(GRID, GRID)


def draw(results: Results, out: Path, fmt: str = "png", epochs: Sequence[int] = (1, 21, 41)) -> list[Path]:
    """Per trial with embeddings: class regions clean and attacked at the last epoch, and class 8 at chosen epochs."""
    paths = []
    for (run, trial), frame in results.embeddings.groupby(["run", "trial"]):
        rows = results.epochs[(results.epochs["run"] == run) & (results.epochs["trial"] == trial)]
        names = class_names(rows["dataset"].iloc[0] if len(rows) else "")
        attack = results.attack_order(run, rows["attack"].unique())[:1]  # embeddings use the configured first
        attacked = f"attacked ({attack_label(attack[0])})" if attack else "attacked"
        available = sorted(frame["epoch"].unique())
        chosen = sorted({min(available, key=lambda e: abs(e - want)) for want in epochs})
        final = available[-1]
        where = places(frame)
        extent = _extent(where, 0.05)
        cols = max(2, len(chosen))
        fig, axes = plt.subplots(3, cols, figsize=(4.2 * cols, 12.8), squeeze=False)
        for ax, kind, letter in ((axes[0, 0], "clean", "A"), (axes[0, 1], "attacked", "B")):
            points = panel(frame, where, final, kind)
            what = "clean" if kind == "clean" else attacked
            _draw_panel(ax, points, extent, kind=kind, title=f"({letter}) {what}, epoch {final}\n{_counts(points, kind)}")
        for ax in axes[0, 2:]:
            ax.axis("off")
        focus = HEADLINE_CLASS if (frame["label"] == HEADLINE_CLASS).any() else None
        if focus is not None:  # C and D zoom on the class's own points, the same window at every epoch
            focus_extent = _extent(where[where["point"].isin(frame.loc[frame["label"] == focus, "point"])], 0.25)
        for col, epoch in enumerate(chosen):
            for row, kind, letter in ((1, "clean", "C"), (2, "attacked", "D")):
                if focus is None:
                    axes[row, col].axis("off")
                    continue
                points = panel(frame, where, epoch, kind)
                shown = points["label"] == focus
                what = f"true {names[focus]} points, " + ("clean" if kind == "clean" else attacked)
                _draw_panel(axes[row, col], points, focus_extent, kind=kind, focus=focus, shown=shown,
                            title=f"({letter}) '{names[focus]}' region, epoch {epoch}\n{what}\n{_counts(points[shown], kind)}")
        for ax in axes[1:, len(chosen):].ravel():
            ax.axis("off")
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=PALETTE[c], label=names[c]) for c in range(len(names))]
        handles += [plt.Line2D([], [], marker="x", linestyle="", color="black", label="prediction wrong"),
                    plt.Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="black",
                               markersize=9, label="attack changed it")]
        fig.legend(handles=handles, title="network's prediction", loc="upper left", bbox_to_anchor=(1.0, 0.97), fontsize=8)
        fig.suptitle(f"{trial} ({run}): the network's class regions over its test points", y=0.995)
        fig.text(0.01, -0.01, CAPTION, fontsize=8, ha="left", va="top", wrap=True)
        paths.append(save(fig, out / f"fig1_{safe_name(run)}_{safe_name(trial)}.{fmt}"))
    return paths


def _extent(points: pd.DataFrame, pad: float) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1) around the points' places, widened by `pad` of their span on each side."""
    lo, hi = points[["x", "y"]].min().to_numpy(), points[["x", "y"]].max().to_numpy()
    margin = pad * (hi - lo) + 1e-9  # one point alone still gets a window
    return (lo[0] - margin[0], hi[0] + margin[0], lo[1] - margin[1], hi[1] + margin[1])


def _counts(points: pd.DataFrame, kind: str) -> str:
    text = f"{int(points['wrong'].sum())} of {len(points)} predicted wrong"
    return text + (f", {int(points['changed'].sum())} changed by the attack" if kind == "attacked" else "")


def _draw_panel(ax: plt.Axes, points: pd.DataFrame, extent: tuple, *, kind: str, title: str, focus: int | None = None,
                shown: pd.Series | None = None) -> None:
    """Regions from every point's prediction; the points of `shown` (all by default) drawn over them."""
    if len(points):
        pred, depth = regions(points, extent)
        rgb = np.array([to_rgb(PALETTE[c]) for c in range(10)])[pred]
        alpha = depth * (0.45 if focus is None else 0.8)
        if focus is not None:
            alpha = np.where(pred == focus, alpha, 0.0)
        ax.imshow(np.dstack([rgb, alpha]), origin="lower", extent=extent, aspect="auto", interpolation="nearest")
        points = points[shown] if shown is not None else points
        colour = np.array([PALETTE[c] for c in points["pred"]])
        right, wrong = ~points["wrong"].to_numpy(), points["wrong"].to_numpy()
        ax.scatter(points["x"][right], points["y"][right], c=colour[right], s=9, edgecolors="none")
        ax.scatter(points["x"][wrong], points["y"][wrong], c=colour[wrong], s=22, marker="x", linewidths=1.2)
        if kind == "attacked":
            changed = points["changed"].to_numpy()
            ax.scatter(points["x"][changed], points["y"][changed], s=60, facecolors="none", edgecolors="black", linewidths=0.6)
    ax.set(title=title, xticks=[], yticks=[], xlabel="t-SNE 1", ylabel="t-SNE 2", xlim=extent[:2], ylim=extent[2:])
    ax.title.set_fontsize(9)


def main(argv: list[str] | None = None) -> int:
    return script.run(__doc__, lambda results, args: draw(results, args.out, args.format, args.epochs), argv, epochs=True)


if __name__ == "__main__":
    sys.exit(main())

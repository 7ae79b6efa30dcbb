"""Fig. 1 of the paper (SPEC 1.8), per trial: a t-SNE of test features with the network's class
regions shaded (depth = confidence), clean and attacked, and the region of class 8 with its clean
and attacked points at chosen epochs.

    python analysis/fig1.py RUN [RUN ...] [--out DIR] [--format png|svg|pdf] [--epochs 1,21,41]

`raysweep figures` draws it with this code; adapt a copy freely. The t-SNE runs on
the PCA-50 coordinates the run stored in `embeddings/`, jointly for clean and
attacked points.
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
from raysweep.analysis.plotting import PALETTE, class_names, save
from raysweep.analysis.results import Results
from raysweep.choices import safe_name

GRID = 150  # shading resolution per axis


def draw(results: Results, out: Path, fmt: str = "png", epochs: Sequence[int] = (1, 21, 41)) -> list[Path]:
    """Per trial with embeddings: t-SNE class regions, clean and attacked, and class 8 at chosen epochs."""
    paths = []
    for (run, trial), frame in results.embeddings.groupby(["run", "trial"]):
        dataset = results.epochs.loc[(results.epochs["run"] == run) & (results.epochs["trial"] == trial), "dataset"]
        names = class_names(dataset.iloc[0] if len(dataset) else "")
        available = sorted(frame["epoch"].unique())
        chosen = sorted({min(available, key=lambda e: abs(e - want)) for want in epochs})
        final = available[-1]
        maps = {e: _tsne_map(frame[frame["epoch"] == e]) for e in sorted({*chosen, final})}
        cols = max(2, len(chosen))
        fig, axes = plt.subplots(3, cols, figsize=(4.2 * cols, 12.4), squeeze=False)
        _regions(axes[0, 0], maps[final], kind="clean", title=f"(A) test points, true label, epoch {final}")
        _regions(axes[0, 1], maps[final], kind="attacked", title=f"(B) attacked test points, true label, epoch {final}")
        for ax in axes[0, 2:]:
            ax.axis("off")
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=PALETTE[c], label=names[c]) for c in range(len(names))]
        fig.legend(handles=handles, title="class (C, D attacked: predicted)", loc="upper left",
                   bbox_to_anchor=(1.0, 0.97), fontsize=8)
        has_focus = (frame["label"] == HEADLINE_CLASS).any()
        for col, epoch in enumerate(chosen):
            for row, kind in ((1, "clean"), (2, "attacked")):
                ax = axes[row, col]
                if has_focus:
                    letter, points = ("C", "clean, true label") if kind == "clean" else ("D", "attacked, coloured by prediction")
                    _regions(ax, maps[epoch], kind=kind, focus=HEADLINE_CLASS,
                             title=f"({letter}) '{names[HEADLINE_CLASS]}' region, epoch {epoch}\n{names[HEADLINE_CLASS]} test points: {points}")
                else:
                    ax.axis("off")
        for ax in axes[1:, len(chosen):].ravel():
            ax.axis("off")
        fig.suptitle(f"{trial} ({run}): class regions of the network in a t-SNE of its test features", y=0.995)
        paths.append(save(fig, out / f"fig1_{safe_name(run)}_{safe_name(trial)}.{fmt}"))
    return paths


def _tsne_map(frame: pd.DataFrame) -> dict:
    """Joint t-SNE of clean and attacked points, and the clean points' predicted class and confidence on a grid."""
    frame = frame.sort_values(["kind", "point"])
    coords = np.stack(frame["coords"].to_numpy()).astype(np.float64)
    perplexity = max(2.0, min(30.0, (len(coords) - 1) / 3))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0).fit_transform(coords)
    clean = (frame["kind"] == "clean").to_numpy()
    lo, hi = xy.min(0), xy.max(0)
    pad = 0.05 * (hi - lo)
    gx, gy = np.meshgrid(np.linspace(lo[0] - pad[0], hi[0] + pad[0], GRID), np.linspace(lo[1] - pad[1], hi[1] + pad[1], GRID))
    cells = np.column_stack([gx.ravel(), gy.ravel()])
    k = min(10, int(clean.sum()))
    finder = NearestNeighbors(n_neighbors=k).fit(xy[clean])
    dist, idx = finder.kneighbors(cells)
    pred = frame["pred"].to_numpy()[clean][idx]  # (cells, k)
    conf = frame["confidence"].to_numpy()[clean][idx]
    vote = np.array([np.bincount(row, minlength=10).argmax() for row in pred])
    depth = (conf * (pred == vote[:, None])).mean(1)  # agreeing neighbours' confidence
    reach = np.median(finder.kneighbors(xy[clean], n_neighbors=min(2, k))[0][:, -1]) * 4
    depth[dist[:, 0] > reach] = 0  # no region far from every test point
    return {"xy": xy, "frame": frame.reset_index(drop=True), "vote": vote.reshape(GRID, GRID),
            "depth": depth.reshape(GRID, GRID), "extent": (gx.min(), gx.max(), gy.min(), gy.max())}


def _regions(ax: plt.Axes, m: dict, *, kind: str, title: str, focus: int | None = None) -> None:
    rgb = np.array([to_rgb(PALETTE[c]) for c in range(10)])[m["vote"]]
    alpha = m["depth"] * (0.45 if focus is None else 0.8)
    if focus is not None:
        alpha = np.where(m["vote"] == focus, alpha, 0.0)
    ax.imshow(np.dstack([rgb, alpha]), origin="lower", extent=m["extent"], aspect="auto", interpolation="bilinear")
    frame = m["frame"]
    show = (frame["kind"] == kind).to_numpy()
    if focus is not None:
        show = show & (frame["label"] == focus).to_numpy()
    # Clean points wear their true label; in the class-8 panels attacked points wear the label the network gives them.
    colour = frame["pred"] if (focus is not None and kind == "attacked") else frame["label"]
    ax.scatter(m["xy"][show, 0], m["xy"][show, 1], c=[PALETTE[c] for c in colour[show]], s=7,
               edgecolors="black" if focus is not None else "none", linewidths=0.3)
    ax.set(title=title, xticks=[], yticks=[], xlabel="t-SNE 1", ylabel="t-SNE 2")
    ax.title.set_fontsize(9)


def main(argv: list[str] | None = None) -> int:
    return script.run(__doc__, lambda results, args: draw(results, args.out, args.format, args.epochs), argv, epochs=True)


if __name__ == "__main__":
    sys.exit(main())

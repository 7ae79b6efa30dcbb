"""The paper's figures from Parquet alone (SPEC 1.8): no model, no Ray.

Fig. 2, per (run, architecture, space): test and robust accuracy against epoch,
and ΔX against ΔP with the epoch as colour; one file per panel and a combined grid.
Fig. 1, per trial: a t-SNE of test features with the network's class regions
shaded (depth = confidence), clean and attacked, and the region of class 8 with
its clean and attacked points at chosen epochs. The t-SNE runs on the PCA-50
coordinates the run stored in `embeddings/`, jointly for clean and attacked points.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from sklearn.neighbors import NearestNeighbors  # noqa: E402

from raysweep import tradeoff  # noqa: E402
from raysweep.results import Results  # noqa: E402

FORMATS = ("png", "svg", "pdf")
DPI = 110
PALETTE = sns.color_palette("colorblind", 10)  # colour-blind safe, one colour per class
CLASS_NAMES = {
    "fashion-mnist": ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"],
    "cifar10": ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}
FOCUS = 8  # the paper's class of Fig. 1 C, D
GRID = 150  # shading resolution per axis


def fig2(results: Results, out: Path, fmt: str = "png") -> list[Path]:
    """Accuracy and ΔX-ΔP panels per (run, arch, dataset, space), and the combined grid `fig2`."""
    data = tradeoff.joined(results)
    order = {"pixel": 0, "feature": 1}  # the paper's order
    groups = sorted(data.groupby(tradeoff.GROUP), key=lambda kv: (*kv[0][:3], order.get(kv[0][3], 2)))
    if not groups:
        return []
    paths = []
    for key, frame in groups:
        stem = "fig2_" + "_".join(_safe(str(k)) for k in key)
        for panel, draw in (("accuracy", _accuracy), ("spreads", _spreads)):
            fig, ax = plt.subplots(figsize=(5.2, 3.8))
            draw(ax, frame, key)
            paths.append(_save(fig, out / f"{stem}_{panel}.{fmt}"))
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 3.9 * len(groups)), squeeze=False)
    for row, (key, frame) in enumerate(groups):
        for col, draw in enumerate((_accuracy, _spreads)):
            ax = axes[row, col]
            draw(ax, frame, key)
            ax.text(-0.14, 1.06, chr(ord("A") + 2 * row + col), transform=ax.transAxes, fontsize=14, fontweight="bold")
    paths.append(_save(fig, out / f"fig2.{fmt}"))
    return paths


def _accuracy(ax: plt.Axes, frame: pd.DataFrame, key: tuple) -> None:
    run, arch, dataset, space = key
    clean = frame.drop_duplicates(["trial", "epoch"]).assign(series="test (clean)", accuracy=lambda f: 100 * f["test_acc"])
    robust = frame.assign(series=lambda f: "robust, " + f["attack"].map(_short), accuracy=lambda f: 100 * f["robust_acc"])
    long = pd.concat([clean, robust], ignore_index=True)
    sns.lineplot(data=long, x="epoch", y="accuracy", hue="series", errorbar="sd", ax=ax,
                 palette=sns.color_palette("colorblind", long["series"].nunique()), marker="o", markersize=3)
    ax.set(xlabel="epoch", ylabel="accuracy (%)", ylim=(-2, 102), title=f"{arch} on {dataset}: {space} space")
    ax.legend(fontsize=7, loc="best", title=None)


def _spreads(ax: plt.Axes, frame: pd.DataFrame, key: tuple) -> None:
    run, arch, dataset, space = key
    spreads = frame.drop_duplicates(["trial", "epoch"]).sort_values(["trial", "epoch"])
    unit = "pixel units" if space == "pixel" else "feature units"
    for _, part in spreads.groupby("trial"):
        ax.plot(part["DX"], part["DP"], color="0.75", linewidth=0.8, zorder=1)
    points = ax.scatter(spreads["DX"], spreads["DP"], c=spreads["epoch"], cmap="viridis", s=18, zorder=2)
    plt.colorbar(points, ax=ax, label="epoch")
    label = spreads["label"].iloc[0]
    ax.set(xlabel=f"ΔX = (Σᵢ Δxᵢ)^½  (√{unit})", ylabel=f"ΔP = (Σᵢ Δpᵢ)^½  (1/√{unit})",
           title=f"ΔX against ΔP, {label} ({tradeoff.count(spreads['trial'].nunique(), 'seed')})")
    ax.ticklabel_format(useOffset=False)


def fig1(results: Results, out: Path, fmt: str = "png", epochs: Sequence[int] = (1, 21, 41)) -> list[Path]:
    """Per trial with embeddings: t-SNE class regions, clean and attacked, and class 8 at chosen epochs."""
    paths = []
    for (run, trial), frame in results.embeddings.groupby(["run", "trial"]):
        dataset = results.epochs.loc[(results.epochs["run"] == run) & (results.epochs["trial"] == trial), "dataset"]
        names = CLASS_NAMES.get(dataset.iloc[0] if len(dataset) else "", [str(c) for c in range(10)])
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
        has_focus = (frame["label"] == FOCUS).any()
        for col, epoch in enumerate(chosen):
            for row, kind in ((1, "clean"), (2, "attacked")):
                ax = axes[row, col]
                if has_focus:
                    letter, points = ("C", "clean, true label") if kind == "clean" else ("D", "attacked, coloured by prediction")
                    _regions(ax, maps[epoch], kind=kind, focus=FOCUS,
                             title=f"({letter}) '{names[FOCUS]}' region, epoch {epoch}\n{names[FOCUS]} test points: {points}")
                else:
                    ax.axis("off")
        for ax in axes[1:, len(chosen):].ravel():
            ax.axis("off")
        fig.suptitle(f"{trial} ({run}): class regions of the network in a t-SNE of its test features", y=0.995)
        paths.append(_save(fig, out / f"fig1_{_safe(run)}_{_safe(trial)}.{fmt}"))
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


def _short(attack: str) -> str:
    """'pgd:eps=8/255,alpha=2/255,steps=4' -> 'PGD ε=8/255, α=2/255, 4 steps'."""
    name, _, rest = attack.partition(":")
    fields = dict(item.split("=", 1) for item in rest.split(",") if "=" in item)
    parts = [f"{symbol}={fields[key]}" for key, symbol in (("eps", "ε"), ("alpha", "α")) if key in fields]
    parts += [f"{fields['steps']} steps"] if "steps" in fields else []
    return f"{name.upper()} " + ", ".join(parts)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path

"""The trade-off report: how ΔX, ΔP and (robust) accuracy move together over epochs, and how often
the uncertainty relations hold, from Parquet alone.

Correlations are Spearman's rho over epochs, per seed and pooled over seeds, with a
95% interval from Fisher's z with the Spearman variance 1.06/(n-3) (Fieller,
Hartley and Pearson, 1957); pooling averages z weighted by n-3.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from raysweep.analysis import aggregates
from raysweep.analysis.results import Results

GROUP = ["run", "arch", "dataset", "space"]
PAPER_HALF = 0.5  # the paper's Δx·Δp >= 1/2 (Eq. 18)
BOUND_RTOL = 1e-6  # the finite-interval bound holds to 1e-6 of itself (SPEC 1.3); feature bounds are ~1e-7
FLAT = 0.01  # "nearly flat": sx within 1% of the uniform packet's (b - a)/sqrt(12)
PAIRS = [("DX", "DP"), ("DX", "test_acc"), ("DX", "robust_acc"), ("DP", "test_acc"), ("DP", "robust_acc")]


def count(n: int, word: str) -> str:
    """'1 seed', '2 seeds'."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def spreads_by_epoch(results: Results) -> pd.DataFrame:
    """ΔX, ΔP per (run, trial, epoch, space), the dataset's headline class, with trial identity."""
    if results.packets.empty:
        return pd.DataFrame(columns=["run", "trial", "arch", "dataset", "seed", "epoch", "space", "DX", "DP", "label"])
    frames = []
    for run, packets in results.packets.groupby("run"):
        info = packets[["trial", "arch", "seed"]].drop_duplicates()
        frames.append(aggregates.headline(packets).merge(info, on="trial").assign(run=run))
    head = pd.concat(frames, ignore_index=True)
    return head[["run", "trial", "arch", "dataset", "seed", "epoch", "space", "DX", "DP", "label"]]


def joined(results: Results) -> pd.DataFrame:
    """One row per (run, trial, epoch, space, attack): accuracies with that epoch's ΔX, ΔP."""
    keys = ["run", "trial", "arch", "dataset", "seed", "epoch", "space"]
    return results.epochs.merge(spreads_by_epoch(results), on=keys, how="inner")


def fisher_interval(rho: float, n: int) -> tuple[float, float]:
    """95% interval for Spearman's rho from n points; NaN if n < 4 or rho undefined."""
    if n < 4 or not np.isfinite(rho):
        return math.nan, math.nan
    z, se = math.atanh(max(min(rho, 0.999999), -0.999999)), math.sqrt(1.06 / (n - 3))
    return math.tanh(z - 1.96 * se), math.tanh(z + 1.96 * se)


def correlations(results: Results) -> pd.DataFrame:
    """Spearman rho of each pair in PAIRS over epochs: per seed, and pooled ("all") per group and attack."""
    rows = []
    for key, frame in joined(results).groupby(GROUP + ["attack"]):
        for x, y in PAIRS:
            per_seed = []
            for seed, part in frame.groupby("seed"):
                rho = _spearman(part[x], part[y])
                per_seed.append((len(part), rho))
                rows.append(_row(key, x, y, str(seed), len(part), rho, *fisher_interval(rho, len(part))))
            rows.append(_row(key, x, y, "all", *_pooled(per_seed)))
    return pd.DataFrame(rows)


def pair_fractions(results: Results) -> pd.DataFrame:
    """Per group: pairs with a packet, and the fractions that satisfy 1/2, the finite bound, and are nearly flat."""
    packets = results.packets[results.packets["beta"] > 0]
    rows = []
    for key, frame in packets.groupby(GROUP):
        last = frame[frame["epoch"] == frame.groupby("trial")["epoch"].transform("max")]
        for scope, part in (("all epochs", frame), ("last epoch", last)):
            product = part["sx"] * part["sp"]
            uniform = (part["b"] - part["a"]) / math.sqrt(12)
            rows.append({
                **dict(zip(GROUP, key)), "scope": scope, "pairs": len(part),
                "paper_half_holds": float((product >= PAPER_HALF).mean()),
                "finite_bound_holds": float((product >= part["bound"] * (1 - BOUND_RTOL)).mean()),
                "nearly_flat": float(((part["sx"] - uniform).abs() <= FLAT * uniform).mean()),
                "flagged": int(part["flagged"].sum()),  # pairs whose estimated error exceeds the trial's tol
                "median_product": float(product.median()),
            })
    return pd.DataFrame(rows)


def _spearman(x: pd.Series, y: pd.Series) -> float:
    if len(x) < 3 or x.nunique() < 2 or y.nunique() < 2:
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def _pooled(per_seed: list[tuple[int, float]]) -> tuple[int, float, float, float]:
    usable = [(n, rho) for n, rho in per_seed if n >= 4 and np.isfinite(rho)]
    total = sum(n for n, _ in per_seed)
    if not usable:
        return total, math.nan, math.nan, math.nan
    weight = sum(n - 3 for n, _ in usable)
    z = sum((n - 3) * math.atanh(max(min(rho, 0.999999), -0.999999)) for n, rho in usable) / weight
    se = math.sqrt(1.06 / weight)
    return total, math.tanh(z), math.tanh(z - 1.96 * se), math.tanh(z + 1.96 * se)


def _row(key: tuple, x: str, y: str, seed: str, n: int, rho: float, lo: float, hi: float) -> dict:
    return {**dict(zip(GROUP + ["attack"], key)), "x": x, "y": y, "seed": seed, "n": n, "rho": rho, "lo": lo, "hi": hi}

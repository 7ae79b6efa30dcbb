"""The trade-off report's statistics: how ΔX, ΔP and (robust) accuracy move together over epochs,
how often the uncertainty relations hold, and what the measure itself forces, from Parquet alone.

Epochs of one training run are a time series, not independent draws: two series that both
trend over training correlate whatever links them. So per seed the report gives Spearman's
rho over epochs beside rho of the epoch-to-epoch changes (co-movement beyond the common
trend), and no interval; across seeds, the seed is the unit: the mean of the per-seed rho
with a 95% t-interval over seeds on Fisher's z. A seed whose series is constant has no rho
and is not counted; with fewer than two seeds that have one, no interval exists.
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
B_ROUNDOFF = 1e-15  # times |B|: the float64 round-off of 1 - B, all a near-flat packet's bound is (B ~ 1)
FLAT = 0.01  # "nearly flat": sx within 1% of the uniform packet's (b - a)/sqrt(12)
PAIRS = [("DX", "DP"), ("DX", "test_acc"), ("DX", "robust_acc"), ("DP", "test_acc"), ("DP", "robust_acc")]


def groups(results: Results) -> list[str]:
    """What the report and Fig. 2 keep apart: run, arch, dataset, space, and every swept field."""
    return GROUP + results.swept


def select(frame: pd.DataFrame, columns: list[str], key: tuple) -> pd.DataFrame:
    """The rows of `frame` whose `columns` equal `key` (NaN equal to NaN: a field one run did not sweep)."""
    mask = pd.Series(True, index=frame.index)
    for column, value in zip(columns, key):
        mask &= frame[column].isna() if pd.isna(value) else frame[column] == value
    return frame[mask]


def swept_fields(by: list[str], key: tuple) -> list[tuple[str, object]]:
    """(field, value) of each swept field of a group key made by `groups`, leaving out those the key's run
    did not sweep (NaN)."""
    return [(c, v) for c, v in zip(by[len(GROUP):], key[len(GROUP):]) if pd.notna(v)]


def swept_values(by: list[str], key: tuple) -> str:
    """'training=pgd:..., lr=0.01': the swept fields of a group key made by `groups` (empty when none)."""
    return ", ".join(f"{c}={v}" for c, v in swept_fields(by, key))


def at_epoch(frame: pd.DataFrame, epoch: int | None = None) -> pd.DataFrame:
    """The rows of `epoch`, or (None) of each trial's last epoch; a trial is (run, trial) where runs differ."""
    if epoch is not None:
        return frame[frame["epoch"] == epoch]
    trial = ["run", "trial"] if "run" in frame else ["trial"]
    return frame[frame["epoch"] == frame.groupby(trial)["epoch"].transform("max")]


def count(n: int, word: str) -> str:
    """'1 seed', '2 seeds'."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def spreads_by_epoch(results: Results) -> pd.DataFrame:
    """ΔX, ΔP per (run, trial, epoch, space), the dataset's headline class, with trial identity and swept fields."""
    columns = ["run", "trial", "arch", "dataset", "seed", *results.swept, "epoch", "space", "DX", "DP", "label"]
    if results.packets.empty:
        return pd.DataFrame(columns=columns)
    frames = []
    for run, packets in results.packets.groupby("run"):
        info = packets[["trial", "arch", "seed", *results.swept]].drop_duplicates("trial")
        frames.append(aggregates.headline(packets).merge(info, on="trial").assign(run=run))
    return pd.concat(frames, ignore_index=True)[columns]


def joined(results: Results) -> pd.DataFrame:
    """One row per (run, trial, epoch, space, attack): accuracies with that epoch's ΔX, ΔP."""
    keys = ["run", "trial", "arch", "dataset", "seed", *results.swept, "epoch", "space"]
    return results.epochs.merge(spreads_by_epoch(results), on=keys, how="inner")


ACROSS = "across seeds"  # the seed column of the rows that summarise the seeds


def correlations(results: Results) -> pd.DataFrame:
    """Per group, attack and pair of PAIRS: one row per seed (n epochs, rho over epochs, rho_changes of
    the epoch-to-epoch changes) and one row `seed == ACROSS` (n = the seeds with a rho, their mean rho and
    rho_changes, and lo, hi: a 95% t-interval over those seeds on Fisher's z; NaN below two seeds)."""
    rows, by = [], groups(results)
    for key, frame in joined(results).groupby(by + ["attack"], dropna=False):
        for x, y in PAIRS:
            per_seed = []
            for seed, part in frame.sort_values("epoch").groupby("seed"):
                rho, changes = _spearman(part[x], part[y]), _spearman(part[x].diff().iloc[1:], part[y].diff().iloc[1:])
                per_seed.append((rho, changes))
                rows.append(_row(by, key, x, y, str(seed), len(part), rho, changes, math.nan, math.nan))
            rows.append(_row(by, key, x, y, ACROSS, *_across(per_seed)))
    return pd.DataFrame(rows)


def _across(per_seed: list[tuple[float, float]]) -> tuple[int, float, float, float, float]:
    """(seeds with a rho, mean rho, mean rho of changes, lo, hi): the t-interval over seeds on z."""
    usable = [(rho, changes) for rho, changes in per_seed if np.isfinite(rho)]
    if not usable:
        return 0, math.nan, math.nan, math.nan, math.nan
    rho = float(np.mean([r for r, _ in usable]))
    finite_changes = [c for _, c in usable if np.isfinite(c)]
    changes = float(np.mean(finite_changes)) if finite_changes else math.nan
    if len(usable) < 2:
        return len(usable), rho, changes, math.nan, math.nan
    z = np.arctanh(np.clip([r for r, _ in usable], -0.999999, 0.999999))
    half = stats.t.ppf(0.975, len(z) - 1) * z.std(ddof=1) / math.sqrt(len(z))
    return len(usable), rho, changes, math.tanh(z.mean() - half), math.tanh(z.mean() + half)


def flat_spreads(results: Results) -> pd.DataFrame:
    """Per (run, trial, epoch, space): the headline ΔX beside the value a flat packet forces,
    ΔX_flat = (Σᵢ (bᵢ - aᵢ)/√12)^½ over the headline's pairs, and their relative distance."""
    packets = results.packets[results.packets["beta"] > 0].assign(flat=lambda f: (f["b"] - f["a"]) / math.sqrt(12))
    head = spreads_by_epoch(results)
    if packets.empty or head.empty:
        return head.assign(DX_flat=np.nan, distance=np.nan)
    keys = ["run", "trial", "epoch", "space"]
    per_class = packets.groupby([*keys, "class"])["flat"].sum().pow(0.5).rename("DX_flat").reset_index()
    per_class = per_class.merge(packets[["run", "trial", "dataset"]].drop_duplicates(), on=["run", "trial"])
    mean = per_class.groupby(keys)["DX_flat"].mean().rename("mean")
    eight = per_class[per_class["class"] == aggregates.HEADLINE_CLASS].set_index(keys)["DX_flat"].rename("eight")
    both = pd.concat([mean, eight], axis=1).reset_index().merge(head, on=keys)
    both["DX_flat"] = np.where(both["dataset"].isin(aggregates.MEAN_DATASETS), both["mean"], both["eight"])
    both["distance"] = (both["DX"] - both["DX_flat"]).abs() / both["DX_flat"]
    return both.drop(columns=["mean", "eight"])


MEASURES = ["test_acc", "robust_acc", "DX", "DP"]


def across_trials(results: Results, epoch: int | None = None, data: pd.DataFrame | None = None) -> pd.DataFrame:
    """Trials compared (SPEC 7): per run, arch, dataset, swept fields, space and attack, the mean over
    seeds of test and robust accuracy, ΔX and ΔP at `epoch` (default: each trial's last), with a 95%
    t-interval over the seeds (`*_lo`, `*_hi`; NaN with one seed) and `seeds`, their number.
    `data` is `joined(results)` where the caller has it already."""
    data = at_epoch(joined(results) if data is None else data, epoch)
    by, rows = groups(results) + ["attack"], []
    for key, part in data.groupby(by, dropna=False):
        row = {**dict(zip(by, key)), "epoch": int(part["epoch"].max()), "seeds": int(part["seed"].nunique())}
        for measure in MEASURES:
            values = part[measure].dropna().to_numpy(dtype=float)
            mean = float(values.mean()) if len(values) else math.nan
            half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else math.nan
            row.update({measure: mean, f"{measure}_lo": mean - half, f"{measure}_hi": mean + half})
        rows.append(row)
    return pd.DataFrame(rows)


def pair_fractions(results: Results) -> pd.DataFrame:
    """Per group: pairs with a packet, and the fractions that satisfy 1/2, the finite bound, and are nearly flat."""
    packets = results.packets[results.packets["beta"] > 0]
    rows, by = [], groups(results)
    for key, frame in packets.groupby(by, dropna=False):
        for scope, part in (("all epochs", frame), ("last epoch", at_epoch(frame))):
            product = part["sx"] * part["sp"]
            uniform = (part["b"] - part["a"]) / math.sqrt(12)
            rows.append({
                **dict(zip(by, key)), "scope": scope, "pairs": len(part),
                "paper_half_holds": float((product >= PAPER_HALF).mean()),
                "finite_bound_holds": float(bound_holds(product, part["bound"], part["boundary_term"]).mean()),
                "nearly_flat": float(((part["sx"] - uniform).abs() <= FLAT * uniform).mean()),
                "flagged": int(part["flagged"].sum()),  # pairs whose estimated error exceeds the trial's tol
                "median_product": float(product.median()),
            })
    return pd.DataFrame(rows)


def bound_holds(product, bound, boundary_term):
    """sx·sp >= |1 - B|/2 to 1e-6 of the bound, or to the round-off of 1 - B where B ~ 1 cancels."""
    return product >= bound * (1 - BOUND_RTOL) - B_ROUNDOFF * abs(boundary_term)


def _spearman(x: pd.Series, y: pd.Series) -> float:
    if len(x) < 3 or x.nunique() < 2 or y.nunique() < 2:
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def _row(by: list[str], key: tuple, x: str, y: str, seed: str, n: int, rho: float, changes: float, lo: float,
         hi: float) -> dict:
    return {**dict(zip(by + ["attack"], key)), "x": x, "y": y, "seed": seed, "n": n, "rho": rho,
            "rho_changes": changes, "lo": lo, "hi": hi}

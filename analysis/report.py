"""The trade-off report: how ΔX, ΔP and (robust) accuracy move together over epochs, per attack and
space, how often the uncertainty relations hold, and what the measure itself forces, as Markdown
(report.md) with its numbers as CSV.

    python analysis/report.py RUN [RUN ...] [--out DIR]

`raysweep figures` writes it with this code; adapt a copy freely. The statistics are
`raysweep.analysis.tradeoff`: Spearman's rho over epochs and of epoch-to-epoch changes per seed,
and an interval only across seeds (epochs of one run are a time series, not a sample).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from raysweep.analysis import aggregates, script, tradeoff
from raysweep.analysis.plotting import attack_label
from raysweep.analysis.results import Results

WEAK = 0.3  # |rho| below this is no clear relation, even within one seed
VERDICTS = [  # (pair, what, words if they move oppositely, words if together); the first two involve no attack
    (("DX", "DP"), "ΔX and ΔP", "move in opposite directions (the paper's trade-off)", "move together, against the paper's trade-off"),
    (("DP", "test_acc"), "ΔP and test accuracy", "move oppositely", "move together"),
    (("DP", "robust_acc"), "ΔP and robust accuracy", "move oppositely (the paper's reading: robustness falls as the attack operator spreads)",
     "move together, against the paper's reading"),
]
ATTACK_FREE = ("test_acc", "DP")  # pairs whose y (or both) no attack touches: stated once per space


def write(results: Results, out: Path) -> list[Path]:
    """report.md, correlations.csv and pairs.csv in `out`; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    corr, pairs = tradeoff.correlations(results), tradeoff.pair_fractions(results)
    paths = [out / "correlations.csv", out / "pairs.csv", out / "report.md"]
    corr.to_csv(paths[0], index=False)
    pairs.to_csv(paths[1], index=False)
    paths[2].write_text(markdown(results, corr, pairs, tradeoff.flat_spreads(results)))
    return paths


def markdown(results: Results, corr: pd.DataFrame, pairs: pd.DataFrame, flat: pd.DataFrame) -> str:
    runs = ", ".join(sorted(results.epochs["run"].unique())) or "(none)"
    lines = [
        "# Trade-off report", "",
        f"Runs: {runs}. ΔX = (Σᵢ Δxᵢ)^½ and ΔP = (Σᵢ Δpᵢ)^½ over the sampled dimensions (paper Eq. 23). "
        "Per seed: Spearman's rho over epochs, and rho of the epoch-to-epoch changes (what moves together "
        "beyond a trend both series share over training). Epochs of one run are not independent draws, so "
        "the only interval is across seeds: a 95% t-interval over the seeds' rho (Fisher z), when at least "
        "two seeds have one. Every verdict names its attack and space and holds for those alone.", "",
    ]
    if results.notes:
        lines += ["**Incomplete:**", *[f"- {note}" for note in results.notes], ""]
    by = tradeoff.groups(results)
    trial_keys = [c for c in by if c != "space"]
    for key, group in corr.groupby(by, dropna=False):
        run, arch, dataset, space = key[:4]
        pair_row = tradeoff.select(pairs[pairs["scope"] == "all epochs"], by, key)
        trial = tuple(v for c, v in zip(by, key) if c != "space")
        seeds = tradeoff.select(results.epochs, trial_keys, trial)["seed"].nunique()
        swept = f", {values}" if (values := tradeoff.swept_values(by, key)) else ""
        lines += [f"## {arch} on {dataset}{swept}, {space} space ({run}; {tradeoff.count(seeds, 'seed')}; "
                  f"{aggregates.headline_label(dataset)})", ""]
        lines += _bounds(pair_row)
        lines += _forced(tradeoff.select(flat, by, key), pair_row, space)
        order = results.attack_order(run, group["attack"].unique())
        free = group[(group["attack"] == order[0]) & group["y"].isin(ATTACK_FREE)]  # the same under every attack
        lines += [_direction(free, pair, what, negative, positive, None, space)
                  for pair, what, negative, positive in VERDICTS if pair[1] in ATTACK_FREE]
        lines += _table(free)
        for attack in order:
            rows = group[(group["attack"] == attack) & ~group["y"].isin(ATTACK_FREE)]
            lines += ["", f"### Under {attack}", ""]
            lines += [_direction(rows, pair, what, negative, positive, attack, space)
                      for pair, what, negative, positive in VERDICTS if pair[1] not in ATTACK_FREE]
            lines.append(_spaces(tradeoff.select(results.epochs, trial_keys, trial), attack))
            lines += _table(rows)
        lines.append("")
    if results.swept:
        lines += _across(tradeoff.across_trials(results), results.swept)
    if corr.empty:
        lines.append("No epochs with packets yet: nothing to report.")
    lines += ["All correlations, per seed and across seeds, are in correlations.csv.", ""]
    return "\n".join(lines)


def _table(rows: pd.DataFrame) -> list[str]:
    """The rows as a Markdown table; the across-seeds rows only where there are several seeds."""
    lines = ["", "| x | y | seed | n | rho over epochs | rho of changes | 95% interval across seeds |",
             "|---|---|---|---|---|---|---|"]
    several = rows.loc[rows["seed"] == tradeoff.ACROSS, "n"].max() > 1
    for _, row in rows[(rows["seed"] != tradeoff.ACROSS) | several].iterrows():
        interval = f"[{row['lo']:.3f}, {row['hi']:.3f}]" if pd.notna(row["lo"]) else "none"
        n = tradeoff.count(int(row["n"]), "seed") if row["seed"] == tradeoff.ACROSS else f"{row['n']} epochs"
        lines.append(f"| {row['x']} | {row['y']} | {row['seed']} | {n} | {_num(row['rho'])} | "
                     f"{_num(row['rho_changes'])} | {interval} |")
    return lines


def _across(table: pd.DataFrame, swept: list[str]) -> list[str]:
    """The trials of a sweep compared at their last epoch, per space and attack (sweep.csv, sweep.png)."""
    lines = ["## Across trials (last epoch)", "",
             f"Trials grouped by {', '.join(swept)}; mean over seeds [95% t-interval over seeds]. With this few groups "
             "the report compares pairs, not a correlation: where two groups' robust accuracies are apart, does ΔP "
             "move the other way, and are its own intervals apart?", ""]
    for (space, attack), part in table.groupby(["space", "attack"], sort=False):
        part = part.sort_values("robust_acc")
        lines += [f"### {space} space, under {attack}", "",
                  f"| {' | '.join(swept)} | seeds | test acc | robust acc | ΔX | ΔP |", "|" + "---|" * (len(swept) + 5)]
        for _, row in part.iterrows():
            cells = [_cell(row, m, 100 if "acc" in m else 1) for m in tradeoff.MEASURES]
            lines.append(f"| {' | '.join(str(row[c]) for c in swept)} | {row['seeds']} | {' | '.join(cells)} |")
        if len(part) > 1:
            lines += ["", "- " + _order(part, swept)]
        lines.append("")
    return lines


def _order(part: pd.DataFrame, swept: list[str]) -> str:
    """How ΔP moves between groups whose robust accuracies are apart (`part` sorted by robust accuracy):
    for each pair whose 95% intervals over seeds do not overlap, whether ΔP falls or rises from the less
    to the more robust, and whether ΔP's own intervals are apart too."""
    name = lambda row: " · ".join(str(row[c]) for c in swept)  # noqa: E731
    if part["robust_acc_lo"].isna().all():
        return "One seed per group: no interval says which differences would hold again, so none is read."
    said, falls, apart = [], 0, 0
    rows = [row for _, row in part.iterrows()]
    for i, low in enumerate(rows):
        for high in rows[i + 1:]:
            if not high["robust_acc_lo"] > low["robust_acc_hi"]:
                continue
            fall = high["DP"] < low["DP"]
            separate = high["DP_hi"] < low["DP_lo"] or high["DP_lo"] > low["DP_hi"]
            falls, apart = falls + fall, apart + separate
            said.append(f"{name(low)} → {name(high)}: robust {100 * low['robust_acc']:.1f}% → {100 * high['robust_acc']:.1f}%, "
                        f"ΔP {low['DP']:.4g} → {high['DP']:.4g} ({'falls' if fall else 'rises'}; its intervals "
                        f"{'apart' if separate else 'overlap'})")
    if not said:
        return "No two groups' robust accuracies are apart (their intervals over seeds overlap): nothing to order."
    return (f"Between groups whose robust-accuracy intervals are apart, ΔP falls as robust accuracy rises in {falls} of "
            f"{len(said)} pairs, with ΔP's own intervals apart in {apart}: " + "; ".join(said) + ".")


def _cell(row: pd.Series, measure: str, scale: float) -> str:
    value, lo, hi = (scale * row[measure], scale * row[f"{measure}_lo"], scale * row[f"{measure}_hi"])
    text = f"{value:.1f}" if scale == 100 else f"{value:.4g}"
    return text + (f" [{lo:.1f}, {hi:.1f}]" if scale == 100 else f" [{lo:.4g}, {hi:.4g}]") if pd.notna(lo) else text


def _num(value: float) -> str:
    return "undefined" if pd.isna(value) else f"{value:.3f}"


def _bounds(pair_row: pd.DataFrame) -> list[str]:
    """What the packets say whatever the attack: how often the paper's 1/2 and the exact bound hold."""
    out = []
    if len(pair_row):
        p = pair_row.iloc[0]
        half = "holds" if p["paper_half_holds"] >= 0.95 else "does **not** hold"
        out.append(
            f"- Paper's Δx·Δp ≥ 1/2 (Eq. 18) {half} here: {p['paper_half_holds']:.1%} of {p['pairs']} pairs "
            f"(median Δx·Δp {p['median_product']:.3g})."
        )
        bound = "holds, as it must" if p["finite_bound_holds"] == 1 else "is violated: an estimator error to report"
        out.append(f"- The exact finite-interval bound Δx·Δp ≥ |1 − B|/2 {bound} ({p['finite_bound_holds']:.2%} of pairs).")
        if p["flagged"]:
            out.append(f"- **{tradeoff.count(int(p['flagged']), 'pair')} of {p['pairs']} are flagged**: their estimated error on "
                       "Δx or Δp exceeds the run's tol (column `flagged`; raise nodes, or see BENCHMARKS.md).")
        else:
            out.append(f"- Every pair's estimated error on Δx and Δp is within the run's tol (none of {p['pairs']} flagged).")
    return out


def _forced(flat: pd.DataFrame, pair_row: pd.DataFrame, space: str) -> list[str]:
    """What the measure forces: flat packets, and ΔX against the value a flat packet gives it."""
    if flat.empty or flat["DX_flat"].isna().all():
        return []
    share = pair_row.iloc[0]["nearly_flat"] if len(pair_row) else float("nan")
    worst, median = flat["distance"].max(), flat["distance"].median()
    first, last = flat[flat["epoch"] == flat["epoch"].min()], flat[flat["epoch"] == flat["epoch"].max()]
    growth = last["DX_flat"].mean() / first["DX_flat"].mean() - 1
    text = (f"- What the measure forces: {share:.1%} of the packets are nearly flat (Δx within 1% of (b − a)/√12), and "
            f"the headline ΔX is within {_share(worst)} (median {_share(median)}) of its flat value √(Σᵢ(bᵢ − aᵢ)/√12) at every epoch")
    if worst <= tradeoff.FLAT:
        text += ": ΔX is pinned by the intervals, not shaped by the network"
        if abs(growth) > tradeoff.FLAT:
            text += (f"; it moves with them (the {space} ranges [a, b] of the training set: the flat value moves by "
                     f"{growth:+.1%} from the first epoch to the last"
                     + (", and the feature attack budget is tied to the same ranges)" if space == "feature" else ")"))
        else:
            text += "; the intervals stay put, so ΔX barely moves"
        text += ". Any trade-off in this space is carried by ΔP."
    else:
        text += ": the network shapes ΔX beyond the intervals."
    return [text]


def _share(value: float) -> str:
    return f"{value:.2%}" if value >= 1e-3 else f"{value:.1e} relative"


def _direction(rows: pd.DataFrame, pair: tuple[str, str], what: str, negative: str, positive: str,
               attack: str | None, space: str) -> str:
    mine = rows[(rows["x"] == pair[0]) & (rows["y"] == pair[1])]
    if mine.empty:
        return f"- {what}: not measured."
    across = mine[mine["seed"] == tradeoff.ACROSS].iloc[0]
    per_seed = mine[mine["seed"] != tradeoff.ACROSS]
    where = f"{what}, {space} space" + (f", under {attack_label(attack)}" if attack else " (no attack involved)")
    left_out = per_seed[per_seed["rho"].isna()]["seed"].tolist()
    note = f" (seed {', '.join(left_out)} left out: a series is constant there)" if left_out else ""
    if across["n"] == 0:
        return f"- {where}: undefined: a series is constant in every seed."
    seeds = int(across["n"])
    rho = f"rho {across['rho']:.2f} over epochs" + (f" (mean of {seeds} seeds)" if seeds > 1 else "")
    changes = "undefined" if pd.isna(across["rho_changes"]) else f"{across['rho_changes']:.2f}"
    text = f"- {where}: {rho}, {changes} for epoch-to-epoch changes{note}: "
    if seeds < 2:
        if abs(across["rho"]) < WEAK:
            return text + "no clear relation over this one seed's epochs; with one seed no interval across seeds exists."
        trend = (negative if across["rho"] < 0 else positive).split(" (")[0]
        return text + (f"over this one seed's epochs they {trend}; with one seed no interval across seeds exists "
                       "(a trend both series share over training makes rho large by itself).")
    interval = f"[{across['lo']:.2f}, {across['hi']:.2f}]"
    if across["hi"] < 0:
        return text + f"they {negative}, in the interval across seeds {interval}."
    if across["lo"] > 0:
        return text + f"they {positive}, in the interval across seeds {interval}."
    return text + f"no clear relation: the interval across seeds {interval} spans 0."


def _spaces(epochs: pd.DataFrame, attack: str) -> str:
    """Pixel against feature robust accuracy at the last epoch, from the epochs rows of one group's trials."""
    last = tradeoff.at_epoch(epochs[epochs["attack"] == attack])
    by_space = last.groupby("space")[["robust_acc", "eps", "budget_scale"]].mean()
    if {"pixel", "feature"} - set(by_space.index):
        return "- Feature against pixel attacks: only one space measured."
    pixel, feature = by_space.loc["pixel"], by_space.loc["feature"]
    verdict = "more" if feature["robust_acc"] < pixel["robust_acc"] else "not more"
    return (
        f"- At the last epoch under {attack_label(attack)}, robust accuracy is {pixel['robust_acc']:.1%} in pixel space "
        f"(ε = {pixel['eps']:.4g}) and {feature['robust_acc']:.1%} in feature space (ε × mean feature range = "
        f"{pixel['eps']:.4g} × {feature['budget_scale']:.4g} = {feature['eps']:.4g}): attacking features is {verdict} "
        "effective at these budgets (the paper says more)."
    )


def main(argv: list[str] | None = None) -> int:
    return script.run(__doc__, lambda results, args: write(results, args.out), argv)


if __name__ == "__main__":
    sys.exit(main())

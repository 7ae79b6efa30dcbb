"""The trade-off report: how ΔX, ΔP and (robust) accuracy move together over epochs, and how often
the uncertainty relations hold, as Markdown (report.md) with its numbers as CSV.

    python analysis/report.py RUN [RUN ...] [--out DIR]

`raysweep figures` writes it with this code; adapt a copy freely. The statistics
(Spearman's rho per seed and pooled, the bound fractions) are `raysweep.analysis.tradeoff`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from raysweep.analysis import aggregates, script, tradeoff
from raysweep.analysis.results import Results


def write(results: Results, out: Path) -> list[Path]:
    """report.md, correlations.csv and pairs.csv in `out`; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    corr, pairs = tradeoff.correlations(results), tradeoff.pair_fractions(results)
    paths = [out / "correlations.csv", out / "pairs.csv", out / "report.md"]
    corr.to_csv(paths[0], index=False)
    pairs.to_csv(paths[1], index=False)
    paths[2].write_text(markdown(results, corr, pairs))
    return paths


def markdown(results: Results, corr: pd.DataFrame, pairs: pd.DataFrame) -> str:
    runs = ", ".join(sorted(results.epochs["run"].unique())) or "(none)"
    lines = [
        "# Trade-off report", "",
        f"Runs: {runs}. Spearman's rho over epochs with a 95% interval (Fisher z, variance 1.06/(n-3)), "
        "pooled over seeds; ΔX = (Σᵢ Δxᵢ)^½ and ΔP = (Σᵢ Δpᵢ)^½ over the sampled dimensions (paper Eq. 23).", "",
    ]
    if results.notes:
        lines += ["**Incomplete:**", *[f"- {note}" for note in results.notes], ""]
    for key, group in corr[corr["seed"] == "all"].groupby(tradeoff.GROUP):
        run, arch, dataset, space = key
        pair_row = pairs[(pairs[tradeoff.GROUP] == list(key)).all(axis=1) & (pairs["scope"] == "all epochs")]
        seeds = results.epochs.query("run == @run and arch == @arch and dataset == @dataset")["seed"].nunique()
        lines += [f"## {arch} on {dataset}, {space} space ({run}; {tradeoff.count(seeds, 'seed')}; "
                  f"{aggregates.headline_label(dataset)})", ""]
        lines += _bounds(pair_row)
        # One verdict per attack, in the order the run's config lists them: a relation seen under one
        # attack is not stated for the others.
        for attack in results.attack_order(run, group["attack"].unique()):
            rows = group[group["attack"] == attack].set_index(["x", "y"])
            lines += ["", f"### Under {attack}", ""]
            lines += _verdicts(rows, results, key, attack)
            lines += ["", "| x | y | n | rho | 95% interval |", "|---|---|---|---|---|"]
            for (x, y), row in rows.iterrows():
                lines.append(f"| {x} | {y} | {row['n']} | {row['rho']:.3f} | [{row['lo']:.3f}, {row['hi']:.3f}] |")
        lines.append("")
    if corr.empty:
        lines.append("No epochs with packets yet: nothing to report.")
    lines += ["Each attack's correlations stand for that attack alone; all of them are in correlations.csv.", ""]
    return "\n".join(lines)


def _bounds(pair_row: pd.DataFrame) -> list[str]:
    """What the packets say whatever the attack: how often the paper's 1/2 and the exact bound hold."""
    out = []
    if len(pair_row):
        p = pair_row.iloc[0]
        half = "holds" if p["paper_half_holds"] >= 0.95 else "does **not** hold"
        out.append(
            f"- Paper's Δx·Δp ≥ 1/2 (Eq. 18) {half} here: {p['paper_half_holds']:.1%} of {p['pairs']} pairs "
            f"(median Δx·Δp {p['median_product']:.3g}); {p['nearly_flat']:.0%} of the packets are nearly flat."
        )
        bound = "holds, as it must" if p["finite_bound_holds"] == 1 else "is violated: an estimator error to report"
        out.append(f"- The exact finite-interval bound Δx·Δp ≥ |1 − B|/2 {bound} ({p['finite_bound_holds']:.2%} of pairs).")
        if p["flagged"]:
            out.append(f"- **{tradeoff.count(int(p['flagged']), 'pair')} of {p['pairs']} are flagged**: their estimated error on "
                       "Δx or Δp exceeds the run's tol (column `flagged`; raise nodes, or see BENCHMARKS.md).")
        else:
            out.append(f"- Every pair's estimated error on Δx and Δp is within the run's tol (none of {p['pairs']} flagged).")
    return out


def _verdicts(first: pd.DataFrame, results: Results, key: tuple, attack: str) -> list[str]:
    out = []
    out.append("- " + _direction(first, ("DX", "DP"), "ΔX and ΔP", "move in opposite directions over training (the paper's trade-off)",
                                  "move together, against the paper's trade-off"))
    out.append("- " + _direction(first, ("DP", "robust_acc"), "ΔP and robust accuracy",
                                  "move oppositely: robustness falls as the attack operator spreads (the paper's reading)",
                                  "rise together, against the paper's reading"))
    out.append("- " + _direction(first, ("DP", "test_acc"), "ΔP and test accuracy", "move oppositely", "rise together"))
    out.append(_spaces(results, key, attack))
    return out


def _direction(first: pd.DataFrame, pair: tuple[str, str], what: str, negative: str, positive: str) -> str:
    if pair not in first.index:
        return f"{what}: not measured."
    row = first.loc[pair]
    text = f"{what} (rho {row['rho']:.2f} [{row['lo']:.2f}, {row['hi']:.2f}]): "
    if row["hi"] < 0:
        return text + negative + "."
    if row["lo"] > 0:
        return text + positive + "."
    return text + "no clear relation on this run (the interval spans 0 or is undefined)."


def _spaces(results: Results, key: tuple, attack: str) -> str:
    run, arch, dataset, _ = key
    epochs = results.epochs.query("run == @run and arch == @arch and dataset == @dataset and attack == @attack")
    last = epochs[epochs["epoch"] == epochs.groupby("trial")["epoch"].transform("max")]
    robust = last.groupby("space")["robust_acc"].mean()
    if {"pixel", "feature"} - set(robust.index):
        return "- Feature against pixel attacks: only one space measured."
    verdict = "more" if robust["feature"] < robust["pixel"] else "not more"
    return (
        f"- At the last epoch, robust accuracy is {robust['pixel']:.1%} in pixel space and {robust['feature']:.1%} in "
        f"feature space under {attack}: attacking features is {verdict} effective (the paper says more; the "
        "feature budget is the pixel one times the mean feature range)."
    )


def main(argv: list[str] | None = None) -> int:
    return script.run(__doc__, lambda results, args: write(results, args.out), argv)


if __name__ == "__main__":
    sys.exit(main())

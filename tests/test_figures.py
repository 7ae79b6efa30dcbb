"""Figures and the trade-off report from a tiny synthetic run directory."""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import scipy.stats

from raysweep.analysis import tradeoff
from raysweep.analysis.plotting import attack_label
from raysweep.scripts import fig1, fig2, report
from raysweep.run import local
from raysweep.cli import main
from raysweep.core.threat import MNIST_PGD, PAPER_PGD
from raysweep.run.config import record
from raysweep.run.presets import resolve
from raysweep.errors import UserError
from raysweep.analysis.results import load
from raysweep.store import RunStore

ROOT = Path(__file__).resolve().parents[1]

# Two attacks whose configured order (8/255 first, as in the paper preset) is not their alphabetical one.
OVERRIDES = {"seed": "0,1", "epochs": "5", "limit_train": "96", "limit_test": "32", "dims": "4", "nodes": "8",
             "embed_points": "24", "head_epochs": "1", "attacks": f"{PAPER_PGD}+{MNIST_PGD}"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "tiny"
    store = RunStore(str(path))
    trials = resolve("smoke", OVERRIDES).trials()
    store.create({"trials": {t.name: record(t) for t in trials}})
    local.run_trials(store, trials, progress=lambda line: None)
    return path


def test_every_figure_and_report_file_is_written_and_non_empty(run_dir: Path, tmp_path: Path) -> None:
    assert main(["figures", str(run_dir), "--out", str(tmp_path), "--epochs", "1,3"]) == 0
    names = {p.name for p in tmp_path.iterdir()}
    expected = {"fig2.png", "report.md", "correlations.csv", "pairs.csv",
                "fig1_tiny_mnist_conv3-synthetic-s0.png", "fig1_tiny_mnist_conv3-synthetic-s1.png"}
    expected |= {f"fig2_tiny_mnist_conv3_synthetic_{s}_{p}.png" for s in ("pixel", "feature") for p in ("accuracy", "spreads")}
    assert expected <= names
    assert all((tmp_path / name).stat().st_size > 1000 for name in expected if name.endswith(".png"))
    text = (tmp_path / "report.md").read_text()
    assert "Paper's Δx·Δp ≥ 1/2" in text and "finite-interval bound" in text and "pixel space" in text


def test_the_report_gives_a_verdict_per_attack_in_the_configured_order(run_dir: Path, tmp_path: Path) -> None:
    """Issue 17: the report took the alphabetically first attack and called it "the run's first"."""
    report.write(load([str(run_dir)]), tmp_path)
    text = (tmp_path / "report.md").read_text()
    section = text[text.index("## mnist_conv3 on synthetic, pixel space"):].split("\n## ")[0]
    first, second = section.index(f"### Under {PAPER_PGD}"), section.index(f"### Under {MNIST_PGD}")
    assert sorted([PAPER_PGD, MNIST_PGD])[0] == MNIST_PGD and first < second  # configured, not alphabetical
    for chunk, attack in ((section[first:second], PAPER_PGD), (section[second:], MNIST_PGD)):
        assert f"- ΔP and robust accuracy, pixel space, under {attack_label(attack)}: rho" in chunk
        assert "| DP | robust_acc |" in chunk and "ΔX and ΔP" not in chunk and "| DP | test_acc |" not in chunk
    # What no attack touches is said once, before the attacks, and says so.
    assert section[:first].count("- ΔX and ΔP, pixel space (no attack involved): rho") == 1
    assert section.startswith("## mnist_conv3 on synthetic, pixel space (tiny; 2 seeds; class 8)") and "seed(s)" not in text
    assert "the run's first" not in text


def test_svg_format_is_available(run_dir: Path, tmp_path: Path) -> None:
    paths = fig2.draw(load([str(run_dir)]), tmp_path, "svg")
    assert paths and all(p.suffix == ".svg" and p.read_text().lstrip().startswith("<?xml") for p in paths)


def direct_series(run_dir: Path, trial: str, space: str, attack: str) -> pd.DataFrame:
    """Class 8's ΔX, ΔP and the accuracies per epoch, straight from the Parquet files."""
    packets, epochs = pd.read_parquet(run_dir / "packets"), pd.read_parquet(run_dir / "epochs")
    c8 = packets[(packets["class"] == 8) & (packets["space"] == space) & (packets["trial"] == trial)]
    spreads = c8.groupby("epoch").agg(DX=("sx", lambda s: math.sqrt(s.sum())), DP=("sp", lambda s: math.sqrt(s.sum())))
    acc = epochs[(epochs["space"] == space) & (epochs["trial"] == trial) & (epochs["attack"] == attack)]
    return spreads.join(acc.set_index("epoch")[["test_acc", "robust_acc"]]).sort_index()


def test_report_correlations_equal_a_direct_pandas_computation(run_dir: Path) -> None:
    corr = tradeoff.correlations(load([str(run_dir)]))
    for x, y in tradeoff.PAIRS:
        rhos = []
        for seed in (0, 1):
            both = direct_series(run_dir, f"mnist_conv3-synthetic-s{seed}", "pixel", PAPER_PGD)
            row = corr[(corr["space"] == "pixel") & (corr["seed"] == str(seed)) & (corr["attack"] == PAPER_PGD)
                       & (corr["x"] == x) & (corr["y"] == y)].iloc[0]
            direct = both[x].corr(both[y], method="spearman")
            changes = both[x].diff().corr(both[y].diff(), method="spearman")
            assert row["n"] == 5 and math.isnan(row["lo"]) and math.isnan(row["hi"])  # no interval from epochs
            for got, want in ((row["rho"], direct), (row["rho_changes"], changes)):
                assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want)
            rhos += [direct] if not math.isnan(direct) else []
        across = corr[(corr["space"] == "pixel") & (corr["seed"] == tradeoff.ACROSS) & (corr["attack"] == PAPER_PGD)
                      & (corr["x"] == x) & (corr["y"] == y)].iloc[0]
        assert across["n"] == len(rhos)
        if len(rhos) == 2:
            z = [math.atanh(r) for r in rhos]
            half = scipy.stats.t.ppf(0.975, 1) * abs(z[0] - z[1]) / math.sqrt(2) / math.sqrt(2)
            assert across["rho"] == pytest.approx(sum(rhos) / 2)
            assert (across["lo"], across["hi"]) == pytest.approx((math.tanh(sum(z) / 2 - half), math.tanh(sum(z) / 2 + half)))


def test_across_seeds_counts_only_seeds_with_a_rho_and_needs_two_for_an_interval() -> None:
    n, rho, changes, lo, hi = tradeoff._across([(0.5, 0.1), (-0.2, float("nan")), (float("nan"), float("nan"))])
    assert n == 2 and rho == pytest.approx(0.15) and changes == pytest.approx(0.1) and lo < rho < hi
    n, rho, changes, lo, hi = tradeoff._across([(0.5, 0.1), (float("nan"), 0.3)])  # a constant series: left out
    assert (n, rho, changes) == (1, 0.5, 0.1) and math.isnan(lo) and math.isnan(hi)
    assert tradeoff._across([(float("nan"), float("nan"))])[0] == 0


def test_one_seed_gets_no_interval_across_seeds(run_dir: Path, tmp_path: Path) -> None:
    results = load([str(run_dir)])
    one = dataclasses.replace(results, **{t: getattr(results, t).query("seed == 0") for t in ("epochs", "packets")})
    report.write(one, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "(tiny; 1 seed; class 8)" in text
    verdicts = [line for line in text.splitlines() if line.startswith("- Δ") and " rho " in line]
    assert verdicts and all("no interval across seeds exists" in line or "undefined" in line for line in verdicts)
    assert "interval across seeds [" not in text and "| across seeds |" not in text
    corr = pd.read_csv(tmp_path / "correlations.csv")
    assert corr.loc[corr["seed"] == tradeoff.ACROSS, ["lo", "hi"]].isna().all().all()


def test_report_sentences_cite_the_numbers_they_rest_on(run_dir: Path, tmp_path: Path) -> None:
    results = load([str(run_dir)])
    report.write(results, tmp_path)
    text = (tmp_path / "report.md").read_text()
    corr = pd.read_csv(tmp_path / "correlations.csv", dtype={"seed": str})
    epochs = pd.read_parquet(run_dir / "epochs")
    checked = 0
    for section in text.split("\n## ")[1:]:
        space = re.match(r"mnist_conv3 on synthetic, (\w+) space", section).group(1)
        for chunk in re.split(r"\n### Under ", section):
            attack = PAPER_PGD if chunk.startswith(PAPER_PGD) else MNIST_PGD if chunk.startswith(MNIST_PGD) else PAPER_PGD
            for what, x, y in (("ΔX and ΔP", "DX", "DP"), ("ΔP and test accuracy", "DP", "test_acc"),
                               ("ΔP and robust accuracy", "DP", "robust_acc")):
                found = re.search(rf"- {what}, {space} space[^:]*: rho (\S+) over epochs(?: \(mean of 2 seeds\))?, "
                                  r"(\S+) for epoch-to-epoch changes", chunk)
                row = corr[(corr["space"] == space) & (corr["attack"] == attack) & (corr["seed"] == tradeoff.ACROSS)
                           & (corr["x"] == x) & (corr["y"] == y)].iloc[0]
                if re.search(rf"- {what}, {space} space[^:]*: undefined: a series is constant in every seed", chunk):
                    assert row["n"] == 0
                    checked += 1
                if not found:
                    continue
                assert float(found.group(1)) == pytest.approx(row["rho"], abs=0.005)
                assert found.group(2) == "undefined" or float(found.group(2)) == pytest.approx(row["rho_changes"], abs=0.005)
                checked += 1
            robust = re.search(r"robust accuracy is (\S+)% in pixel space \(ε = (\S+)\) and (\S+)% in feature space "
                               r"\(ε × mean feature range = \S+ × (\S+) = (\S+)\)", chunk)
            if robust and chunk.startswith(("pgd", "fgsm")):
                last = epochs[(epochs["attack"] == attack) & (epochs["epoch"] == 5)].groupby("space").mean(numeric_only=True)
                assert float(robust.group(1)) == pytest.approx(100 * last.loc["pixel", "robust_acc"], abs=0.05)
                assert float(robust.group(3)) == pytest.approx(100 * last.loc["feature", "robust_acc"], abs=0.05)
                assert float(robust.group(5)) == pytest.approx(last.loc["feature", "eps"], rel=1e-3)
                assert float(robust.group(5)) == pytest.approx(float(robust.group(2)) * float(robust.group(4)), rel=2e-3)
                checked += 1
    assert checked >= 2 * (2 + 2 * 2)  # per space: two attack-free verdicts, and per attack one verdict and one line


def test_what_the_measure_forces_is_the_flat_packets_value(run_dir: Path) -> None:
    flat = tradeoff.flat_spreads(load([str(run_dir)]))
    packets = pd.read_parquet(run_dir / "packets").query("beta > 0 and `class` == 8")
    for (trial, epoch, space), part in packets.groupby(["trial", "epoch", "space"]):
        row = flat[(flat["trial"] == trial) & (flat["epoch"] == epoch) & (flat["space"] == space)].iloc[0]
        assert row["DX_flat"] == pytest.approx(math.sqrt(((part["b"] - part["a"]) / math.sqrt(12)).sum()))
        assert row["distance"] == pytest.approx(abs(math.sqrt(part["sx"].sum()) / row["DX_flat"] - 1))


def test_cifar10s_headline_is_the_class_mean_in_figures_and_report(run_dir: Path, tmp_path: Path) -> None:
    results = load([str(run_dir)])
    as_cifar = dataclasses.replace(results, epochs=results.epochs.assign(dataset="cifar10"),
                                   packets=results.packets.assign(dataset="cifar10"))
    head = tradeoff.spreads_by_epoch(as_cifar)
    packets = pd.read_parquet(run_dir / "packets").query("trial == 'mnist_conv3-synthetic-s0' and space == 'pixel' and epoch == 2")
    mean_dx = packets.groupby("class")["sx"].sum().pow(0.5).mean()
    row = head[(head["trial"] == "mnist_conv3-synthetic-s0") & (head["space"] == "pixel") & (head["epoch"] == 2)].iloc[0]
    assert row["DX"] == pytest.approx(mean_dx) and row["label"] == "mean over classes"
    assert row["DX"] != pytest.approx(math.sqrt(packets.loc[packets["class"] == 8, "sx"].sum()))
    report.write(as_cifar, tmp_path)
    assert "## mnist_conv3 on cifar10, pixel space (tiny; 2 seeds; mean over classes)" in (tmp_path / "report.md").read_text()


def test_fig1_panel_b_shows_each_attacked_points_own_prediction_at_its_clean_place(run_dir: Path) -> None:
    frame = load([str(run_dir)]).embeddings.query("trial == 'mnist_conv3-synthetic-s0'")
    where = fig1.places(frame)
    assert len(where) == frame.query("epoch == 5 and kind == 'clean'").shape[0]
    for epoch in (1, 5):
        attacked = fig1.panel(frame, where, epoch, "attacked").set_index("point")
        stored = frame.query("epoch == @epoch").pivot(index="point", columns="kind", values="pred")
        assert (attacked["pred"] == stored["attacked"]).all()  # the network's prediction of the attacked input
        assert (attacked["changed"] == (stored["attacked"] != stored["clean"])).all()
        assert (attacked["wrong"] == (attacked["pred"] != attacked["label"])).all()
        assert attacked[["x", "y"]].equals(where.set_index("point")[["x", "y"]])  # one place per point, every epoch
    pred, depth = fig1.regions(fig1.panel(frame, where, 5, "attacked"), (*where["x"].agg(["min", "max"]), *where["y"].agg(["min", "max"])))
    assert set(pred.ravel()) <= set(attacked["pred"]) and depth.max() <= 1


@pytest.mark.parametrize("script", ["fig1", "fig2", "report", "spreads"])
def test_the_analysis_scripts_run_on_a_tiny_run(script: str, run_dir: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "analysis" / f"{script}.py"), str(run_dir), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    written = {p.name for p in tmp_path.iterdir()}
    assert written, f"{script}.py wrote nothing"
    if script == "spreads":
        table = pd.read_csv(tmp_path / "spreads.csv")
        row = table[(table["trial"] == "mnist_conv3-synthetic-s1") & (table["space"] == "feature") & (table["epoch"] == 3)].iloc[0]
        direct = direct_series(run_dir, "mnist_conv3-synthetic-s1", "feature", PAPER_PGD).loc[3]
        assert row["attack"] == PAPER_PGD and row["DX"] == pytest.approx(direct["DX"]) and row["DP"] == pytest.approx(direct["DP"])
        assert row["robust_acc"] == pytest.approx(direct["robust_acc"])


def test_pair_fractions_count_the_bounds(run_dir: Path) -> None:
    # The tiny run's packets all sit below 1/2 and on the bound, so fractions of 0 and 1 would pass
    # whatever is counted: move a quarter of the pixel pairs above 1/2 and a quarter to 1e-5 of their
    # bound under it (inside an absolute 1e-6, since pixel bounds are ~3e-5).
    results = load([str(run_dir)])
    packets = results.packets.copy()
    pixel = packets.index[(packets["space"] == "pixel") & (packets["beta"] > 0)]
    above, under = pixel[0::4], pixel[1::4]
    packets.loc[above, "sx"] = 0.6 / packets.loc[above, "sp"]
    packets.loc[under, "sx"] = packets.loc[under, "bound"] * (1 - 1e-5) / packets.loc[under, "sp"]
    pairs = tradeoff.pair_fractions(dataclasses.replace(results, packets=packets))
    row = pairs[(pairs["space"] == "pixel") & (pairs["scope"] == "all epochs")].iloc[0]
    assert row["pairs"] == len(pixel)
    assert row["paper_half_holds"] == len(above) / len(pixel)
    assert row["finite_bound_holds"] == 1 - len(under) / len(pixel)
    last = packets.loc[pixel].groupby("trial")["epoch"].transform("max") == packets.loc[pixel, "epoch"]
    row = pairs[(pairs["space"] == "pixel") & (pairs["scope"] == "last epoch")].iloc[0]
    assert row["pairs"] == last.sum() and row["paper_half_holds"] == last[above].sum() / last.sum()


def test_partial_runs_are_drawn_with_a_note(run_dir: Path, tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "partial"))
    trials = resolve("smoke", {**OVERRIDES, "seed": "0", "epochs": "9"}).trials()
    store.create({"trials": {t.name: record(t) for t in trials}})
    for table in ("epochs", "packets", "embeddings"):
        source = run_dir / table / "trial=mnist_conv3-synthetic-s0"
        target = tmp_path / "partial" / table / "trial=mnist_conv3-synthetic-s0"
        target.mkdir(parents=True)
        for f in sorted(source.glob("epoch-000[12].parquet")):
            (target / f.name).write_bytes(f.read_bytes())
    results = load([str(tmp_path / "partial"), str(run_dir)])
    assert any("2 of 9 epochs" in note for note in results.notes)
    assert set(results.epochs["run"]) == {"partial", "tiny"}
    paths = report.write(results, tmp_path / "out")
    assert "**Incomplete:**" in (tmp_path / "out" / "report.md").read_text()
    assert fig2.draw(results, tmp_path / "out") and paths


def test_not_a_run_directory_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["figures", str(tmp_path)]) == 2
    assert "is not a raysweep run (no manifest.json)" in capsys.readouterr().err


def test_missing_columns_are_a_clear_error(run_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    RunStore(str(broken)).create({"trials": {}})
    frame = pd.read_parquet(run_dir / "epochs").drop(columns=["robust_acc"])
    (broken / "epochs" / "trial=x").mkdir(parents=True)
    frame.drop(columns="trial").to_parquet(broken / "epochs" / "trial=x" / "epoch-0001.parquet")
    with pytest.raises(UserError, match="epochs lacks the columns robust_acc"):
        load([str(broken)])


def test_bad_epoch_list_is_a_clear_error(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["figures", str(run_dir), "--epochs", "one"]) == 2
    assert "give comma-separated epoch numbers" in capsys.readouterr().err


def test_the_default_epochs_snap_to_the_runs_own(run_dir: Path, tmp_path: Path) -> None:
    """A 5-epoch run drawn without --epochs (make demo draws a 20-epoch one): 1, 21, 41 become 1 and 5."""
    assert main(["figures", str(run_dir), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "fig1_tiny_mnist_conv3-synthetic-s0.png").stat().st_size > 1000


def test_epochs_the_run_does_not_have_are_a_clear_error(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["figures", str(run_dir), "--epochs", "1,99", "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--epochs 1,99: the run has no epoch 99 (epochs 1-5 are there)" in err, err
    assert not (tmp_path / "f").exists()


def test_figures_job_entry_point_smoke_test(run_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "jobs" / "figures.py"), str(run_dir), "--out", str(tmp_path), "--smoke-test"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "fig2.png").exists() and not list(tmp_path.glob("fig1_*"))

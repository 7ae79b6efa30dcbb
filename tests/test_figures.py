"""Figures and the trade-off report from a tiny synthetic run directory."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd
import pytest

from raysweep.analysis import tradeoff
from raysweep.scripts import fig2, report
from raysweep.run import local
from raysweep.cli import main
from raysweep.core.threat import MNIST_PGD, PAPER_PGD
from raysweep.run.config import record
from raysweep.run.presets import resolve
from raysweep.errors import UserError
from raysweep.analysis.results import load
from raysweep.store import RunStore

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
    for chunk in (section[first:second], section[second:]):
        assert "- ΔP and robust accuracy (rho" in chunk and "| DP | robust_acc |" in chunk
    assert section.startswith("## mnist_conv3 on synthetic, pixel space (tiny; 2 seeds; class 8)") and "seed(s)" not in text
    assert "the run's first" not in text


def test_svg_format_is_available(run_dir: Path, tmp_path: Path) -> None:
    paths = fig2.draw(load([str(run_dir)]), tmp_path, "svg")
    assert paths and all(p.suffix == ".svg" and p.read_text().lstrip().startswith("<?xml") for p in paths)


def test_report_correlations_equal_a_direct_pandas_computation(run_dir: Path) -> None:
    results = load([str(run_dir)])
    corr = tradeoff.correlations(results)
    packets = pd.read_parquet(run_dir / "packets")
    epochs = pd.read_parquet(run_dir / "epochs")
    c8 = packets[(packets["class"] == 8) & (packets["space"] == "pixel") & (packets["trial"] == "mnist_conv3-synthetic-s0")]
    spreads = c8.groupby("epoch").agg(DX=("sx", lambda s: math.sqrt(s.sum())), DP=("sp", lambda s: math.sqrt(s.sum())))
    attack = epochs["attack"].iloc[0]
    acc = epochs[(epochs["space"] == "pixel") & (epochs["trial"] == "mnist_conv3-synthetic-s0") & (epochs["attack"] == attack)]
    both = spreads.join(acc.set_index("epoch")[["test_acc", "robust_acc"]])
    for x, y in tradeoff.PAIRS:
        row = corr[(corr["space"] == "pixel") & (corr["seed"] == "0") & (corr["attack"] == attack)
                   & (corr["x"] == x) & (corr["y"] == y)].iloc[0]
        direct = both[x].corr(both[y], method="spearman")
        if math.isnan(direct):
            assert math.isnan(row["rho"])
        else:
            assert row["rho"] == pytest.approx(direct)
            lo, hi = tradeoff.fisher_interval(direct, len(both))
            assert (row["lo"], row["hi"]) == pytest.approx((lo, hi))


def test_pooled_correlation_weights_seeds_by_fisher_z() -> None:
    per_seed = [(10, 0.5), (20, -0.2)]
    n, rho, lo, hi = tradeoff._pooled(per_seed)
    z = (7 * math.atanh(0.5) + 17 * math.atanh(-0.2)) / 24
    assert n == 30 and rho == pytest.approx(math.tanh(z)) and lo < rho < hi


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

"""Sweeping any field (SPEC 7, issue 16): repeated keys and sweep files make one product grid, whose
trials have short safe names and whose swept values are columns of epochs/ and in the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from raysweep.choices import check_name
from raysweep.cli import main
from raysweep.core.threat import MNIST_PGD, PAPER_PGD
from raysweep.run import config as cfg
from raysweep.run.presets import PRESETS, resolve

TINY = ["epochs=1", "limit_train=64", "limit_test=16", "nodes=4", "embed_points=0", "head_epochs=1"]
TRADES = "trades:eps=0.1,alpha=0.025,steps=4,beta=6"


def test_repeated_keys_sweep_their_product_and_values_keep_their_commas() -> None:
    overrides = cfg.parse_overrides(["lr=0.001", "lr=0.01", f"attacks={MNIST_PGD}", f"attacks={PAPER_PGD}+fgsm:eps=0.1",
                                     "seed=0,1"])
    trials = resolve("smoke", overrides).trials()
    assert len(trials) == 2 * 2 * 2
    assert {(t.train.lr, "+".join(a.spec for a in t.attacks), t.seed) for t in trials} == {
        (lr, attacks, seed) for lr in (0.001, 0.01) for attacks in (MNIST_PGD, f"{PAPER_PGD}+fgsm:eps=0.1") for seed in (0, 1)}
    names = [t.name for t in trials]
    assert len(set(names)) == len(names) and all(check_name(n) == n and len(n) <= 80 for n in names)
    assert all(t.swept == ("lr", "attacks") for t in trials)
    assert "mnist_conv3-synthetic-s0-lr_0.001-attacks_pgd_eps_-" in names[0]


def test_a_sweep_file_in_yaml_or_json_is_the_same_grid_and_the_command_line_replaces_its_keys(tmp_path: Path) -> None:
    space = {"training": {"grid_search": ["standard", MNIST_PGD]}, "lr": {"grid_search": [0.001, 0.01]}, "epochs": 3}
    (tmp_path / "s.json").write_text(json.dumps(space))
    (tmp_path / "s.yaml").write_text(f"training:\n  grid_search: [standard, '{MNIST_PGD}']\nlr: {{grid_search: [0.001, 0.01]}}\nepochs: 3\n")
    line = cfg.parse_overrides(["training=standard", f"training={MNIST_PGD}", "lr=0.001", "lr=0.01", "epochs=3"])
    expected = [t.name for t in resolve("smoke", line).trials()]
    for name in ("s.json", "s.yaml"):
        assert [t.name for t in resolve("smoke", cfg.sweep_file(str(tmp_path / name))).trials()] == expected
    replaced = {**cfg.sweep_file(str(tmp_path / "s.yaml")), **cfg.parse_overrides(["lr=0.1"])}
    trials = resolve("smoke", replaced).trials()
    assert len(trials) == 2 and {t.train.lr for t in trials} == {0.1} and {t.train.epochs for t in trials} == {3}


def test_every_swept_value_is_a_column_of_epochs_and_in_the_manifest(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["run", "--preset", "smoke", "--executor", "local", "--out", str(out), *TINY,
                 "training=standard", f"training={TRADES}", "dims=2", "dims=3"]) == 0
    first = capsys.readouterr().out.splitlines()[0]  # a key given twice sweeps: the run says so first
    assert first.startswith("raysweep: 4 trial(s); ") and "training swept over 2 values" in first and "dims swept over 2" in first
    epochs = pd.read_parquet(out / "epochs")
    assert {"training", "dims"} <= set(epochs.columns) and epochs["dims"].dtype.kind == "i"
    by_trial = epochs.groupby("trial")[["training", "dims"]].first()
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(by_trial) == 4
    for trial, row in by_trial.iterrows():
        entry = manifest["trials"][trial]
        assert (entry["training"], entry["dims"]) == (row["training"], row["dims"])
        assert set(entry["swept"].split(",")) == {"training", "dims"}
    assert manifest["sweep"]["swept"] == {"training": ["standard", TRADES], "dims": [2, 3]}
    assert main(["resume", str(out)]) == 0  # the swept trials come back by name from the manifest


def test_an_unset_optional_value_is_a_null_of_its_type(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["run", "--preset", "smoke", "--executor", "local", "--out", str(out), *TINY, "dims=2", "dims=all",
                 "spaces=pixel"]) == 0
    epochs = pd.read_parquet(out / "epochs")
    assert epochs["dims"].dtype.kind in "if" and epochs["dims"].isna().sum() > 0 and (epochs["dims"] == 2).any()


def test_the_robust_preset_compares_the_three_regimes_over_two_seeds() -> None:
    trials = resolve("robust", {}).trials()
    assert PRESETS["robust"]["dataset"] == "fashion-mnist"
    assert sorted({t.train.training for t in trials}) == sorted(["standard", MNIST_PGD, TRADES])
    assert {t.seed for t in trials} == {0, 1} and len(trials) == 6 and {t.train.epochs for t in trials} == {15}


@pytest.mark.parametrize("items, message", [
    (["lr=0.1", "lr=0.1"], "lr=0.1 is given twice"),
    (["swept=lr"], "unknown key 'swept'"),  # set by the sweep, never by hand
    (["tag=x"], "unknown key 'tag'"),
])
def test_bad_sweeps_are_refused_by_name(items: list[str], message: str) -> None:
    with pytest.raises(cfg.UserError, match=message):
        cfg.parse_overrides(items)


@pytest.fixture(scope="module")
def regimes_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "regimes"
    tiny = [item for item in TINY if not item.startswith("epochs=")]
    assert main(["run", "--preset", "smoke", "--executor", "local", "--out", str(out), *tiny, "epochs=2", "dims=2",
                 "seed=0,1", "training=standard", f"training={MNIST_PGD}", f"attacks={MNIST_PGD}"]) == 0
    return out


def test_figures_compare_the_trials_of_a_sweep_with_seeds_as_the_unit(regimes_run: Path, tmp_path: Path) -> None:
    import scipy.stats

    assert main(["figures", str(regimes_run), "--out", str(tmp_path), "--no-tsne"]) == 0
    names = {p.name for p in tmp_path.iterdir()}
    assert {"sweep.png", "sweep.csv"} <= names
    assert {f"fig2_regimes_mnist_conv3_synthetic_pixel_training-{t}_spreads.png" for t in ("standard", "pgd_eps_0.1_alpha_0.025_steps_4")} <= names
    table = pd.read_csv(tmp_path / "sweep.csv")
    epochs = pd.read_parquet(regimes_run / "epochs").query("epoch == 2 and space == 'pixel'")
    for training, part in epochs.groupby("training"):
        row = table[(table["training"] == training) & (table["space"] == "pixel")].iloc[0]
        values = part["robust_acc"].to_numpy()
        half = scipy.stats.t.ppf(0.975, 1) * values.std(ddof=1) / 2 ** 0.5
        assert row["seeds"] == 2 and row["robust_acc"] == pytest.approx(values.mean())
        assert (row["robust_acc_lo"], row["robust_acc_hi"]) == pytest.approx((values.mean() - half, values.mean() + half))
    report = (tmp_path / "report.md").read_text()
    assert "## Across trials (last epoch)" in report and "| training | seeds | test acc | robust acc | ΔX | ΔP |" in report
    assert f"## mnist_conv3 on synthetic, training={MNIST_PGD}, pixel space (regimes; 2 seeds; class 8)" in report
    orders = [line for line in report.splitlines() if line.startswith(("- Between groups", "- No two groups"))]
    assert len(orders) == 2  # per space (one attack), a pairwise comparison or why there is none


def test_readmes_sweep_file_runs_as_written(tmp_path: Path) -> None:
    import readme

    text = readme.section("Using it")
    (tmp_path / "sweep.yaml").write_text(text.split("```yaml\n")[1].split("```")[0])
    trials = resolve("demo", cfg.sweep_file(str(tmp_path / "sweep.yaml"))).trials()
    assert len(trials) == 3 * 2 and {t.train.epochs for t in trials} == {15}
    assert {t.train.training.split(":")[0] for t in trials} == {"standard", "pgd", "trades"}


def test_trials_are_compared_at_chosen_epochs_too(regimes_run: Path, tmp_path: Path, capsys) -> None:
    from raysweep.scripts import sweep

    assert sweep.main([str(regimes_run), "--out", str(tmp_path), "--at", "1"]) == 0
    at_one = pd.read_csv(tmp_path / "sweep_epoch-1.csv")
    epochs = pd.read_parquet(regimes_run / "epochs").query("epoch == 1 and space == 'feature'")
    for training, part in epochs.groupby("training"):
        row = at_one[(at_one["training"] == training) & (at_one["space"] == "feature")].iloc[0]
        assert row["epoch"] == 1 and row["test_acc"] == pytest.approx(part["test_acc"].mean())
    assert (tmp_path / "sweep.png").exists() and (tmp_path / "sweep_epoch-1.png").exists()
    capsys.readouterr()
    assert sweep.main([str(regimes_run), "--out", str(tmp_path / "none"), "--at", "9"]) == 2
    assert "--at 9: no trial has epoch 9 (epochs 1-2 are there)" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()

"""The command line as a user meets it: run, status, resume, --help, and bad input."""

from __future__ import annotations

import subprocess
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from datafiles import write_idx_dataset
from raysweep.cli import main

SMOKE = ["run", "--preset", "smoke", "--executor", "local", "limit_train=96", "limit_test=32"]


def test_run_then_status_then_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "run")
    assert main([*SMOKE, "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "epoch 1/2" in printed and "epoch 2/2" in printed and "ΔX8" in printed
    epochs = pd.read_parquet(Path(out) / "epochs")
    assert sorted(epochs["epoch"].unique()) == [1, 2]
    assert main(["status", out]) == 0
    assert "done" in capsys.readouterr().out
    assert main(["resume", out]) == 0
    assert "already finished" in capsys.readouterr().out
    assert pd.read_parquet(Path(out) / "epochs").equals(epochs)


def test_pairs_whose_estimated_error_misses_tol_are_flagged_counted_by_status_and_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "r")
    # a 4-node Gauss rule cannot meet tol=1e-6, and gauss (unlike auto) does not refine
    assert main([*SMOKE, "epochs=1", "estimator=gauss", "nodes=4", "tol=1e-6", "--out", out]) == 0
    packets = pd.read_parquet(Path(out) / "packets")
    assert packets["flagged"].dtype == bool and packets["flagged"].any()
    real = packets["b"] > packets["a"]
    misses = (packets["err_sx"] > 1e-6 * packets["sx"].clip(lower=1e-3 * (packets["b"] - packets["a"]))) | (
        packets["err_sp"] > 1e-6 * packets["sp"].clip(lower=1e-3 / (packets["b"] - packets["a"])))
    assert (packets["flagged"] == (misses & real)).all()  # the flag is what its column's meaning says
    capsys.readouterr()
    assert main(["status", out]) == 0
    assert f"FLAGGED {int(packets['flagged'].sum())} of {len(packets)} pairs" in capsys.readouterr().out
    assert main(["figures", out, "--no-tsne"]) == 0
    report = (Path(out) / "figures" / "report.md").read_text()
    per_space = [int(n) for n in re.findall(r"\*\*(\d+) pairs? of \d+ are flagged\*\*", report)]
    assert len(per_space) == 2 and sum(per_space) == int(packets["flagged"].sum())  # pixel and feature


def test_resume_after_an_interrupted_run_loses_and_doubles_nothing(tmp_path: Path) -> None:
    from raysweep.run import local
    from raysweep.run.presets import resolve
    from raysweep.store import RunStore

    trials = resolve("smoke", {"epochs": "3", "limit_train": "96", "limit_test": "32", "estimator": "mc", "nodes": "8", "replicates": "2"}).trials()
    straight = RunStore(str(tmp_path / "straight"))
    straight.create({})
    local.run_trials(straight, trials, progress=lambda line: None)

    def stop_after_first(line: str) -> None:
        if "epoch 1/3" in line:
            raise KeyboardInterrupt

    broken = RunStore(str(tmp_path / "broken"))
    broken.create({})
    with pytest.raises(KeyboardInterrupt):
        local.run_trials(broken, trials, progress=stop_after_first)
    assert broken.epochs_written(trials[0].name) == [1]
    local.run_trials(broken, trials, progress=lambda line: None)
    keys = ["trial", "epoch", "space", "class", "dim"]
    a, b = straight.read("packets"), broken.read("packets")
    assert not b.duplicated(keys).any()
    pd.testing.assert_frame_equal(a, b, check_exact=True)  # same process, same threads: bit for bit
    drop = lambda f: f.drop(columns="seconds")  # noqa: E731
    pd.testing.assert_frame_equal(drop(straight.read("epochs")), drop(broken.read("epochs")), check_exact=True)


def test_preset_with_dataset_override_trains_on_a_folder_of_standard_files(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path / "mnist", gz=True)
    out = tmp_path / "run"
    code = main(["run", "--preset", "demo", "--executor", "local", "dataset=mnist", f"data_root={tmp_path / 'mnist'}", "epochs=1", "dims=2",
                 "download=false", "embed_points=4", "--out", str(out)])
    assert code == 0
    epochs = pd.read_parquet(out / "epochs")
    assert set(epochs["dataset"]) == {"mnist"} and set(epochs["arch"]) == {"mnist_conv3"}


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="device=cuda is valid where CUDA is visible")

# SPEC 6 / issue 7: every kind of bad input exits 2 with one line naming the fix. README's
# troubleshooting table shows each of these messages (test below).
BAD_INPUT = [
    (["run", "arch=vgg"], "unknown architecture 'vgg': use one of mnist_conv3, cifar_conv4, resnet9 or an import path"),
    (["run", "dataset=imagenet"], "unknown dataset 'imagenet': use one of digits, synthetic, mnist, fashion-mnist, cifar10"),
    (["run", "dataset=../x"], "unknown dataset '../x'"),
    (["run", "dataset=synthetic:1x28"], "bad dataset 'synthetic:1x28': write synthetic, synthetic:CxHxW or synthetic:CxHxW:TRAIN:TEST"),
    (["run", "attacks=cw:eps=1"], "unknown or malformed attack 'cw:eps=1': write it as 'pgd:eps=8/255,alpha=2/255,steps=4'"),
    (["run", "attacks=pgd:eps=-1,alpha=1,steps=1"], "attack eps must be a finite number >= 0, got -1.0"),
    (["run", "attacks=pgd:eps=0.1,alpha=0.01,steps=-5"], "attack steps must be an integer >= 1, got -5"),
    (["run", "epochs"], "override 'epochs' is not key=value, e.g. epochs=10"),
    (["run", "epoch=3"], "unknown key 'epoch' in 'epoch=3' (did you mean epochs?); valid keys: arch, dataset, seed"),
    (["run", "epochs=-1"], "epochs=-1: must be at least 1"),
    (["run", "seed=a"], "seed='a' is not a valid int: give a whole number"),
    (["run", "seed=-1"], "seed=-1: must be 0 or more"),
    (["run", "lr=-1"], "lr=-1.0: must be positive"),
    (["run", "estimator=simpson"], "estimator='simpson': use one of auto, piecewise, gauss, mc"),
    (["run", "precision=fp16"], "precision='fp16': use one of auto, float32, bf16"),
    (["run", "estimator=mc", "replicates=3"], "the standard errors need replicates >= 2 that divide nodes"),
    (["run", "spaces=color"], "spaces='color': use a comma list of pixel, feature, each once"),
    (["run", "spaces="], "spaces= is empty: give at least one space, e.g. spaces=pixel,feature"),
    (["run", "dims=100000"], "dims=100000 but the pixel space has only 784 dimensions: use dims=784 or dims=all"),
    (["run", "dataset=mnist", "download=false", "data_root={tmp}/empty"], "or pass data_root=DIR"),
    (["run", "arch=cifar_conv4"], "arch=cifar_conv4 (it expects 3x32x32) does not fit dataset=digits"),
    (["run", "arch=collections:OrderedDict"], "name an nn.Module class with 'features' and 'classifier'"),
    (["run", "arch=torch.nn:Identity"], "must have nn.Module attributes 'features' and 'classifier'"),
    (["run", "arch=../evil:X"], "bad import path '../evil:X': write it as 'package.module:ClassName'"),
    pytest.param(["run", "device=cuda"], "no CUDA device is visible: use device=cpu or device=auto", marks=NO_CUDA),
    (["run", "--out", "{tmp}/afile"], "is a file: give a directory path for the run"),
    (["run", "--out", "{tmp}/run"], "already holds a run: continue it with `raysweep resume"),
    (["run", "--out", "{tmp}/notes"], "is a non-empty directory that is not a run: choose an empty or new path"),
    (["run", "--out", "{tmp}/a", "storage={tmp}/b"], "disagree: give one of them"),
    (["run", "--executor", "ray", "--address", "127.0.0.1:1", "--out", "{tmp}/r"], "cannot reach a Ray cluster at '127.0.0.1:1'"),
    (["run", "--executor", "local", "--address", "auto", "--out", "{tmp}/r"],
     "--address auto joins a Ray cluster, but --executor local runs without Ray: drop one"),
    (["status", "{tmp}"], "is not a raysweep run (no manifest.json): give the --out path of a run"),
    (["resume", "{tmp}/nowhere"], "is not a raysweep run (no manifest.json)"),
    (["status", "{tmp}/lost"], "has results but no manifest.json: `raysweep resume"),
    (["figures", "{tmp}/run", "--epochs", "a,b"], "--epochs 'a,b': give comma-separated epoch numbers, e.g. 1,21,41"),
    # issue 13: caught where they are parsed, before data loads or Ray starts
    (["run", "attacks="], "attacks= is empty: give at least one attack, e.g. attacks=pgd:eps=8/255,alpha=2/255,steps=4"),
    (["run", "seed=0,0"], "seed=0,0 lists a seed twice: give each seed once"),
    (["run", "dataset=digits,digits"], "the grid holds trial mnist_conv3-digits-s0 twice: give each (arch, dataset) pair once"),
    (["run", "loss_clip=-1"], "loss_clip=-1.0: the loss is clipped at a positive constant, e.g. loss_clip=5"),
    (["run", "weight_decay=-1"], "weight_decay=-1.0: must be 0 or more"),
    (["run", "device=gpu"], "device='gpu': use auto, cpu, cuda or cuda:N"),
    (["run", "dims="], "dims= is empty: give a value, or dims=all for every dimension"),
    (["run", "tol=0"], "tol=0.0: a relative error tolerance is positive, e.g. tol=0.01"),
    (["run", "estimator=piecewise", "loss_clip=5"], "estimator=piecewise with loss_clip=5.0: the walk does not locate the clip's kink"),
    (["run", "--executor", "local", "--out", "{tmp}/afile/run"], "cannot be created ("),
    (["run", "--executor", "local", "--out", "{tmp}/" + "x" * 300], "cannot be created ("),
    (["figures", "{tmp}/run"], "no epoch has finished yet, so there is nothing to draw"),
    (["figures", "{tmp}/done", "--epochs", "1,99"], "--epochs 1,99: the run has no epoch 99 (epochs 1-3 are there)"),
]


def _message(case) -> str:
    return case.values[1] if hasattr(case, "values") else case[1]


@pytest.fixture
def bad_input_scene(tmp_path: Path) -> Path:
    """A folder with a file, a run, a folder of notes, and a run whose manifest is lost."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raysweep.store import RunStore

    from raysweep import schema

    (tmp_path / "afile").write_text("not a directory")
    done = RunStore(str(tmp_path / "done"))
    done.create({"trials": {}})
    row = {c.name: {"string": "x", "float32": 0.5, "float64": 0.5}.get(c.type, 1) for c in schema.EPOCHS.stored}
    for epoch in (1, 2, 3):
        done.write_epoch("t", epoch, {"epochs": pd.DataFrame([{**row, "epoch": epoch}])}, config={})
    RunStore(str(tmp_path / "run")).create({"trials": {}})
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("mine")
    lost = tmp_path / "lost" / "epochs" / "trial=t"
    lost.mkdir(parents=True)
    table = pa.table({"trial": ["t"]}).replace_schema_metadata({b"raysweep.trial": b"{}"})
    pq.write_table(table, lost / "epoch-0001.parquet")
    return tmp_path


@pytest.mark.parametrize("argv, message", BAD_INPUT, ids=[" ".join(getattr(c, "values", c)[0]) for c in BAD_INPUT])
def test_bad_input_exits_2_with_one_line_naming_the_fix(
    argv: list[str], message: str, bad_input_scene: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp = bad_input_scene
    snapshot = lambda: {p: p.read_bytes() for p in tmp.rglob("*") if p.is_file() and "cache" not in p.parts}  # noqa: E731
    before = snapshot()
    argv = [a.replace("{tmp}", str(tmp)) for a in argv]
    if argv[0] == "run" and "--out" not in argv:
        argv += ["--executor", "local", "--out", str(tmp / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("raysweep: error: ") and err.count("\n") == 1, err
    assert message in err
    assert snapshot() == before  # nothing written, nothing lost


def test_readme_troubleshooting_table_shows_every_bad_input() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Troubleshooting") :].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) >= 20
    missing = [_message(c) for c in BAD_INPUT if _message(c).replace("|", "\\|") not in section]
    assert not missing, f"README's troubleshooting table lacks: {missing}"


def test_console_script_prints_help_and_no_traceback_on_bad_input(tmp_path: Path) -> None:
    exe = [sys.executable, "-m", "raysweep.cli"]
    for sub in ([], ["run"], ["resume"], ["status"]):
        shown = subprocess.run([*exe, *sub, "--help"], capture_output=True, text=True, check=True)
        assert "usage: raysweep" in shown.stdout
    bad = subprocess.run([*exe, "run", "arch=nope", "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1


def test_storage_key_takes_a_filesystem_uri(tmp_path: Path) -> None:
    uri = (tmp_path / "by-uri").as_uri()  # file:///...
    assert main([*SMOKE, "epochs=1", f"storage={uri}"]) == 0
    assert (tmp_path / "by-uri" / "manifest.json").exists()
    assert set(pd.read_parquet(tmp_path / "by-uri" / "packets")["epoch"]) == {1}


def test_jobs_entry_point_smoke_test_runs(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "jobs" / "sweep.py"), "--smoke-test", "--executor", "local", "--out", str(tmp_path / "j")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "epoch 2/2" in done.stdout


def test_local_ray_dashboard_binds_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from raysweep.run.ray import cluster

    seen: dict = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cluster.connect()
    # "local": a new Ray of our own, never a cluster named by an address file a dead head left behind
    assert seen["dashboard_host"] == "127.0.0.1" and seen["address"] == "local"


def test_a_loss_turning_nan_stops_the_run_naming_epoch_and_stage_and_earlier_epochs_stay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "run")
    assert main([*SMOKE, "arch=faulty:NanFromSecondEpoch", "epochs=3", "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "epoch 2: the train loss became nan (stage: train)" in err, err
    for dataset in ("epochs", "packets", "embeddings"):
        assert set(pd.read_parquet(Path(out) / dataset)["epoch"]) == {1}
    assert main(["status", out]) == 0
    assert "1/3" in capsys.readouterr().out

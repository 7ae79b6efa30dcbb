"""The command line as a user meets it: run, status, resume, --help, and bad input."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import readme
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

# SPEC 6 / issue 7: every kind of bad input exits 2 with one line naming the fix. The cases are README's
# troubleshooting rows themselves, run as written (cwd is the scene below, so a default --out lands there)
# and matched whole against the message README prints.
ELSEWHERE = {  # rows that need a cluster, and the test file that runs each with readme.row(command)
    "raysweep run gpus=0.5": "test_cluster.py",
    "raysweep run --address HEAD:6379": "test_jobs.py",
    "ray job submit ... -- python jobs/sweep.py --out runs/x": "test_jobs.py",
}
ROWS = [r for r in readme.bad_input_rows() if r.command not in ELSEWHERE]
BEYOND_README = [  # bad input the table covers by a condition in words
    (["run", "--executor", "local", "--out", "DIR/" + "x" * 300], "--out ... cannot be created ([Errno 36] ...): choose a path you can write"),
]
CASES = [pytest.param(shlex.split(r.command)[1:], r.message, marks=NO_CUDA if r.command.endswith("device=cuda") else (),
                      id=r.command) for r in ROWS] + [pytest.param(*c, id="beyond README") for c in BEYOND_README]


@pytest.fixture
def bad_input_scene(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """DIR of README's table: a file, an empty run, a run of epochs 1-3, a folder of notes, and a run
    whose manifest is lost; the working directory, so that a default --out would land here. A short
    path, as README's DIR: messages shorten paths over 60 characters."""
    tmp_path = short_tmp
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
    (tmp_path / "empty-grid.yaml").write_text("lr: {grid_search: []}\n")
    (tmp_path / "unknown.json").write_text('{"epoch": 3}')
    (tmp_path / "huge.yaml").write_text(f"seed: {{grid_search: {list(range(1001))}}}\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("argv, message", CASES)
def test_every_readme_troubleshooting_row_exits_2_with_its_message_and_writes_nothing(
    argv: list[str], message: str, bad_input_scene: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp = bad_input_scene
    snapshot = lambda: {p: p.read_bytes() for p in tmp.rglob("*") if p.is_file() and "cache" not in p.parts}  # noqa: E731
    before = snapshot()
    assert main([a.replace("DIR", str(tmp)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raysweep: error: ") and err.count("\n") == 1, err
    expected = readme.Row("", "", message).expects(tmp)
    assert expected.fullmatch(err.removeprefix("raysweep: error: ").rstrip("\n")), (expected.pattern, err)
    assert snapshot() == before  # nothing written, nothing lost


def test_the_rows_that_need_a_cluster_are_run_there() -> None:
    assert len(ROWS) + len(ELSEWHERE) == len(readme.bad_input_rows()) >= 45
    for command, test_file in ELSEWHERE.items():
        source = (Path(__file__).parent / test_file).read_text()
        assert re.search(rf"readme\.row\([\"']{re.escape(command)}[\"']\)", source), (command, test_file)


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

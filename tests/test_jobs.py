"""`ray job submit` exactly as README shows it, against a head started with `ray start --head` (issue 12)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

import readme
from rayprocs import RayHead

pytestmark = pytest.mark.slow
EXCLUDES = '{"excludes": [".git", ".venv", "runs"]}'  # README's job command


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory):
    started = RayHead(tmp_path_factory.mktemp("head"))
    yield started
    started.stop()


def submit(head: RayHead, *args: str):
    return head.run(
        "ray", "job", "submit", "--address", head.dashboard, "--working-dir", ".", "--runtime-env-json", EXCLUDES,
        "--", "python", "jobs/sweep.py", *args,
    )


def job_id(submitted) -> str:
    return re.search(r"Job '(raysubmit_\w+)'", submitted.stdout + submitted.stderr).group(1)


def test_the_readme_job_command_runs_the_smoke_sweep_and_its_logs_hold_every_epoch(head: RayHead, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # head_epochs=40 makes the pause between two packet stages longer than Ray's 1 s idle-worker limit
    done = submit(head, "--smoke-test", "--out", str(out), "epochs=3", "head_epochs=40")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    epochs = pd.read_parquet(out / "epochs")
    assert sorted(epochs["epoch"].unique()) == [1, 2, 3]
    packets = pd.read_parquet(out / "packets")
    assert len(packets) == 3 * 2 * 4 * 10  # epochs x spaces x dims x classes
    assert not packets.duplicated(["trial", "epoch", "space", "class", "dim"]).any()
    logs = head.run("ray", "job", "logs", "--address", head.dashboard, job_id(done))
    assert logs.returncode == 0
    for epoch in (1, 2, 3):
        assert f"[mnist_conv3-synthetic-s0] epoch {epoch}/3 " in logs.stdout, logs.stdout[-3000:]
    assert "raysweep: done" in logs.stdout
    ours = logs.stdout.split("Running entrypoint for job", 1)[1]  # what the job printed, after Ray's own header
    for noise in ("Checkpoint successfully created", "tensorboard", "FutureWarning", "\x1b["):
        assert noise not in ours, noise
    # No worker churn: every packet task of the run ran in one worker process (Ray's state API).
    tasks = head.run("ray", "list", "tasks", "--address", head.dashboard, "--filter", "func_or_class_name=_run_chunk",
                     "--detail", "--format", "json", "--limit", "1000")
    assert tasks.returncode == 0, tasks.stderr[-2000:]
    rows = [t for t in json.loads(tasks.stdout) if t.get("job_id") and t.get("state") == "FINISHED"]
    assert len(rows) == 3 * 2  # one chunk per space and epoch
    assert len({t.get("worker_id") for t in rows}) == 1, [(t.get("worker_id"), t.get("worker_pid")) for t in rows]


def test_a_relative_out_inside_a_job_is_an_error_naming_the_fix(head: RayHead) -> None:
    wrote = readme.row("ray job submit ... -- python jobs/sweep.py --out runs/x")
    done = submit(head, *wrote.command.split(" -- python jobs/sweep.py ")[1].split())
    assert done.returncode != 0
    logs = head.run("ray", "job", "logs", "--address", head.dashboard, job_id(done)).stdout
    said = [line.removeprefix("raysweep: error: ") for line in logs.splitlines() if line.startswith("raysweep: error: ")]
    assert len(said) == 1 and wrote.expects().fullmatch(said[0]), logs[-2000:]
    assert "Traceback" not in logs


def test_a_client_without_the_token_is_told_it_is_an_authentication_failure(head: RayHead, tmp_path: Path) -> None:
    wrote = readme.row("raysweep run --address HEAD:6379")  # run as written, from tmp_path: a default --out lands there
    done = head.run(*wrote.command.replace("HEAD:6379", head.address).split(), extra_env={"RAY_AUTH_TOKEN": "0" * 32},
                    timeout=180, cwd=tmp_path)
    assert done.returncode == 2
    said = done.stderr.strip().splitlines()[-1].removeprefix("raysweep: error: ")
    assert wrote.expects(**{"HEAD:6379": head.address}).fullmatch(said), done.stderr[-2000:]
    assert not [p for p in tmp_path.iterdir() if p.name != "cache"]

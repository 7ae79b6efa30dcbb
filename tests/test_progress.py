"""What a person sees while a run goes, and `status` telling a live run from a stopped one (issue 12)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raysweep.run import progress
from raysweep.store import RunStore


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    s = RunStore(str(tmp_path / "run"))
    s.create({"trials": {}})
    return s


def test_liveness_tells_a_beating_driver_from_a_gone_or_stopped_one(store: RunStore) -> None:
    now = 1_000_000.0
    assert progress.liveness(store, now).startswith("no driver has recorded itself")
    store.write_json(progress.DRIVER_FILE, {"pid": 7, "host": "h", "executor": "ray", "heartbeat": now - 3})
    assert progress.liveness(store, now) == "RUNNING (driver pid 7 on h, ray executor; heartbeat 3s ago)"
    assert progress.liveness(store, now + progress.STALE_AFTER_S + 1).startswith("stopped (its driver is gone: last heartbeat 34s ago")
    store.write_json(progress.DRIVER_FILE, {"pid": 7, "host": "h", "executor": "ray", "heartbeat": now, "stopped": now - 600,
                                             "how": "interrupted"})
    assert progress.liveness(store, now) == "stopped (interrupted, 10 min ago; driver pid 7 on h, ray executor)"


def test_the_monitor_beats_shows_a_long_stage_and_records_how_the_run_ended(store: RunStore, monkeypatch) -> None:
    monkeypatch.setattr(progress, "LIVE_AFTER_S", 0.0)
    board, said = progress.Board(), []
    with pytest.raises(KeyboardInterrupt):
        with progress.Monitor(store, said.append, board.stages, executor="local"):
            assert progress.liveness(store).startswith("RUNNING")
            board.hook("t", 3, 9)("packets", 20, 80)
            time.sleep(1.5)
            raise KeyboardInterrupt
    assert said and said[0].startswith("[t] epoch 3/9: packets 20/80 pairs")
    info = json.loads((Path(store.root) / progress.DRIVER_FILE).read_text())
    assert info["how"] == "interrupted" and progress.liveness(store).startswith("stopped (interrupted")


def test_a_short_stage_is_not_shown(store: RunStore) -> None:
    board, said = progress.Board(), []
    with progress.Monitor(store, said.append, board.stages, executor="local"):
        board.hook("t", 1, 2)("train")
        time.sleep(1.2)
    assert said == []


def test_a_ray_trials_stage_file_reads_back(store: RunStore) -> None:
    progress.StageFile(store, "t").hook(2, 5)("packets", 10, 40)
    stage = progress.read_stage(store, "t")
    assert (stage.epoch, stage.epochs, stage.stage, stage.done, stage.total) == (2, 5, "packets", 10, 40)
    assert stage.pid is not None and progress.read_stage(store, "other") is None


def test_status_reads_a_run_without_importing_torch(tmp_path: Path) -> None:
    from raysweep.cli import main

    run = tmp_path / "run"
    assert main(["run", "--preset", "smoke", "--executor", "local", "--out", str(run), "epochs=1",
                 "limit_train=64", "limit_test=16"]) == 0
    script = ("import sys; from raysweep.cli import main; code = main(['status', sys.argv[1]]); "
              "print('torch loaded:', 'torch' in sys.modules); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script, str(run)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "stopped (finished" in done.stdout and "epochs 1/1" in done.stdout
    assert "torch loaded: False" in done.stdout

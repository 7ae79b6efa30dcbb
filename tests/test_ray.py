"""The sweep on a local Ray with 2 CPUs: Tune trials, packet tasks, faults, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import torch

from raysweep.run.ray import tuner
from raysweep.cli import main
from raysweep.run.presets import resolve
from raysweep.store import RunStore
from rayprocs import OWN_RAY
from rows import assert_same_rows, undisturbed

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
# threads=1 everywhere: float32 results depend on the CPU thread count, and Ray's workers get one.
GRID = {"seed": "0,1", "epochs": "2", "limit_train": "128", "limit_test": "32", "dims": "6", "chunk": "2",
        "threads": "1", "estimator": "mc", "nodes": "8", "replicates": "2"}


@pytest.fixture(scope="module")
def ray_2_cpus(tmp_path_factory: pytest.TempPathFactory):
    """A Ray of the tests' own: address="local" (never a cluster an address file or RAY_ADDRESS names),
    its own temporary folder, and the environment restored afterwards."""
    marker = tmp_path_factory.mktemp("fault") / "killed-once"
    saved = {k: os.environ.get(k) for k in ("RAYSWEEP_TEST_MARKER", "PYTHONPATH")}
    os.environ["RAYSWEEP_TEST_MARKER"] = str(marker)  # Ray's workers inherit it (see tests/faulty.py)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    ray.init(**OWN_RAY, _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield marker
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def trial_pid(store: RunStore, trial: str) -> int | None:
    """The pid of a running Ray trial, from the stage file it writes (progress/<trial>.json)."""
    stage = store.read_json(f"progress/{trial}.json")
    return stage.get("pid") if stage else None


def test_two_trial_grid_on_ray_equals_the_local_executor(ray_2_cpus: Path, tmp_path: Path) -> None:
    # A grid of two seeds on one Tune grid; the second test sweeps a field instead.
    out = tmp_path / "ray"
    argv = ["run", "--preset", "smoke", "--out", str(out), *(f"{k}={v}" for k, v in GRID.items())]
    assert main(argv) == 0
    ray_store = RunStore(str(out))
    assert set(ray_store.read("epochs")["trial"]) == {"mnist_conv3-synthetic-s0", "mnist_conv3-synthetic-s1"}
    assert_same_rows(undisturbed(tmp_path, GRID), ray_store)
    assert main(["status", str(out)]) == 0


def test_a_swept_field_runs_as_one_tune_grid_with_the_local_rows(ray_2_cpus: Path, tmp_path: Path) -> None:
    overrides = {**GRID, "seed": "0", "epochs": "1", "lr": ["0.001", "0.002"]}
    out = tmp_path / "ray"
    argv = ["run", "--preset", "smoke", "--out", str(out),
            *(f"{k}={x}" for k, v in overrides.items() for x in (v if isinstance(v, list) else [v]))]
    assert main(argv) == 0
    epochs = RunStore(str(out)).read("epochs")
    assert set(zip(epochs["trial"], epochs["lr"])) == {("mnist_conv3-synthetic-s0-lr_0.001", 0.001),
                                                     ("mnist_conv3-synthetic-s0-lr_0.002", 0.002)}
    assert_same_rows(undisturbed(tmp_path, overrides), RunStore(str(out)))


def test_packet_task_whose_worker_dies_is_retried_and_rows_are_whole(ray_2_cpus: Path, tmp_path: Path) -> None:
    overrides = {**GRID, "seed": "0", "arch": "faulty:KillOnceInTask"}
    store = RunStore(str(tmp_path / "ray"))
    store.create({})
    tuner.run(store, resolve("smoke", overrides).trials())
    assert ray_2_cpus.exists(), "the fault was never injected"
    assert_same_rows(undisturbed(tmp_path, overrides), store)


def test_trial_whose_actor_is_killed_restarts_from_its_checkpoint(ray_2_cpus: Path, tmp_path: Path) -> None:
    overrides = {**GRID, "seed": "0", "epochs": "5", "limit_train": "512", "limit_test": "128"}
    store = RunStore(str(tmp_path / "ray"))
    store.create({})
    trials = resolve("smoke", overrides).trials()
    killed: list[int] = []

    def kill_trial_after_first_epoch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not store.epochs_written(trials[0].name):
            time.sleep(0.05)
        pid = trial_pid(store, trials[0].name)  # this test's own trial actor, nothing else on the machine
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass

    killer = threading.Thread(target=kill_trial_after_first_epoch)
    killer.start()
    tuner.run(store, trials)
    killer.join()
    assert killed, "no trial actor was killed"
    assert_same_rows(undisturbed(tmp_path, overrides), store)


def test_resume_after_the_driver_is_killed_finishes_the_run(ray_2_cpus: Path, tmp_path: Path) -> None:
    overrides = {**GRID, "seed": "0", "epochs": "6"}
    out = tmp_path / "ray"
    cli = [sys.executable, "-m", "raysweep.cli"]
    driver = subprocess.Popen(
        [*cli, "run", "--preset", "smoke", "--out", str(out), *(f"{k}={v}" for k, v in overrides.items())],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "driver.err", "w"), env={**os.environ, "RAY_ADDRESS": ""},
    )
    store = RunStore(str(out))
    deadline = time.monotonic() + 120
    tune_checkpoints = out / "tune" / "mnist_conv3-synthetic-s0"
    while time.monotonic() < deadline and not list(tune_checkpoints.glob("checkpoint_*/state.pt")):
        assert driver.poll() is None, "the driver stopped before its first checkpoint"
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert len(store.epochs_written("mnist_conv3-synthetic-s0")) < 6, "the driver finished before it was killed"
    # A checkpoint from another run planted over Tune's newest: never resumed from, the trial trains again.
    newest = sorted(tune_checkpoints.glob("checkpoint_*/state.pt"))[-1]
    elsewhere = RunStore(str(tmp_path / "elsewhere"))
    elsewhere.create({"run_id": "elsewhere"})
    newest.write_bytes(elsewhere.checkpoint_bytes("mnist_conv3-synthetic-s0", torch.load(newest, weights_only=True)))
    assert any(p.startswith(f"{newest} comes from another run") for p in store.checkpoint_problems())
    resumed = subprocess.run([*cli, "resume", str(out)], capture_output=True, text=True, env={**os.environ, "RAY_ADDRESS": ""}, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "comes from another run (run_id elsewhere" in resumed.stdout + resumed.stderr
    assert store.epochs_written("mnist_conv3-synthetic-s0") == [1, 2, 3, 4, 5, 6]
    assert_same_rows(undisturbed(tmp_path, overrides), store)
    again = subprocess.run([*cli, "resume", str(out)], capture_output=True, text=True, timeout=120)
    assert "already finished" in again.stdout


def test_unreachable_address_is_a_one_line_error_and_writes_nothing(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "raysweep.cli", "run", "--preset", "smoke", "--out", str(tmp_path / "r")]
    for argv, env in ((["--address", "127.0.0.1:1"], {}), ([], {"RAY_ADDRESS": "127.0.0.1:1"})):
        done = subprocess.run([*cli, *argv], capture_output=True, text=True, timeout=120, env={**os.environ, **env})
        assert done.returncode == 2
        assert done.stderr.startswith("raysweep: error: cannot reach a Ray cluster at '127.0.0.1:1'")
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert not (tmp_path / "r").exists()


OUTSIDER = """
import os, subprocess, sys
import ray
from ray._private.authentication.authentication_utils import is_token_auth_enabled
from raysweep.run.ray import cluster

cluster.connect(num_cpus=1)
print("token auth enabled:", is_token_auth_enabled())
join = "import ray; ray.init(address=%r); print('JOINED')" % ray.get_runtime_context().gcs_address
home = sys.argv[1]  # no ~/.ray/auth_token there: a process of another user on the network
outsider = subprocess.run([sys.executable, "-c", join], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled", "HOME": home})
print("outsider joined:", "JOINED" in outsider.stdout, "| token named:", "token" in outsider.stderr)
"""


def test_local_ray_keeps_token_authentication_and_refuses_a_process_without_the_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # raysweep must not need RAY_AUTH_MODE
    done = subprocess.run([sys.executable, "-c", OUTSIDER, str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "token auth enabled: True" in done.stdout
    assert "outsider joined: False | token named: True" in done.stdout

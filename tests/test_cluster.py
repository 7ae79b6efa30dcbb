"""The distributed path beyond one auto-started Ray (issue 12): interrupts, impossible requests,
a stale address file, several nodes, and a node lost mid-epoch or for good."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import ray

from raysweep.run.ray import tuner
from raysweep.cli import main
from raysweep.run.presets import resolve
from raysweep.errors import UserError
from raysweep.store import RunStore
import readme
from rayprocs import BIN, OWN_RAY, ROOT, ignores
from rows import assert_same_rows, undisturbed

pytestmark = pytest.mark.slow
TRIAL = "mnist_conv3-synthetic-s0"
# threads=1: float32 results depend on the thread count; the rows are compared bit for bit.
SMALL = {"epochs": "3", "limit_train": "128", "limit_test": "32", "dims": "6", "chunk": "3", "threads": "1",
         "estimator": "mc", "nodes": "8", "replicates": "2"}
def cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen([str(BIN / "raysweep"), *args], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_ctrl_c_exits_130_naming_resume_and_resume_finishes_with_the_undisturbed_rows(executor: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    overrides = {**SMALL, "epochs": "4"}
    run = cli("run", "--preset", "smoke", "--executor", executor, "--out", str(out), *(f"{k}={v}" for k, v in overrides.items()))
    deadline = time.monotonic() + 180
    while not (out / "epochs" / f"trial={TRIAL}" / "epoch-0001.parquet").exists():
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.05)
    # A SIGINT the driver ignores (a disposition inherited from whoever started it) would do nothing.
    assert not ignores(run.pid, signal.SIGINT), f"the driver ignores SIGINT (pytest's own: {signal.getsignal(signal.SIGINT)})"
    os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole foreground group
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == (
        f"raysweep: interrupted; finished epochs are kept: continue with `raysweep resume {out}`"
    ), stderr[-2000:]
    assert "Tuner.restore" not in stdout + stderr and "raysweep: done" not in stdout
    store = RunStore(str(out))
    assert len(store.epochs_written(TRIAL)) < 4, "the run finished before the interrupt"
    resumed = cli("resume", str(out))
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-2000:]
    assert store.epochs_written(TRIAL) == [1, 2, 3, 4]
    assert_same_rows(undisturbed(tmp_path, overrides), store)


def test_a_stale_address_file_of_a_dead_head_does_not_stop_a_run(short_tmp: Path, tmp_path: Path) -> None:
    # Ray reads its address file from $RAY_TMPDIR/ray/ray_current_cluster: this test's own folder.
    (short_tmp / "ray").mkdir()
    (short_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")  # a head that is gone
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": str(short_tmp)}
    done = subprocess.run([str(BIN / "raysweep"), "run", "--preset", "smoke", "epochs=1", "--out", str(tmp_path / "r")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert RunStore(str(tmp_path / "r")).epochs_written(TRIAL) == [1]


@pytest.fixture
def own_ray(short_tmp: Path):
    ray.init(**OWN_RAY, _temp_dir=str(short_tmp))
    yield
    ray.shutdown()


@pytest.mark.parametrize("argv, wrote", [
    (["run", "gpus=0.5"], readme.row("raysweep run gpus=0.5")),  # README's row, as written
    (["run", "workers=3"], readme.Row("", "", "trial ... asks for resources this cluster cannot give: the trial's "
                                              "4 bundles need CPU 4 together, the cluster has CPU 2; lower gpus= or workers=, ...")),
])
def test_a_request_no_node_can_satisfy_fails_at_once_and_writes_nothing(
    own_ray, argv: list[str], wrote: readme.Row, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default --out would land here
    start = time.monotonic()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and wrote.expects().fullmatch(err.removeprefix("raysweep: error: ").rstrip()), err
    assert time.monotonic() - start < 30 and not [p for p in tmp_path.iterdir() if p.name != "cache"]


# -- several nodes ------------------------------------------------------------------

@pytest.fixture
def three_nodes(short_tmp: Path, monkeypatch: pytest.MonkeyPatch):
    """A head with no CPU and three 1-CPU nodes on this machine: a trial's two bundles land on two nodes."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAYSWEEP_NODE_GRACE_S", "5")
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1", "temp_dir": str(short_tmp)})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
    yield cluster, nodes
    ray.shutdown()
    cluster.shutdown()


def wait_until(ready, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not ready():
        time.sleep(0.05)


def bundle_nodes() -> list[str]:
    """Node ids of the bundles of the one placement group placed now (the running trial's)."""
    from ray.util.placement_group import placement_group_table

    (group,) = [g for g in placement_group_table().values() if g["state"] == "CREATED"]
    return [group["bundles_to_node_id"][i] for i in sorted(group["bundles_to_node_id"])]


def test_packet_tasks_run_on_another_node_than_their_trial(three_nodes, tmp_path: Path) -> None:
    from ray.util.state import list_tasks

    overrides = {**SMALL, "seed": "0,1", "epochs": "2"}
    store = RunStore(str(tmp_path / "ray"))
    store.create({})
    trials = resolve("smoke", overrides).trials()
    tuner.run(store, trials, say=lambda line: None)
    for config in trials:
        trial_node = store.read_json(f"progress/{config.name}.json")["node"]  # where the trial's actor ran
        tasks = list_tasks(filters=[("name", "=", f"packets:{config.name}")], detail=True)
        assert len(tasks) == 2 * 2 * 2, config.name  # epochs x spaces x chunks of 3 of the 6 dims
        assert trial_node and {t.node_id for t in tasks}.isdisjoint({trial_node}), config.name
    assert_same_rows(undisturbed(tmp_path, overrides), store)


def test_a_worker_node_killed_mid_epoch_the_run_finishes_with_the_undisturbed_rows(three_nodes, tmp_path: Path) -> None:
    cluster, nodes = three_nodes
    overrides = {**SMALL, "epochs": "4"}
    store = RunStore(str(tmp_path / "ray"))
    store.create({})
    killed: list[str] = []

    def kill_the_task_node_in_epoch_2() -> None:
        wait_until(lambda: (store.read_json(f"progress/{TRIAL}.json") or {}).get("epoch") == 2
                   and store.read_json(f"progress/{TRIAL}.json").get("stage") in ("attack", "feature head", "packets"))
        task_node = bundle_nodes()[1]  # bundle 0 runs the trial, bundle 1 its packet tasks
        victim = next(n for n in nodes if n.node_id == task_node)
        cluster.remove_node(victim, allow_graceful=False)
        killed.append(task_node)

    killer = threading.Thread(target=kill_the_task_node_in_epoch_2)
    killer.start()
    tuner.run(store, resolve("smoke", overrides).trials(), say=lambda line: None)
    killer.join()
    assert killed, "no node was killed"
    assert_same_rows(undisturbed(tmp_path, overrides), store)


def test_a_node_lost_for_good_ends_the_run_in_bounded_time_naming_trial_and_node(three_nodes, tmp_path: Path) -> None:
    cluster, nodes = three_nodes
    overrides = {**SMALL, "epochs": "200"}
    store = RunStore(str(tmp_path / "ray"))
    store.create({})
    lost: list[str] = []

    def leave_only_the_trials_node_after_epoch_1() -> None:
        wait_until(lambda: store.epochs_written(TRIAL))
        trial_node, task_node = bundle_nodes()
        lost.append(task_node)
        for node in sorted(nodes, key=lambda n: n.node_id != task_node):  # the tasks' node first, then the spare
            if node.node_id != trial_node:
                cluster.remove_node(node, allow_graceful=False)

    killer = threading.Thread(target=leave_only_the_trials_node_after_epoch_1)
    killer.start()
    start = time.monotonic()
    with pytest.raises(UserError) as raised:
        tuner.run(store, resolve("smoke", overrides).trials(), say=lambda line: None)
    killer.join()
    message = str(raised.value)
    assert message.startswith(f"trial {TRIAL} cannot be placed any more: ") and f"({lost[0][:8]})" in message, message
    assert "lost node(s): " in message and "\n" not in message
    assert time.monotonic() - start < 240
    written = store.epochs_written(TRIAL)
    assert written[0] == 1 and len(written) < 200  # finished epochs stay

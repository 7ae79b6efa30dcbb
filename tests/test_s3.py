"""A run directory on object storage: run, status, resume and figures on `s3://` (issue 12).

The S3 server is moto's, on loopback, started by the tests (as Ray's own tests do);
the credentials are fake.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from raysweep.cli import main
from raysweep.store import RunStore
from rayprocs import BIN, ROOT
from rows import assert_same_rows, undisturbed

pytestmark = pytest.mark.slow
TRIAL = "mnist_conv3-synthetic-s0"
SMALL = {"epochs": "4", "limit_train": "128", "limit_test": "32", "dims": "6", "chunk": "3", "threads": "1",
         "estimator": "mc", "nodes": "8", "replicates": "2"}
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3():
    """An S3 endpoint on 127.0.0.1 with a bucket; yields a function naming a run URI in it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    endpoint = f"http://127.0.0.1:{port}"
    pafs.S3FileSystem(endpoint_override=endpoint, region="us-east-1", allow_bucket_creation=True).create_dir("runs")
    yield lambda name: f"s3://runs/{name}?endpoint_override={endpoint}&region=us-east-1"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_run_status_figures_on_an_s3_run_directory(s3, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = s3("local-run")
    assert main(["run", "--preset", "smoke", "--executor", "local", "--out", uri, *(f"{k}={v}" for k, v in SMALL.items())]) == 0
    store = RunStore(uri)
    assert_same_rows(undisturbed(tmp_path, SMALL), store)
    capsys.readouterr()
    assert main(["status", uri]) == 0
    assert "done               epochs 4/4" in capsys.readouterr().out
    assert main(["figures", uri, "--no-tsne"]) == 0
    printed = capsys.readouterr().out.split()
    assert store.child("figures/report.md") in printed
    fs, root = pafs.FileSystem.from_uri(uri)
    assert fs.get_file_info(f"{root}/figures/fig2.png").size > 1000
    assert "fig2_local-run_mnist_conv3" in " ".join(printed)  # the run's label is its name, without the query


def test_a_driver_killed_on_s3_resumes_from_the_uri_with_nothing_lost_or_doubled(s3, tmp_path: Path) -> None:
    uri = s3("killed")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen(
        [str(BIN / "raysweep"), "run", "--preset", "smoke", "--out", uri, *(f"{k}={v}" for k, v in SMALL.items())],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, text=True,
    )
    store = RunStore(uri)
    deadline = time.monotonic() + 180
    while not store.epochs_written(TRIAL):
        assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()[1][-2000:]
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and everything it started
    driver.wait()
    assert len(store.epochs_written(TRIAL)) < 4
    resumed = subprocess.run([str(BIN / "raysweep"), "resume", uri], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert store.epochs_written(TRIAL) == [1, 2, 3, 4]
    assert_same_rows(undisturbed(tmp_path, SMALL), store)

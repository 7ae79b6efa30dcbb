"""The suite depends on nothing outside itself (issue 14): each test leaves the process as it found it,
and the tests' own Ray ignores whatever cluster the machine's environment points at."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from rayprocs import OWN_RAY, ROOT

CHANGED = "RAYSWEEP_TEST_HYGIENE"
THREADS = torch.get_num_threads()  # as the suite found it, before this file's tests


def test_a_test_that_changes_the_process() -> None:
    # Changes that no fixture of this test undoes; the next test sees whether conftest did.
    os.environ[CHANGED] = "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1 if torch.get_num_threads() > 1 else 2)
    torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
    torch.set_default_dtype(torch.float64)


def test_the_next_test_finds_it_as_it_was() -> None:
    assert CHANGED not in os.environ
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert torch.get_default_dtype() is torch.float32
    assert torch.backends.cudnn.benchmark is False
    assert torch.get_num_threads() == THREADS


def test_the_suites_ray_ignores_an_address_file_and_ray_address_of_another_cluster(short_tmp: Path) -> None:
    # Ray reads its address file from $RAY_TMPDIR/ray/ray_current_cluster: point it, and RAY_ADDRESS,
    # at a head that is gone; the tests' own Ray (tests/rayprocs.py OWN_RAY) must start and run a task.
    (short_tmp / "ray").mkdir()
    (short_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")
    script = (
        "import ray, sys; from rayprocs import OWN_RAY\n"
        f"ray.init(**OWN_RAY, _temp_dir={str(short_tmp / 'own')!r})\n"
        "print(ray.get(ray.remote(lambda: 'ran').remote()), ray.get_runtime_context().gcs_address)\n"
        "ray.shutdown()\n"
    )
    env = {**os.environ, "RAY_TMPDIR": str(short_tmp), "RAY_ADDRESS": "127.0.0.1:1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    ran, address = done.stdout.split()[-2:]
    assert ran == "ran" and address != "127.0.0.1:1"
    assert OWN_RAY["address"] == "local"

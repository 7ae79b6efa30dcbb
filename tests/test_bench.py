"""Every benchmark script runs end to end on tiny sizes (`--smoke-test`) and prints its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize(
    "script, header",
    [
        ("throughput.py", "limit/stage"),
        ("training.py", "images/s"),
        ("scaling.py", "ms/dim"),
        ("estimator.py", "evals/pair"),
        ("accuracy.py", "estimate covers"),
        ("estimates.py", "median estimate/true"),
        ("epoch.py", "feature head"),
        ("head.py", "test acc"),
        ("ray_overhead.py", "ratio ray/local"),
    ],
)
def test_bench_script_smoke_test_prints_its_table(script: str, header: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke-test", "--threads", "1"],
        capture_output=True, text=True, timeout=300, cwd=BENCH.parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("# torch ") and header in done.stdout

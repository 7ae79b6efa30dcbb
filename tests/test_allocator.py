"""glibc's handling of freed tensors: kept for speed (trials, packet tasks), returned for measuring."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from pathlib import Path
import torch
from raysweep.run import allocator

def resident_mib():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:"))
    return int(line.split()[1]) // 1024

assert getattr(allocator, sys.argv[1])()
before = resident_mib()
x = torch.ones(64 << 20)  # 256 MiB, touched
del x
print(resident_mib() - before)
"""


@pytest.mark.parametrize("mode, kept", [("keep_freed_memory", True), ("return_freed_memory", False)])
def test_freed_tensor_stays_resident_only_when_kept(mode: str, kept: bool) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    growth = int(out.stdout.split()[-1])  # MiB still resident after the 256 MiB tensor is freed
    assert growth > 200 if kept else growth < 50, growth

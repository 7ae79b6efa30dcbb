"""What produced a run: its manifest of config, versions, code revision and hardware.

The store copies the provenance keys into every Parquet file it writes
(`store.PROVENANCE`), so a file copied out of its run still says where it came from.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import uuid

import torch

from raysweep import __version__
from raysweep.run.config import SweepConfig, record

_PACKAGES = ("torch", "torchvision", "numpy", "pyarrow", "pandas", "seaborn", "scikit-learn", "ray")


def manifest(sweep: SweepConfig, *, preset: str, overrides: dict[str, str], executor: str) -> dict:
    """What produced the run: config, versions, code revision, hardware. No environment variables."""
    trials = sweep.trials()
    return {
        "raysweep": __version__,
        "run_id": uuid.uuid4().hex,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "preset": preset,
        "overrides": overrides,
        "executor": executor,
        "sweep": sweep.record(),
        "trials": {t.name: record(t) for t in trials},
        "versions": {"python": platform.python_version(), **{p: _version(p) for p in _PACKAGES}},
        "code_revision": _code_revision(),
        "hardware": {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _code_revision() -> str:
    """The git commit of the source tree (with '+dirty' for local changes), else the package version."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return f"raysweep {__version__}"
    if rev.returncode != 0:
        return f"raysweep {__version__}"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")

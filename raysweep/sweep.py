"""Run a sweep's trials and keep the run directory in step: the `--executor local` driver.

Each epoch: the trial trains and measures, the store writes the epoch's rows,
then the checkpoint. A crash between the two repeats that epoch on resume and
replaces its rows, so nothing is lost or doubled.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import os
import platform
import subprocess
from typing import Callable

import pandas as pd
import torch

from raysweep import __version__, aggregates
from raysweep.config import SweepConfig, TrialConfig
from raysweep.store import RunStore, check_name
from raysweep.trial import EpochResult, PacketRunner, Trial, run_local

Progress = Callable[[str], None]
_PACKAGES = ("torch", "torchvision", "numpy", "pyarrow", "pandas", "seaborn", "scikit-learn", "ray")


def manifest(sweep: SweepConfig, *, preset: str, overrides: dict[str, str], executor: str) -> dict:
    """What produced the run: config, versions, code revision, hardware. No environment variables."""
    trials = sweep.trials()
    names = [check_name(t.name) for t in trials]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate trial names in the grid: {names}")
    return {
        "raysweep": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "preset": preset,
        "overrides": overrides,
        "executor": executor,
        "sweep": dataclasses.asdict(sweep),
        "trials": {t.name: dataclasses.asdict(t) for t in trials},
        "versions": {"python": platform.python_version(), **{p: _version(p) for p in _PACKAGES}},
        "code_revision": _code_revision(),
        "hardware": {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
    }


def trial_configs(run_manifest: dict) -> list[TrialConfig]:
    return [TrialConfig(**cfg) for cfg in run_manifest["trials"].values()]


def preflight(trials: list[TrialConfig]) -> None:
    """Build every trial once on the CPU so that bad input fails here, before any cluster work."""
    for config in trials:
        Trial(dataclasses.replace(config, device="cpu", limit_train=64, limit_test=16))


def run_trials(
    store: RunStore, trials: list[TrialConfig], *, runner: PacketRunner = run_local, progress: Progress = print
) -> None:
    """Run every trial to its last epoch, resuming each from its newest checkpoint."""
    for config in trials:
        if config.threads:
            torch.set_num_threads(config.threads)
        trial = Trial(config)
        state = store.load_checkpoint(config.name)
        if state is not None:
            trial.load_state_dict(state)
        if trial.done:
            progress(f"[{config.name}] already finished ({trial.epoch}/{config.epochs} epochs)")
        while not trial.done:
            result = trial.run_epoch(runner)
            store.write_epoch(config, result)
            store.save_checkpoint(config.name, trial.epoch, trial.state_dict())
            progress(epoch_line(config, result))


def epoch_line(config: TrialConfig, result: EpochResult) -> str:
    """One progress line: accuracy, robust accuracy and ΔX/ΔP of class 8 per space."""
    parts = [f"[{config.name}] epoch {result.epoch}/{config.epochs}"]
    first = {}
    for row in result.metrics:
        first.setdefault(row["space"], row)
    spreads = {}
    if result.packets:
        frame = pd.DataFrame(result.packets).assign(trial=config.name)
        spreads = aggregates.headline(frame).set_index("space").to_dict("index")
    for space, row in first.items():
        text = f"{space}: acc {row['test_acc']:.1%} robust {row['robust_acc']:.1%}"
        if space in spreads and "DX_class8" in spreads[space]:
            text += f" ΔX8 {spreads[space]['DX_class8']:.3f} ΔP8 {spreads[space]['DP_class8']:.4f}"
        parts.append(text)
    parts.append(f"loss {first['pixel']['train_loss']:.3f}  {first['pixel']['seconds']:.1f}s")
    return "  ".join(parts)


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

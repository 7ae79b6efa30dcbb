"""Run a sweep's trials and keep the run directory in step: the `--executor local` driver.

Each epoch: the trial trains and measures, the store writes the epoch's rows,
then the checkpoint. A crash between the two leaves the rows ahead of the
checkpoint: resume trains that epoch again without re-measuring it. A crash
inside an epoch leaves no rows for it (files are written whole), so resume runs
it in full. `repair` recomputes damaged or missing files. Nothing is lost or doubled.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import os
import platform
import subprocess
import uuid
from typing import Callable

import pandas as pd
import torch

from raysweep import __version__, aggregates
from raysweep.config import SweepConfig, TrialConfig
from raysweep.progress import Board, Monitor
from raysweep.store import RunStore, check_name
from raysweep.trial import EpochResult, PacketRunner, Trial, resolve_device, run_local

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
        "run_id": uuid.uuid4().hex,
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


def preflight(trials: list[TrialConfig]) -> None:
    """Build every trial once on the CPU so that bad input fails here, before any cluster work."""
    for config in trials:
        resolve_device(config.device)
        Trial(dataclasses.replace(config, device="cpu", limit_train=64, limit_test=16))


def run_trials(
    store: RunStore, trials: list[TrialConfig], *, runner: PacketRunner = run_local, progress: Progress = print,
    board: Board | None = None,
) -> None:
    """Run every trial to its last epoch, resuming each from its newest usable checkpoint.

    Each epoch announces its stages on `board` (where a `progress.Monitor` may show the long ones).
    """
    board = board or Board()
    for config in trials:
        _set_threads(config)
        last = last_written(store, config)
        trial = Trial.restored(config, store.load_checkpoint(config.name, before=last + 1), last)
        if trial.done:
            progress(f"[{config.name}] already finished ({trial.epoch}/{config.epochs} epochs)")
        while not trial.done:
            result = trial.run_epoch(runner, board.hook(config.name, trial.epoch + 1, config.epochs))
            store.write_epoch(config, result)
            store.save_checkpoint(config.name, trial.epoch, trial.state_dict())
            board.finished(config.name)
            progress(epoch_line(config, result))


def run_local_driver(store: RunStore, trials: list[TrialConfig], say: Progress) -> None:
    """`--executor local`: the trials in this process, with heartbeat and live stages."""
    board = Board()
    with Monitor(store, say, board.stages, executor="local"):
        run_trials(store, trials, progress=say, board=board)


def last_written(store: RunStore, config: TrialConfig) -> int:
    """The trial's last epoch with results: a resume trains up to it again but does not re-measure it.

    (The files are written before the checkpoint, so a stop in between leaves them ahead of it.)
    """
    return min(config.epochs, max(store.epochs_written(config.name), default=0))


def repair(store: RunStore, trials: list[TrialConfig], *, runner: PacketRunner = run_local, progress: Progress = print) -> int:
    """Recompute what is damaged, and nothing else; returns how many epochs and checkpoints it recomputed.

    A damaged or missing epoch is measured again, and a damaged or foreign checkpoint is
    rebuilt, each from the newest usable checkpoint before it (or the start), training
    the epochs in between without measuring them or writing their files.
    """
    recomputed = 0
    for config in trials:
        _set_threads(config)
        for epoch, tables in store.damaged_epochs(config).items():
            trial = Trial.restored(config, store.load_checkpoint(config.name, before=epoch), epoch - 1)
            store.write_epoch(config, trial.run_epoch(runner), tables=tables)
            progress(f"[{config.name}] epoch {epoch} measured again ({'; '.join(tables.values())})")
            recomputed += 1
        for epoch, reason in store.bad_checkpoints(config.name).items():
            trial = Trial.restored(config, store.load_checkpoint(config.name, before=epoch), epoch)
            store.save_checkpoint(config.name, epoch, trial.state_dict())
            progress(f"[{config.name}] checkpoint of epoch {epoch} rebuilt ({reason})")
            recomputed += 1
    return recomputed


def _set_threads(config: TrialConfig) -> None:
    if config.threads:
        torch.set_num_threads(config.threads)


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

"""Run a sweep's trials and keep the run directory in step: the `--executor local` driver.

Each epoch: the trial trains and measures, the store writes the epoch's rows,
then the checkpoint. A crash between the two leaves the rows ahead of the
checkpoint: resume trains that epoch again without re-measuring it. A crash
inside an epoch leaves no rows for it (files are written whole), so resume runs
it in full. `repair` recomputes damaged or missing files. Nothing is lost or doubled.
"""

from __future__ import annotations

from typing import Callable, Iterable

import pandas as pd
import torch

from raysweep.analysis import aggregates
from raysweep.core.config import TrialConfig
from raysweep.core.trial import EpochResult, PacketRunner, Trial, resolve_device, run_local
from raysweep.run import allocator
from raysweep.run.config import record, replace, swept_columns
from raysweep.run.progress import Board, Monitor
from raysweep.schema import TABLES
from raysweep.store import RunStore

Progress = Callable[[str], None]


def preflight(trials: list[TrialConfig]) -> None:
    """Build every trial once on the CPU so that bad input fails here, before any cluster work."""
    for config in trials:
        resolve_device(config.resources.device)
        Trial(replace(config, device="cpu", limit_train=64, limit_test=16))


def run_trials(
    store: RunStore, trials: list[TrialConfig], *, runner: PacketRunner = run_local, progress: Progress = print,
    board: Board | None = None,
) -> None:
    """Run every trial to its last epoch, resuming each from its newest usable checkpoint.

    Each epoch announces its stages on `board` (where a `progress.Monitor` may show the long ones).
    """
    board = board or Board()
    for config in trials:
        _prepare_process(config)
        last = last_written(store, config)
        trial = Trial.restored(config, store.load_checkpoint(config.name, before=last + 1), last)
        if trial.done:
            progress(f"[{config.name}] already finished ({trial.epoch}/{config.train.epochs} epochs)")
        while not trial.done:
            result = trial.run_epoch(runner, board.hook(config.name, trial.epoch + 1, config.train.epochs))
            write_epoch(store, config, result)
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
    return min(config.train.epochs, max(store.epochs_written(config.name), default=0))


def repair(store: RunStore, trials: list[TrialConfig], *, runner: PacketRunner = run_local, progress: Progress = print) -> int:
    """Recompute what is damaged, and nothing else; returns how many epochs and checkpoints it recomputed.

    A damaged or missing epoch is measured again, and a damaged or foreign checkpoint is
    rebuilt, each from the newest usable checkpoint before it (or the start), training
    the epochs in between without measuring them or writing their files.
    """
    recomputed = 0
    for config in trials:
        _prepare_process(config)
        for epoch, tables in store.damaged_epochs(config.name, embeddings=config.keeps_embeddings).items():
            trial = Trial.restored(config, store.load_checkpoint(config.name, before=epoch), epoch - 1)
            write_epoch(store, config, trial.run_epoch(runner), tables=tables)
            progress(f"[{config.name}] epoch {epoch} measured again ({'; '.join(tables.values())})")
            recomputed += 1
        for epoch, reason in store.bad_checkpoints(config.name).items():
            trial = Trial.restored(config, store.load_checkpoint(config.name, before=epoch), epoch)
            store.save_checkpoint(config.name, epoch, trial.state_dict())
            progress(f"[{config.name}] checkpoint of epoch {epoch} rebuilt ({reason})")
            recomputed += 1
    return recomputed


def _prepare_process(config: TrialConfig) -> None:
    """This process's settings for the trial: its torch threads, and freed memory kept (`allocator`)."""
    allocator.keep_freed_memory()
    if config.resources.threads:
        torch.set_num_threads(config.resources.threads)


def write_epoch(store: RunStore, config: TrialConfig, result: EpochResult, tables: Iterable[str] = TABLES) -> None:
    """The epoch's rows into the run: `epochs/` rows get the trial's identity (arch, dataset, seed)."""
    frames = {
        "packets": pd.DataFrame(result.packets),
        "embeddings": pd.DataFrame(result.embeddings) if result.embeddings else None,
        "epochs": pd.DataFrame(result.metrics).assign(arch=config.arch, dataset=config.data.dataset, seed=config.seed)
        .assign(**{k: v.repeat(len(result.metrics)) for k, v in swept_columns(config).items()}),
    }
    store.write_epoch(config.name, result.epoch, frames, config=record(config), tables=tables)


def epoch_line(config: TrialConfig, result: EpochResult) -> str:
    """One progress line: accuracy and robust accuracy (first attack) and the headline ΔX, ΔP per space."""
    parts = [f"[{config.name}] epoch {result.epoch}/{config.train.epochs}"]
    first = {}
    for row in result.metrics:
        first.setdefault(row["space"], row)
    spreads = {}
    if result.packets:
        frame = pd.DataFrame(result.packets).assign(trial=config.name, dataset=config.data.dataset)
        spreads = aggregates.headline(frame).set_index("space").to_dict("index")
    for space, row in first.items():
        text = f"{space}: acc {row['test_acc']:.1%} robust {row['robust_acc']:.1%}"
        if space in spreads and pd.notna(spreads[space]["DX"]):
            mark = aggregates.HEADLINE_CLASS if spreads[space]["label"].startswith("class") else "̄"
            text += f" ΔX{mark} {spreads[space]['DX']:.3f} ΔP{mark} {spreads[space]['DP']:.4f}"
        parts.append(text)
    parts.append(f"loss {first['pixel']['train_loss']:.3f}  {first['pixel']['seconds']:.1f}s")
    return "  ".join(parts)

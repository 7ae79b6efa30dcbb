"""What a person sees while a run goes, and how `status` tells a live run from a stopped one.

- Epoch lines are printed by the driver: `--executor local` prints them as each
  epoch ends; on Ray, Tune hands every trial's report to a driver callback
  (`tuner.Watch`), so no line is lost when a trial's process exits.
- Stages: a trial announces each stage of an epoch (train, attack, feature head,
  packets with pairs done/total). In-process that goes to a `Board`; from a Ray
  trial it goes to a small file `<run>/progress/<trial>.json` that the driver
  reads. A `Monitor` thread prints a stage once it has lasted `LIVE_AFTER_S`.
- Heartbeat: the `Monitor` rewrites `<run>/driver.json` every `HEARTBEAT_S` with
  the driver's pid and host; on its way out it records how the run ended.
  `status` calls a run live while the heartbeat is younger than `STALE_AFTER_S`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

LIVE_AFTER_S = 3.0  # a stage that lasts longer than this is shown while it runs
REPEAT_S = 10.0  # a running stage is shown again this often, with its new count
HEARTBEAT_S = 5.0
STALE_AFTER_S = 30.0  # a heartbeat older than this means the driver is gone
DRIVER_FILE = "driver.json"
PROGRESS_FOLDER = "progress"

Say = Callable[[str], None]


class Files(Protocol):
    """The part of a run directory this module needs (RunStore provides it)."""

    def write_json(self, name: str, value: dict) -> None: ...

    def read_json(self, name: str) -> dict | None: ...


@dataclass
class Stage:
    trial: str
    epoch: int
    epochs: int
    stage: str
    done: int = 0
    total: int = 0
    since: float = 0.0  # time.time() when the stage began
    pid: int | None = None  # the process of the trial (a Ray trial's actor)
    node: str | None = None  # the Ray node it runs on

    def line(self) -> str:
        count = f" {self.done}/{self.total} pairs" if self.total else ""
        return f"[{self.trial}] epoch {self.epoch}/{self.epochs}: {self.stage}{count} ({time.time() - self.since:.0f}s)"


StageHook = Callable[[str, int, int], None]  # (stage, done, total)


class Board:
    """In-process stages, one per trial: `--executor local`."""

    def __init__(self) -> None:
        self._stages: dict[str, Stage] = {}
        self._lock = threading.Lock()

    def hook(self, trial: str, epoch: int, epochs: int) -> StageHook:
        def update(stage: str, done: int = 0, total: int = 0) -> None:
            with self._lock:
                old = self._stages.get(trial)
                since = old.since if old and (old.epoch, old.stage) == (epoch, stage) else time.time()
                self._stages[trial] = Stage(trial, epoch, epochs, stage, done, total, since)

        return update

    def finished(self, trial: str) -> None:
        with self._lock:
            self._stages.pop(trial, None)

    def stages(self) -> list[Stage]:
        with self._lock:
            return list(self._stages.values())


class StageFile:
    """A Ray trial's stages, written to `progress/<trial>.json` for the driver to read; `node` is
    the Ray node the trial runs on."""

    def __init__(self, files: Files, trial: str, node: str | None = None) -> None:
        self.files, self.trial, self.node = files, trial, node

    def hook(self, epoch: int, epochs: int) -> StageHook:
        since = {"stage": None, "t": 0.0}

        def update(stage: str, done: int = 0, total: int = 0) -> None:
            if stage != since["stage"]:
                since.update(stage=stage, t=time.time())
            value = {"trial": self.trial, "epoch": epoch, "epochs": epochs, "stage": stage,
                     "done": done, "total": total, "since": since["t"], "pid": os.getpid(), "node": self.node}
            try:
                self.files.write_json(f"{PROGRESS_FOLDER}/{self.trial}.json", value)
            except OSError:
                pass  # progress is for the eye; a storage hiccup must not stop the trial

        return update


def read_stage(files: Files, trial: str) -> Stage | None:
    try:
        value = files.read_json(f"{PROGRESS_FOLDER}/{trial}.json")
    except (OSError, ValueError):
        return None
    return Stage(**value) if value else None


class Monitor:
    """A daemon thread: heartbeat into `driver.json`, and live stages printed with `say`.

    `stages` returns the stages to consider (a Board's, or those read from trial files
    of the trials now running).
    """

    def __init__(self, files: Files, say: Say, stages: Callable[[], list[Stage]], *, executor: str) -> None:
        self.files, self.say, self.stages = files, say, stages
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "executor": executor, "started": time.time()}
        self._shown: dict[str, tuple[int, str, float]] = {}  # trial -> (epoch, stage, when shown)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="raysweep-monitor", daemon=True)

    def __enter__(self) -> Monitor:
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        how = "finished" if kind is None else ("interrupted" if issubclass(kind, KeyboardInterrupt) else "failed")
        try:
            self.files.write_json(DRIVER_FILE, {**self.info, "heartbeat": time.time(), "stopped": time.time(), "how": how})
        except OSError:
            pass

    def _beat(self) -> None:
        try:
            self.files.write_json(DRIVER_FILE, {**self.info, "heartbeat": time.time()})
        except OSError:
            pass

    def _loop(self) -> None:
        last_beat = time.monotonic()
        while not self._stop.wait(1.0):
            if time.monotonic() - last_beat >= HEARTBEAT_S:
                self._beat()
                last_beat = time.monotonic()
            for stage in self.stages():
                self._maybe_show(stage)

    def _maybe_show(self, stage: Stage) -> None:
        now = time.time()
        if now - stage.since < LIVE_AFTER_S:
            return
        shown = self._shown.get(stage.trial)
        if shown and shown[:2] == (stage.epoch, stage.stage) and now - shown[2] < REPEAT_S:
            return
        self._shown[stage.trial] = (stage.epoch, stage.stage, now)
        self.say(stage.line())


def liveness(files: Files, now: float | None = None) -> str:
    """One phrase for `status`: whether a driver is working on the run now."""
    try:
        info = files.read_json(DRIVER_FILE)
    except (OSError, ValueError):
        info = None
    if not info:
        return "no driver has recorded itself (a run from before heartbeats, or never started)"
    now = time.time() if now is None else now
    where = f"driver pid {info.get('pid')} on {info.get('host')}, {info.get('executor')} executor"
    if "stopped" in info:
        return f"stopped ({info.get('how')}, {_ago(now - info['stopped'])} ago; {where})"
    age = now - float(info.get("heartbeat", 0))
    if age <= STALE_AFTER_S:
        return f"RUNNING ({where}; heartbeat {_ago(age)} ago)"
    return f"stopped (its driver is gone: last heartbeat {_ago(age)} ago; {where})"


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


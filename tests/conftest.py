"""Shared fixtures: every test gets its own cache folder, never ~/.cache; the suite gets its own HOME;
every test leaves the process as it found it (environment, signal handlers, torch's global settings).

HOME: a local Ray started with token authentication writes its token to ~/.ray/auth_token;
the tests' Rays write theirs into the suite's own folder, never the real home.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_home(tmp_path_factory: pytest.TempPathFactory):
    saved = os.environ.get("HOME")
    os.environ["HOME"] = str(tmp_path_factory.mktemp("home"))  # inherited by every Ray and CLI subprocess
    yield
    if saved is None:
        os.environ.pop("HOME", None)
    else:
        os.environ["HOME"] = saved


SIGNALS = (signal.SIGINT, signal.SIGTERM)
RAY_SETS = ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED", "PYTHONBREAKPOINT")  # what ray.init puts in os.environ


def _torch_state() -> dict | None:
    """torch's process-wide settings that code under test changes (a CLI run in-process sets the thread
    count; the packet and training stages switch TF32 and cuDNN autotuning); None before torch loads."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return {"threads": torch.get_num_threads(), "dtype": torch.get_default_dtype(), "grad": torch.is_grad_enabled(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "benchmark": torch.backends.cudnn.benchmark, "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "matmul": torch.get_float32_matmul_precision()}


def _set_torch_state(state: dict) -> None:
    import torch

    torch.set_num_threads(state["threads"])
    torch.set_default_dtype(state["dtype"])
    torch.set_grad_enabled(state["grad"])
    torch.use_deterministic_algorithms(state["deterministic"])
    torch.backends.cudnn.benchmark = state["benchmark"]
    torch.backends.cudnn.allow_tf32 = state["cudnn_tf32"]
    torch.backends.cuda.matmul.allow_tf32 = state["matmul_tf32"]
    torch.set_float32_matmul_precision(state["matmul"])


@pytest.fixture(scope="session")
def process_at_start() -> dict | None:
    """torch's settings before any test or module fixture ran (session fixtures set up first); and
    SIGINT caught as Python catches it by default: a suite started in the background of a script
    (`make test &`) inherits SIGINT ignored, which every subprocess would inherit in turn, so a test's
    Ctrl-C would do nothing."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return _torch_state()


@pytest.fixture(autouse=True)
def restored_process_state(process_at_start: dict | None):
    """Later tests see the process as the suite started it: a signal handler left ignored would be
    inherited by every subprocess a later test starts (a SIGINT it sends would do nothing). torch's
    settings go back to those of the suite's start, since a module's fixture may change them too."""
    environ = dict(os.environ)
    handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}
    yield
    # Except what Ray's own init adds (RAY_AUTH_MODE=token and the like): Ray's core reads those once per
    # process, so a later Ray this process starts or joins must see them too, or its actors never start.
    kept = {k: v for k, v in os.environ.items() if k not in environ and k in RAY_SETS}
    os.environ.clear()
    os.environ.update({**environ, **kept})
    for sig, handler in handlers.items():
        if signal.getsignal(sig) is not handler:
            signal.signal(sig, handler)
    if process_at_start is not None:
        _set_torch_state(process_at_start)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Staged copies and the default root go to a per-test cache, not ~/.cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache




@pytest.fixture
def short_tmp() -> Path:
    """A folder with a short path: Ray puts Unix sockets under its temporary folder, and a socket
    path may hold at most 107 bytes (pytest's tmp_path can be too deep for that)."""
    path = Path(tempfile.mkdtemp(prefix="rs-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)

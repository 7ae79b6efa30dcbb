"""Shared fixtures: every test gets its own cache folder, never ~/.cache; the suite gets its own HOME.

HOME: a local Ray started with token authentication writes its token to ~/.ray/auth_token;
the tests' Rays write theirs into the suite's own folder, never the real home.
"""

from __future__ import annotations

import os
import shutil
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

"""Shared fixtures: every test gets its own cache folder, never ~/.cache."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest


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

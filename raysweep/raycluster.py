"""Connecting to Ray: an existing cluster (`--address`, `RAY_ADDRESS`) or a local one started here.

The dashboard binds to 127.0.0.1 unless `dashboard_host` asks otherwise, so a
local run exposes nothing beyond this machine.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Iterator

import ray

from raysweep.errors import UserError


@contextlib.contextmanager
def session(address: str | None = None) -> Iterator[None]:
    """Ray for the duration of the block; shut down afterwards only if this block connected it."""
    owned = not ray.is_initialized()
    connect(address)
    try:
        yield
    finally:
        if owned:
            ray.shutdown()


def connect(address: str | None = None, *, dashboard_host: str = "127.0.0.1", num_cpus: int | None = None) -> None:
    """Join the cluster at `address` (or `RAY_ADDRESS`), else start a local Ray on this machine."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        _probe(address)
    kwargs: dict = {"log_to_driver": True, "configure_logging": False}
    if address is None:
        kwargs.update(dashboard_host=dashboard_host, num_cpus=num_cpus)
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot reach a Ray cluster at {address!r} ({first}): check --address / RAY_ADDRESS, "
            "or leave both unset to start a local Ray"
        ) from None


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds on a host:port nobody answers (ray.init would retry for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", "local" and the like are Ray's to resolve
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UserError(
            f"cannot reach a Ray cluster at {address!r} ({exc.strerror or exc}): check --address / RAY_ADDRESS, "
            "or leave both unset to start a local Ray"
        ) from None


def has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0

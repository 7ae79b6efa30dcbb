"""Connecting to Ray: an existing cluster (`--address`, `RAY_ADDRESS`) or a new local one started here.

With no address, raysweep always starts its own Ray on this machine
(`ray.init(address="local")`): an address file left behind by a dead `ray start`
head must not turn a run into an attempt to join it. Joining a live local cluster
is the user's choice, with `--address auto`. The dashboard of a local Ray binds to
127.0.0.1 unless `dashboard_host` asks otherwise, so it exposes nothing beyond
this machine.

Packet tasks run on Ray's pooled workers; a raylet kills workers idle for longer
than `idle_worker_killing_time_threshold_ms` once a node holds more workers than
CPUs, which made every epoch pay a process start and a torch import. A local Ray
started here keeps idle workers for `KEEP_IDLE_WORKERS_MS`; `ray start` heads and
workers get the same through the environment variable README and cluster.yaml give.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from typing import Iterator

import ray

from raysweep.errors import UserError

KEEP_IDLE_WORKERS_MS = 600_000  # a packet worker outlives the pause between two epochs' packet stages
_AUTH_WORDS = ("InvalidAuthToken", "AuthenticationError", "authentication", "auth token", "Unauthenticated")


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
    """Join the cluster at `address` (or `RAY_ADDRESS`), else start a new local Ray on this machine."""
    quiet_driver_logs()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    answered = address is not None and _probe(address)
    kwargs: dict = {"log_to_driver": True, "configure_logging": False}
    if address is None:
        kwargs.update(
            dashboard_host=dashboard_host, num_cpus=num_cpus,
            _system_config={"idle_worker_killing_time_threshold_ms": KEEP_IDLE_WORKERS_MS},
        )
    try:
        ray.init(address=address or "local", **kwargs)
    except Exception as exc:  # ray.init raises ConnectionError, RuntimeError, ValueError and its own types
        raise UserError(_connect_message(address, exc, answered=answered)) from None


def _connect_message(address: str | None, exc: BaseException, *, answered: bool = False) -> str:
    """A refused handshake on a port that answers is, in practice, token authentication (Ray's
    core logs `InvalidAuthToken` but raises a plain "Failed to connect")."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if answered or any(word.lower() in f"{type(exc).__name__} {text}".lower() for word in _AUTH_WORDS):
        return (
            f"the Ray cluster at {address!r} answered but refused this client's authentication ({first[:120]}): "
            "a head started with RAY_AUTH_MODE=token needs RAY_AUTH_MODE=token here too and its token in "
            "RAY_AUTH_TOKEN (or the file ~/.ray/auth_token, or RAY_AUTH_TOKEN_PATH); if the token is right, "
            "check that this client runs the cluster's Ray version"
        )
    return (
        f"cannot reach a Ray cluster at {address!r} ({first[:200]}): check --address / RAY_ADDRESS, "
        "or leave both unset to start a local Ray"
    )


def _probe(address: str, timeout: float = 5.0) -> bool:
    """Fail in seconds on a host:port nobody answers (ray.init would retry for minutes); True if one answered."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return False  # "auto", "local" and the like are Ray's to resolve
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UserError(
            f"cannot reach a Ray cluster at {address!r} ({exc.strerror or exc}): check --address / RAY_ADDRESS, "
            "or leave both unset to start a local Ray"
        ) from None
    return True


def quiet_driver_logs() -> None:
    """Keep Ray's and Tune's routine output off the terminal; their warnings and errors still show.

    Set before Ray starts: Tune's console reporter (its config table, the TensorBoard
    hint) gives way to raysweep's own progress lines, and worker output is not
    wrapped in colour codes off a terminal.
    """
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # A Ray of our own keeps Ray's default, token authentication, without its notice that it chose it.
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_TOKEN_NOTICE)  # once: same object
    # Short epochs with num_to_keep make Tune force a state snapshot at each checkpoint, which is
    # what resume needs; its warning about that would flood the terminal.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


class _TokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


_TOKEN_NOTICE = _TokenNotice()


def has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


def alive_nodes() -> list[dict]:
    """Each alive node as {"address", "resources"} (Ray's logical resources)."""
    return [
        {"address": n.get("NodeManagerAddress", "?"), "resources": dict(n.get("Resources", {}))}
        for n in ray.nodes()
        if n.get("Alive")
    ]


def lost_nodes() -> str:
    """The nodes Ray knows as dead, as `address (node id prefix)`, comma-separated ('' if none)."""
    return ", ".join(f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})" for n in ray.nodes() if not n.get("Alive"))


def unplaceable(bundles: list[dict[str, float]], nodes: list[dict]) -> str | None:
    """Why no assignment of these placement-group bundles to these nodes exists, or None if one may.

    A bundle never spans nodes, so each must fit whole on one node; the group needs
    their sum across the nodes. (A necessary check, not a full bin-packing: enough
    to tell a request no node can ever satisfy.)
    """
    def fits(bundle: dict[str, float], resources: dict[str, float]) -> bool:
        return all(resources.get(key, 0.0) + 1e-9 >= value for key, value in bundle.items() if value > 0)

    for bundle in bundles:
        if not any(fits(bundle, n["resources"]) for n in nodes):
            have = "; ".join(f"{n['address']}: {_describe(n['resources'])}" for n in nodes) or "no alive node"
            return f"a bundle of {_describe(bundle)} fits no node of the cluster ({have})"
    total: dict[str, float] = {}
    for n in nodes:
        for key, value in n["resources"].items():
            total[key] = total.get(key, 0.0) + value
    need: dict[str, float] = {}
    for bundle in bundles:
        for key, value in bundle.items():
            need[key] = need.get(key, 0.0) + value
    if not fits(need, total):
        return f"the trial's {len(bundles)} bundles need {_describe(need)} together, the cluster has {_describe(total)}"
    return None


def _describe(resources: dict[str, float]) -> str:
    shown = {k: v for k, v in resources.items() if k in ("CPU", "GPU") or (v and not k.startswith(("node:", "memory", "object_store")))}
    return ", ".join(f"{k} {v:g}" for k, v in sorted(shown.items())) or "nothing"

"""raysweep's closed vocabularies, each defined once: the lists of choices, and how it names things.

Plain Python: the config checks a `key=value` against these before torch, Ray or
pyarrow load, and the modules that act on a choice take its list from here.
"""

from __future__ import annotations

import re

from raysweep.errors import UserError

SPACES = ("pixel", "feature")  # where packets and attacks are measured (SPEC 1.5), in the paper's order
RULES = ("gauss", "mc")  # estimators that integrate each line with one quadrature rule (`core.quadrature`)
ESTIMATORS = ("piecewise", *RULES)  # what `core.packets.packet_stats` computes with
PRECISIONS = ("float32", "bf16")  # arithmetic of a training step's forward pass (`core.train`)
ATTACKS = ("pgd", "fgsm")  # L-inf attacks (`core.attacks`)
REGIMES = ("standard", "pgd", "trades")  # how a trial trains (`core.regime`, SPEC 7)
EXECUTORS = ("ray", "local")  # Ray Tune trials with packet tasks, or everything in-process
FORMATS = ("png", "svg", "pdf")  # figure files
AUTO = "auto"  # the config's value for "let raysweep choose" (estimator, precision, device)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # one plain path component
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def safe_name(text: str) -> str:
    """`text` as one path component: every character outside [A-Za-z0-9_.-] becomes '_'."""
    return _UNSAFE.sub("_", text)


def check_name(name: str) -> str:
    """A trial or run name must be one plain path component; returns it."""
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise UserError(f"name {name!r} is not allowed: use letters, digits, '.', '_' and '-' only (no '/' or '..')")
    return name


def mc_problem(nodes: int, replicates: int) -> str | None:
    """Why Monte-Carlo cannot give standard errors with these counts, or None when it can.

    The nodes split into `replicates` independent batches of equal size (paper's estimator,
    SPEC 1.3): at least two batches, and a count that divides the nodes.
    """
    if replicates < 2 or nodes % replicates:
        return f"the standard errors need replicates >= 2 that divide nodes (got nodes={nodes}, replicates={replicates})"
    return None

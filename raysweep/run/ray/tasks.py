"""The Ray packet runner: chunks of dimensions as remote tasks inside the trial's placement group.

Each model (the network, the feature-space head) goes into the object store once
per epoch; every task of that model receives the same reference. Tasks are
scheduled into the calling trial's placement group, whose spare bundles Tune
reserved for them (see `tuner.resources`), so a full cluster cannot deadlock.

A task whose worker or node dies is retried by Ray (`max_retries`); when a node
dies, Ray moves the group's bundles to other nodes where they fit. If they fit
nowhere any more, the tasks would wait forever: after `LOST_BUNDLE_GRACE_S` the
runner raises instead, so the trial fails and Tune's retry (and, failing that,
the driver's watch) ends the run with a message.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import replace
from typing import Sequence

import ray
import torch
from ray.util.placement_group import get_current_placement_group, placement_group_table
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from raysweep.run import allocator
from raysweep.run.ray import cluster
from raysweep.core.lines import PacketStats
from raysweep.core.trial import DimsDone, PacketTask

# How long a lost bundle may wait for a node that can take it (a replacement node may be starting).
LOST_BUNDLE_GRACE_S = float(os.environ.get("RAYSWEEP_NODE_GRACE_S", "30"))
WAIT_S = 2.0  # how often the runner looks up from its tasks


def worker_setup() -> None:
    """What every Ray worker of raysweep does first: keep freed tensors' memory (`allocator`), and
    silence what it would print at every report (Tune's "Checkpoint successfully created")."""
    allocator.keep_freed_memory()
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)


@ray.remote(max_retries=3)
def _run_chunk(model: torch.nn.Module, task: PacketTask, threads: int | None) -> PacketStats:
    worker_setup()
    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")
    return replace(task, model=model).to(device).run()


class RayRunner:
    """A `PacketRunner` that fans chunks out as Ray tasks asking for `cpus` and `gpus` each."""

    def __init__(self, *, cpus: float = 1, gpus: float = 0, threads: int | None = None, trial: str = "") -> None:
        self.cpus, self.gpus, self.threads, self.trial = cpus, gpus, threads, trial

    def __call__(self, tasks: Sequence[PacketTask], on_done: DimsDone = lambda dims: None) -> list[PacketStats]:
        group = get_current_placement_group()
        options: dict = {"num_cpus": self.cpus, "num_gpus": self.gpus, "name": f"packets:{self.trial}"}
        if group is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                group, placement_group_capture_child_tasks=True
            )
        refs: dict[int, ray.ObjectRef] = {}
        futures = []
        for task in tasks:
            key = id(task.model)
            if key not in refs:
                refs[key] = ray.put(copy.deepcopy(task.model).cpu().eval())
            light = replace(task, model=None, x_base=task.x_base.cpu())
            futures.append(_run_chunk.options(**options).remote(refs[key], light, self.threads))
        dims = {ref: task.dims.numel() for ref, task in zip(futures, tasks)}
        pending, finished, lost_since = list(futures), 0, None
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=WAIT_S, fetch_local=False)
            if ready:
                finished += sum(dims[ref] for ref in ready)
                on_done(finished)
            elif group is not None:
                lost_since = _check_bundles(group, lost_since)
        return ray.get(futures)


def _check_bundles(group, lost_since: float | None) -> float | None:
    """Raise once the group has been waiting LOST_BUNDLE_GRACE_S for bundles no alive node can hold."""
    table = placement_group_table(group)
    if table.get("state") != "RESCHEDULING":
        return None
    now = time.monotonic()
    if lost_since is None:
        return now
    bundles = list(table.get("bundles", {}).values())
    why = cluster.unplaceable(bundles, cluster.alive_nodes())
    if now - lost_since >= LOST_BUNDLE_GRACE_S and why:
        raise RuntimeError(
            f"the packet tasks lost their bundle with node {cluster.lost_nodes() or '?'} and no alive node can take it: {why}"
        )
    return lost_since

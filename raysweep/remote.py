"""The Ray packet runner: chunks of dimensions as remote tasks inside the trial's placement group.

Each model (the network, the feature-space head) goes into the object store once
per epoch; every task of that model receives the same reference. Tasks are
scheduled into the calling trial's placement group, whose spare bundles Tune
reserved for them (see `tuner.resources`), so a full cluster cannot deadlock.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Sequence

import ray
import torch
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from raysweep.packets import PacketStats
from raysweep.trial import PacketTask


@ray.remote(max_retries=3)
def _run_chunk(model: torch.nn.Module, task: PacketTask, threads: int | None) -> PacketStats:
    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")
    return replace(task, model=model).to(device).run()


class RayRunner:
    """A `PacketRunner` that fans chunks out as Ray tasks asking for `cpus` and `gpus` each."""

    def __init__(self, *, cpus: float = 1, gpus: float = 0, threads: int | None = None) -> None:
        self.cpus, self.gpus, self.threads = cpus, gpus, threads

    def __call__(self, tasks: Sequence[PacketTask]) -> list[PacketStats]:
        group = get_current_placement_group()
        options: dict = {"num_cpus": self.cpus, "num_gpus": self.gpus}
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
        return ray.get(futures)

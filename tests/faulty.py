"""A plugin architecture that kills its own process once, for fault tests.

`KillOnceInTask` is an mnist_conv3 whose forward, when it runs inside a Ray *task*
(the packet stage, never the trial actor), hard-exits the worker the first time
the marker file named by RAYSWEEP_TEST_MARKER does not exist yet.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from raysweep import models


class KillOnceInTask(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        inner = models.build("mnist_conv3", num_classes)
        self.features, self.classifier = inner.features, inner.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        marker = os.environ.get("RAYSWEEP_TEST_MARKER")
        if marker and not os.path.exists(marker) and _in_ray_task():
            open(marker, "w").close()
            os._exit(1)
        return self.classifier(self.features(x))


def _in_ray_task() -> bool:
    import ray

    worker = ray._private.worker.global_worker
    return ray.is_initialized() and worker.mode == ray.WORKER_MODE and worker.actor_id.is_nil()

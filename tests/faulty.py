"""Plugin architectures that fail on purpose, for fault tests.

`KillOnceInTask` is an mnist_conv3 whose forward, when it runs inside a Ray *task*
(the packet stage, never the trial actor), hard-exits the worker the first time
the marker file named by RAYSWEEP_TEST_MARKER does not exist yet.
`NanFromSecondEpoch` trains one epoch, then its loss turns NaN.
"""

from __future__ import annotations

import os

import torch

from raysweep.core import models


class _Conv3(models.Net):
    """mnist_conv3 as a plugin class: what the faulty nets below start from."""

    def __init__(self, num_classes: int = 10) -> None:
        inner = models.build("mnist_conv3", num_classes)
        super().__init__(inner.features, inner.classifier)


class KillOnceInTask(_Conv3):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        marker = os.environ.get("RAYSWEEP_TEST_MARKER")
        if marker and not os.path.exists(marker) and _in_ray_task():
            open(marker, "w").close()
            os._exit(1)
        return super().forward(x)


def _in_ray_task() -> bool:
    import ray

    worker = ray._private.worker.global_worker
    return ray.is_initialized() and worker.mode == ray.WORKER_MODE and worker.actor_id.is_nil()


class NanFromSecondEpoch(_Conv3):
    """An mnist_conv3 whose training forward returns NaN logits once it has seen more than
    `images_per_epoch` training images: the first epoch trains normally, the second blows up."""

    images_per_epoch = 96  # the tests' limit_train

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(num_classes)
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.training:
            self.seen += x.shape[0]
            if self.seen > self.images_per_epoch:
                return out * float("nan")
        return out

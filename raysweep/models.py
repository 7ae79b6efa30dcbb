"""`raysweep.models.build`, the architectures' public name (SPEC 1.6); it lives in `raysweep.core.models`."""

from raysweep.core.models import build, input_shape, split

__all__ = ["build", "input_shape", "split"]

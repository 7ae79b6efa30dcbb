"""`raysweep.packets.packet_stats`, the estimator's public name (SPEC 1.3); it lives in `raysweep.core.packets`."""

from raysweep.core.lines import PacketStats
from raysweep.core.packets import packet_stats

__all__ = ["PacketStats", "packet_stats"]

"""Keep freed memory in the process on glibc, so big tensors are not returned to the OS after every pass.

glibc serves allocations above a dynamic threshold with fresh mmap pages and
gives freed heap top back to the OS. A packet or training pass allocates and
frees the same large tensors over and over, so each pass faulted its pages in
again: the packet stage ran at about half the network's forward+JVP limit on
the CPU (BENCHMARKS.md, 1.8-2x). Same effect as MALLOC_MMAP_THRESHOLD_ and
MALLOC_TRIM_THRESHOLD_ in the environment; a no-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30  # bytes: tensors below 1 GiB come from the heap and stay there when freed


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True where that took effect."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))

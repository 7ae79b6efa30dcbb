"""How glibc's malloc treats freed tensors: kept in the process for speed, or returned for measuring.

glibc serves allocations above a dynamic threshold with fresh mmap pages and
gives freed heap top back to the OS. A packet or training pass allocates and
frees the same large tensors over and over, so each pass faulted its pages in
again: the packet stage ran at about half the network's forward+JVP limit on
the CPU (BENCHMARKS.md, 1.8-2x). `keep_freed_memory` has the same effect as
MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ in the environment. Both
functions are no-ops off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_KEEP = 1 << 30  # bytes: tensors below 1 GiB come from the heap and stay there when freed
_RETURN = 1 << 16  # bytes: blocks above 64 KiB are mapped on their own and unmapped when freed


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True where that took effect."""
    return _set_thresholds(_KEEP)


def return_freed_memory() -> bool:
    """The opposite, for measuring memory: blocks above 64 KiB get their own mappings, unmapped when
    freed, and the heap's free memory goes back to the OS now. The resident size then follows the
    memory in use; kept memory would add the heap's fragmentation to it (bench/scaling.py).
    True where that took effect."""
    libc = _libc()
    if libc is None or not _set_thresholds(_RETURN):
        return False
    libc.malloc_trim(0)
    return True


def _set_thresholds(nbytes: int) -> bool:
    libc = _libc()
    return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, nbytes)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, nbytes)
    )


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, or None elsewhere (no mallopt and malloc_trim)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None

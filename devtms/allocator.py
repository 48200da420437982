"""Keep freed memory in the process while the hot loops run.

A compiled SGLD step allocates its outputs and buffers (about a megabyte each) afresh on every
call. glibc's malloc serves blocks above its mmap threshold (128 KiB at start) with a fresh
mmap and returns them to the OS on free, and trims the top of the heap once 128 KiB is free;
either way the next call's memory arrives as new pages, each one a page fault. On the LLC
engine's tiles that costs from nothing to 3x of the step's time, depending on where glibc's
self-adjusting threshold happens to stand (measured: softmax 1.2 ms or 4.4 ms per step in
identical runs). PyTorch's CPU tuning guide points at the same cost (and at jemalloc or
tcmalloc as a fix); devtms sets glibc's own knobs instead, so nothing extra is installed.

Elsewhere (other C libraries, macOS) this does nothing; numbers never depend on it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks below it come from the heap and are reused
TRIM_THRESHOLD = 256 << 20  # free memory at the heap's top kept before returning any


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc reuse freed blocks instead of unmapping them. -> whether it applied"""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))

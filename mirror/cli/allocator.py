"""Process-wide allocator setting for a server that streams large buffers.

glibc's malloc serves blocks above a threshold (128 KiB, raised as such blocks are freed) with
their own mmap, and gives heap memory back above a trim threshold. A cold download allocates a
fresh 1 MiB bytes object per socket read and frees it a few milliseconds later, so the heap was
grown and trimmed over and over: every new page is faulted in and zeroed by the kernel (on
this project's VM also by the host), which cost more CPU than the bytes themselves. A fixed
threshold of 32 MiB keeps those buffers on the heap, where freed ones are reused (cold layer
+23%, CPU per GB -21%, bench/README.md). Setting it also pins the trim threshold at 128 KiB,
so the free top of the heap (a few of those buffers) was still given back and faulted in again
after nearly every read: a 16 MiB trim threshold keeps it (cold layer +20-25%, CPU per GB
-15-20% more, in interleaved A/Bs; peak RSS unchanged, since it only keeps what a burst used).
Other allocators and platforms are left alone."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("mirror.allocator")
M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest dynamic threshold on 64-bit
M_TRIM_THRESHOLD = -1
TRIM_THRESHOLD = 16 * 1024 * 1024  # above the few MiB of read buffers a download cycles


def keep_large_buffers_on_heap() -> bool:
    """True when glibc took the setting."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("malloc mmap threshold %s", "set" if ok else "not set")
    return ok

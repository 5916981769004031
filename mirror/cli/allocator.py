"""Process-wide allocator setting for a server that streams large buffers.

glibc's malloc serves blocks above a threshold (128 KiB, raised as such blocks are freed) with
their own mmap, and gives heap memory back above a trim threshold. A cold download allocates a
fresh 1 MiB bytes object per socket read and frees it a few milliseconds later, so the heap was
grown and trimmed over and over: every new page is faulted in and zeroed by the kernel (on
this project's VM also by the host), which cost more CPU than the bytes themselves. A fixed
threshold of 32 MiB keeps those buffers on the heap, where freed ones are reused (cold layer
+23%, CPU per GB -21%, bench/README.md). Other allocators and platforms are left alone."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("mirror.allocator")
M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest dynamic threshold on 64-bit


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
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    log.debug("malloc mmap threshold %s", "set" if ok else "not set")
    return ok

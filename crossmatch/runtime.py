"""Process-level settings that make CPU training fast.

glibc serves large allocations (above a dynamic threshold, 128 KiB to
32 MiB) with mmap and returns them to the kernel on free. A training step
allocates and frees gigabytes of activations, so every step page-faults the
same memory back in; on our 2-core machines that costs more than the
arithmetic (CrossMatch at the ACDC reference batch: 23 s per iteration with
the default allocator, less than half with mmap off). ``tune_allocator``
asks glibc to keep freed memory in the heap instead, the in-process
equivalent of ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>``. The
peak memory is unchanged; the resident memory simply does not shrink between
steps. It is a no-op where glibc is absent (macOS, musl) and for CUDA
tensors.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def tune_allocator() -> bool:
    """Disable mmap for malloc and heap trimming; True if glibc accepted both."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))

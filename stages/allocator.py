"""Keep freed memory in the process: the C allocator's settings for the pipeline's processes.

A training step frees and reallocates the same activation buffers, up to tens of MB each, every
step. With glibc's defaults, memory freed at the top of the heap beyond the trim threshold goes
back to the kernel, and blocks above the (moving) mmap threshold are mapped afresh, so every step
faults its pages in again. A dlib_conv β-VAE step at batch 64 took 17,774 minor page faults and
40 ms of system time on the 2-core reference machine (docs/gw.md); with the settings below it
takes none.

:func:`keep_freed_memory` fixes the mmap threshold at glibc's maximum (32 MiB, so larger blocks
are still mapped and returned) and raises the trim threshold to 1 GiB. It is what
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824`` in the environment does.
Elsewhere (no glibc ``mallopt``) it does nothing.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Apply the settings to this process; True when the allocator accepted them."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )

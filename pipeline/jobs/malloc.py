"""Freed memory given back to the system: glibc's malloc told to give big blocks a mapping of their own.

glibc maps a block of its own for an allocation above a threshold, and by
default raises that threshold to the size of each such block freed (up to
32 MB). Once a run has freed the numpy arrays of a million inputs, every
later array below that size comes from the heap, where what is freed stays
with the process: the rerun of a million listed objects peaked 10 to 30 MB
above what it held (opening the resume state, building its index). With a
fixed threshold of 1 MB every big array is unmapped when freed; the many
small blocks are served from the heap as before.
"""

from __future__ import annotations

import ctypes
import os

#: mallopt's parameter for the threshold (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 20

_set = False


def give_back_big_blocks() -> None:
    """Fix glibc's mapping threshold at :data:`THRESHOLD` (once; not when the user set it, nor off glibc)."""
    global _set
    if _set or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    _set = True
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS has no mallopt): its own allocator as it is
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt(M_MMAP_THRESHOLD, THRESHOLD)

"""Hand freed heap memory back to the system (glibc `malloc_trim`), for daemons whose tables
grow in steps.

When the relay's peer table grows, its columns are reallocated and the old blocks freed; with
packets allocated and freed around them, the freed space stays in the heap (resident) unless
glibc is asked to return it. `malloc_trim(0)` does so for every arena (madvise on free pages),
in a few milliseconds; calling it after each growth (a few dozen times up to a million peers)
keeps the resident memory close to what the tables hold. Where there is no glibc, nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; False where `malloc_trim` is missing."""
    trim = _trim()
    if trim is None:
        return False
    trim(0)
    return True

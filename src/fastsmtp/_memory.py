"""Memory tuning the ``fastsmtp`` command applies to its own process (never the library).

glibc's malloc serves a large block from ``mmap`` at first, but once such a block is freed it
raises its mmap threshold (up to 32 MiB on 64-bit) and serves later large blocks from the
heap, where a growing block is copied on realloc and freed memory stays resident. The compiled
twin keeps its message bodies out of this by asking for room above the largest threshold where
that room costs nothing (``_wire_c.mapping_pays``); everything else large (the pure twin's
bodies, the copies made while storing a message) is still subject to it. A fixed threshold
keeps all of them in ``mmap``: realloc moves pages (``mremap``) instead of copying, and a
freed block goes back to the system at once.

It is process-wide, which is why only the command sets it; a program embedding fastsmtp can
get the same with ``MALLOC_MMAP_THRESHOLD_=1048576`` in its environment.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["MMAP_THRESHOLD", "use_mmap_for_large_blocks"]

# Blocks from this size up come from mmap: message bodies do, the 256 KiB receive buffer not.
MMAP_THRESHOLD = 1024 * 1024

_M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>


def use_mmap_for_large_blocks() -> bool:
    """Fix glibc's mmap threshold at ``MMAP_THRESHOLD``; return True if it was set.

    Nothing is changed where the C library is not glibc, or where the environment already
    chooses (``MALLOC_MMAP_THRESHOLD_``): the operator's setting wins.
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False

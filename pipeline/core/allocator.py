"""The C allocator's settings for this process: freed kernel buffers are kept for the next symbol.

The batch kernels take each symbol's working buffers (a few hundred KB each) from malloc
and free them when the symbol is done. With glibc's defaults the freed top of the heap is
handed back to the OS after one symbol (trim) and faulted back in, page by page, by the
next, and a buffer above the mmap threshold (128 KB until glibc raises it) is a fresh
mapping every time: 30,000-60,000 page faults and 40 % of the kernel's CPU time in an
all-crypto RSI run (measured with getrusage; none with the settings below).

The settings are glibc's own ceilings for its adaptive thresholds (mmap 32 MB, trim twice
that), fixed from the start instead of learnt: allocations below 32 MB come from the heap,
and up to 64 MB of freed heap stays in the process. Elsewhere than glibc nothing changes.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 2**20
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES


def configure() -> bool:
    """Set the thresholds (glibc only); whether they were set."""
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return False
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, ValueError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))

"""Host memory: let the C library's allocator keep freed blocks for the next training step.

A CPU training step allocates and frees dozens of large temporaries: at the large-scale batch
(4,096 positives + 4,096 negatives per rank) each activation of DIN's attention MLP is a
[rows, L, 32] float32 tensor of about 10-20 MB. glibc's malloc serves blocks that large with mmap,
or from the top of its heap, which it gives back to the kernel as soon as more than a (dynamic)
trim threshold lies free there; either way the next step's blocks arrive as fresh pages and every
page faults on first touch while the kernel zeroes it (62,000 faults per step in one process at that
batch; benchmarks/large_scale.md, "Where a step's time goes", has the A/B).

:func:`reuse_freed_host_memory` raises both thresholds (``mallopt``), so freed blocks stay in the
process and are reused: the step computes exactly the same numbers, faster, and the process keeps
up to :data:`TRIM_THRESHOLD` of free heap instead of returning it at once. Config:
``dist.reuse_host_memory`` (on by default; off = the C library's own behaviour). Only glibc has
these settings; elsewhere (musl, macOS) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger("atjt_dist")

#: mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: blocks up to this size come from the heap, not from mmap: glibc's largest accepted value on
#: 64-bit systems (half its HEAP_MAX_SIZE); larger blocks are still mapped and unmapped each time
MMAP_THRESHOLD = 32 * 2**20
#: free memory at the top of the heap kept for reuse before any of it goes back to the kernel
TRIM_THRESHOLD = 2**30

_applied = False


def reuse_freed_host_memory() -> bool:
    """Raise glibc malloc's mmap and trim thresholds for this process (once; later calls are
    no-ops). Returns whether the settings are in force (False where the C library is not glibc)."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # mallopt returns 1 on success; a fixed mmap threshold also turns off glibc's dynamic one
    _applied = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not _applied:
        log.warning("could not raise malloc's mmap/trim thresholds; training runs with the C library's defaults")
    return _applied

"""How the C library's allocator treats the memory a training step frees.

Every step allocates the same large arrays again (activations, masks, gradients of 1-30 MB).
glibc's malloc, left alone, maps arrays above a threshold with mmap and unmaps them on free,
and trims the heap's free top back to the kernel: the next step's arrays then fault their
pages in again, zero-filled by the kernel (resnet20, 32x32x3, batch 128: about 13,000 page
faults and 35 ms of system time a step). Keeping the freed memory mapped lets the next step
reuse it. The peak resident memory barely changes, since the pages are the ones the step
needed anyway; they are only not given back between steps. The three settings go together:
setting any one turns off glibc's own adjustment of the thresholds (the trim threshold alone
made resnet20 fault 108,000 pages a step).
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
# The largest mmap threshold glibc accepts on 64-bit (half its maximum heap size); arrays
# beyond it are still mapped per allocation. Evaluation batches of that size are rare.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = (1 << 31) - 1   # mallopt takes a C int: 2 GiB, in effect never trim the heap's top
TOP_PAD = 64 << 20         # grow the heap in large steps: fewer brk calls (untouched pages cost nothing)

CHOICES = ("keep", "system")
_applied = None


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None)
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Keep freed memory mapped for the next allocation (glibc; elsewhere nothing happens).
    True where the C library took the settings. Process-wide and kept for the process's life:
    call it once, before the first step (mpidl.world does, unless told ``allocator="system"``)."""
    global _applied
    if _applied is None:
        libc = _libc()
        mallopt = getattr(libc, "mallopt", None)
        # musl and macOS have no mallopt (or one that ignores these): leave them as they are.
        _applied = bool(mallopt) and all(
            mallopt(param, value) == 1
            for param, value in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                                 (M_TOP_PAD, TOP_PAD)))
    return _applied


def configure(allocator: str) -> str:
    """Apply the --allocator choice; returns what is in effect ("keep" or "system")."""
    if allocator not in CHOICES:
        raise ValueError(f"allocator must be one of {CHOICES}, not {allocator!r}")
    if allocator == "keep":
        keep_freed_memory()
    return "keep" if _applied else "system"   # "system" after "keep" in one process: still keep

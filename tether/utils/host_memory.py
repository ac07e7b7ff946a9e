"""Keep freed host memory inside the process, so training does not page-fault its way through
every step.

Why: glibc's malloc serves each allocation above ~128 KiB-32 MiB with a fresh ``mmap`` and hands
it back with ``munmap`` when freed, and trims the top of its heap whenever more than 128 KiB
is free there. A training step on CPU allocates and frees the same large buffers every time
(autocast's bf16 copies of the weights, the dense gradient of a 49k-token embedding, the
[B, T, vocab] logits), so each step pays for fresh zeroed pages from the kernel: measured on a
SmolLM2-135M PPO iteration (benchmarks/NOTES.md, "Page faults, not casts"), ``fill_`` of one 113 MB
embedding gradient took 168 ms (0.7 GB/s), and the whole iteration went from 18.7 s to 13.1 s
with the two settings below. Allocators such as jemalloc or tcmalloc (Intel's PyTorch CPU
tuning guide recommends them) get the same effect by caching; glibc gets it from two
``mallopt`` calls, with nothing to install.

The cost: memory the process has used stays mapped until it exits, and this is process-wide,
so only the training entry points call it. Peak RSS stays what it was (PPO on SmolLM2: 7.36 GB,
flat over 8 iterations; 7.38 GB without the setting). glibc's heap does not reuse every freed
block for the next request of the same size (torch asks for 64-byte-aligned memory, which
needs a slightly larger block), so the heap first settles, with a one-time cost that does not
grow with the number of steps (tests/test_performance_paths.py). ``TETHER_HOST_MALLOC=default``
leaves glibc's behaviour alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameter numbers, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# mallopt takes an int: the largest trim threshold it accepts is 2 GiB - 1. A free region that
# large at the top of the heap is still handed back, which is rare within a step.
_TRIM_THRESHOLD = 2**31 - 1

_applied: bool | None = None


def keep_freed_host_memory() -> bool:
    """Ask glibc to serve every allocation from its heap (no per-buffer mmap) and never to
    trim less than 2 GiB from it. Idempotent; returns whether the settings are in force.
    No effect (False) off Linux, under a libc without ``mallopt`` (musl), or when the
    environment sets ``TETHER_HOST_MALLOC=default``."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("TETHER_HOST_MALLOC", "").strip().lower() == "default" or not sys.platform.startswith("linux"):
        return _applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return _applied
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _applied

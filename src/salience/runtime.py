"""Process-level settings that make saliency runs faster on CPU.

Saliency methods push many large batches through a model; each batch allocates
and frees activation tensors of tens of megabytes.  glibc's allocator serves
blocks that large with fresh ``mmap`` pages and unmaps them on free, so every
batch pays for the kernel zeroing its memory again: on a 2-core machine
EfficientNet-Lite0 forward+backward at 32 rows per call was measured 2x slower
per row than with the memory kept (``bench/bench_report.py``).

Changing the allocator is a decision for the application that owns the
process, so the library never does it behind a user's back: the ``salience``
command calls :func:`retain_freed_memory` at start, and scripts may do so too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

__all__ = ["retain_freed_memory", "usable_cores"]

# mallopt parameters from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Blocks below this come from the heap and are reused after free.  It must exceed
# the largest activation (32 x 32 x 112 x 112 float32 = 51 MiB for Lite0's first
# layers): a 32 MiB threshold was measured to give no gain at 32 rows per call.
_MMAP_THRESHOLD = 1 << 30
# Free memory at the top of the heap kept instead of returned to the system.
_TRIM_THRESHOLD = 1 << 30
# Every thread allocates from the main heap, the one whose freed memory is kept.
# Another thread (the row scheduler's helper, a framework's pool) otherwise gets an
# arena of its own, made of 64 MiB heaps that glibc unmaps as soon as one is empty,
# whatever the trim threshold: Blur IG's rows at 224 px, built on the helper,
# page-faulted 13 MB again on every call once JAX's model was loaded (3247 minor
# faults a call; 4 with one arena), and its Keras row ran 1.24-1.45x the floor
# instead of 1.15-1.17x.
_ARENA_MAX = 1


@functools.lru_cache(maxsize=1)
def retain_freed_memory() -> bool:
    """Keep freed large blocks in the process for reuse (Linux with glibc only).

    Peak memory is unchanged; memory freed after the peak is returned to the
    system later (or at exit) instead of at once.  All threads then allocate
    from the one heap whose memory is kept (threads started before the call
    keep their own); they share its lock, which on this project's 2-core
    machine cost nothing measurable (the local dataset engine's images/s did
    not drop) but was not measured with many framework threads allocating at
    once.  Returns whether the setting
    was applied; elsewhere (macOS, Windows, musl) it does nothing and returns
    ``False``.  Safe to call more than once.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(mallopt(option, value) for option, value in (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
        (_M_ARENA_MAX, _ARENA_MAX)))


def usable_cores() -> int:
    """How many cores this process may run on: its CPU affinity where the OS
    reports one (a container's share), else the machine's core count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1

"""The process a command runs in, when the command has it to itself (``cli.main`` run as the program):
its memory allocator and its exit. Library callers' processes are never touched."""

from __future__ import annotations

import atexit
import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> None:
    """Have glibc's allocator keep the memory a run frees for its next arrays instead of handing it back.

    The main job makes and drops volumes of tens to hundreds of MB many times over; by default each is
    a fresh mapping that the kernel zeroes page by page (about 1.5 s of system time in ``generate`` on
    the sample: README, Benchmarks). The process's peak memory stays what it was; it is simply not given
    back before exit. Linux with glibc only (``mallopt``); elsewhere this does nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # another C library (musl)
        return
    mallopt(M_MMAP_MAX, 0)  # large blocks from the heap, which freed blocks go back to
    mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)  # and the heap's free top is kept


def leave_now(code: int) -> None:
    """End the process with ``code`` once its work is done: its exit handlers run and its output is
    flushed, but the interpreter's own teardown, which frees every module, array and VTK object one by
    one, is skipped (0.7 s after ``generate`` on the sample). Every result is written and closed by then."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

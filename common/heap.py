"""Giving freed heap memory back to the system (glibc).

With batches whose shapes change from step to step, glibc raises its mmap threshold each time a large block
is freed, so later large blocks come from the heap; the heap's freed middle is kept by the process, and its
resident size grows step after step (bench/heap.py measures it). `malloc_trim(0)` returns those free pages.
"""
from __future__ import annotations

import ctypes
import sys
from typing import Callable, Optional


def heap_trimmer() -> Optional[Callable[[int], int]]:
    """glibc's `malloc_trim`, or None where the C library has none (macOS, musl). Called with 0 it returns
    every whole free page of every arena to the system; 1 if it released memory, else 0."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim

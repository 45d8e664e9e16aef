"""Give freed heap memory back to the OS after each training step (glibc only).

A step allocates and frees a few GB of activations whose shapes change every step
(completion lengths vary). glibc raises its mmap threshold after the first large frees,
so later large tensors come from the heap arenas, and freed arena memory stays mapped:
RSS then sits ~1 GB above what is live and creeps up as the arenas fragment.
`malloc_trim(0)` every `TRIM_EVERY` steps returns those pages. Not every step: the next
step faults the returned pages back in, which cost ~0.3 s of a 10 s demo step. Measured in
`bench/results/memory.json` (arms with and without it); elsewhere than glibc it does
nothing.
"""

from __future__ import annotations

import ctypes
import functools

TRIM_EVERY = 10  # training steps between trims


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return None


def trim_heap() -> None:
    """Return free heap pages to the OS; a no-op where glibc's malloc_trim is missing."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)

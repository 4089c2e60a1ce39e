"""Large zeroed arrays whose pages are faulted in ahead of use, off the ingest thread.

A spectrum image of 512 x 512 pixels x 2048 channels is 2 GiB. The first write
to each page of fresh memory costs a page fault; on the virtual machines we
measured, faulting 2 GiB in takes 1 to 4 seconds. Left to the ingest kernels,
that cost lands on the first sweep, which then runs at a few million events per
second instead of hundreds (bench/ingest.py). So the accumulator's cube is
anonymous memory, advised as huge pages where the system allows, and a
background thread asks the kernel to populate it (``MADV_POPULATE_WRITE``,
Linux 5.14): pages appear without anything being written to them, so frames
can be accumulated into the same memory at the same time. Elsewhere the array
is an ordinary ``numpy.zeros`` whose pages are faulted in on first use.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import sys
import threading
from functools import lru_cache

import numpy as np

#: Below this size neither advice nor a thread is worth it.
LARGE_BYTES = 8 * 2**20
#: madvise(2) advice values of Linux.
MADV_POPULATE_WRITE = 23

@lru_cache(maxsize=1)
def _madvise():
    """libc's madvise through ctypes (which releases the GIL during the call), or None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return libc.madvise
    except (OSError, AttributeError):
        return None


def populate(array: np.ndarray) -> bool:
    """Fault in every page of ``array`` without writing to it; False where the system cannot."""
    if not sys.platform.startswith("linux"):  # the advice's number means something else elsewhere
        return False
    madvise = _madvise()
    return madvise is not None and madvise(array.ctypes.data, array.nbytes, MADV_POPULATE_WRITE) == 0


def zeroed(shape: tuple[int, ...], dtype, populate_in_background: bool = False) -> np.ndarray:
    """A writable, C-contiguous array of zeros.

    Large arrays are anonymous memory advised as huge pages; with
    ``populate_in_background`` a daemon thread faults their pages in while the
    caller goes on (the array stays usable and correct meanwhile).
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if nbytes < LARGE_BYTES or advice is None:
        return np.zeros(shape, dtype)
    buffer = mmap.mmap(-1, nbytes)  # anonymous memory is zero-filled by the kernel
    try:
        buffer.madvise(advice)
    except OSError:  # transparent huge pages disabled: ordinary pages, still correct
        pass
    array = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    if populate_in_background:
        threading.Thread(target=populate, args=(array,), name="edx-live-populate", daemon=True).start()
    return array

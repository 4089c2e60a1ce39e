"""Numba kernels of the ingest hot path.

Each kernel works on the accumulated cube flattened to (pixels, channels) and
maps a detector channel ``c`` to ``(c - lo) // rebin`` when it falls inside the
kept range, so energy crop and rebin cost nothing extra. All release the GIL
so refits in another thread run while frames are accumulated.
"""

from __future__ import annotations

import numba
import numpy as np

NEXT_PIXEL = 65535


@numba.njit(nogil=True, cache=True)
def add_events(cube, pixel, channel, lo, rebin):  # pragma: no cover - compiled
    """Add one count per event; return how many events fell in the kept energy range."""
    n_out = cube.shape[1]
    kept = 0
    for i in range(pixel.shape[0]):
        c = np.int64(channel[i]) - lo
        if c < 0:
            continue
        c //= rebin
        if c >= n_out:
            continue
        cube[pixel[i], c] += 1
        kept += 1
    return kept


@numba.njit(nogil=True, cache=True)
def velox_extent(stream):  # pragma: no cover - compiled
    """Return (largest channel, pixel offset of the last event, events) of a SpectrumStream chunk.

    The offset is -1 when the chunk holds no event. Used to validate a chunk
    before any of it is accumulated.
    """
    max_channel = -1
    offset = 0
    last = -1
    events = 0
    for v in stream:
        if v == NEXT_PIXEL:
            offset += 1
        else:
            events += 1
            last = offset
            if v > max_channel:
                max_channel = v
    return max_channel, last, events


@numba.njit(nogil=True, cache=True)
def add_velox(cube, stream, pixel_start, lo, rebin):  # pragma: no cover - compiled
    """Add a SpectrumStream chunk whose first value belongs to ``pixel_start``."""
    n_out = cube.shape[1]
    pixel = pixel_start
    kept = 0
    for v in stream:
        if v == NEXT_PIXEL:
            pixel += 1
            continue
        c = np.int64(v) - lo
        if c < 0:
            continue
        c //= rebin
        if c >= n_out:
            continue
        cube[pixel, c] += 1
        kept += 1
    return kept


@numba.njit(nogil=True, cache=True)
def add_dense(cube, counts, pixel_start, lo, rebin):  # pragma: no cover - compiled
    """Add a block of whole spectra (pixels, detector channels) starting at ``pixel_start``."""
    n_out = cube.shape[1]
    kept = 0
    for p in range(counts.shape[0]):
        row = cube[pixel_start + p]
        for j in range(n_out):
            base = lo + j * rebin
            s = 0
            for k in range(rebin):
                s += counts[p, base + k]
            row[j] += s
            kept += s
    return kept


def warm_up() -> None:
    """Compile every kernel for the dtypes the protocol allows, so the first frame is not slow."""
    cube = np.zeros((2, 2), dtype=np.uint32)
    add_events(cube, np.zeros(1, np.uint32), np.zeros(1, np.uint16), 0, 1)
    stream = np.array([0, NEXT_PIXEL], dtype=np.uint16)
    velox_extent(stream)
    add_velox(cube, stream, 0, 0, 1)
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        add_dense(cube, np.zeros((1, 2), dtype=dtype), 0, 0, 1)

"""Numba kernels of the ingest hot path.

Each kernel works on the accumulated cube flattened to (pixels, channels) and
maps a detector channel ``c`` to ``(c - lo) // rebin`` when it falls inside the
kept range, so energy crop and rebin cost nothing extra. All release the GIL
so refits in another thread run while frames are accumulated.

Events land on random channels of a pixel's spectrum, so nearly every one is a
cache miss in a cube of gigabytes: the CPU's own prefetcher cannot guess the
next address. The event kernels therefore ask for the cache line of the event
``PREFETCH_DISTANCE`` ahead (LLVM's prefetch intrinsic) while they add the
current one; on a 512 x 512 x 2048 cube that took the kernel from 55-67 to 180-265
million events per second (BENCHMARKS.md, Ingest).
"""

from __future__ import annotations

import numba
import numpy as np
from edx_protocol import VELOX_NEXT_PIXEL
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

NEXT_PIXEL = VELOX_NEXT_PIXEL  # a plain int: numba compiles it in as a constant

#: Events looked ahead. On a 512 x 512 x 4096 cube 64 to 512 gave about 220 M events/s, 32 gave 160,
#: 8 gave 77 and none 40: far enough ahead to cover the memory's latency, near enough to stay cached.
PREFETCH_DISTANCE = 128


@intrinsic
def _prefetch_write(typingctx, array, row, column):
    """Hint that ``array[row, column]`` of a C-contiguous 2-D array will be written soon."""
    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        indices = [context.cast(builder, v, t, types.intp) for v, t in zip(args[1:], signature.args[1:])]
        pointer = cgutils.get_item_pointer(context, builder, array_type, view, indices,
                                           wraparound=False, boundscheck=False)
        byte_pointer = ir.IntType(8).as_pointer()
        int32 = ir.IntType(32)
        prefetch = builder.module.declare_intrinsic(
            "llvm.prefetch", [byte_pointer], ir.FunctionType(ir.VoidType(), [byte_pointer, int32, int32, int32]))
        # write, keep in all cache levels, data cache
        builder.call(prefetch, [builder.bitcast(pointer, byte_pointer), ir.Constant(int32, 1),
                                ir.Constant(int32, 3), ir.Constant(int32, 1)])
        return context.get_dummy_value()

    return types.void(array, row, column), codegen


@numba.njit(inline="always")
def _kept(channel, lo, rebin, n_out):  # pragma: no cover - compiled
    """Accumulated channel of a detector channel, or -1 outside the kept range."""
    c = np.int64(channel) - lo
    if c < 0:
        return -1
    c //= rebin
    return c if c < n_out else -1


@numba.njit(nogil=True, cache=True)
def add_events(cube, pixel, channel, lo, rebin):  # pragma: no cover - compiled
    """Add one count per event; return how many events fell in the kept energy range."""
    n_out = cube.shape[1]
    n = pixel.shape[0]
    kept = 0
    for i in range(n):
        ahead = i + PREFETCH_DISTANCE
        if ahead < n:
            _prefetch_write(cube, pixel[ahead], max(_kept(channel[ahead], lo, rebin, n_out), 0))
        c = _kept(channel[i], lo, rebin, n_out)
        if c >= 0:
            cube[pixel[i], c] += 1
            kept += 1
    return kept


@numba.njit(nogil=True, cache=True)
def velox_extent(stream):  # pragma: no cover - compiled
    """Return (largest channel, pixel offset of the last event, events, markers) of a SpectrumStream chunk.

    The offset is -1 when the chunk holds no event; ``markers`` is the number of
    pixels the chunk closes. Used to validate a chunk before any of it is accumulated.
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
    return max_channel, last, events, offset


@numba.njit(nogil=True, cache=True)
def add_velox(cube, stream, pixel_start, lo, rebin):  # pragma: no cover - compiled
    """Add a SpectrumStream chunk whose first value belongs to ``pixel_start``."""
    n_out = cube.shape[1]
    n = stream.shape[0]
    pixel = pixel_start
    ahead_pixel = pixel_start  # pixel of stream[i + PREFETCH_DISTANCE], a cursor running ahead
    for j in range(min(PREFETCH_DISTANCE, n)):
        if stream[j] == NEXT_PIXEL:
            ahead_pixel += 1
    kept = 0
    for i in range(n):
        ahead = i + PREFETCH_DISTANCE
        if ahead < n:
            v = stream[ahead]
            if v == NEXT_PIXEL:
                ahead_pixel += 1
            else:
                _prefetch_write(cube, ahead_pixel, max(_kept(v, lo, rebin, n_out), 0))
        v = stream[i]
        if v == NEXT_PIXEL:
            pixel += 1
            continue
        c = _kept(v, lo, rebin, n_out)
        if c >= 0:
            cube[pixel, c] += 1
            kept += 1
    return kept


@numba.njit(nogil=True, cache=True)
def add_dense(cube, counts, pixel_start, lo, rebin):  # pragma: no cover - compiled
    """Add a block of whole spectra (pixels, detector channels) starting at ``pixel_start``.

    Returns (counts in the block, counts in the kept energy range). Contiguous
    loops without branches, so the compiler vectorises them.
    """
    n_out = cube.shape[1]
    events = 0
    kept = 0
    for p in range(counts.shape[0]):
        row = cube[pixel_start + p]
        source = counts[p]
        for k in range(source.shape[0]):
            events += source[k]
        if rebin == 1:
            for j in range(n_out):
                v = source[lo + j]
                row[j] += v
                kept += v
            continue
        for j in range(n_out):
            base = lo + j * rebin
            s = 0
            for k in range(rebin):
                s += source[base + k]
            row[j] += s
            kept += s
    return events, kept


@numba.njit(nogil=True, cache=True)
def bin_pixels(cube, columns, factor, out):  # pragma: no cover - compiled
    """Add each pixel's spectrum of ``cube`` (rows * columns, channels) into its bin of ``out``.

    ``out`` is (ceil(rows / factor) * ceil(columns / factor), channels), zeroed by the caller;
    a pixel in row r, column c lands in bin (r // factor, c // factor). One pass, in the
    cube's order: the whole cube is read once, sequentially.
    """
    bin_columns = (columns + factor - 1) // factor
    n_channels = cube.shape[1]
    for p in range(cube.shape[0]):
        target = out[(p // columns // factor) * bin_columns + (p % columns) // factor]
        source = cube[p]
        for j in range(n_channels):
            target[j] += source[j]


def warm_up() -> None:
    """Compile every kernel for the dtypes the protocol allows, so the first frame is not slow."""
    cube = np.zeros((2, 2), dtype=np.uint32)
    add_events(cube, np.zeros(1, np.uint32), np.zeros(1, np.uint16), 0, 1)
    stream = np.array([0, NEXT_PIXEL], dtype=np.uint16)
    velox_extent(stream)
    add_velox(cube, stream, 0, 0, 1)
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        add_dense(cube, np.zeros((1, 2), dtype=dtype), 0, 0, 1)
    for dtype in (np.uint32, np.uint64):
        bin_pixels(cube, 2, 2, np.zeros((1, 2), dtype=dtype))

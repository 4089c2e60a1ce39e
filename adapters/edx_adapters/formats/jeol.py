"""JEOL Analysis Station ``.pts`` files: one events frame per recorded sweep.

rosettasciio decodes the sweeps lazily into a ``sparse.COO`` of
(frame, y, x, channel) -> counts. We take that COO out of the dask graph
instead of computing the dask array, which would densify every sweep
(14 x 512 x 512 x 4096 values for a small file).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from edx_protocol import EventsFrame

from .common import Chunk, Source, hyperspy_fields, lookup


def _coo_from_dask(array):
    """The sparse.COO that rosettasciio's lazy .pts array wraps."""
    import sparse

    found = [v for v in dict(array.dask).values() if isinstance(v, sparse.COO)]
    if len(found) != 1:
        raise ValueError(f"expected one sparse array inside rosettasciio's lazy .pts data, found "
                         f"{len(found)}; this rosettasciio version is not supported, use 0.15")
    return found[0]


def _signal(path: Path) -> dict:
    from rsciio.jeol import file_reader

    signals = [s for s in file_reader(str(path), sum_frames=False, lazy=True) if np.ndim(s["data"]) == 4]
    if not signals:
        raise ValueError(f"{path.name} holds no frame-resolved spectrum image")
    return signals[0]


def _fields(signal: dict, frames: int) -> dict:
    fields = hyperspy_fields(signal["metadata"], signal["axes"][1:])
    om = signal["original_metadata"]
    dwell_ms = lookup(om, "EDS Data.AnalyzableMap MeasData.Doc.DwellTime(msec)")
    if dwell_ms:
        fields["dwell_time_s"] = float(dwell_ms) * 1e-3
    fields["instrument"] = fields["instrument"] or lookup(om, "PTTD Param.Params.PARAMPAGE0_SEM.SEM")
    fields["expected_frames"] = frames
    return fields


def load(path: Path, frames: int | None, seed: int) -> Source:
    """Read a ``.pts`` file's sweeps as events.

    Parameters
    ----------
    path : pathlib.Path
    frames : int or None
        Replay only the first ``frames`` sweeps (default all).
    seed : int
        Unused: the sweeps are real.
    """
    signal = _signal(path)
    coo = _coo_from_dask(signal["data"])
    n_frames, rows, columns, _ = coo.shape
    frames = n_frames if frames is None else min(frames, n_frames)
    frame, y, x, channel = coo.coords
    # COO keeps its coordinates sorted, so each sweep is a contiguous run in raster order.
    bounds = np.searchsorted(frame, np.arange(frames + 1))
    pixel = y.astype(np.uint32) * np.uint32(columns) + x.astype(np.uint32)
    sweeps = (pixel, channel.astype(np.uint16), coo.data, bounds)
    return Source(_fields(signal, frames), frames, lambda block: _chunks(sweeps, rows * columns, block))


def expand(pixel: np.ndarray, channel: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Events with one entry per X-ray: (pixel, channel) repeated ``counts`` times."""
    repeats = counts.astype(np.int64)
    return {"pixel": np.repeat(pixel, repeats).astype(np.uint32),
            "channel": np.repeat(channel, repeats).astype(np.uint16)}


def split_by_pixel(pixel: np.ndarray, n_pixels: int, block: int) -> Iterator[tuple[int, int]]:
    """(lo, hi) index ranges of sorted ``pixel`` per ``block`` pixels, skipping empty ranges."""
    edges = np.searchsorted(pixel, np.arange(0, n_pixels + block, block, dtype=np.int64))
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi > lo:
            yield int(lo), int(hi)


def _chunks(sweeps, n_pixels: int, block: int) -> Iterator[Chunk]:
    # Pixel ranges without events are not sent: at a few counts per sweep most would be empty.
    pixel, channel, counts, bounds = sweeps
    for index in range(len(bounds) - 1):
        events = expand(*(a[bounds[index]:bounds[index + 1]] for a in (pixel, channel, counts)))
        ranges = list(split_by_pixel(events["pixel"], n_pixels, block)) or [(0, 0)]
        for lo, hi in ranges:  # an empty sweep still sends one empty message, so it is seen
            yield Chunk(index, EventsFrame, {}, {name: a[lo:hi] for name, a in events.items()})

"""A spectrum image read lazily, a band of scan rows at a time, binned as the live service bins it.

The file is opened with rosettasciio's lazy readers (a Dask array; for ``.hspy`` and ``.zspy``
files the chunks are the file's own). :func:`row_bands` cuts the scan into bands of rows,
multiples of the spatial bin, each about ``chunk_mb`` of raw counts; :func:`binned_band` applies
the accumulator's energy selection and spatial binning to one band, so that the bands of a scan
put together are exactly :meth:`edx_live.core.accumulator.Accumulator.binned` of the whole cube.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edx_live.core.accumulator import EnergySelection

#: Raw counts per band when the caller does not say (MiB).
DEFAULT_CHUNK_MB = 256

#: Extensions read lazily, and the rosettasciio plugin that reads them.
READERS = {".hspy": "hspy", ".zspy": "zspy", ".emd": "emd", ".bcf": "bruker"}


@dataclass(frozen=True)
class LazyScan:
    """A spectrum image not yet read.

    Attributes
    ----------
    path : Path
    data : dask.array.Array, shape (rows, columns, channels)
        Integer counts.
    metadata : dict
        HyperSpy-style metadata of the signal.
    axes : list of dict
        Its (y, x, energy) axes.
    """

    path: Path
    data: object
    metadata: dict
    axes: list
    original_metadata: dict | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape)

    @property
    def file_rows(self) -> int:
        """Scan rows per chunk of the file (the Dask array's first chunk)."""
        return int(self.data.chunks[0][0])


def _is_spectrum_image(signal: dict) -> bool:
    axes = signal["axes"]
    return (len(np.shape(signal["data"])) == 3 and len(axes) == 3
            and [bool(a.get("navigate", i < 2)) for i, a in enumerate(axes)] == [True, True, False])


def open_lazy(path: str | Path) -> LazyScan:
    """Open the spectrum image of ``path`` without reading its counts.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not a file, an extension that cannot be read lazily, or no integer spectrum image in it.
    """
    import importlib

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path} (check the path; quote names with spaces)")
    if not (path.is_file() or (path.is_dir() and path.suffix.lower() == ".zspy")):
        raise ValueError(f"{path} is not a file; give the spectrum image file itself")
    plugin = READERS.get(path.suffix.lower())
    if plugin is None:
        raise ValueError(f"cannot read {path.name!r} out of core: extension {path.suffix or '(none)'!r}; "
                         f"use one of {', '.join(sorted(READERS))} (convert with HyperSpy: s.save('name.zspy'))")
    try:
        reader = importlib.import_module(f"rsciio.{plugin}").file_reader
    except ImportError as exc:
        raise ValueError(f"cannot read {path.name!r}: rosettasciio's {plugin} reader needs {exc.name}, "
                         "which is not installed") from exc
    kwargs = {"select_type": "spectrum_image"} if plugin in ("bruker", "emd") else {}
    signals = [s for s in reader(str(path), lazy=True, **kwargs) if _is_spectrum_image(s)]
    if not signals:
        raise ValueError(f"{path.name} holds no spectrum image (3-D data with two navigation axes "
                         "and one energy axis)")
    eds = [s for s in signals if str(s["metadata"].get("Signal", {}).get("signal_type", "")).startswith("EDS")]
    signal = (eds or signals)[0]
    import dask.array as da

    data = signal["data"] if isinstance(signal["data"], da.Array) else da.from_array(signal["data"])
    if data.dtype.kind not in "ui":
        raise ValueError(f"{path.name} holds {data.dtype} data; out-of-core processing needs integer X-ray counts")
    return LazyScan(path, data, signal["metadata"], signal["axes"], signal.get("original_metadata"))


def check_chunk_mb(chunk_mb) -> int:
    """``chunk_mb`` as a positive int (None: :data:`DEFAULT_CHUNK_MB`), or a clear error."""
    if chunk_mb is None:
        return DEFAULT_CHUNK_MB
    if isinstance(chunk_mb, bool) or not isinstance(chunk_mb, (int, np.integer)):
        raise TypeError(f"chunk_mb must be a whole number of MiB, got {chunk_mb!r}")
    if chunk_mb < 1:
        raise ValueError(f"chunk_mb must be at least 1 MiB, got {chunk_mb}")
    return int(chunk_mb)


def row_bands(scan: LazyScan, chunk_mb: int, factor: int) -> list[tuple[int, int]]:
    """Bands ``(first row, stop row)`` covering the scan, each a multiple of ``factor`` rows.

    A band holds about ``chunk_mb`` MiB of raw counts and never fewer than ``factor`` rows.
    When the file's own chunks are a few rows high, a band is a multiple of them too, so no
    chunk of the file is read twice.
    """
    rows, columns, channels = scan.shape
    row_bytes = columns * channels * scan.data.dtype.itemsize
    fit = max(1, (int(chunk_mb) << 20) // max(row_bytes, 1))
    step = factor
    aligned = math.lcm(factor, scan.file_rows)
    if aligned <= fit:
        step = aligned
    band = max(step, fit // step * step)
    return [(r0, min(r0 + band, rows)) for r0 in range(0, rows, band)]


def binned_band(raw: np.ndarray, selection: EnergySelection, factor: int) -> np.ndarray:
    """Energy selection then ``factor`` x ``factor`` binning of a band (rows, columns, channels).

    As the accumulator does: channels ``lo .. lo + channels * rebin`` summed ``rebin`` at a time;
    the last row or column of bins covers fewer pixels when the scan is not a multiple of
    ``factor``. Returns int64 counts (band rows / factor, binned columns, channels).
    """
    raw = np.asarray(raw)
    rows, columns, _ = raw.shape
    lo, rebin, n = selection.lo, selection.rebin, selection.channels
    counts = raw[:, :, lo:lo + n * rebin]
    if rebin > 1:
        counts = counts.reshape(rows, columns, n, rebin).sum(axis=3, dtype=np.int64)
    brows, bcols = -(-rows // factor), -(-columns // factor)
    out = np.zeros((brows, bcols, n), dtype=np.int64)
    for dy in range(factor):
        for dx in range(factor):
            part = counts[dy::factor, dx::factor]
            out[:part.shape[0], :part.shape[1]] += part
    return out


def bands(scan: LazyScan, limits: list[tuple[int, int]], selection: EnergySelection, factor: int,
          counts_map: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """For each band: its first binned row and its binned counts flattened to (pixels, channels).

    ``counts_map`` (rows, columns), when given, receives each scan pixel's counts over all channels.
    """
    for r0, r1 in limits:
        raw = scan.data[r0:r1].compute(scheduler="synchronous")
        if counts_map is not None:
            counts_map[r0:r1] = raw.sum(axis=-1, dtype=np.float64)
        binned = binned_band(raw, selection, factor)
        del raw
        yield r0 // factor, binned.reshape(-1, binned.shape[-1])

"""ThermoFisher Velox ``.emd`` files: the raw SpectrumStream, frame by frame.

Each ``Data/SpectrumStream/<uuid>`` group is one stream, that is one detector
(the four Super-X detectors may be stored apart or as one summed stream). A
stream is uint16 channel indices where 65535 closes a pixel; it is sent as it
is, cut at pixel boundaries. rosettasciio gives the scan shape and calibration
(the stream's own ``RasterScanDefinition`` can be wrong, e.g. 128x128 for a
16x16 map); the per-detector angles come from each stream's metadata.

The simultaneous image is the file's HAADF image (else another dark-field
image), which Velox records frame by frame beside the streams: frame ``i`` of
the image goes after sweep ``i``. Element maps, also stored as images, are
not sent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from edx_protocol import VELOX_NEXT_PIXEL, Detector, VeloxFrame

from .common import (DEFAULT_AZIMUTH_DEG, DEFAULT_ELEVATION_DEG, Chunk, Source, SweepImages, energy_axis,
                     fit_to_scan, image_rank, log, lookup, pixel_size, wire_image)


def _signal(path: Path) -> dict:
    from rsciio.emd import file_reader

    # lazy: only the shape and metadata are used, and a dense cube of a real map is gigabytes.
    signals = [s for s in file_reader(str(path), select_type="spectrum_image", lazy=True)
               if np.ndim(s["data"]) == 3]
    if not signals:
        raise ValueError(f"{path.name} holds no EDS spectrum image; replay a Velox file recorded "
                         "as a spectrum image with its SpectrumStream kept (not a pruned file)")
    return signals[0]


def _read_streams(path: Path) -> list[tuple[np.ndarray, np.ndarray | None, dict]]:
    """(stream, frame start offsets or None, stream metadata) per stream, in file order."""
    import h5py

    out = []
    with h5py.File(path, "r") as f:
        group = f.get("Data/SpectrumStream")
        for key in group.keys() if group is not None else ():
            g = group[key]
            stream = np.asarray(g["Data"][:, 0], dtype=np.uint16)
            starts = np.asarray(g["FrameLocationTable"][:, 0], np.int64) if "FrameLocationTable" in g else None
            meta = json.loads(g["Metadata"][:, 0].tobytes().decode("utf-8").rstrip("\x00"))
            out.append((stream, starts, meta))
    if not out:
        raise ValueError(f"{path.name} has no Data/SpectrumStream; pruned Velox files cannot be replayed")
    return out


def frame_bounds(stream: np.ndarray, starts: np.ndarray | None, n_pixels: int) -> np.ndarray:
    """Offsets [start of frame 0, start of frame 1, ..., end of stream] of ``stream``.

    Uses the FrameLocationTable when it is usable; otherwise a frame ends after
    every ``n_pixels``-th 65535.
    """
    if starts is not None and starts.size and starts[0] == 0 and np.all(np.diff(starts) > 0) \
            and starts[-1] <= stream.size:
        return np.append(starts, stream.size)
    marks = np.flatnonzero(stream == VELOX_NEXT_PIXEL)
    ends = marks[n_pixels - 1::n_pixels] + 1
    bounds = np.concatenate([[0], ends[ends < stream.size], [stream.size]])
    return bounds if bounds.size > 1 else np.array([0, 0])


def split_stream(frame: np.ndarray, block: int) -> Iterator[tuple[int, int, int]]:
    """(first pixel, start, end) of pieces of ``frame`` holding ``block`` pixels each."""
    marks = np.flatnonzero(frame == VELOX_NEXT_PIXEL)
    pixels = np.arange(block, marks.size + 1, block)
    cuts = marks[pixels - 1] + 1
    keep = cuts < frame.size
    starts = np.concatenate([[0], cuts[keep]])
    first = np.concatenate([[0], pixels[keep]])
    ends = np.append(starts[1:], frame.size)
    for p, lo, hi in zip(first, starts, ends):
        yield int(p), int(lo), int(hi)


def _detector_parts(meta: dict, name: str | None) -> list[dict]:
    """The ``Detectors`` entries that make up the stream's detector."""
    detectors = [d for d in (meta.get("Detectors") or {}).values() if isinstance(d, dict)]
    index = lookup(meta, "BinaryResult.DetectorIndex")
    exact = lookup(meta, f"Detectors.Detector-{index}") if index is not None else None
    exact = exact or next((d for d in detectors if d.get("DetectorName") == name), None)
    if exact:
        return [exact]
    # A summed Super-X stream is named after the system ("SuperXG2"), its parts "SuperXG21"...
    return [d for d in detectors if name and str(d.get("DetectorName", "")).startswith(name)
            and "ElevationAngle" in d]


def _detector(meta: dict) -> Detector:
    """The stream's detector, with the angles from its own metadata (radians there)."""
    name = lookup(meta, "BinaryResult.Detector")
    parts = _detector_parts(meta, name)
    elevations = [math.degrees(float(d["ElevationAngle"])) for d in parts if "ElevationAngle" in d]
    azimuth = DEFAULT_AZIMUTH_DEG
    # Several detectors around the optic axis have no common azimuth; exspy's default stands in.
    if len(parts) == 1 and "AzimuthAngle" in parts[0]:
        azimuth = math.fmod(math.degrees(float(parts[0]["AzimuthAngle"])), 360.0)
    elevation = float(np.mean(elevations)) if elevations else DEFAULT_ELEVATION_DEG
    return Detector(name=name, elevation_deg=elevation, azimuth_deg=azimuth)


def _elements(om: dict) -> list[str]:
    settings = lookup(om, "SharedProperties.EDSSpectrumQuantificationSettings") \
        or lookup(om, "Operations.ImageQuantificationOperation") or {}
    numbers = [z for entry in settings.values() if isinstance(entry, dict)
               for z in (entry.get("elementSelection") or [])]
    if not numbers:
        return []
    from rsciio.utils._elements import atomic_number2name

    return [atomic_number2name[int(z)] for z in numbers]


def _fields(signal: dict, streams: list, frames: int) -> dict:
    om = signal["original_metadata"]
    axes = signal["axes"]
    volts = lookup(om, "Optics.AccelerationVoltage")
    if volts is None:
        raise ValueError("the file has no Optics.AccelerationVoltage (beam energy)")
    size, unit = pixel_size(axes[1])
    dwell = lookup(om, "Scan.DwellTime")
    names = [lookup(om, "Instrument.InstrumentClass"), lookup(om, "Instrument.InstrumentModel")]
    return {
        "scan_shape": tuple(int(n) for n in np.shape(signal["data"])[:2]),
        "energy_axis": energy_axis(axes[-1]),
        "beam_energy_kev": float(volts) / 1e3,
        "detectors": [_detector(meta) for _, _, meta in streams],
        "pixel_size": size,
        "pixel_unit": unit,
        "dwell_time_s": float(dwell) if dwell and float(dwell) > 0 else None,
        "elements": _elements(om),
        "instrument": " ".join(n for n in names if n) or None,
        "title": lookup(signal["metadata"], "General.title"),
        "expected_frames": frames,
    }


def load(path: Path, frames: int | None, seed: int) -> Source:
    """Read a Velox file's SpectrumStreams, one detector per stream.

    Parameters
    ----------
    path : pathlib.Path
    frames : int or None
        Replay only the first ``frames`` frames (default all).
    seed : int
        Unused: the frames are real.
    """
    signal = _signal(path)
    streams = _read_streams(path)
    rows, columns = np.shape(signal["data"])[:2]
    bounds = [frame_bounds(stream, starts, rows * columns) for stream, starts, _ in streams]
    available = max(b.size - 1 for b in bounds)
    frames = available if frames is None else min(frames, available)
    data = [(stream, b) for (stream, _, _), b in zip(streams, bounds)]
    return Source(_fields(signal, streams, frames), frames, lambda block: _chunks(data, frames, block),
                  _images(path, (rows, columns)))


def _images(path: Path, scan_shape: tuple[int, int]) -> SweepImages | None:
    """The file's dark-field image, one per recorded frame, at the scan's shape; None without one.

    A detector image names its own detector in ``BinaryResult.Detector`` (HAADF,
    DF4...); an element map names the X-ray detector it was made from.
    """
    from rsciio.emd import file_reader

    found = []
    for s in file_reader(str(path), select_type="images", load_SI_image_stack=True):
        name = str(lookup(s["metadata"], "General.title") or "")
        if name and lookup(s["original_metadata"], "BinaryResult.Detector") == name and image_rank(name) < 2:
            found.append((image_rank(name), name, np.asarray(s["data"])))
    if not found:
        return None
    _, name, stack = min(found, key=lambda f: f[0])
    stack = stack.reshape(-1, *stack.shape[-2:])
    wired = [wire_image(image) for image in stack]
    fitted = [None if image is None else fit_to_scan(image, scan_shape, f"{path.name} image {name!r}")
              for image in wired]
    if not fitted or any(image is None for image in fitted):
        return None  # each case was logged
    log.info("%s image %r: %d frame(s), sent after the matching sweeps", path.name, name, len(fitted))
    return SweepImages.stack(name, np.stack(fitted))


def _chunks(data: list[tuple[np.ndarray, np.ndarray]], frames: int, block: int) -> Iterator[Chunk]:
    # Sweep-major, so that a live viewer sees every detector's part of sweep i before sweep i + 1.
    for index in range(frames):
        for detector, (stream, bounds) in enumerate(data):
            if index + 1 >= bounds.size:
                continue
            frame = stream[bounds[index]:bounds[index + 1]]
            # Cut only after a 65535, so that every message starts at a whole pixel.
            for pixel, lo, hi in split_stream(frame, block):
                yield Chunk(index, VeloxFrame, {"pixel_start": pixel, "detector": detector},
                            {"stream": frame[lo:hi]})

"""What every file format hands to the replay: a :class:`Source` of :class:`Chunk` objects.

Also the small metadata helpers the formats share, for HyperSpy-style metadata
dictionaries as rosettasciio returns them, and the simultaneous image
(:class:`SweepImages`): a file's HAADF/ADF image, fitted to the scan and sent
after each sweep's X-rays.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from edx_protocol import Detector, EnergyAxis, Image

#: Length units rosettasciio writes, in nanometres (HyperSpy writes "µm" with a micro sign).
_NM_PER_UNIT = {"m": 1e9, "mm": 1e6, "µm": 1e3, "μm": 1e3, "um": 1e3, "nm": 1.0, "pm": 1e-3,
                "Å": 0.1, "A": 0.1}

log = logging.getLogger("edx_adapters")

#: What exspy assumes when a file does not say (so the numbers match an offline analysis).
DEFAULT_ELEVATION_DEG = 35.0
DEFAULT_AZIMUTH_DEG = 0.0

#: Largest image message, in bytes: a bigger image is sent as blocks of rows.
IMAGE_MESSAGE_BYTES = 2**20

#: Detector names by preference: HAADF, then other annular dark-field detectors (ADF, DF4, DF-S...).
_DARK_FIELD = (re.compile(r"HAADF", re.I), re.compile(r"ADF|^DF", re.I))


class Chunk(NamedTuple):
    """One frame message before it gets an acquisition id and a seq number.

    ``payload`` is the header model (EventsFrame, VeloxFrame or DenseFrame),
    ``fields`` its payload-specific fields (``pixel_start``, ``detector``).
    """

    frame_index: int
    payload: type
    fields: dict[str, Any]
    arrays: dict[str, np.ndarray]


@dataclass(frozen=True)
class SweepImages:
    """The simultaneous image a replay sends after each sweep's X-rays.

    Attributes
    ----------
    detector : str
        The image detector's name, e.g. ``"HAADF"``.
    image : callable
        ``image(frame_index)`` returns that sweep's image (rows, columns) in a wire
        dtype (:func:`wire_image`), already the scan's shape, or None for no image.
    """

    detector: str
    image: Callable[[int], np.ndarray | None]

    @classmethod
    def repeated(cls, detector: str, image: np.ndarray) -> "SweepImages":
        """The same image after every sweep (a file that holds one image for the whole acquisition)."""
        return cls(detector, lambda index: image)

    @classmethod
    def stack(cls, detector: str, images: np.ndarray) -> "SweepImages":
        """Image ``i`` of a (sweeps, rows, columns) stack after sweep ``i``; one image goes after every sweep."""
        if len(images) == 1:
            return cls.repeated(detector, images[0])
        return cls(detector, lambda index: images[index] if index < len(images) else None)

    def chunks(self, frame_index: int) -> Iterator[Chunk]:
        """The image of sweep ``frame_index`` in blocks of rows of at most :data:`IMAGE_MESSAGE_BYTES`."""
        image = self.image(frame_index)
        if image is None:
            return
        rows = max(1, IMAGE_MESSAGE_BYTES // max(1, image.shape[1] * image.itemsize))
        for first in range(0, image.shape[0], rows):
            yield Chunk(frame_index, Image, {"detector": self.detector, "first_row": first},
                        {"image": image[first:first + rows]})


@dataclass(frozen=True)
class Source:
    """A file ready to replay.

    Attributes
    ----------
    start_fields : dict
        Keyword arguments for :class:`edx_protocol.Start` except ``acquisition_id`` and ``seq``.
    frames : int
        Number of sweeps :attr:`chunks` yields (the stop message's ``frames``).
    chunks : callable
        ``chunks(chunk_pixels)`` returns a fresh iterator over the chunks, sweep
        by sweep, each of at most ``chunk_pixels`` pixels; each call yields the same data.
    images : SweepImages or None
        The simultaneous image, when the file has one.
    """

    start_fields: dict[str, Any]
    frames: int
    chunks: Callable[[int], Iterator[Chunk]]
    images: SweepImages | None = None

    def stream(self, chunk_pixels: int) -> Iterator[Chunk]:
        """:attr:`chunks`, with each sweep's image after the sweep's last X-ray chunk."""
        last = None
        for chunk in self.chunks(chunk_pixels):
            if self.images is not None and last is not None and chunk.frame_index != last:
                yield from self.images.chunks(last)
            last = chunk.frame_index
            yield chunk
        if self.images is not None and last is not None:
            yield from self.images.chunks(last)


def wire_image(image: np.ndarray) -> np.ndarray | None:
    """``image`` in a dtype an image message carries, or None when it has none.

    Unsigned integers up to 32 bits and float32/float64 travel as they are; signed
    integers become float64 (exact) and booleans uint8. An image with NaN or
    infinite values is refused by the service, so it gets None here.
    """
    image = np.asarray(image)
    if image.dtype.kind == "b":
        return image.astype(np.uint8)
    if image.dtype.kind == "f" and image.dtype.itemsize < 4:
        image = image.astype(np.float32)
    if image.dtype.kind == "u" and image.dtype.itemsize <= 4 or image.dtype in (np.float32, np.float64):
        if image.dtype.kind == "f" and not np.isfinite(image).all():
            log.warning("image with NaN or infinite values not sent")
            return None
        return np.ascontiguousarray(image)
    if image.dtype.kind in "iu":
        return image.astype(np.float64)
    log.warning("image of dtype %s not sent: images travel as unsigned integers or floats", image.dtype)
    return None


def fit_to_scan(image: np.ndarray, scan_shape: tuple[int, int], what: str) -> np.ndarray | None:
    """``image`` (rows, columns) at the scan's shape, or None.

    An image of the scan's shape is kept as it is. One that is an integer ``k``
    times finer than the scan along both axes (the same field of view sampled
    finer) is averaged over ``k`` x ``k`` blocks, as float32. Any other shape is
    not sent, with a warning: the image would not match the spectrum image's pixels.
    """
    rows, columns = (int(n) for n in scan_shape)
    if image.shape == (rows, columns):
        return image
    k = image.shape[0] // rows if image.ndim == 2 and rows else 0
    if k > 1 and image.shape == (rows * k, columns * k):
        log.warning("%s is %dx%d, %d times the scan's %dx%d: sent averaged over %dx%d blocks",
                    what, image.shape[0], image.shape[1], k, rows, columns, k, k)
        return image.reshape(rows, k, columns, k).mean(axis=(1, 3), dtype=np.float64).astype(np.float32)
    log.warning("%s is %s, the scan %dx%d: not sent (only the scan's shape or an integer multiple of it is "
                "used)", what, "x".join(map(str, image.shape)), rows, columns)
    return None


def image_rank(name: str) -> int:
    """Preference of an image detector by name: 0 HAADF, 1 another annular dark field, 2 anything else."""
    return next((rank for rank, pattern in enumerate(_DARK_FIELD) if pattern.search(name or "")),
                len(_DARK_FIELD))


def lookup(tree: Mapping | None, dotted: str, default=None):
    """``tree["a"]["b"]`` for ``"a.b"``, or ``default`` when any level is missing."""
    node = tree
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def energy_axis(axis: Mapping) -> EnergyAxis:
    """Energy calibration from a rosettasciio axis dictionary (keV or eV)."""
    factor = 1e-3 if str(axis.get("units", "keV")).strip() == "eV" else 1.0
    return EnergyAxis(offset_kev=float(axis.get("offset", 0.0)) * factor,
                      scale_kev=float(axis.get("scale", 1.0)) * factor, channels=int(axis["size"]))


def pixel_size(axis: Mapping) -> tuple[float | None, str]:
    """Pixel size of a navigation axis, in nm when the unit is a known length."""
    scale, unit = axis.get("scale"), str(axis.get("units") or "").strip()
    if scale is None or float(scale) <= 0 or unit in ("", "<undefined>"):
        return None, "nm"
    if unit in _NM_PER_UNIT:
        return float(scale) * _NM_PER_UNIT[unit], "nm"
    return float(scale), unit


def _strings(values) -> list[str]:
    if values is None or isinstance(values, str):
        return [values] if values else []
    return [str(v) for v in np.asarray(values).ravel()]


def hyperspy_fields(metadata: Mapping, axes: list[Mapping], detector_name: str | None = None) -> dict:
    """Start fields from a HyperSpy-style ``metadata`` dict and the (y, x, energy) axes.

    Raises
    ------
    ValueError
        If the file does not give a beam energy (needed for quantification).
    """
    mode = "TEM" if "TEM" in (lookup(metadata, "Acquisition_instrument") or {}) else "SEM"
    instrument = lookup(metadata, f"Acquisition_instrument.{mode}") or {}
    beam = lookup(instrument, "beam_energy")
    if beam is None and lookup(instrument, "beam_energy ") is not None:
        # exspy 0.3.2's set_microscope_parameters saves the key with a trailing space
        beam = lookup(instrument, "beam_energy ")
        log.warning("beam energy read from the key 'beam_energy ' (trailing space), as exspy 0.3.2's "
                    "set_microscope_parameters writes it: %s keV", beam)
    if beam is None:
        raise ValueError("the file has no beam energy (metadata Acquisition_instrument.TEM/SEM."
                         "beam_energy); set it in the file, e.g. with HyperSpy, and save it as .hspy")
    eds = lookup(instrument, "Detector.EDS") or {}
    resolution = eds.get("energy_resolution_MnKa")
    detector = Detector(name=detector_name or eds.get("detector_type"),
                        elevation_deg=float(eds.get("elevation_angle", DEFAULT_ELEVATION_DEG)),
                        azimuth_deg=float(eds.get("azimuth_angle", DEFAULT_AZIMUTH_DEG)),
                        energy_resolution_mnka_ev=float(resolution) if resolution else None)
    size, unit = pixel_size(axes[1])
    return {
        "scan_shape": (int(axes[0]["size"]), int(axes[1]["size"])),
        "energy_axis": energy_axis(axes[-1]),
        "beam_energy_kev": float(beam),
        "detectors": [detector],
        "pixel_size": size,
        "pixel_unit": unit,
        "elements": _strings(lookup(metadata, "Sample.elements")),
        "xray_lines": _strings(lookup(metadata, "Sample.xray_lines")),
        "instrument": lookup(instrument, "microscope"),
        "title": lookup(metadata, "General.title"),
    }

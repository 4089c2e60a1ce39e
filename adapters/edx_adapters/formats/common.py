"""What every file format hands to the replay: a :class:`Source` of :class:`Chunk` objects.

Also the small metadata helpers the formats share, for HyperSpy-style metadata
dictionaries as rosettasciio returns them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from edx_protocol import Detector, EnergyAxis

#: Length units rosettasciio writes, in nanometres (HyperSpy writes "µm" with a micro sign).
_NM_PER_UNIT = {"m": 1e9, "mm": 1e6, "µm": 1e3, "μm": 1e3, "um": 1e3, "nm": 1.0, "pm": 1e-3,
                "Å": 0.1, "A": 0.1}

log = logging.getLogger("edx_adapters")

#: What exspy assumes when a file does not say (so the numbers match an offline analysis).
DEFAULT_ELEVATION_DEG = 35.0
DEFAULT_AZIMUTH_DEG = 0.0


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
    """

    start_fields: dict[str, Any]
    frames: int
    chunks: Callable[[int], Iterator[Chunk]]


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

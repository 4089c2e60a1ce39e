"""Build calibrated exspy EDS signals from plain arrays.

Quantification and export both go through :func:`eds_signal`, so a cluster
spectrum is quantified with exactly the calibration and microscope
parameters that a user finds in the exported ``.hspy`` file.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Beam energies up to this (keV) are exported as SEM spectra, above it as TEM/STEM.
SEM_MAX_BEAM_KEV = 40.0


def axis(name: str, size: int, scale: float = 1.0, offset: float = 0.0, units: str | None = None,
         navigate: bool = True) -> dict:
    """A HyperSpy axis dictionary; ``units=None`` leaves the axis uncalibrated (``<undefined>``)."""
    ax = {"name": name, "size": int(size), "scale": float(scale), "offset": float(offset),
          "navigate": navigate}
    if units is not None:
        ax["units"] = units
    return ax


def eds_signal(data: np.ndarray, energy_offset_kev: float, energy_scale_kev: float,
               beam_energy_kev: float, *, navigation_axes: Sequence[dict] = (),
               elevation_deg: float | None = None, azimuth_deg: float | None = None,
               energy_resolution_ev: float | None = None, microscope: str = "TEM",
               title: str = ""):
    """An ``EDSTEMSpectrum`` (or ``EDSSEMSpectrum``) with calibrated axes and microscope parameters.

    Parameters
    ----------
    data : numpy.ndarray, shape (*navigation, channels)
        Counts; not copied.
    energy_offset_kev, energy_scale_kev : float
        Energy of channel 0 and channel width.
    beam_energy_kev : float
    navigation_axes : sequence of dict
        One :func:`axis` per leading dimension of ``data``, in array order.
    elevation_deg, azimuth_deg, energy_resolution_ev : float or None
        Detector elevation and azimuth angles and FWHM at Mn Ka; None keeps
        exspy's defaults (its preferences).
    microscope : {"TEM", "SEM"}
        Signal class; ``"SEM"`` gives an ``EDSSEMSpectrum``.
    title : str

    Returns
    -------
    exspy.signals.EDSTEMSpectrum or exspy.signals.EDSSEMSpectrum
    """
    from exspy.signals import EDSSEMSpectrum, EDSTEMSpectrum

    if len(navigation_axes) != data.ndim - 1:
        raise ValueError(f"data of shape {data.shape} needs {data.ndim - 1} navigation axes, "
                         f"got {len(navigation_axes)}")
    cls = {"TEM": EDSTEMSpectrum, "SEM": EDSSEMSpectrum}[microscope]
    energy = axis("Energy", data.shape[-1], energy_scale_kev, energy_offset_kev, "keV", navigate=False)
    s = cls(data, axes=[*navigation_axes, energy])
    s.metadata.General.title = title
    # Set through metadata, not set_microscope_parameters: exspy 0.3.2's
    # EDSTEMSpectrum.set_microscope_parameters stores the beam energy under
    # "beam_energy " (trailing space), where nothing reads it.
    s.metadata.set_item(f"Acquisition_instrument.{microscope}.beam_energy", float(beam_energy_kev))
    detector = {"elevation_angle": elevation_deg, "azimuth_angle": azimuth_deg,
                "energy_resolution_MnKa": energy_resolution_ev}
    for key, value in detector.items():
        if value is not None:
            s.metadata.set_item(f"Acquisition_instrument.{microscope}.Detector.EDS.{key}", float(value))
    return s


def microscope_for(beam_energy_kev: float) -> str:
    """``"SEM"`` for beam energies up to :data:`SEM_MAX_BEAM_KEV`, else ``"TEM"``."""
    return "SEM" if beam_energy_kev <= SEM_MAX_BEAM_KEV else "TEM"

"""exspy's intensity measurements and Cliff-Lorimer, on stacks of spectra or of line intensities.

Two ways to measure line intensities, both exspy's:

- :func:`window_intensities`: background-subtracted counts in a window around each line
  (``estimate_background_windows`` + ``get_lines_intensity``); overlapping lines add up;
- the model fit of :mod:`edx_live.quantify.model`, which separates them.

:func:`weight_fractions` then runs exspy's Cliff-Lorimer (``EDSTEMSpectrum.quantification``,
``method="CL"``), with its absorption correction when a thickness is given. Every leading
axis of the inputs is treated as navigation, so all clusters and all their resamplings
are quantified in one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .signal import axis, eds_signal


@dataclass(frozen=True)
class Windows:
    """Integration and background windows, in units of each line's FWHM (exspy's conventions).

    Attributes
    ----------
    integration_width : float
        ``get_lines_intensity(integration_windows=...)``: window width / FWHM.
    line_width : tuple of float
        ``estimate_background_windows(line_width=...)``: distance of the left
        and right background windows from the line / FWHM.
    windows_width : float
        ``estimate_background_windows(windows_width=...)``: background window width / FWHM.
    """

    integration_width: float = 2.0
    line_width: tuple[float, float] = (2.0, 2.0)
    windows_width: float = 1.0


@dataclass(frozen=True)
class Geometry:
    """What exspy needs to know of the microscope: beam energy, detector angles and resolution."""

    beam_energy_kev: float
    elevation_deg: float | None = None
    azimuth_deg: float | None = None
    resolution_ev: float | None = None

    def signal(self, data: np.ndarray, offset_kev: float, scale_kev: float, title: str = ""):
        """An exspy EDS signal of ``data`` (..., channels); every leading axis is navigation."""
        nav = [axis(f"axis{i}", n) for i, n in enumerate(data.shape[:-1])]
        return eds_signal(data, offset_kev, scale_kev, self.beam_energy_kev, navigation_axes=nav,
                          elevation_deg=self.elevation_deg, azimuth_deg=self.azimuth_deg,
                          energy_resolution_ev=self.resolution_ev, title=title)


def window_intensities(spectra: np.ndarray, lines: Sequence[str], offset_kev: float, scale_kev: float,
                       geometry: Geometry, windows: Windows = Windows()) -> tuple[np.ndarray, np.ndarray]:
    """Background windows (n_lines, 4) in keV and window intensities (..., n_lines) of ``spectra``."""
    s = geometry.signal(np.asarray(spectra, dtype=np.float64), offset_kev, scale_kev, "cluster spectra")
    s.set_lines(list(lines))
    bw = s.estimate_background_windows(line_width=list(windows.line_width), windows_width=windows.windows_width,
                                       xray_lines=list(lines))
    images = s.get_lines_intensity(xray_lines=list(lines), integration_windows=windows.integration_width,
                                   background_windows=bw)
    intensities = np.stack([np.asarray(img.data, dtype=np.float64) for img in images], axis=-1)
    return np.asarray(bw, dtype=np.float64), intensities


def weight_fractions(intensities: np.ndarray, lines: Sequence[str], kfactors: Sequence[float],
                     geometry: Geometry, thickness_nm: float | None = None) -> np.ndarray:
    """Cliff-Lorimer weight fractions (..., n_lines) of intensities (..., n_lines).

    Without absorption correction this is exspy's Cliff-Lorimer, C_i = k_i I_i / sum_j k_j I_j,
    evaluated for every sample at once and without exspy's 0.1-count threshold: an absent
    element comes out near zero, sometimes slightly negative, so that its uncertainty is
    real instead of exactly 0 (the tests check it equals exspy's result wherever exspy's
    threshold does not apply). With ``thickness_nm`` exspy's own quantification runs, with
    its iterative absorption correction for a film that thick. Compositions with no
    intensity at all are NaN (unknown).
    """
    intensities = np.asarray(intensities, dtype=np.float64)
    if thickness_nm is not None:
        return _exspy_absorption_corrected(intensities, lines, kfactors, geometry, thickness_nm)
    weighted = intensities * np.asarray(kfactors, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        wt = weighted / weighted.sum(axis=-1, keepdims=True)
    wt[~(np.abs(intensities) > 0).any(axis=-1)] = np.nan
    return wt


def _exspy_absorption_corrected(intensities: np.ndarray, lines: Sequence[str], kfactors: Sequence[float],
                                geometry: Geometry, thickness_nm: float) -> np.ndarray:
    from hyperspy.signals import BaseSignal

    flat = intensities.reshape(-1, intensities.shape[-1])
    images = []
    for j, line in enumerate(lines):
        image = BaseSignal(np.ascontiguousarray(flat[:, j])).T
        image.metadata.set_item("Sample.xray_lines", [line])
        image.metadata.set_item("Sample.elements", [line.partition("_")[0]])
        images.append(image)
    template = geometry.signal(np.zeros(2), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        # Weight fractions: exspy's "atomic" output stacks signals with a progress bar on stderr.
        result, _ = template.quantification(images, "CL", factors=list(kfactors), composition_units="weight",
                                            navigation_mask=None, absorption_correction=True,
                                            thickness=thickness_nm, show_progressbar=False)
    wt = np.stack([np.asarray(w.data, dtype=np.float64) for w in result], axis=-1) / 100.0
    # exspy returns all zeros when no line is above its 0.1-count threshold: unknown, not 0 %.
    wt[(wt == 0).all(axis=-1)] = np.nan
    return wt.reshape(intensities.shape)


def describe_intensities(kind: str, windows: Windows, fit: dict | None = None) -> str:
    """How the line intensities were measured, for the published ``method``."""
    from exspy import __version__

    if kind == "windows":
        return (f"exspy {__version__} window intensities (get_lines_intensity over {windows.integration_width:g} x "
                f"FWHM, background from estimate_background_windows(line_width={list(windows.line_width)}, "
                f"windows_width={windows.windows_width:g})); overlapping lines are not separated")
    fit = fit or {}
    return (f"exspy {__version__} EDS model fit (Gaussian lines of every family of {', '.join(fit.get('elements', []))} "
            f"at exspy's energies, weights and widths, polynomial background of order {fit.get('order')}, "
            f"{fit.get('range', '')}; linear least squares, exactly HyperSpy's multifit(optimizer='lstsq')), "
            f"detector resolution {fit.get('resolution_ev', float('nan')):.1f} eV at Mn Ka")

"""Cluster-sum spectra to compositions: exspy's Cliff-Lorimer with Poisson-replica uncertainties.

All clusters and all their Poisson replicas are stacked along the
navigation axes of one ``EDSTEMSpectrum``, so exspy measures the line
intensities and quantifies them in one call each.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from edx_protocol import ClusterComposition, ElementResult

from .kfactors import require_kfactors
from .lines import set_lines
from .signal import axis, eds_signal

#: Default k-factor provenance, for values given by the user.
USER_KFACTORS = "user: config/command line"


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
class Quantification:
    """Compositions of every cluster; arrays are (n_clusters, n_lines) in ``xray_lines`` order.

    Attributes
    ----------
    xray_lines, elements : tuple of str
        Lines quantified (sorted, as exspy keeps them) and their elements.
    kfactors : dict of str to float
    atomic_percent : numpy.ndarray
        NaN for clusters with no line intensity above exspy's threshold (e.g. no counts).
    atomic_percent_sigma : numpy.ndarray
        1-sigma from the Poisson replicas; NaN when unknown (no replicas, or NaN composition).
    intensities : numpy.ndarray
        Background-subtracted line counts of the measured spectra.
    pixels : numpy.ndarray of int, shape (n_clusters,)
    background_windows : numpy.ndarray, shape (n_lines, 4)
        Left and right background windows (keV) exspy estimated.
    method, kfactor_source : str
        Human-readable description of the method, and where the k-factors came from.
    replicas : int
    """

    xray_lines: tuple[str, ...]
    elements: tuple[str, ...]
    kfactors: dict[str, float]
    atomic_percent: np.ndarray
    atomic_percent_sigma: np.ndarray
    intensities: np.ndarray
    pixels: np.ndarray
    background_windows: np.ndarray
    method: str
    kfactor_source: str
    replicas: int

    @property
    def clusters(self) -> list[ClusterComposition]:
        """The protocol's per-cluster documents; NaN sigma becomes None."""
        return [ClusterComposition(label=i, pixels=int(self.pixels[i]), elements={
            el: ElementResult(atomic_percent=float(self.atomic_percent[i, j]),
                              atomic_percent_sigma=_or_none(self.atomic_percent_sigma[i, j]),
                              intensity=float(self.intensities[i, j]))
            for j, el in enumerate(self.elements)}) for i in range(len(self.pixels))]


def _or_none(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def quantify_clusters(spectra: np.ndarray, *, offset_kev: float, scale_kev: float, beam_energy_kev: float,
                      kfactors: Mapping[str, float], xray_lines: Iterable[str] = (),
                      elements: Iterable[str] = (), pixels: Sequence[int] | None = None,
                      elevation_deg: float | None = None, azimuth_deg: float | None = None,
                      energy_resolution_ev: float | None = None, windows: Windows = Windows(),
                      replicas: int = 64, random_state=None,
                      kfactor_source: str = USER_KFACTORS) -> Quantification:
    """Quantify cluster-sum spectra with exspy's Cliff-Lorimer method.

    Parameters
    ----------
    spectra : numpy.ndarray, shape (n_clusters, channels)
        Counts of each cluster's summed spectrum.
    offset_kev, scale_kev : float
        Energy of channel 0 and channel width.
    beam_energy_kev : float
    kfactors : mapping of str to float
        k-factor of every line quantified.
    xray_lines, elements : iterable of str
        Lines to quantify; elements without a line get exspy's choice for
        the beam energy and energy range (``set_elements`` + ``set_lines``).
    pixels : sequence of int, optional
        Pixels per cluster, carried into the result.
    elevation_deg, azimuth_deg, energy_resolution_ev : float, optional
        Detector geometry and FWHM at Mn Ka (eV; sets the window widths).
        None keeps exspy's defaults.
    windows : Windows
    replicas : int
        Poisson replicas per cluster for the uncertainty; 0 for none.
    random_state : None, int or numpy.random.Generator
    kfactor_source : str

    Returns
    -------
    Quantification
    """
    spectra = np.atleast_2d(np.asarray(spectra, dtype=np.float64))
    if spectra.ndim != 2 or not spectra.shape[0]:
        raise ValueError(f"spectra must be (n_clusters, channels) with at least one cluster, got {spectra.shape}")
    stack = _with_replicas(spectra, replicas, np.random.default_rng(random_state))
    s = eds_signal(stack, offset_kev, scale_kev, beam_energy_kev,
                   navigation_axes=[axis("cluster", stack.shape[0]), axis("replica", stack.shape[1])],
                   elevation_deg=elevation_deg, azimuth_deg=azimuth_deg,
                   energy_resolution_ev=energy_resolution_ev, title="cluster spectra")
    lines = set_lines(s, beam_energy_kev, xray_lines, elements)
    if len(lines) < 2:
        raise ValueError(f"Cliff-Lorimer needs at least two X-ray lines, got {lines}; name more elements")
    factors = require_kfactors(lines, kfactors)
    bw, intensities, atomic = _cliff_lorimer(s, lines, factors, windows)
    return Quantification(
        xray_lines=tuple(lines), elements=tuple(line.partition("_")[0] for line in lines),
        kfactors=dict(zip(lines, factors)), atomic_percent=atomic[:, 0].copy(),
        atomic_percent_sigma=_replica_sigma(atomic[:, 1:]), intensities=intensities[:, 0].copy(),
        pixels=np.zeros(len(spectra), int) if pixels is None else np.asarray(pixels, dtype=int),
        background_windows=bw, method=describe_method(windows, replicas), kfactor_source=kfactor_source,
        replicas=int(replicas))


def _with_replicas(spectra: np.ndarray, replicas: int, rng: np.random.Generator) -> np.ndarray:
    """(n_clusters, 1 + replicas, channels): each measured spectrum, then its Poisson resamplings."""
    stack = np.empty((spectra.shape[0], 1 + replicas, spectra.shape[1]))
    stack[:, 0] = spectra
    # The measured counts stand in for the unknown expected counts (parametric bootstrap).
    stack[:, 1:] = rng.poisson(np.clip(spectra, 0, None)[:, None, :], size=stack[:, 1:].shape)
    return stack


def _cliff_lorimer(s, lines: list[str], factors: list[float], windows: Windows):
    """Background windows, intensities and at% (..., n_lines) of every spectrum of ``s``."""
    from exspy.material import weight_to_atomic

    bw = s.estimate_background_windows(line_width=list(windows.line_width),
                                       windows_width=windows.windows_width, xray_lines=lines)
    images = s.get_lines_intensity(xray_lines=lines, integration_windows=windows.integration_width,
                                   background_windows=bw)
    with np.errstate(divide="ignore", invalid="ignore"):
        # Weight fractions, converted below: exspy's "atomic" output stacks
        # signals with a progress bar on stderr, once per refit.
        weight = s.quantification(images, "CL", factors=factors, composition_units="weight",
                                  navigation_mask=None)
        wt = np.stack([np.asarray(w.data, dtype=np.float64) for w in weight])
        atomic = weight_to_atomic(wt, [line.partition("_")[0] for line in lines])
    # exspy returns all zeros when no line is above its 0.1-count threshold (e.g. no counts):
    # that is "unknown", not 0 at%.
    atomic[:, wt.sum(axis=0) == 0] = np.nan
    intensities = np.stack([np.asarray(img.data, dtype=np.float64) for img in images], axis=-1)
    return np.asarray(bw, dtype=np.float64), intensities, np.moveaxis(atomic, 0, -1)


def _replica_sigma(atomic: np.ndarray) -> np.ndarray:
    """Standard deviation over the replica axis (1); NaN with fewer than two finite replicas."""
    finite = np.isfinite(atomic).all(axis=-1)
    sigma = np.full((atomic.shape[0], atomic.shape[2]), np.nan)
    for i in range(atomic.shape[0]):
        good = atomic[i, finite[i]]
        if len(good) >= 2:
            sigma[i] = good.std(axis=0, ddof=1)
    return sigma


def describe_method(windows: Windows, replicas: int) -> str:
    """The human-readable ``method`` string of a :class:`Quantification`."""
    from exspy import __version__

    text = (f"exspy {__version__} Cliff-Lorimer (EDSTEMSpectrum.quantification, method='CL', no absorption "
            f"correction, wt% converted to at% with exspy.material.weight_to_atomic) on background-subtracted "
            f"line counts (get_lines_intensity over {windows.integration_width:g} x FWHM; background windows "
            f"from estimate_background_windows(line_width={list(windows.line_width)}, "
            f"windows_width={windows.windows_width:g}))")
    if replicas:
        text += (f"; 1-sigma = standard deviation of at% over {replicas} Poisson resamplings of each "
                 "cluster spectrum (counting statistics only)")
    return text + "."

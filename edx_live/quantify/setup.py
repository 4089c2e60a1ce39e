"""What to quantify in an acquisition: its elements, lines and k-factors, and where each came from.

Elements come from the configuration, else the acquisition's start message, else (when
allowed) are proposed from the peaks of the total spectrum. k-factors come from the user
(command line, configuration, k-factor table); when the user gives none, theoretical
k-factors are computed and labelled as such.
"""

from __future__ import annotations

from dataclasses import dataclass

from collections.abc import Mapping, Sequence

import numpy as np

from .calibration import calibrate_axis
from .cliff_lorimer import Geometry
from .composition import Setup
from .kfactors import USER_KFACTORS, missing_kfactors, require_kfactors
from .lines import resolve_lines

class SetupError(ValueError):
    """Nothing can be quantified yet; the message says what to give."""


@dataclass(frozen=True)
class SetupOptions:
    """What names the lines of an acquisition (the ``[quantify]`` keys that do).

    Attributes
    ----------
    elements, xray_lines : tuple of str
        Override the acquisition start's; empty: the start's.
    propose_elements : bool
        With no element named anywhere, propose them from the total spectrum's peaks.
    fit_only_elements : tuple of str, or "auto"
        Modelled but not quantified; "auto": the peaks of the total spectrum (:func:`with_peaks_of`).
    calibrate_axis : bool
        Calibrate the energy axis on the total spectrum's peaks when the setup is made.
    """

    elements: tuple[str, ...] = ()
    xray_lines: tuple[str, ...] = ()
    propose_elements: bool = True
    fit_only_elements: tuple[str, ...] | str = "auto"
    calibrate_axis: bool = True


def acquisition_setup(*, start, options: SetupOptions, offset_kev: float, scale_kev: float, channels: int,
                      total: np.ndarray | None, user_kfactors: Mapping[str, float],
                      user_source: str = USER_KFACTORS) -> Setup:
    """The :class:`Setup` of an acquisition.

    Parameters
    ----------
    start : edx_protocol.Start
    options : SetupOptions
    offset_kev, scale_kev, channels : float, float, int
        Energy axis of the accumulated cube, as declared. With ``options.calibrate_axis``
        the setup's axis is calibrated on the peaks of ``total`` (:mod:`.calibration`).
    total : numpy.ndarray or None
        Total spectrum, for calibrating the axis and proposing elements when none are named.
    user_kfactors : mapping
        k-factors from the command line, configuration and table (empty: theoretical ones).
    user_source : str
        Where ``user_kfactors`` came from, as published.
    """
    det = start.detectors[0]
    geometry = Geometry(start.beam_energy_kev, det.elevation_deg, det.azimuth_deg, det.energy_resolution_mnka_ev)
    xray_lines, elements, source = _named(start, options)
    axis = None
    if options.calibrate_axis and total is not None:
        known = set(elements) | {line.partition("_")[0] for line in xray_lines}
        axis = calibrate_axis(total, offset_kev, scale_kev, start.beam_energy_kev,
                              resolution_ev=geometry.resolution_ev or 130.0, elements=known)
        offset_kev, scale_kev = axis.offset_kev, axis.scale_kev
    if not xray_lines and not elements:
        if not options.propose_elements or total is None:
            raise SetupError("no elements: name them in the acquisition start, in [quantify] elements or with "
                             "--element, or set [quantify] propose_elements = true")
        elements, source = _proposed(total, offset_kev, scale_kev, geometry)
    lines = resolve_lines(xray_lines, elements, start.beam_energy_kev, offset_kev=offset_kev, scale_kev=scale_kev,
                          channels=channels)
    if len(lines) < 2:
        raise SetupError(f"Cliff-Lorimer needs two lines or more, got {lines}: name more elements in the "
                         "acquisition start or in [quantify] elements")
    kfactors, kfactor_source, theoretical = _kfactors(lines, user_kfactors, user_source, start.beam_energy_kev)
    quantified = {line.partition("_")[0] for line in lines}
    named = [] if options.fit_only_elements == "auto" else options.fit_only_elements
    fit_only = tuple(sorted(set(named) - quantified))
    return Setup(offset_kev, scale_kev, channels, geometry, tuple(lines), kfactors, kfactor_source, theoretical,
                 fit_only, source, axis)


def with_peaks_of(setup: Setup, total: np.ndarray) -> Setup:
    """``setup`` with every element the total spectrum shows, but does not quantify, added as fit-only.

    Elements are only ever added: the model of an acquisition grows as peaks emerge from the noise.
    """
    from dataclasses import replace

    from .propose import propose_elements

    found = propose_elements(np.asarray(total, dtype=np.float64), setup.offset_kev, setup.scale_kev,
                             setup.geometry.beam_energy_kev,
                             energy_resolution_ev=setup.geometry.resolution_ev or 130.0).elements
    extra = set(found) - set(setup.elements) - set(setup.fit_only)
    return replace(setup, fit_only=tuple(sorted(set(setup.fit_only) | extra))) if extra else setup


def _named(start, options: SetupOptions) -> tuple[list[str], list[str], str]:
    if options.xray_lines or options.elements:
        return list(options.xray_lines), list(options.elements), "config"
    return list(start.xray_lines), list(start.elements), "acquisition start"


def _proposed(total: np.ndarray, offset_kev: float, scale_kev: float, geometry: Geometry):
    from .propose import propose_elements

    proposal = propose_elements(np.asarray(total, dtype=np.float64), offset_kev, scale_kev, geometry.beam_energy_kev,
                                energy_resolution_ev=geometry.resolution_ev or 130.0)
    if len(proposal.elements) < 2:
        raise SetupError(f"no elements named, and the total spectrum shows {len(proposal.elements)} "
                         f"({', '.join(proposal.elements) or 'none'}) clearly: name them in [quantify] elements")
    return list(proposal.elements), proposal.description


def _kfactors(lines: Sequence[str], user: Mapping[str, float], source: str, beam_energy_kev: float):
    if user:
        missing = missing_kfactors(lines, user)
        if missing:
            hint = " ".join(f"--kfactor {line}=VALUE" for line in missing)
            raise SetupError(f"no k-factor for {', '.join(missing)}: give them ({hint}, [quantify.kfactors] or the "
                             "k-factor table), or give none to use theoretical k-factors for all lines")
        return {line: float(user[line]) for line in lines}, source, False
    from .theory import theoretical_kfactors

    theory = theoretical_kfactors(list(lines), beam_energy_kev)
    return {line: float(theory.kfactors[line]) for line in lines}, theory.description, True


def quantify_clusters(spectra: np.ndarray, *, offset_kev: float, scale_kev: float, beam_energy_kev: float,
                      kfactors: Mapping[str, float] | None = None, xray_lines: Sequence[str] = (),
                      elements: Sequence[str] = (), pixels: Sequence[int] | None = None,
                      elevation_deg: float | None = None, azimuth_deg: float | None = None,
                      energy_resolution_ev: float | None = None, fit_only: Sequence[str] = (),
                      kfactor_source: str = USER_KFACTORS, random_state=None, **options):
    """Quantify summed cluster spectra (n_clusters, channels) in one call, e.g. from a notebook.

    Lines are resolved the exspy way from ``xray_lines`` and ``elements``; with no
    ``kfactors`` theoretical ones are used. ``options`` are :class:`QuantifyOptions` fields
    (``intensities="windows"``, ``replicas=16``, ``calibrate=()``...). Uncertainties are
    counting statistics only: summed spectra have no pixels to bootstrap.
    """
    from .composition import QuantifyOptions, quantify_spectra

    spectra = np.atleast_2d(np.asarray(spectra, dtype=np.float64))
    lines = resolve_lines(xray_lines, elements, beam_energy_kev, offset_kev=offset_kev, scale_kev=scale_kev,
                          channels=spectra.shape[-1])
    geometry = Geometry(beam_energy_kev, elevation_deg, azimuth_deg, energy_resolution_ev)
    if kfactors:
        require_kfactors(lines, kfactors)  # raises, naming any missing line and the fix
        factors, source, theoretical = {k: float(kfactors[k]) for k in lines}, kfactor_source, False
    else:
        factors, source, theoretical = _kfactors(lines, {}, kfactor_source, beam_energy_kev)
    setup = Setup(offset_kev, scale_kev, spectra.shape[-1], geometry, tuple(lines), factors, source, theoretical,
                  tuple(sorted(set(fit_only) - {line.partition("_")[0] for line in lines})), "given")
    return quantify_spectra(spectra, setup, QuantifyOptions(**options), pixels=pixels, random_state=random_state)

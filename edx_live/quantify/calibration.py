"""The energy axis of an acquisition, calibrated on the peaks of its total spectrum.

Files and acquisition software often carry an energy axis 20 to 50 eV off (a drifted
zero, a gain set for another processing time). At 50 eV the O Ka peak (0.525 keV)
sits more than half a line width from its database energy: no element is proposed
for it, and a model with lines at the nominal energies fits the wrong channels.

:func:`calibrate_axis` refines the offset and the gain (eV per channel) before anything
is proposed or fitted:

1. propose the elements on the current axis (:func:`.propose.propose_elements`);
2. for every K-alpha line above 1 keV of the proposed and named elements whose
   peak is strong (``MIN_SIGNIFICANCE`` sigma) and clear of other elements' lines, find
   the shift that puts the line family (exspy's lines, weights and detector widths) on
   the background-subtracted peak: least squares of ``A * family(E - s) + b`` over the
   peak, ``s`` searched on a 1 eV grid and refined by a parabola;
3. fit true energy = a + b x measured energy over those lines, weighted by their counts
   (offset only when the lines span less than ``MIN_GAIN_SPAN_KEV``), dropping a line that
   sits far off the others' fit (a wrong element's line);
4. repeat on the corrected axis, where elements whose peaks were too far from their lines
   (O Ka, C Ka on a shifted axis) are now proposed, until it moves less than ``CONVERGED_EV``.

A correction larger than ``MAX_SHIFT_KEV`` at any line, or a gain further than
``MAX_GAIN_ERROR`` from 1, is refused and the nominal axis kept: the spectrum does not
support it. This is exspy's ``calibrate_energy_axis(calibrate="offset"/"scale")`` on a
model of Gaussians at exspy's energies, done without knowing the elements beforehand
and with the gain and offset fitted together; each step is a linear fit or a grid, so it
costs a few hundred milliseconds at most.

Pure: arrays in, an immutable :class:`AxisCalibration` out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

#: Peaks weaker than this (net counts over the Poisson noise of the window) do not calibrate.
MIN_SIGNIFICANCE = 20.0
#: Largest correction accepted at any calibrating line (keV).
MAX_SHIFT_KEV = 0.15
#: Largest relative gain correction accepted.
MAX_GAIN_ERROR = 0.03
#: Lines closer than this many FWHM to another element's line are left out (overlaps)...
OVERLAP_FWHM = 1.5
#: ... when that line is expected to bring this fraction of their counts.
OVERLAP_FRACTION = 0.1
#: The gain is fitted only when the calibrating lines span this many keV.
MIN_GAIN_SPAN_KEV = 2.0
#: The iteration stops when the axis moves less than this at every line (eV).
CONVERGED_EV = 0.5
#: Lines that calibrate: K-alpha lines are where the database and the detector agree best; L and M
#: series are blends whose centroid moves with their unlisted lines and chemistry, and below 1 keV
#: incomplete charge collection and absorption move the peaks.
CALIBRATING_LINES = ("Ka",)
MIN_CALIBRATING_KEV = 1.0
#: A line further than this from the others' fit (and 3 x their rms) is dropped as misidentified (eV).
OUTLIER_EV = 5.0
#: Lines needed: one peak alone may be the wrong element's line.
MIN_LINES = 2
#: Iterations at most.
MAX_ITERATIONS = 4

METHOD = ("offset and gain fitted to the peaks of the total spectrum: each strong principal line of the "
          "proposed and named elements located by least squares of its exspy line family, true = a + b x "
          "measured by weighted least squares, iterated with elements proposed again on the corrected axis")


@dataclass(frozen=True)
class AxisCalibration:
    """An energy axis and how it was found.

    Attributes
    ----------
    offset_kev, scale_kev : float
        The axis used: channel i at ``offset_kev + i * scale_kev``.
    nominal_offset_kev, nominal_scale_kev : float
        The axis the acquisition declared.
    lines : tuple of str
        Lines whose peaks fixed the calibration.
    shifts_ev : tuple of float
        Where each of those peaks sat on the nominal axis, minus its line energy (eV).
    residual_ev : float
        Root-mean-square distance of the peaks from their lines on the calibrated axis (eV).
    applied : bool
        False when the nominal axis was kept; ``reason`` says why.
    reason : str
    """

    offset_kev: float
    scale_kev: float
    nominal_offset_kev: float
    nominal_scale_kev: float
    lines: tuple[str, ...] = ()
    shifts_ev: tuple[float, ...] = ()
    residual_ev: float = float("nan")
    applied: bool = False
    reason: str = ""

    def energy(self, nominal_kev: float) -> float:
        """The calibrated energy of a point the nominal axis puts at ``nominal_kev``."""
        channel = (nominal_kev - self.nominal_offset_kev) / self.nominal_scale_kev
        return self.offset_kev + channel * self.scale_kev

    @property
    def gain(self) -> float:
        return self.scale_kev / self.nominal_scale_kev

    def published(self) -> dict:
        """Flat entries for a composition's ``fit``."""
        return {"axis_offset_kev": self.offset_kev, "axis_scale_kev": self.scale_kev,
                "axis_nominal_offset_kev": self.nominal_offset_kev, "axis_nominal_scale_kev": self.nominal_scale_kev,
                "axis_calibrated": "yes" if self.applied else "no",
                "axis_calibration": (METHOD if self.applied else f"nominal axis kept: {self.reason}"),
                "axis_calibration_lines": list(self.lines),
                "axis_calibration_shifts_ev": [round(s, 2) for s in self.shifts_ev],
                "axis_residual_ev": self.residual_ev}


def nominal(offset_kev: float, scale_kev: float, reason: str) -> AxisCalibration:
    """The declared axis, unchanged."""
    return AxisCalibration(float(offset_kev), float(scale_kev), float(offset_kev), float(scale_kev), reason=reason)


def calibrate_axis(total, offset_kev: float, scale_kev: float, beam_energy_kev: float, *,
                   resolution_ev: float = 130.0, elements: Iterable[str] = (),
                   min_significance: float = MIN_SIGNIFICANCE) -> AxisCalibration:
    """Offset and gain of the energy axis refined on the peaks of ``total``.

    Parameters
    ----------
    total : array_like, shape (channels,)
        The total spectrum (counts).
    offset_kev, scale_kev : float
        The declared axis.
    beam_energy_kev, resolution_ev : float
        Lines at or above the beam energy are not excited; resolution is the FWHM at Mn Ka.
    elements : iterable of str
        Elements known to be present (named by the acquisition or the configuration); their
        lines calibrate too.
    min_significance : float
        Weakest peak used, in Poisson sigma.

    Returns
    -------
    AxisCalibration
        The nominal axis (``applied`` False) when fewer than one strong isolated line is found
        or the correction is out of bounds.
    """
    from .propose import propose_elements

    counts = np.asarray(total, dtype=np.float64)
    offset0, scale0 = float(offset_kev), float(scale_kev)
    offset, scale = offset0, scale0
    named = set(elements)
    located: list[tuple[str, float, float, float]] = []
    residual = float("nan")
    for _ in range(MAX_ITERATIONS):
        proposal = propose_elements(counts, offset, scale, beam_energy_kev, energy_resolution_ev=resolution_ev)
        present = sorted(named | set(proposal.elements))
        strength = {el: e["fitted_counts"] for el, e in proposal.evidence.items()}
        located = _locate(counts, offset, scale, beam_energy_kev, resolution_ev, present, min_significance, strength)
        if len(located) < MIN_LINES:
            break
        a, b, residual = _fit_axis(located)
        new_offset, new_scale = a + b * offset, b * scale
        moved = max(abs((new_offset + new_scale * (e - offset) / scale) - e) for _, e, _, _ in located)
        offset, scale = new_offset, new_scale
        if 1000 * moved < CONVERGED_EV:
            break
    if len(located) < MIN_LINES:
        return nominal(offset0, scale0, f"{len(located)} principal line(s) stand {min_significance:g} sigma clear "
                                        f"of others; {MIN_LINES} are needed")
    lines = tuple(name for name, _, _, _ in located)
    # The shift of each line on the nominal axis, and the residual left on the calibrated one.
    shifts = tuple(1000 * ((energy - offset) / scale * scale0 + offset0 - energy)
                   for _, energy, _, _ in located)
    calibration = AxisCalibration(offset, scale, offset0, scale0, lines, shifts, 1000 * residual, True)
    worst_line = max((abs(s) for s in shifts), default=0.0) / 1000
    if abs(calibration.gain - 1) > MAX_GAIN_ERROR or worst_line > MAX_SHIFT_KEV:
        return nominal(offset0, scale0, f"the peaks asked for a correction of {1000 * worst_line:.0f} eV and a "
                                        f"gain of {calibration.gain:.4f}, beyond {1000 * MAX_SHIFT_KEV:.0f} eV "
                                        f"or {MAX_GAIN_ERROR:.0%}")
    return calibration


def _locate(counts, offset, scale, beam, resolution, elements, min_significance, strength):
    """(line, database energy, remaining shift keV, weight) of every strong, isolated principal line.

    The shift is where the line's family sits on the current axis minus its database energy.
    ``strength`` holds the fitted counts of each proposed element's main line: another element's
    line nearby disqualifies a line only if it brings ``OVERLAP_FRACTION`` of the line's counts
    (an element named but not proposed, of unknown strength, always does).
    """
    from .propose import _element_lines, _prepare, fwhm_kev

    data = _prepare(counts, offset, scale, beam, resolution, 3.0, 0.2)
    lines = {el: [line for line in _element_lines(el) if line[1] < beam] for el in elements}
    out = []
    for element, own in lines.items():
        principal = [line for line in own if line[0].split("_")[1] in CALIBRATING_LINES
                     and max(data.low + 0.05, MIN_CALIBRATING_KEV) <= line[1] <= data.high - 0.05]
        for name, energy, weight in principal:
            width = fwhm_kev(resolution, energy)
            mine = strength.get(element, np.inf) * weight / _main_weight(own, beam)
            if any(abs(line[1] - energy) < OVERLAP_FWHM * width
                   and strength.get(el, np.inf) * line[2] / _main_weight(ls, beam) > OVERLAP_FRACTION * mine
                   for el, ls in lines.items() if el != element for line in ls):
                continue
            family = [line for line in own if line[0].split("_")[1][0] == name.split("_")[1][0]]
            found = _shift(data, family, energy, width, min_significance)
            if found is not None:
                out.append((name, energy, *found))
    return sorted(out, key=lambda row: row[1])


def _main_weight(lines, beam: float) -> float:
    """Relative weight of an element's main line (the one whose counts ``strength`` gives)."""
    from .propose import _main_line

    main = _main_line(lines, beam)
    return main[2] if main is not None and main[2] > 0 else 1.0


def _shift(data, family, energy: float, width: float, min_significance: float):
    """(shift keV, weight) of ``family`` on the net spectrum around ``energy``, or None if too weak."""
    from .propose import fwhm_kev

    search = MAX_SHIFT_KEV
    window = (data.energy >= energy - search - width) & (data.energy <= energy + search + width)
    if window.sum() < 5:
        return None
    e, y, total = data.energy[window], data.net[window], data.counts[window]
    core = np.abs(e - energy) <= search + 0.5 * width
    if y[core].sum() <= 0 or y[core].sum() / np.sqrt(max(total[core].sum(), 1.0)) < min_significance:
        return None
    steps = np.arange(-search, search + 5e-4, 1e-3)
    weight = 1.0 / np.maximum(total, 1.0)
    chi2 = np.empty(steps.size)
    for k, s in enumerate(steps):
        t = np.zeros_like(e)
        for _, line_e, rel in family:
            sigma = fwhm_kev(data.resolution, line_e) / 2.3548
            t += rel * np.exp(-0.5 * ((e - line_e - s) / sigma) ** 2)
        design = np.stack([t, np.ones_like(t)], axis=1)
        coef, *_ = np.linalg.lstsq(design * np.sqrt(weight)[:, None], y * np.sqrt(weight), rcond=None)
        chi2[k] = np.sum(weight * (y - design @ coef) ** 2) if coef[0] > 0 else np.inf
    k = int(np.argmin(chi2))
    if not np.isfinite(chi2[k]) or k in (0, steps.size - 1):
        return None  # no peak inside the searched range
    c0, c1, c2 = chi2[k - 1:k + 2]
    curvature = c0 - 2 * c1 + c2
    refine = 0.5 * (c0 - c2) / curvature if curvature > 0 else 0.0
    shift = steps[k] + np.clip(refine, -1, 1) * 1e-3
    net = float(y[core].sum())
    # Variance of a peak position: (sigma of the line)**2 / counts.
    return float(shift), net / (width / 2.3548) ** 2


def _fit_axis(located) -> tuple[float, float, float]:
    """(a, b, weighted rms residual keV) of true = a + b x measured, dropping misidentified lines.

    A line whose residual exceeds ``OUTLIER_EV`` and three times the others' rms is dropped
    (from the list, in place) and the fit repeated, while at least ``MIN_LINES`` remain.
    """
    while True:
        a, b, residual, worst = _fit_once(located)
        if worst is None or len(located) <= MIN_LINES:
            return a, b, residual
        rest = [row for k, row in enumerate(located) if k != worst]
        _, _, rest_rms, _ = _fit_once(rest)
        true, shift = located[worst][1], located[worst][2]
        off = abs(true - (a + b * (true + shift)))
        if off * 1000 <= max(OUTLIER_EV, 3000 * rest_rms):
            return a, b, residual
        del located[worst]


def _fit_once(located) -> tuple[float, float, float, int | None]:
    """(a, b, weighted rms residual keV, index of the largest residual) of true = a + b x measured."""
    true = np.array([energy for _, energy, _, _ in located])
    measured = true + np.array([shift for _, _, shift, _ in located])
    w = np.array([weight for _, _, _, weight in located])
    if np.ptp(true) < MIN_GAIN_SPAN_KEV:
        a, b = float(np.average(true - measured, weights=w)), 1.0
    else:
        design = np.stack([np.ones_like(measured), measured], axis=1) * np.sqrt(w)[:, None]
        (a, b), *_ = np.linalg.lstsq(design, true * np.sqrt(w), rcond=None)
    off = np.abs(true - a - b * measured)
    residual = float(np.sqrt(np.average(off ** 2, weights=w)))
    return float(a), float(b), residual, (int(np.argmax(off)) if len(off) > 1 else None)

"""Elements present, proposed from the peaks of an acquisition's total spectrum.

When neither the acquisition nor the configuration names the elements, the
service still needs lines to quantify. :func:`propose_elements` finds the
significant peaks of the total spectrum (the sum of every pixel) and assigns
them to elements with exspy's X-ray line database and its detector-width model.
Pure: an array in, an immutable :class:`ProposedElements` out.

exspy (and with it HyperSpy) is imported on the first call, not with this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations_with_replacement

import numpy as np
from scipy.optimize import nnls
from scipy.signal import find_peaks

from .background import snip_background, window_sum as _window_sum
from .lines import _database

#: Principal line of each family, in the order exspy prefers them when it picks one line per element.
PRINCIPAL_LINES = ("Ka", "La", "Ma")
#: Half-width of the SNIP clipping window: this many FWHM of the line at each channel...
SNIP_WINDOW_FWHM = 1.5
#: ... or this fraction of the channel's energy (or of its distance to the beam energy) if wider:
#: the continuum bends on those scales, and clusters of overlapping lines (L series) span a
#: similar fraction of their energy.
SNIP_WINDOW_RELATIVE = 0.2
#: Lines of the main family at least this strong (relative weight) must not be clearly absent...
CHECKED_WEIGHT = 0.3
#: ... that is, show less than this fraction of the counts the main line predicts.
ABSENT_FRACTION = 0.25
#: Relative uncertainty allowed on the fitted lines (database weights, detector line shape),
#: so that a real spectrum's imperfect fit does not leave peaks "unexplained".
MODEL_TOLERANCE = 0.1
#: A peak inside a proposed element's L or M series holding less than this fraction of the
#: series' principal line is not enough to propose another element (unlisted weak lines).
SATELLITE_FRACTION = 0.05
#: A peak at the energy of a Si escape or sum peak of stronger peaks, with less than this
#: fraction of their counts, is taken as that artefact rather than a new element.
ARTIFACT_FRACTION = 0.01
#: Candidates whose chi-square gains are within this fraction of the best are a tie.
NEAR_TIE = 0.1
#: Lines weaker than this (relative weight) are not listed as confirmed.
CONFIRM_WEIGHT = 0.05
#: Unidentified peaks named in the description (all are in ``unidentified_kev``).
MAX_LISTED = 8


@dataclass(frozen=True)
class ProposedElements:
    """Elements proposed from a total spectrum, with the evidence for each.

    Attributes
    ----------
    elements : tuple of str
        Proposed element symbols, sorted.
    evidence : dict of str to dict
        Per element: ``main_line`` (e.g. ``"Fe_Ka"``), ``energy_kev`` (its database energy),
        ``peak_energy_kev`` (the peak it matched), ``net_counts`` (counts above background in
        a 1-FWHM window there), ``significance`` (``net_counts`` over the square root of the
        window's total counts, in sigma), ``fitted_counts`` (the main line's counts in the joint
        fit of all proposed elements, which separates overlaps) and ``lines_confirmed`` (the
        element's lines that fall on a significant peak).
    description : str
        One sentence for published documents: how the elements were proposed and on what.
    unidentified_kev : tuple of float
        Energies of significant peaks that no line of a proposed element explains and no
        element could be proposed for (escape and sum peaks, elements the rules reject).
    """

    elements: tuple[str, ...]
    evidence: dict[str, dict]
    description: str
    unidentified_kev: tuple[float, ...] = ()


@dataclass(frozen=True)
class _Spectrum:
    """The measured spectrum and what every step derives from it once."""

    counts: np.ndarray      # (channels,) float
    energy: np.ndarray      # keV of each channel
    half: np.ndarray        # half-width (channels) of the 1-FWHM counting window at each channel
    net: np.ndarray         # counts above the background
    net_w: np.ndarray       # net counts in each channel's window
    total_w: np.ndarray     # total counts in each channel's window
    fit: slice              # channels from min_energy_kev up to the beam energy or axis end
    low: float              # lowest peak energy considered (keV)
    high: float             # highest: the beam energy or the axis end
    beam: float
    scale: float
    resolution: float       # FWHM at Mn Ka (eV)

    def window(self, channel: int) -> slice:
        """The 1-FWHM counting window around ``channel``."""
        return slice(max(channel - self.half[channel], 0), channel + self.half[channel] + 1)

    def channel(self, energy_kev: float) -> int:
        index = round((energy_kev - self.energy[0]) / self.scale)
        return int(np.clip(index, 0, self.energy.size - 1))

    def tolerance(self, energy_kev: float) -> float:
        """How far (keV) a line may lie from a peak it explains: half a FWHM plus half a channel."""
        return 0.5 * fwhm_kev(self.resolution, energy_kev) + 0.5 * self.scale


@dataclass(frozen=True)
class _Peak:
    channel: int
    energy: float
    significance: float


def propose_elements(spectrum, offset_kev: float, scale_kev: float, beam_energy_kev: float, *,
                     energy_resolution_ev: float = 130.0, min_significance: float = 5.0,
                     min_energy_kev: float = 0.2, exclude: Iterable[str] = ()) -> ProposedElements:
    """Propose the elements present from the peaks of a total spectrum.

    1. Background: SNIP clipping (:func:`.background.snip_background`) of the spectrum averaged over one
       FWHM (exspy's Fiori-Newbury model), with a half-window of ``SNIP_WINDOW_FWHM`` FWHM or
       ``SNIP_WINDOW_RELATIVE`` times min(E, E0 - E), whichever is wider.
    2. Peaks: local maxima (``scipy.signal.find_peaks``) of the net counts summed in a 1-FWHM
       window, kept when net / sqrt(total counts in the window) >= ``min_significance``
       (Poisson) and their energy lies between ``min_energy_kev`` (above the zero-energy noise
       peak) and the beam energy or axis end.
    3. Assignment, greedy on the peak that the elements proposed so far explain least: the
       candidates are the elements with a line within half a FWHM of it
       (``exspy.utils.eds.get_xray_lines_near_energy``). A candidate must have its main line
       (``Ka``, ``La`` or ``Ma``, picked as exspy does: the first below half the beam energy
       within the axis) on a significant peak that is itself still unexplained, so a minor line
       under another element's major line (Mn_Kb under Fe_Ka) never proposes an element; and
       the lines of its main family with weight >= ``CHECKED_WEIGHT`` must not be clearly absent.
       Nor may its main-line peak be a likely Si escape or sum peak of stronger peaks
       (``ARTIFACT_FRACTION``) or a weak peak inside a proposed element's L or M series
       (``SATELLITE_FRACTION``: lines exspy does not list). The candidate whose line families
       (Gaussians at exspy's energies and weights) reduce the chi-square of the residual most
       is proposed, so the element explaining more peaks wins (near ties: fewest families).
       Then every proposed element's families are fitted jointly (non-negative least squares
       on the principal lines' windows) and the residual decides which peaks are still
       unexplained: residual in the window over sqrt(total + (``MODEL_TOLERANCE`` x model)^2)
       >= ``min_significance``. A peak with no acceptable candidate is reported as unidentified.

    Parameters
    ----------
    spectrum : array_like, shape (channels,)
        Counts summed over all pixels, non-negative.
    offset_kev, scale_kev : float
        Energy axis: channel i is at ``offset_kev + i * scale_kev``.
    beam_energy_kev : float
        Lines at or above it are not excited.
    energy_resolution_ev : float
        Detector FWHM at Mn Ka (eV).
    min_significance : float
        Peaks must stand this many Poisson sigma above the background.
    min_energy_kev : float
        Peaks below are ignored (the zero-energy noise peak).
    exclude : iterable of str
        Element symbols never proposed.

    Returns
    -------
    ProposedElements

    Raises
    ------
    ValueError
        A spectrum that is not 1-D, finite and non-negative, a non-positive scale, beam
        energy, resolution or significance, or an excluded symbol exspy does not know.

    Notes
    -----
    The axis must be calibrated to within about half a FWHM, and ``energy_resolution_ev``
    close to the detector's: lines are Gaussians of exspy's width. exspy's weights are relative
    within a family only, so families are fitted independently and only the main family is
    checked for absent lines. A single line is enough to propose an element: weak peaks that
    are neither escape nor sum peaks (coherent bremsstrahlung, absorption edges of the
    detector window, lines missing from the database outside a proposed series) can still
    propose one; the evidence says how strong each is.
    """
    excluded = _check_exclude(exclude)
    data = _prepare(spectrum, offset_kev, scale_kev, beam_energy_kev, energy_resolution_ev,
                    min_significance, min_energy_kev)
    peaks = _significant_peaks(data, min_significance)
    fit, unexplained = _assign(data, peaks, min_significance, excluded)
    evidence = {element: _evidence(data, peaks, lines, fit.amplitudes[element])
                for element, lines in sorted(fit.lines.items())}
    known = {line[1] for lines in fit.lines.values() for line in lines}
    unidentified = tuple(round(p.energy, 3) for p in unexplained
                         if not any(abs(p.energy - e) <= data.tolerance(e) for e in known))
    description = _describe(data, evidence, unidentified, min_significance, excluded)
    return ProposedElements(tuple(sorted(evidence)), evidence, description, unidentified)


def fwhm_kev(resolution_ev: float, energy_kev: float) -> float:
    """Detector FWHM (keV) at ``energy_kev``: exspy's Fiori-Newbury model, floored at a third of
    ``resolution_ev`` where the model would turn imaginary (very low energies, sharp detectors)."""
    return _fwhm_kev(float(resolution_ev), round(float(energy_kev), 6))


@lru_cache(maxsize=65536)
def _fwhm_kev(resolution_ev: float, energy_kev: float) -> float:
    try:
        from exspy.utils.eds import get_FWHM_at_Energy
    except ImportError:  # private in exspy 0.3
        from exspy._misc.eds.utils import get_FWHM_at_Energy
    try:
        width = float(get_FWHM_at_Energy(resolution_ev, energy_kev))
    except ValueError:  # sqrt of a negative number
        width = 0.0
    return max(width, resolution_ev / 3000.0)


def _prepare(spectrum, offset, scale, beam, resolution, min_significance, min_energy) -> _Spectrum:
    counts = np.asarray(spectrum, dtype=float)
    if counts.ndim != 1 or counts.size < 3:
        raise ValueError(f"spectrum must be 1-D with at least 3 channels, got shape {counts.shape}")
    if not np.all(np.isfinite(counts)) or counts.min() < 0:
        raise ValueError("spectrum must hold finite, non-negative counts")
    for name, value in (("scale_kev", scale), ("beam_energy_kev", beam),
                        ("energy_resolution_ev", resolution), ("min_significance", min_significance)):
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
    energy = offset + scale * np.arange(counts.size)
    width = _channel_fwhm(float(resolution), float(offset), float(scale), counts.size)
    half = np.maximum(1, np.rint(width / (2 * scale))).astype(int)
    low, high = max(float(min_energy), energy[0]), min(float(beam), energy[-1])
    # The continuum bends on the scale of E (absorption, Kramers' 1/E) and of E0 - E (its end).
    scale_of_bends = np.clip(np.minimum(energy, beam - energy), 0.0, None)
    clip = np.ceil(np.maximum(SNIP_WINDOW_FWHM * width, SNIP_WINDOW_RELATIVE * scale_of_bends) / scale).astype(int)
    fit = slice(int(np.searchsorted(energy, low)), int(np.searchsorted(energy, high, side="right")))
    net = counts - snip_background(counts, clip, half)
    return _Spectrum(counts, energy, half, net, _window_sum(net, half), _window_sum(counts, half),
                     fit, low, high, float(beam), float(scale), float(resolution))


@lru_cache(maxsize=16)
def _channel_fwhm(resolution: float, offset: float, scale: float, channels: int) -> np.ndarray:
    width = np.array([fwhm_kev(resolution, offset + scale * i) for i in range(channels)])
    width.flags.writeable = False
    return width


def _significant_peaks(data: _Spectrum, min_significance: float) -> list[_Peak]:
    significance = data.net_w / np.sqrt(np.maximum(data.total_w, 1.0))
    maxima, _ = find_peaks(data.net_w)
    return [_Peak(int(c), float(data.energy[c]), float(significance[c])) for c in maxima
            if significance[c] >= min_significance and data.low <= data.energy[c] <= data.high]


def _check_exclude(exclude: Iterable[str]) -> frozenset[str]:
    if isinstance(exclude, str):
        exclude = (exclude,)
    symbols = frozenset(str(e).strip() for e in exclude)
    unknown = sorted(s for s in symbols if s not in _database())
    if unknown:
        raise ValueError(f"exclude: {', '.join(map(repr, unknown))} not element symbols known to exspy "
                         "(symbols are case-sensitive, e.g. 'Cu')")
    return symbols


@lru_cache(maxsize=None)
def _element_lines(element: str) -> tuple[tuple[str, float, float], ...]:
    """(line, energy keV, weight) of every line of ``element`` in exspy's database."""
    try:
        table = _database()[element]["Atomic_properties"]["Xray_lines"].as_dictionary()
    except (KeyError, AttributeError):
        return ()
    return tuple((f"{element}_{name}", float(p["energy (keV)"]), float(p["weight"]))
                 for name, p in table.items())


def _lines_in_range(element: str, data: _Spectrum) -> tuple[tuple[str, float, float], ...]:
    """Lines on the axis and excited by the beam, of the families whose principal line is in range."""
    lines = [line for line in _element_lines(element) if data.energy[0] <= line[1] <= data.energy[-1]
             and line[1] < data.beam]
    families = {_family(line) for line in lines if _is_principal(line) and data.low <= line[1] <= data.high}
    return tuple(line for line in lines if _family(line) in families)


def _family(line) -> str:
    """K, L or M: the family of a (name, energy, weight) line."""
    return line[0].split("_")[1][0]


def _is_principal(line) -> bool:
    return line[0].split("_")[1] in PRINCIPAL_LINES


def _main_line(lines, beam: float) -> tuple[str, float, float] | None:
    """The line exspy would quantify: the first of Ka, La, Ma below half the beam energy, else the last."""
    principal = {line[0].split("_")[1]: line for line in lines}
    present = [principal[name] for name in PRINCIPAL_LINES if name in principal]
    below = [line for line in present if line[1] < beam / 2]
    return (below or present[-1:] or [None])[0]


def _templates(data: _Spectrum, lines) -> np.ndarray:
    """(channels, families) Gaussian line shapes; each line's area is its relative weight."""
    families = sorted({_family(line) for line in lines})
    columns = np.zeros((data.energy.size, len(families)))
    for line in lines:
        sigma = fwhm_kev(data.resolution, line[1]) / (2 * np.sqrt(2 * np.log(2)))
        shape = np.exp(-0.5 * ((data.energy - line[1]) / sigma) ** 2) * data.scale / (sigma * np.sqrt(2 * np.pi))
        columns[:, families.index(_family(line))] += line[2] * shape
    return columns


@dataclass(frozen=True)
class _Fit:
    """The proposed elements' lines fitted to the net spectrum."""

    lines: dict[str, tuple]             # element -> its lines in range (name, keV, weight)
    amplitudes: dict[str, np.ndarray]   # element -> amplitude of each of its families
    model: np.ndarray                   # (channels,) fitted line counts


def _assign(data: _Spectrum, peaks: list[_Peak], min_significance: float, excluded: frozenset[str]):
    """Greedy assignment: the final :class:`_Fit` and the peaks it leaves unexplained."""
    fit = _Fit({}, {}, np.zeros_like(data.net))
    done: set[int] = set()
    while True:
        open_peaks = _unexplained(data, peaks, fit.model, min_significance)
        todo = [k for k in open_peaks if k not in done]
        if not todo:
            return fit, [peaks[k] for k in open_peaks]
        top = max(todo, key=lambda k: open_peaks[k])
        candidates = _candidates(data, peaks, top, open_peaks, fit, min_significance, excluded)
        if not candidates:
            done.add(top)
            continue
        best = _best(data, candidates, data.net - fit.model)
        fit = _fit(data, {**fit.lines, best: candidates[best]})


def _unexplained(data: _Spectrum, peaks, model, min_significance: float) -> dict[int, float]:
    """{peak index: residual significance} of the peaks the fitted lines leave unexplained."""
    out = {}
    for k, peak in enumerate(peaks):
        window = data.window(peak.channel)
        left = data.net[window].sum() - model[window].sum()
        tolerance = MODEL_TOLERANCE * model[window].sum()
        significance = left / np.sqrt(max(data.total_w[peak.channel], 1.0) + tolerance ** 2)
        if significance >= min_significance:
            out[k] = float(significance)
    return out


def _candidates(data, peaks, top, open_peaks, fit: _Fit, min_significance, excluded) -> dict[str, tuple]:
    """{element: its lines in range} for the elements that may explain peak ``top``."""
    from exspy.utils.eds import get_xray_lines_near_energy

    peak = peaks[top]
    near = get_xray_lines_near_energy(peak.energy, width=2 * data.tolerance(peak.energy))
    out = {}
    for element in dict.fromkeys(name.split("_")[0] for name in near):
        if element in fit.lines or element in excluded:
            continue
        lines = _lines_in_range(element, data)
        main = _main_line(lines, data.beam)
        if main is None or not any(name in near for name, _, _ in lines):
            continue
        k = _matching_peak(data, peaks, main[1])
        if k is None or k not in open_peaks or _clearly_absent(data, lines, main, min_significance) \
                or _within_weak_lines(data, peaks[k], fit) or _artifact(data, peaks[k], peaks):
            continue
        out[element] = lines
    return out


def _artifact(data: _Spectrum, peak: _Peak, peaks: list[_Peak]) -> bool:
    """Whether ``peak`` sits where the Si escape peak of a stronger peak, or the sum (pile-up)
    peak of two, falls, holding less than ``ARTIFACT_FRACTION`` of the counts of each parent."""
    net, tolerance = data.net_w[peak.channel], data.tolerance(peak.energy)
    parents = [p.energy for p in peaks if ARTIFACT_FRACTION * data.net_w[p.channel] > net]
    escape = next(line[1] for line in _element_lines("Si") if line[0] == "Si_Ka")
    return any(abs(e - escape - peak.energy) <= tolerance for e in parents) or \
        any(abs(a + b - peak.energy) <= tolerance for a, b in combinations_with_replacement(parents, 2))


def _within_weak_lines(data: _Spectrum, peak: _Peak, fit: _Fit) -> bool:
    """Whether ``peak`` lies within a proposed element's L or M series and holds less than
    ``SATELLITE_FRACTION`` of that series' principal line: then it is more likely one of the
    weak lines exspy's database does not list (Pt L-gamma5, 12.55 keV) than a new element."""
    window = data.window(peak.channel)
    left = data.net[window].sum() - fit.model[window].sum()
    for element, lines in fit.lines.items():
        families = sorted({_family(line) for line in lines})
        for f, family in enumerate(families):
            series = [line for line in lines if _family(line) == family]
            low, high = min(line[1] for line in series), max(line[1] for line in series)
            if family == "K" or not low - data.tolerance(low) <= peak.energy <= high + data.tolerance(high):
                continue
            principal = next(line for line in series if _is_principal(line))
            shape = _window_sum(_templates(data, series)[:, 0], data.half)[data.channel(principal[1])]
            if left < SATELLITE_FRACTION * fit.amplitudes[element][f] * shape:
                return True
    return False


def _matching_peak(data: _Spectrum, peaks: list[_Peak], energy: float) -> int | None:
    distance = [abs(p.energy - energy) for p in peaks]
    k = int(np.argmin(distance)) if peaks else None
    return k if k is not None and distance[k] <= data.tolerance(energy) else None


def _clearly_absent(data: _Spectrum, lines, main, min_significance: float) -> bool:
    """Whether a strong line of the main family shows far fewer counts than the main line predicts."""
    family = _family(main)
    strong = [line for line in lines if _family(line) == family and line is not main
              and line[2] >= CHECKED_WEIGHT and data.low <= line[1] <= data.high]
    if not strong:
        return False
    shape = _templates(data, [main])[:, 0]
    c_main = data.channel(main[1])
    per_weight = data.net_w[c_main] / max(_window_sum(shape, data.half)[c_main], 1e-12)
    for name, energy, weight in strong:
        c = data.channel(energy)
        expected = per_weight * weight * _window_sum(_templates(data, [(name, energy, 1.0)])[:, 0], data.half)[c]
        observed = data.net_w[c]
        if observed < ABSENT_FRACTION * expected and \
                expected - observed >= min_significance * np.sqrt(max(data.total_w[c], 1.0)):
            return True
    return False


def _best(data: _Spectrum, candidates: dict[str, tuple], residual: np.ndarray) -> str:
    """The candidate whose lines reduce the residual's chi-square most; among those within
    ``NEAR_TIE`` of the largest reduction, the one with the fewest line families in range
    (the simpler explanation: Al_Ka rather than Br_La at 20 kV)."""
    gain = {e: _chi2_gain(data, residual, _templates(data, lines)) for e, lines in candidates.items()}
    top = max(gain.values())
    close = [e for e in candidates if gain[e] >= (1 - NEAR_TIE) * top]
    return min(close, key=lambda e: (len({_family(line) for line in candidates[e]}), -gain[e]))


def _chi2_gain(data: _Spectrum, residual: np.ndarray, templates: np.ndarray) -> float:
    """Chi-square drop when each family is scaled (non-negatively) to fit the residual alone."""
    weight = 1.0 / np.maximum(data.counts[data.fit], 1.0)
    t, r = templates[data.fit], residual[data.fit]
    projection = (t * (r * weight)[:, None]).sum(axis=0)
    norm = (t * t * weight[:, None]).sum(axis=0)
    return float(np.sum(np.where(projection > 0, projection ** 2 / np.maximum(norm, 1e-300), 0.0)))


def _fit(data: _Spectrum, chosen: dict[str, tuple]) -> _Fit:
    """Joint non-negative weighted least squares of every family of the chosen elements.

    Only the channels within half a FWHM of each family's principal line (Ka, La, Ma) are
    fitted; the other lines are predicted from the database weights. So an element whose main
    line hides under another's minor line (Cd_La under Ag_Lb1) shows up in the residual
    instead of being absorbed into the other's amplitude.
    """
    blocks = {element: _templates(data, lines) for element, lines in chosen.items()}
    design = np.hstack(list(blocks.values()))
    mask = np.zeros(data.energy.size, dtype=bool)
    for lines in chosen.values():
        for line in filter(_is_principal, lines):
            mask[data.window(data.channel(line[1]))] = True
    mask[:data.fit.start] = mask[data.fit.stop:] = False
    weight = 1.0 / np.sqrt(np.maximum(data.counts[mask], 1.0))
    solution, _ = nnls(design[mask] * weight[:, None], data.net[mask] * weight)
    amplitudes, start = {}, 0
    for element, block in blocks.items():
        amplitudes[element] = solution[start:start + block.shape[1]]
        start += block.shape[1]
    return _Fit(dict(chosen), amplitudes, design @ solution)


def _evidence(data: _Spectrum, peaks: list[_Peak], lines, amplitudes: np.ndarray) -> dict:
    main = _main_line(lines, data.beam)
    peak = peaks[_matching_peak(data, peaks, main[1])]
    families = sorted({_family(line) for line in lines})
    own = _window_sum(_templates(data, lines) @ amplitudes, data.half)
    return {"main_line": main[0], "energy_kev": main[1], "peak_energy_kev": round(peak.energy, 4),
            "net_counts": round(float(data.net_w[peak.channel]), 1),
            "significance": round(peak.significance, 1),
            "fitted_counts": round(float(amplitudes[families.index(_family(main))] * main[2]), 1),
            "lines_confirmed": _confirmed(data, peaks, lines, own)}


def _confirmed(data: _Spectrum, peaks: list[_Peak], lines, own: np.ndarray) -> tuple[str, ...]:
    """Lines on a significant peak to which the element's fitted lines bring at least a quarter
    of the net counts (so Cr_Ll does not count as seen on the O_Ka peak)."""
    out = []
    for name, energy, weight in sorted(lines, key=lambda line: line[1]):
        k = _matching_peak(data, peaks, energy)
        if weight >= CONFIRM_WEIGHT and k is not None and \
                own[peaks[k].channel] >= 0.25 * data.net_w[peaks[k].channel]:
            out.append(name)
    return tuple(out)


def _describe(data: _Spectrum, evidence: dict, unidentified, min_significance: float,
              excluded: frozenset[str]) -> str:
    found = ", ".join(f"{element} ({e['main_line']}, {e['significance']:.0f} sigma)"
                      for element, e in evidence.items())
    text = (f"proposed from the peaks of the total spectrum ({data.counts.sum():,.0f} counts): "
            f"{found or 'no element'}; peaks at least {min_significance:g} sigma (Poisson) above a SNIP "
            f"background between {data.low:.2f} and {data.high:.2f} keV, assigned to X-ray lines of "
            f"exspy's database at {data.resolution:g} eV FWHM at Mn Ka")
    if unidentified:
        listed = ", ".join(f"{e:.2f}" for e in unidentified[:MAX_LISTED])
        more = f" and {len(unidentified) - MAX_LISTED} more" if len(unidentified) > MAX_LISTED else ""
        text += f"; unidentified peaks at {listed}{more} keV"
    if excluded:
        text += f"; never proposed: {', '.join(sorted(excluded))}"
    return text + "."

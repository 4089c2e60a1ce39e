"""Compositions of clusters with their uncertainties and configurational entropy.

One pass quantifies, for every cluster, its measured spectrum, its counting-statistics
replicas and its pixel-bootstrap samples (:mod:`.samples`) through the same intensity
step (exspy model fit or windows) and exspy's Cliff-Lorimer. Every published number
(at%, wt%, entropy) is then summarised the same way:

- ``sigma_counting``: spread over the counting replicas (Poisson noise carried through
  the fit and Cliff-Lorimer);
- ``sigma_spread``: the part of the bootstrap spread over the cluster's pixels that
  counting noise does not explain, sqrt(max(0, sigma_bootstrap**2 - sigma_counting**2));
- ``sigma`` = sqrt(sigma_counting**2 + sigma_spread**2), the 1-sigma published with the value.

The bootstrap already contains the counting noise of the pixels, so adding the two
spreads in quadrature would count it twice.

:class:`ClusterQuantifier` keeps exspy's model between refits of an acquisition and
recalibrates its detector resolution only when the counts have grown enough to matter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from edx_protocol import ClusterComposition, ElementResult, TimeToTarget

from .calibration import AxisCalibration
from .cores import BIAS_FRACTION, Cores, bias, cores
from .cliff_lorimer import Geometry, Windows, describe_intensities, weight_fractions, window_intensities
from .entropy import ANIONS, configurational_entropy, sublattice
from .kfactors import USER_KFACTORS, require_kfactors
from .lines import highest_line_kev, marked_lines
from .model import LineModel, ModelKey
from .samples import ClusterSamples, cluster_samples

#: The model's fit range reaches this far above the highest line of its elements (keV).
FIT_MARGIN_KEV = 1.0
#: Lowest energy fitted by default (keV): below it sits the detector's noise peak.
FIT_LOW_KEV = 0.2
#: The model's fit range starts this far below the lowest quantified line (keV), no lower than FIT_LOW_KEV.
FIT_BELOW_KEV = 2.0


@dataclass(frozen=True)
class QuantifyOptions:
    """How cluster spectra become compositions (the ``[quantify]`` section, minus what names lines).

    Attributes
    ----------
    intensities : {"model", "windows"}
    background_order : int
        Polynomial background of the model.
    fit_range_kev : (float, float) or None
        None: from 2 keV below the lowest quantified line (at least 0.2 keV) to 1 keV above the
        highest line of the quantified elements.
    calibrate : tuple of str
        Calibrations on the total spectrum: "axis" (offset and gain from its peaks, done when the
        setup is made, :mod:`.calibration`), "resolution" and "offset" (the model's, by exspy's rules).
    recalibrate_growth : float
        Recalibrate when the counts have grown by this factor since the last calibration.
    windows : Windows
    replicas, bootstrap, blocks : int
        Counting replicas, pixel-bootstrap samples, and the most groups a cluster is bootstrapped over.
    weighting : {"membership", "hard"}
    thickness_nm : float or None
        Absorption correction for a film this thick; None for none.
    sublattice_exclude : tuple of str
        Elements left out of the configurational entropy (anions).
    sublattice : tuple of str
        If given, exactly the species of the entropy (overrides ``sublattice_exclude``).
    cluster_pixels : {"core", "all"}
        Measure each cluster on its core, away from boundaries (:mod:`.cores`), with the bias
        that remains in the sigma; or on all its pixels.
    detection_sigma : float
        An element is detected in a cluster when its line intensity exceeds this many
        counting sigma of the intensity (the background under the line, carried through the fit).
    target_sigma : float
        at%: the 1-sigma every detected element should reach (:func:`time_to_target`).
    """

    intensities: Literal["model", "windows"] = "model"
    background_order: int = 6
    fit_range_kev: tuple[float, float] | None = None
    calibrate: tuple[str, ...] = ("resolution",)
    recalibrate_growth: float = 2.0
    windows: Windows = Windows()
    replicas: int = 64
    bootstrap: int = 64
    blocks: int = 2048
    weighting: Literal["membership", "hard"] = "membership"
    thickness_nm: float | None = None
    sublattice_exclude: tuple[str, ...] = ANIONS
    sublattice: tuple[str, ...] = ()
    cluster_pixels: Literal["core", "all"] = "core"
    detection_sigma: float = 3.0
    target_sigma: float = 1.0


@dataclass(frozen=True)
class Setup:
    """What an acquisition fixes: energy axis, detector, lines, k-factors and where they came from."""

    offset_kev: float
    scale_kev: float
    channels: int
    geometry: Geometry
    xray_lines: tuple[str, ...]
    kfactors: dict[str, float]
    kfactor_source: str = USER_KFACTORS
    kfactors_theoretical: bool = False
    fit_only: tuple[str, ...] = ()
    elements_source: str = "acquisition start"
    axis: AxisCalibration | None = None

    @property
    def elements(self) -> tuple[str, ...]:
        return tuple(line.partition("_")[0] for line in self.xray_lines)


@dataclass(frozen=True)
class Estimate:
    """A quantity measured on every cluster: value and its 1-sigma parts, shape (n_clusters, ...).

    ``sigma`` = sqrt(counting**2 + spread**2 + bias**2); ``sigma_bias`` is 0 where no bias was judged.
    """

    value: np.ndarray
    sigma: np.ndarray
    sigma_counting: np.ndarray
    sigma_spread: np.ndarray
    sigma_bias: np.ndarray | None = None

    def with_misfit(self, birge: np.ndarray) -> "Estimate":
        """The counting part multiplied by ``birge``: per cluster and line (n_clusters, n_lines) for per-line
        quantities, its largest value per cluster for per-cluster ones (entropy)."""
        factor = np.asarray(birge, dtype=np.float64)
        if self.value.ndim == 1:
            factor = factor.max(axis=-1)
        counting = self.sigma_counting * factor
        with np.errstate(invalid="ignore"):
            sigma = np.sqrt(np.nan_to_num(counting) ** 2 + np.nan_to_num(self.sigma_spread) ** 2
                            + (0 if self.sigma_bias is None else self.sigma_bias ** 2))
        return replace(self, sigma=np.where(np.isfinite(self.sigma), sigma, np.nan), sigma_counting=counting)

    def with_systematic(self, extra: np.ndarray) -> "Estimate":
        """This estimate with ``extra`` (same shape) added in quadrature to its bias part."""
        extra = np.nan_to_num(np.asarray(extra, dtype=np.float64))
        old = np.zeros_like(self.value) if self.sigma_bias is None else self.sigma_bias
        with np.errstate(invalid="ignore"):
            return replace(self, sigma=np.sqrt(self.sigma ** 2 + extra ** 2), sigma_bias=np.sqrt(old ** 2 + extra ** 2))

    def with_bias(self, reference: "Estimate") -> "Estimate":
        """This estimate with the bias part judged against ``reference`` (the same quantity on wider pixels)."""
        return self.with_systematic(BIAS_FRACTION * bias(self.value, self.sigma, reference.value, reference.sigma))


def estimate(values: np.ndarray, samples: ClusterSamples) -> Estimate:
    """Summarise ``values`` (n_clusters, 1 + replicas + bootstrap, ...) computed from ``samples.stack``.

    Without replicas the counting part is unknown (NaN) and the bootstrap spread is the whole
    sigma; without either, every sigma is NaN.
    """
    shape = values[:, 0].shape
    counting = _spread(samples.counting(values)) if samples.replicas >= 2 else np.full(shape, np.nan)
    known = np.nan_to_num(counting)
    if samples.bootstrap >= 2:
        boot = _spread(samples.resampled(values))
        spread = np.sqrt(np.clip(boot ** 2 - known ** 2, 0, None))
    else:
        spread = np.where(np.isfinite(counting), 0.0, np.nan)
    sigma = np.sqrt(known ** 2 + spread ** 2)
    return Estimate(values[:, 0].copy(), sigma, counting, spread)


def _spread(values: np.ndarray) -> np.ndarray:
    """Standard deviation over axis 1 ignoring NaN; NaN with fewer than two finite samples."""
    finite = np.isfinite(values)
    n = finite.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, values, 0).sum(axis=1) / n
        var = (np.where(finite, values - np.expand_dims(mean, 1), 0) ** 2).sum(axis=1) / (n - 1)
    return np.where(n >= 2, np.sqrt(var), np.nan)


@dataclass(frozen=True)
class Quantification:
    """Compositions of every cluster; per-line arrays are (n_clusters, n_lines) in ``xray_lines`` order.

    ``pixels`` are the clusters' pixels; ``core_pixels`` those each composition was measured on
    (``pixel_level``: "core", "interior" or "all", :mod:`.cores`). ``detected`` is False where a
    line's intensity is below ``detection_sigma`` counting sigma; ``detection_limit`` is the at%
    that would reach it. ``time_to_target`` holds one :class:`TargetTime` per cluster.
    """

    xray_lines: tuple[str, ...]
    elements: tuple[str, ...]
    kfactors: dict[str, float]
    kfactor_source: str
    kfactors_theoretical: bool
    atomic: Estimate
    weight: Estimate
    intensity: Estimate
    entropy: Estimate
    entropy_species: tuple[str, ...]
    pixels: np.ndarray
    weighting: str
    intensity_method: str
    method: str
    elements_source: str
    replicas: int
    bootstrap: int
    thickness_nm: float | None = None
    fit: dict = field(default_factory=dict)
    core_pixels: np.ndarray | None = None
    pixel_level: tuple[str, ...] = ()
    detected: np.ndarray | None = None
    detection_limit: np.ndarray | None = None
    time_to_target: tuple["TargetTime", ...] = ()
    target_sigma: float | None = None

    @property
    def atomic_percent(self) -> np.ndarray:
        return self.atomic.value

    @property
    def atomic_percent_sigma(self) -> np.ndarray:
        return self.atomic.sigma

    @property
    def intensities(self) -> np.ndarray:
        return self.intensity.value

    @property
    def clusters(self) -> list[ClusterComposition]:
        """The protocol's per-cluster documents (labels are row indices); NaN becomes None."""
        return [ClusterComposition(
            label=i, pixels=int(self.pixels[i]), elements={el: self._element(i, j) for j, el in enumerate(self.elements)},
            entropy_r=_or_none(self.entropy.value[i]), entropy_r_sigma=_or_none(self.entropy.sigma[i]),
            core_pixels=None if self.core_pixels is None else int(self.core_pixels[i]),
            pixel_level=self.pixel_level[i] if self.pixel_level else None,
            time_to_target=self.time_to_target[i].document() if self.time_to_target else None)
            for i in range(len(self.pixels))]

    def _element(self, i: int, j: int) -> ElementResult:
        a, w, n = self.atomic, self.weight, self.intensity
        limit = None if self.detection_limit is None else _or_none(self.detection_limit[i, j])
        if self.detected is not None and not self.detected[i, j]:
            return ElementResult(atomic_percent=None, atomic_percent_sigma=None, detected=False,
                                 detection_limit_atomic_percent=limit,
                                 intensity=_or_none(n.value[i, j]), intensity_sigma=_or_none(n.sigma_counting[i, j]))
        return ElementResult(atomic_percent=_or_none(a.value[i, j]), atomic_percent_sigma=_or_none(a.sigma[i, j]),
                             atomic_percent_sigma_counting=_or_none(a.sigma_counting[i, j]),
                             atomic_percent_sigma_spread=_or_none(a.sigma_spread[i, j]),
                             atomic_percent_sigma_bias=None if a.sigma_bias is None else _or_none(a.sigma_bias[i, j]),
                             weight_percent=_or_none(w.value[i, j]), weight_percent_sigma=_or_none(w.sigma[i, j]),
                             intensity=_or_none(n.value[i, j]), intensity_sigma=_or_none(n.sigma_counting[i, j]),
                             detection_limit_atomic_percent=limit)


@dataclass(frozen=True)
class TargetTime:
    """How much longer a cluster must be acquired until every detected element's sigma reaches the target.

    Counting sigma falls as 1/sqrt(counts); the spread and bias parts do not fall with dose,
    so a target below them is not reachable by acquiring longer (``reachable`` False).

    Attributes
    ----------
    target : float
        at%.
    factor : float
        Counts needed over counts now (1 when reached, inf when unreachable, NaN when unknown).
    limiting : str or None
        The element that needs the most.
    frames, counts : int
        Sweeps and counts of the acquisition now.
    seconds : float or None
        Acquisition time so far, when known.
    """

    target: float
    factor: float
    limiting: str | None
    frames: int = 0
    seconds: float | None = None

    @property
    def reached(self) -> bool:
        return bool(self.factor <= 1.0)

    @property
    def reachable(self) -> bool:
        return bool(np.isfinite(self.factor))

    def document(self) -> TimeToTarget:
        more = self.factor - 1 if self.reachable else None
        sweeps = None if more is None or not self.frames else max(0.0, more * self.frames)
        seconds = None if sweeps is None or self.seconds is None else sweeps * self.seconds / self.frames
        return TimeToTarget(target_sigma_atomic_percent=self.target, reached=self.reached,
                            reachable=self.reachable, limiting_element=self.limiting,
                            counts_factor=_or_none(self.factor), sweeps=_or_none(sweeps), seconds=_or_none(seconds))


def time_to_target(atomic: Estimate, detected: np.ndarray, elements: Sequence[str], target: float,
                   frames: int = 0, seconds: float | None = None) -> tuple[TargetTime, ...]:
    """Per cluster, the dose factor until every detected element's sigma is at most ``target`` at%.

    With c, s, b the counting, spread and bias parts of an element's sigma, acquiring f times
    the counts gives sqrt(c**2 / f + s**2 + b**2); f = c**2 / (target**2 - s**2 - b**2), infinite
    when s**2 + b**2 >= target**2.
    """
    out = []
    for i in range(atomic.value.shape[0]):
        factors = {}
        for j, element in enumerate(elements):
            c = atomic.sigma_counting[i, j]
            if not detected[i, j] or not np.isfinite(c):
                continue
            s = np.nan_to_num(atomic.sigma_spread[i, j])
            b = 0.0 if atomic.sigma_bias is None else np.nan_to_num(atomic.sigma_bias[i, j])
            room = target ** 2 - s ** 2 - b ** 2
            factors[element] = float(c ** 2 / room) if room > 0 else np.inf
        if factors:
            limiting = max(factors, key=factors.get)
            out.append(TargetTime(target, factors[limiting], limiting, frames, seconds))
        else:
            out.append(TargetTime(target, np.nan, None, frames, seconds))
    return tuple(out)


def _atomic(wt: np.ndarray, elements: list[str]) -> np.ndarray:
    """Atomic fractions from weight fractions (..., n_elements), with exspy's weight_to_atomic."""
    from exspy.material import weight_to_atomic

    with np.errstate(invalid="ignore", divide="ignore"):
        # exspy's conversion returns percent, normalised to 100
        return np.moveaxis(np.asarray(weight_to_atomic(np.moveaxis(wt, -1, 0), elements)), 0, -1) / 100


def detection(intensity: Estimate, lines: Sequence[str], kfactors: Sequence[float], geometry: Geometry,
              elements: Sequence[str], sigmas: float, thickness_nm: float | None = None):
    """(detected, detection limit in at%) per cluster and line.

    A line is detected when its fitted intensity exceeds ``sigmas`` times its sigma: counting
    (the noise of the background and of the overlapping lines under it, carried through the
    fit by the Poisson replicas, scaled by the fit's misfit under the line) and the background
    model's systematic (the change with one polynomial order less or more). The limit is the at% the element would have if its line
    held exactly that many counts, the other lines as measured (Cliff-Lorimer).
    """
    value = intensity.value
    systematic = 0.0 if intensity.sigma_bias is None else intensity.sigma_bias
    threshold = sigmas * np.sqrt(intensity.sigma_counting ** 2 + systematic ** 2)
    with np.errstate(invalid="ignore"):
        detected = ~(value < threshold)  # NaN (unknown) counts as detected: nothing to say it is not
    limit = np.full(value.shape, np.nan)
    present = np.where(detected, np.clip(value, 0, None), 0.0)  # the lines that are there, as measured
    for j in range(value.shape[-1]):
        at_limit = present.copy()
        at_limit[..., j] = np.where(np.isfinite(threshold[..., j]), np.clip(threshold[..., j], 0, None), np.nan)
        wt = weight_fractions(at_limit, list(lines), kfactors, geometry, thickness_nm)
        limit[..., j] = np.clip(100 * _atomic(wt, list(elements))[..., j], 0, 100)
    return detected, limit


def _or_none(value) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def fit_range(setup: Setup, options: QuantifyOptions) -> tuple[float, float]:
    """The model's energy range: configured, or from 2 keV below the lowest quantified line (at least
    0.2 keV) to 1 keV above the highest line of the quantified elements.

    The polynomial background then spans only what the quantified lines need. Over the whole
    spectrum it must also follow the low-energy roll-off and the C K peak of the film, and on
    a low-count cluster that bends it under the lines by several at% (Pt La on the carbon
    film of the core/shell data: -3 to -5 at% from 0.2 keV, about 0 from 4.4 keV). Fit-only
    elements do not widen the range.
    """
    from .lines import line_energy

    if options.fit_range_kev is not None:
        return tuple(float(v) for v in options.fit_range_kev)
    end = setup.offset_kev + setup.scale_kev * setup.channels
    top = highest_line_kev(setup.elements, min(end, setup.geometry.beam_energy_kev))
    high = end if top is None else min(end, top + FIT_MARGIN_KEV)
    low = min(line_energy(line) for line in setup.xray_lines) - FIT_BELOW_KEV
    return max(FIT_LOW_KEV, setup.offset_kev, low), high


class ClusterQuantifier:
    """Quantify the clusters of successive refits, keeping exspy's fitted model between them.

    Parameters
    ----------
    options : QuantifyOptions

    Attributes
    ----------
    model_ : LineModel or None
        The model of the last call; reused while the setup is unchanged.
    variants_ : list of LineModel
        The same model with one polynomial order less and one more: the change of the line
        intensities between them is the background's systematic uncertainty.
    calibrated_counts_ : float
        Total counts at the last calibration of the model.
    """

    def __init__(self, options: QuantifyOptions = QuantifyOptions()):
        self.options = options
        self.model_: LineModel | None = None
        self.variants_: list[LineModel] = []
        self.calibrated_counts_ = 0.0
        self.calibration_: dict = {}

    def model(self, setup: Setup, total: np.ndarray) -> LineModel:
        """The model for ``setup``: the previous one when the setup is unchanged, recalibrated as counts grow."""
        o = self.options
        key = ModelKey(setup.offset_kev, setup.scale_kev, setup.channels, setup.geometry.beam_energy_kev,
                       tuple(sorted(set(setup.elements + setup.fit_only))), setup.xray_lines, fit_range(setup, o),
                       o.background_order, setup.geometry.elevation_deg, setup.geometry.azimuth_deg)
        if self.model_ is None or self.model_.key != key:
            self.model_ = LineModel(key, setup.geometry.resolution_ev or 130.0)
            self.calibrated_counts_ = 0.0
            self.calibration_ = {}
            self.variants_ = [LineModel(replace(key, background_order=order), setup.geometry.resolution_ev or 130.0)
                              for order in (key.background_order - 1, key.background_order + 1) if order >= 0]
        counts = float(np.sum(total))
        steps = [step for step in o.calibrate if step != "axis"]  # the axis is the setup's
        if steps and counts >= o.recalibrate_growth * max(self.calibrated_counts_, 1.0):
            self.calibration_ = self.model_.calibrate(total, steps)
            self.calibrated_counts_ = counts
            for variant in self.variants_:
                variant.follow(self.model_)
        return self.model_

    def __call__(self, cube: np.ndarray, labels: np.ndarray, n_clusters: int, setup: Setup,
                 weights: np.ndarray | None = None, total: np.ndarray | None = None,
                 random_state=None, frames: int = 0, seconds: float | None = None) -> Quantification:
        """Quantify every cluster of ``labels`` over ``cube`` (rows, columns, channels) or (pixels, channels).

        ``weights`` (membership per pixel) is used when the options ask for membership weighting.
        ``total`` is the cube's total spectrum, if the caller has it already. ``frames`` and
        ``seconds`` (sweeps and acquisition time so far) turn the time to the target sigma into
        sweeps and seconds.
        """
        o = self.options
        factors = require_kfactors(setup.xray_lines, setup.kfactors)
        if len(setup.xray_lines) < 2:
            raise ValueError(f"Cliff-Lorimer needs at least two X-ray lines, got {list(setup.xray_lines)}; "
                             "name more elements")
        use = weights if o.weighting == "membership" else None
        model = None
        if o.intensities == "model":
            if total is None:
                total = np.asarray(cube).reshape(-1, cube.shape[-1]).sum(axis=0, dtype=np.float64)
            model = self.model(setup, total)
        rng = np.random.default_rng(random_state)
        kw = dict(weights=use, replicas=o.replicas, bootstrap=o.bootstrap, blocks=o.blocks,
                  channels=model.channels if model else slice(None), random_state=rng)
        lab = np.asarray(labels)
        pixels = np.bincount(lab[lab >= 0].ravel(), minlength=n_clusters)[:n_clusters]
        chosen = cores(lab, n_clusters, use) if o.cluster_pixels == "core" else None
        samples = cluster_samples(cube, lab if chosen is None else chosen.measured, n_clusters, **kw)
        reference = None if chosen is None else cluster_samples(cube, chosen.reference, n_clusters, **kw)
        return self._quantify(samples, setup, factors, model, pixels, chosen, reference, frames, seconds)

    def _intensities(self, samples: ClusterSamples, setup: Setup, model: LineModel | None):
        """(line intensities of every sample, background windows or None)."""
        if model is not None:
            return model.intensities(samples.stack), None
        windows, intensities = window_intensities(samples.stack, list(setup.xray_lines), setup.offset_kev,
                                                  setup.scale_kev, setup.geometry, self.options.windows)
        return intensities, windows

    def _fractions(self, intensities: np.ndarray, setup: Setup, factors: Sequence[float], detected: np.ndarray):
        """(wt fractions, at fractions, entropy) of every sample, lines not detected in a cluster left out."""
        o = self.options
        lines = list(setup.xray_lines)
        kept = np.where(detected[:, None, :], intensities, 0.0)
        wt = weight_fractions(kept, lines, factors, setup.geometry, o.thickness_nm)
        at = _atomic(wt, list(setup.elements))
        species = sublattice(list(setup.elements), o.sublattice, o.sublattice_exclude)
        return wt, at, configurational_entropy(at, list(setup.elements), species)

    def _quantify(self, samples: ClusterSamples, setup: Setup, factors: list[float], model: LineModel | None,
                  pixels: np.ndarray, chosen: Cores | None, reference: ClusterSamples | None, frames: int,
                  seconds: float | None) -> Quantification:
        o = self.options
        lines = list(setup.xray_lines)
        elements = list(setup.elements)
        intensities, windows = self._intensities(samples, setup, model)
        if model is not None:
            fit = {"elements": list(model.key.elements), "order": o.background_order,
                   "range": "{:.2f}..{:.2f} keV".format(*model.key.fit_range_kev),
                   "resolution_ev": model.resolution_ev, "offset_kev": model.offset_kev,
                   "calibration_rejected": self.calibration_.get("rejected", []),
                   **marked_lines(lines, [e for e in model.key.elements if e not in elements],
                                  *model.key.fit_range_kev)}
        else:
            fit = {"background_windows_kev": windows.tolist()}
        if setup.axis is not None:
            fit.update(setup.axis.published())
        intensity = estimate(intensities, samples)
        alternatives = []
        if model is not None:
            # Counting noise alone does not explain a fit that misses a line: scale it by the line's Birge ratio.
            birge = np.sqrt(np.clip(model.reduced_chi2(samples.stack[:, 0]), 1.0, None))
            intensity = intensity.with_misfit(birge)
            fit["reduced_chi2"] = np.round(birge ** 2, 3).tolist()
            # A background error under a line goes into the line's area, unseen in the residual: the change
            # with one polynomial order less or more measures it.
            alternatives = [variant.intensities(samples.stack[:, 0]) for variant in self.variants_]
            if alternatives:
                intensity = intensity.with_systematic(np.max([np.abs(a - intensity.value) for a in alternatives],
                                                             axis=0))
        detected, limit = detection(intensity, lines, factors, setup.geometry, elements, o.detection_sigma,
                                    o.thickness_nm)
        wt, at, entropy = self._fractions(intensities, setup, factors, detected)
        atomic, weight = estimate(100 * at, samples), estimate(100 * wt, samples)
        entropy_estimate = estimate(entropy, samples)
        if model is not None:
            atomic, weight = atomic.with_misfit(birge), weight.with_misfit(birge)
            entropy_estimate = entropy_estimate.with_misfit(birge)
        if alternatives:
            changes = [self._fractions(a[:, None, :], setup, factors, detected) for a in alternatives]
            atomic = atomic.with_systematic(np.max([np.abs(100 * c[1][:, 0] - atomic.value) for c in changes], axis=0))
            weight = weight.with_systematic(np.max([np.abs(100 * c[0][:, 0] - weight.value) for c in changes], axis=0))
            entropy_estimate = entropy_estimate.with_systematic(
                np.max([np.abs(c[2][:, 0] - entropy_estimate.value) for c in changes], axis=0))
        if reference is not None:
            ref_wt, ref_at, ref_entropy = self._fractions(self._intensities(reference, setup, model)[0], setup,
                                                          factors, detected)
            atomic = atomic.with_bias(estimate(100 * ref_at, reference))
            weight = weight.with_bias(estimate(100 * ref_wt, reference))
            entropy_estimate = entropy_estimate.with_bias(estimate(ref_entropy, reference))
        # An element not detected may still be there: the change of the detected ones had its line been
        # kept, as measured (at least 0), goes into their bias part (Pb 100 +- 0 beside S n.d. < 54 was no
        # answer for a galena grain whose S Ka the fit could not tell from Pb Ma).
        kept_wt, kept_at, _ = self._fractions(np.clip(intensities, 0.0, None), setup, factors,
                                              np.ones_like(detected, dtype=bool))
        atomic = atomic.with_systematic(np.where(detected, np.abs(100 * kept_at[:, 0] - atomic.value), 0.0))
        weight = weight.with_systematic(np.where(detected, np.abs(100 * kept_wt[:, 0] - weight.value), 0.0))
        return Quantification(
            xray_lines=tuple(lines), elements=tuple(elements), kfactors=dict(zip(lines, factors)),
            kfactor_source=setup.kfactor_source, kfactors_theoretical=setup.kfactors_theoretical,
            atomic=atomic, weight=weight, intensity=intensity, entropy=entropy_estimate,
            entropy_species=tuple(sublattice(elements, o.sublattice, o.sublattice_exclude)), pixels=pixels,
            weighting=o.weighting, intensity_method=o.intensities, method=self.describe(model, fit),
            elements_source=setup.elements_source, replicas=o.replicas, bootstrap=o.bootstrap,
            thickness_nm=o.thickness_nm, fit=fit, core_pixels=samples.pixels,
            pixel_level=tuple(chosen.level) if chosen is not None else ("all",) * len(pixels),
            detected=detected, detection_limit=limit,
            time_to_target=time_to_target(atomic, detected, elements, o.target_sigma, frames, seconds),
            target_sigma=o.target_sigma)

    def describe(self, model: LineModel | None, fit: dict) -> str:
        """The published ``method``: intensities, Cliff-Lorimer, absorption, uncertainty and weighting."""
        o = self.options
        text = describe_intensities("model" if model is not None else "windows", o.windows, fit)
        text += ("; Cliff-Lorimer " + (f"with exspy's absorption correction for a {o.thickness_nm:g} nm film "
                                        "(EDSTEMSpectrum.quantification, method='CL')" if o.thickness_nm is not None
                                        else "(exspy's C_i = k_i I_i / sum k_j I_j, no absorption correction)")
                 + ", wt% to at% with exspy.material.weight_to_atomic")
        text += (f"; 1-sigma combines counting statistics ({o.replicas} Poisson replicas of each cluster "
                 "spectrum through the fit, scaled by the square root of the fit's reduced chi-square under the "
                 f"lines when above 1), the spread inside the cluster ({o.bootstrap} bootstrap "
                 "resamplings of its pixels, beyond what counting explains)")
        if o.cluster_pixels == "core":
            text += (f" and the bias left by boundary pixels ({BIAS_FRACTION:g} x the change from the next wider "
                     "pixels, beyond noise); each cluster measured on its core (pixels whose 3x3 neighbourhood is "
                     "in the cluster), else its interior, else all its pixels")
        text += (f"; a line below {o.detection_sigma:g} counting sigma of its intensity is not detected and left "
                 "out of the cluster's Cliff-Lorimer sum")
        weighting = ("pixels weighted by their membership (GMM posterior or HDBSCAN membership strength)"
                     if o.weighting == "membership" else "hard cluster masks")
        return text + f"; cluster spectra from {weighting}."


def quantify_spectra(spectra: np.ndarray, setup: Setup, options: QuantifyOptions = QuantifyOptions(),
                     pixels: Sequence[int] | None = None, random_state=None) -> Quantification:
    """Quantify already-summed cluster spectra (n_clusters, channels): counting uncertainty only.

    Each spectrum is one "pixel", so there is nothing to bootstrap over.
    """
    spectra = np.atleast_2d(np.asarray(spectra, dtype=np.float64))
    if spectra.ndim != 2 or not spectra.shape[0]:
        raise ValueError(f"spectra must be (n_clusters, channels) with at least one cluster, got {spectra.shape}")
    quantifier = ClusterQuantifier(replace(options, bootstrap=0, weighting="hard"))
    q = quantifier(spectra, np.arange(len(spectra)), len(spectra), setup, random_state=random_state)
    if pixels is not None:
        q = replace(q, pixels=np.asarray(pixels, dtype=int))
    return q

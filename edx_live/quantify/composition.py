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
from edx_protocol import ClusterComposition, ElementResult

from .cliff_lorimer import Detector, Windows, describe_intensities, weight_fractions, window_intensities
from .entropy import ANIONS, configurational_entropy, sublattice
from .kfactors import USER_KFACTORS, require_kfactors
from .lines import highest_line_kev
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
        exspy ``calibrate_energy_axis`` steps run on the total spectrum ("resolution", "offset").
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


@dataclass(frozen=True)
class Setup:
    """What an acquisition fixes: energy axis, detector, lines, k-factors and where they came from."""

    offset_kev: float
    scale_kev: float
    channels: int
    detector: Detector
    xray_lines: tuple[str, ...]
    kfactors: dict[str, float]
    kfactor_source: str = USER_KFACTORS
    kfactors_theoretical: bool = False
    fit_only: tuple[str, ...] = ()
    elements_source: str = "acquisition start"

    @property
    def elements(self) -> tuple[str, ...]:
        return tuple(line.partition("_")[0] for line in self.xray_lines)


@dataclass(frozen=True)
class Estimate:
    """A quantity measured on every cluster: value and its 1-sigma parts, shape (n_clusters, ...)."""

    value: np.ndarray
    sigma: np.ndarray
    sigma_counting: np.ndarray
    sigma_spread: np.ndarray


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
    """Compositions of every cluster; per-line arrays are (n_clusters, n_lines) in ``xray_lines`` order."""

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
            entropy_r=_or_none(self.entropy.value[i]), entropy_r_sigma=_or_none(self.entropy.sigma[i]))
            for i in range(len(self.pixels))]

    def _element(self, i: int, j: int) -> ElementResult:
        a, w, n = self.atomic, self.weight, self.intensity
        return ElementResult(atomic_percent=_or_none(a.value[i, j]), atomic_percent_sigma=_or_none(a.sigma[i, j]),
                             atomic_percent_sigma_counting=_or_none(a.sigma_counting[i, j]),
                             atomic_percent_sigma_spread=_or_none(a.sigma_spread[i, j]),
                             weight_percent=_or_none(w.value[i, j]), weight_percent_sigma=_or_none(w.sigma[i, j]),
                             intensity=_or_none(n.value[i, j]), intensity_sigma=_or_none(n.sigma_counting[i, j]))


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
    top = highest_line_kev(setup.elements, min(end, setup.detector.beam_energy_kev))
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
    calibrated_counts_ : float
        Total counts at the last calibration of the model.
    """

    def __init__(self, options: QuantifyOptions = QuantifyOptions()):
        self.options = options
        self.model_: LineModel | None = None
        self.calibrated_counts_ = 0.0
        self.calibration_: dict = {}

    def model(self, setup: Setup, total: np.ndarray) -> LineModel:
        """The model for ``setup``: the previous one when the setup is unchanged, recalibrated as counts grow."""
        o = self.options
        key = ModelKey(setup.offset_kev, setup.scale_kev, setup.channels, setup.detector.beam_energy_kev,
                       tuple(sorted(set(setup.elements + setup.fit_only))), setup.xray_lines, fit_range(setup, o),
                       o.background_order, setup.detector.elevation_deg, setup.detector.azimuth_deg)
        if self.model_ is None or self.model_.key != key:
            self.model_ = LineModel(key, setup.detector.resolution_ev or 130.0)
            self.calibrated_counts_ = 0.0
            self.calibration_ = {}
        counts = float(np.sum(total))
        if o.calibrate and counts >= o.recalibrate_growth * max(self.calibrated_counts_, 1.0):
            self.calibration_ = self.model_.calibrate(total, o.calibrate)
            self.calibrated_counts_ = counts
        return self.model_

    def __call__(self, cube: np.ndarray, labels: np.ndarray, n_clusters: int, setup: Setup,
                 weights: np.ndarray | None = None, total: np.ndarray | None = None,
                 random_state=None) -> Quantification:
        """Quantify every cluster of ``labels`` over ``cube`` (rows, columns, channels) or (pixels, channels).

        ``weights`` (membership per pixel) is used when the options ask for membership weighting.
        ``total`` is the cube's total spectrum, if the caller has it already.
        """
        o = self.options
        require_kfactors(setup.xray_lines, setup.kfactors)
        if len(setup.xray_lines) < 2:
            raise ValueError(f"Cliff-Lorimer needs at least two X-ray lines, got {list(setup.xray_lines)}; "
                             "name more elements")
        use = weights if o.weighting == "membership" else None
        model = None
        if o.intensities == "model":
            if total is None:
                total = np.asarray(cube).reshape(-1, cube.shape[-1]).sum(axis=0, dtype=np.float64)
            model = self.model(setup, total)
        samples = cluster_samples(cube, labels, n_clusters, weights=use, replicas=o.replicas, bootstrap=o.bootstrap,
                                  blocks=o.blocks, channels=model.channels if model else slice(None),
                                  random_state=random_state)
        return self._quantify(samples, setup, model)

    def _quantify(self, samples: ClusterSamples, setup: Setup, model: LineModel | None) -> Quantification:
        o = self.options
        lines = list(setup.xray_lines)
        if model is not None:
            intensities = model.intensities(samples.stack)
            fit = {"elements": list(model.key.elements), "order": o.background_order,
                   "range": "{:.2f}..{:.2f} keV".format(*model.key.fit_range_kev),
                   "resolution_ev": model.resolution_ev, "offset_kev": model.offset_kev,
                   "calibration_rejected": self.calibration_.get("rejected", [])}
        else:
            bw, intensities = window_intensities(samples.stack, lines, setup.offset_kev, setup.scale_kev,
                                                 setup.detector, o.windows)
            fit = {"background_windows_kev": bw.tolist()}
        factors = require_kfactors(lines, setup.kfactors)
        wt = weight_fractions(intensities, lines, factors, setup.detector, o.thickness_nm)
        from exspy.material import weight_to_atomic

        elements = list(setup.elements)
        with np.errstate(invalid="ignore", divide="ignore"):
            # exspy's conversion returns percent, normalised to 100
            at = np.moveaxis(np.asarray(weight_to_atomic(np.moveaxis(wt, -1, 0), elements)), 0, -1) / 100
        species = sublattice(elements, o.sublattice, o.sublattice_exclude)
        entropy = configurational_entropy(at, elements, species)
        return Quantification(
            xray_lines=tuple(lines), elements=tuple(elements), kfactors=dict(zip(lines, factors)),
            kfactor_source=setup.kfactor_source, kfactors_theoretical=setup.kfactors_theoretical,
            atomic=estimate(100 * at, samples), weight=estimate(100 * wt, samples),
            intensity=estimate(intensities, samples), entropy=estimate(entropy, samples),
            entropy_species=tuple(species), pixels=samples.pixels, weighting=o.weighting, intensity_method=o.intensities,
            method=self.describe(model, fit), elements_source=setup.elements_source, replicas=o.replicas,
            bootstrap=o.bootstrap, thickness_nm=o.thickness_nm, fit=fit)

    def describe(self, model: LineModel | None, fit: dict) -> str:
        """The published ``method``: intensities, Cliff-Lorimer, absorption, uncertainty and weighting."""
        o = self.options
        text = describe_intensities("model" if model is not None else "windows", o.windows, fit)
        text += ("; Cliff-Lorimer " + (f"with exspy's absorption correction for a {o.thickness_nm:g} nm film "
                                        "(EDSTEMSpectrum.quantification, method='CL')" if o.thickness_nm is not None
                                        else "(exspy's C_i = k_i I_i / sum k_j I_j, no absorption correction)")
                 + ", wt% to at% with exspy.material.weight_to_atomic")
        text += (f"; 1-sigma combines counting statistics ({o.replicas} Poisson replicas of each cluster "
                 f"spectrum through the fit) and the spread inside the cluster ({o.bootstrap} bootstrap "
                 "resamplings of its pixels, beyond what counting explains)")
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

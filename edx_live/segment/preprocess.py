"""Preprocessing shared by both workflows: energy window, energy rebin, empty channels, scaling.

Each binned pixel's spectrum is one sample: ``X`` has shape (n_samples, n_channels)
and holds counts. :func:`prepare` turns it into the matrix a workflow fits.

Scalings
--------
``"robust"``
    scikit-learn's RobustScaler (median, interquartile range per channel): the
    study's choice, kept as the default of the PCA + GMM workflow, where it works.
``"poisson"``
    Poisson-noise normalisation (Keenan & Kotula, Surf. Interface Anal. 36, 2004;
    HyperSpy's ``decomposition(normalize_poissonian_noise=True)``): divide each
    count by ``sqrt(pixel total / mean pixel total * channel mean)``, so that the
    Poisson noise has unit variance in every pixel and channel. Default of the
    UMAP + HDBSCAN workflow, because per-channel standardisation fails there:
    a channel with a few counts per pixel has an interquartile range of 0, 1 or
    a fraction of a count, so RobustScaler turns single counts into outliers
    (on the FePt data one 13.8 keV channel with IQR 0.25 made a cluster of its
    own), and it gives the hundreds of noise-only channels the same weight as
    the few element lines, so the nearest-neighbour graph UMAP builds is
    dominated by noise. Poisson scaling gives every channel unit noise, so a
    channel weighs by its signal-to-noise.
``"none"``
    Counts as they are (after the optional per-pixel normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SCALINGS = ("robust", "poisson", "none")


@dataclass(frozen=True)
class Prepared:
    """The matrix a workflow fits, and what was done to get it.

    Attributes
    ----------
    data : numpy.ndarray of float64, shape (n_samples, n_features)
    channels : numpy.ndarray of int
        For each feature, the first original channel it sums.
    info : dict
        JSON-friendly record of the steps (for ``choices_``).
    empty : numpy.ndarray of float, shape (n_features,)
        What a pixel with no counts becomes (zeros except after robust scaling).
    """

    data: np.ndarray
    channels: np.ndarray
    info: dict = field(default_factory=dict)
    empty: np.ndarray | None = None


def energy_window(n_channels: int, offset_kev: float | None, scale_kev: float | None,
                  energy_min_kev: float | None, energy_max_kev: float | None) -> slice:
    """Channels whose centre lies in ``[energy_min_kev, energy_max_kev)``.

    Without a calibration (``offset_kev`` or ``scale_kev`` None) all channels are kept:
    the estimators see bare arrays, and :func:`edx_live.segment.segment` passes the
    calibration when it knows it.
    """
    if offset_kev is None or scale_kev is None or scale_kev <= 0:
        return slice(0, n_channels)
    centres = offset_kev + scale_kev * np.arange(n_channels)
    keep = np.ones(n_channels, dtype=bool)
    if energy_min_kev is not None:
        keep &= centres >= energy_min_kev
    if energy_max_kev is not None:
        keep &= centres < energy_max_kev
    idx = np.flatnonzero(keep)
    return slice(int(idx[0]), int(idx[-1]) + 1) if idx.size else slice(0, 0)


def rebin_channels(X: np.ndarray, factor: int) -> np.ndarray:
    """Sum ``factor`` adjacent channels; a last partial group is dropped."""
    if factor <= 1:
        return X
    n = X.shape[1] // factor * factor
    return X[:, :n].reshape(X.shape[0], -1, factor).sum(axis=2)


def normalise_pixels(X: np.ndarray) -> np.ndarray:
    """Divide each spectrum by its total, times the mean total (empty pixels stay 0)."""
    totals = X.sum(axis=1, keepdims=True)
    mean_total = totals.mean() if totals.size else 0.0
    return np.divide(X * mean_total, totals, out=np.zeros_like(X), where=totals > 0)


def poisson_scale(X: np.ndarray, max_pixel_gain: float | None = None) -> np.ndarray:
    """Keenan-Kotula Poisson normalisation; empty pixels and channels stay 0.

    Scales ``X`` in place (it must be a float array) and returns it. Each pixel is
    multiplied by ``sqrt(mean pixel total / its total)``, at most by ``max_pixel_gain``
    (None: no limit, as Keenan-Kotula and HyperSpy).

    Why a limit: the pixel factor gives a pixel's noise the size of the average
    pixel's only if the pixel has the average spectrum shape. In a channel where
    a phase emits most of its counts, its noise after scaling is the inverse of
    its share of all counts there; for a dim phase (resin, vacuum, a thin film: a
    few counts per pixel) that is tens of times the noise of the bright phases,
    and a mixture with one noise model for every phase, or the neighbour graph of
    UMAP, then cuts the dim region along its noise (on a synthetic resin with
    grains, two or three clusters of the same resin). A limit of 2 (the workflows'
    default) scales every pixel with at least a quarter of the mean counts as
    Keenan-Kotula do, and amplifies dimmer ones (resin, vacuum, a thin edge) no
    further, which kept the resin one cluster and left the FePt data's
    segmentation as it was.
    """
    pixel = X.sum(axis=1)
    mean = pixel.mean() if pixel.size else 0.0
    channel = X.mean(axis=0)
    with np.errstate(divide="ignore"):
        row = np.where(pixel > 0, 1.0 / np.sqrt(pixel / mean if mean > 0 else pixel), 0.0)
        column = np.where(channel > 0, 1.0 / np.sqrt(channel), 0.0)
    if max_pixel_gain is not None:
        row = np.minimum(row, float(max_pixel_gain))
    X *= row[:, None]
    X *= column[None, :]
    return X


def robust_scale(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's RobustScaler (median and interquartile range per channel).

    Returns the scaled data and where a pixel with no counts lands.
    """
    from sklearn.preprocessing import RobustScaler

    scaler = RobustScaler().fit(X)
    return scaler.transform(X), scaler.transform(np.zeros((1, X.shape[1])))[0]


def prepare(X, *, energy_offset_kev: float | None = None, energy_scale_kev: float | None = None,
            energy_min_kev: float | None = 0.2, energy_max_kev: float | None = None, energy_rebin: int = 1,
            min_channel_counts: float = 1.0, normalize: bool = False, scaling: str = "robust",
            max_pixel_gain: float | None = None) -> Prepared:
    """Select, rebin and scale the channels of counts ``X`` (n_samples, n_channels).

    Parameters
    ----------
    X : array-like, shape (n_samples, n_channels)
        Counts, one binned pixel per row.
    energy_offset_kev, energy_scale_kev : float, optional
        Calibration of ``X``'s channels; without it no energy window is applied.
    energy_min_kev, energy_max_kev : float, optional
        Energy window. The default lower edge, 0.2 keV, drops the detector's
        zero-energy (noise) peak, which holds no chemistry and, in Velox event
        streams, most of the events.
    energy_rebin : int
        Adjacent channels summed into one feature.
    min_channel_counts : float
        Features (after rebinning) with fewer counts than this over all pixels are
        dropped: they have no signal, and Poisson scaling cannot weigh them.
    normalize : bool
        Divide each pixel's spectrum by its total counts first (composition instead
        of amount; off by default: the Fe-rich shell differs from the support mainly
        in how much Fe there is).
    scaling : {"robust", "poisson", "none"}
    max_pixel_gain : float, optional
        Poisson scaling: the largest factor a pixel is multiplied by (see :func:`poisson_scale`).

    Returns
    -------
    Prepared
    """
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, not {scaling!r}")
    X = np.asarray(X)
    window = energy_window(X.shape[1], energy_offset_kev, energy_scale_kev, energy_min_kev, energy_max_kev)
    rebin = max(1, int(energy_rebin))
    # Window and rebin before converting: counts stay integers (exact sums) and the
    # float matrix is only as large as what is fitted.
    data = rebin_channels(X[:, window], rebin).astype(np.float64)
    first = window.start + rebin * np.arange(data.shape[1])
    keep = data.sum(axis=0) >= max(min_channel_counts, np.finfo(np.float64).tiny)
    data, first = data[:, keep], first[keep]
    if normalize:
        data = normalise_pixels(data)
    empty = np.zeros(data.shape[1])
    if data.shape[1] and scaling == "robust":
        data, empty = robust_scale(data)
    elif data.shape[1] and scaling == "poisson":
        data = poisson_scale(data, max_pixel_gain)
    info = {"scaling": scaling, "normalize": int(bool(normalize)), "energy_rebin": rebin,
            "channel_first": int(window.start), "channel_stop": int(window.stop), "features": int(data.shape[1])}
    return Prepared(data, first.astype(np.int64), info, empty)


class PreprocessMixin:
    """Gives an estimator ``_prepare(X)`` from its own preprocessing parameters."""

    def _prepare(self, X) -> Prepared:
        return prepare(X, energy_offset_kev=self.energy_offset_kev, energy_scale_kev=self.energy_scale_kev,
                       energy_min_kev=self.energy_min_kev, energy_max_kev=self.energy_max_kev,
                       energy_rebin=self.energy_rebin, min_channel_counts=self.min_channel_counts,
                       normalize=self.normalize, scaling=self.scaling, max_pixel_gain=self.max_pixel_gain)

    def _feature_stats(self, total, n_pixels: int, n_channels: int, sample=None) -> "FeatureStats":
        return feature_stats(total, n_pixels, n_channels, sample=sample, energy_offset_kev=self.energy_offset_kev,
                             energy_scale_kev=self.energy_scale_kev, energy_min_kev=self.energy_min_kev,
                             energy_max_kev=self.energy_max_kev, energy_rebin=self.energy_rebin,
                             min_channel_counts=self.min_channel_counts, normalize=self.normalize,
                             scaling=self.scaling, max_pixel_gain=self.max_pixel_gain)


@dataclass(frozen=True)
class FeatureStats:
    """Fixed preprocessing for data seen a chunk at a time: what :func:`prepare` works out from all pixels.

    Made by :func:`feature_stats` from the total spectrum (and, for the scalings that need
    per-channel order statistics, a sample of pixels). :meth:`reduce` then :meth:`scale`
    turn any chunk of pixels into the rows :func:`prepare` would have given them.

    Attributes
    ----------
    window : slice
        Detector channels in the energy window.
    rebin : int
    keep : numpy.ndarray of bool, shape (n_reduced,)
        Reduced channels kept (enough counts over all pixels).
    channels : numpy.ndarray of int
        For each feature, the first original channel it sums.
    info : dict
    pixel_mean : float
        Mean counts of a pixel over the kept features (Poisson scaling, normalisation).
    column : numpy.ndarray of float, shape (n_features,) or None
        Poisson scaling: each feature's factor.
    center, scale : numpy.ndarray or None
        Robust scaling: the median and interquartile range of each feature (from a sample).
    normalize : bool
    scaling : str
    max_pixel_gain : float or None
    """

    window: slice
    rebin: int
    keep: np.ndarray
    channels: np.ndarray
    info: dict
    pixel_mean: float
    column: np.ndarray | None = None
    center: np.ndarray | None = None
    scale: np.ndarray | None = None
    normalize: bool = False
    scaling: str = "none"
    max_pixel_gain: float | None = None

    def reduce(self, X) -> np.ndarray:
        """Window and rebin counts (n, channels): integer counts (n, n_reduced), before ``keep``."""
        return rebin_channels(np.asarray(X)[:, self.window], self.rebin)

    def scale_reduced(self, R) -> np.ndarray:
        """Reduced counts to the matrix a workflow fits or assigns (n, n_features) float64."""
        data = np.asarray(R)[:, self.keep].astype(np.float64)
        if self.normalize:
            totals = data.sum(axis=1, keepdims=True)
            data = np.divide(data * self.pixel_mean, totals, out=np.zeros_like(data), where=totals > 0)
        if not data.shape[1]:
            return data
        if self.scaling == "robust":
            return (data - self.center) / self.scale
        if self.scaling == "poisson":
            pixel = data.sum(axis=1)
            with np.errstate(divide="ignore"):
                mean = self.pixel_mean
                row = np.where(pixel > 0, 1.0 / np.sqrt(pixel / mean if mean > 0 else pixel), 0.0)
            if self.max_pixel_gain is not None:
                row = np.minimum(row, float(self.max_pixel_gain))
            data *= row[:, None]
            data *= self.column[None, :]
        return data

    def transform(self, X) -> np.ndarray:
        """Counts (n, channels) to the matrix a workflow assigns."""
        return self.scale_reduced(self.reduce(X))

    @property
    def empty(self) -> np.ndarray:
        """What a pixel with no counts becomes."""
        return self.scale_reduced(np.zeros((1, self.keep.size)))[0]


def feature_stats(total, n_pixels: int, n_channels: int, *, sample=None, energy_offset_kev=None,
                  energy_scale_kev=None, energy_min_kev=0.2, energy_max_kev=None, energy_rebin=1,
                  min_channel_counts=1.0, normalize=False, scaling="robust", max_pixel_gain=None) -> FeatureStats:
    """The preprocessing :func:`prepare` would apply to all pixels, from their total spectrum.

    Parameters
    ----------
    total : array-like, shape (n_channels,)
        Counts of every pixel summed.
    n_pixels : int
    n_channels : int
    sample : array-like, shape (n_sample, n_reduced), optional
        Reduced counts (:meth:`FeatureStats.reduce`) of a sample of pixels. Needed only for
        ``scaling="robust"`` (median and interquartile range per feature) and for Poisson
        scaling of normalised pixels (channel means after normalisation); both are then
        estimated on the sample. Everything else is exact.
    Other parameters : as :func:`prepare`.
    """
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, not {scaling!r}")
    window = energy_window(n_channels, energy_offset_kev, energy_scale_kev, energy_min_kev, energy_max_kev)
    rebin = max(1, int(energy_rebin))
    reduced = rebin_channels(np.asarray(total, dtype=np.float64)[None, window], rebin)[0]
    first = window.start + rebin * np.arange(reduced.size)
    keep = reduced >= max(min_channel_counts, np.finfo(np.float64).tiny)
    n = max(int(n_pixels), 1)
    pixel_mean = float(reduced[keep].sum() / n)
    info = {"scaling": scaling, "normalize": int(bool(normalize)), "energy_rebin": rebin,
            "channel_first": int(window.start), "channel_stop": int(window.stop), "features": int(keep.sum())}
    stats = FeatureStats(window, rebin, keep, first[keep].astype(np.int64), info, pixel_mean,
                         normalize=bool(normalize), max_pixel_gain=max_pixel_gain)
    needs_sample = scaling == "robust" or (scaling == "poisson" and normalize)
    if needs_sample and sample is None:
        raise ValueError(f"scaling={scaling!r} with normalize={normalize} needs a sample of pixels")
    if scaling == "poisson":
        channel = (stats.scale_reduced(sample).mean(axis=0) if normalize else reduced[keep] / n)
        with np.errstate(divide="ignore"):
            column = np.where(channel > 0, 1.0 / np.sqrt(np.where(channel > 0, channel, 1.0)), 0.0)
        return FeatureStats(**{**stats.__dict__, "scaling": "poisson", "column": column})
    if scaling == "robust":
        from sklearn.preprocessing import RobustScaler

        scaler = RobustScaler().fit(stats.scale_reduced(sample))
        return FeatureStats(**{**stats.__dict__, "scaling": "robust", "center": scaler.center_,
                               "scale": scaler.scale_})
    return stats

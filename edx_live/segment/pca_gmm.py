"""Workflow 1: PCA to the scree change point, then a Gaussian mixture with an automatic cluster count."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.mixture import GaussianMixture
from sklearn.utils import check_random_state

from .mixing import merged_choices, mixed_components
from .preprocess import PreprocessMixin
from .scree import pca_to_knee

ICL_METHOD = "lowest ICL = BIC + 2 x classification entropy (Biernacki, Celeux & Govaert 2000)"


def _icl(gmm: GaussianMixture, scores: np.ndarray) -> tuple[float, float]:
    """(ICL, BIC) of a fitted mixture; lower is better for both."""
    resp = gmm.predict_proba(scores)
    entropy = -float(np.sum(resp * np.log(np.clip(resp, 1e-300, None))))
    bic = float(gmm.bic(scores))
    return bic + 2.0 * entropy, bic


class PcaGmm(PreprocessMixin, ClusterMixin, BaseEstimator):
    """Segment spectra with PCA then a Gaussian mixture, choosing both sizes from the data.

    Steps:

    1. :func:`~edx_live.segment.preprocess.prepare`: by default 8 detector
       channels summed (about the detector resolution) and Poisson (Keenan-Kotula)
       scaling, so every channel has unit noise; the study's RobustScaler is
       ``scaling="robust"``.
    2. PCA keeping the components up to the knee of the log scree plot
       (:mod:`~edx_live.segment.scree`).
    3. Gaussian mixtures of 1..``max_clusters`` components on the scores of at
       most ``max_fit_samples`` pixels drawn at random; the count with the lowest
       ICL is kept (BIC plus twice the entropy of the soft assignments, which
       charges for overlapping components). Plain BIC rewards any component that
       improves the fit of a non-Gaussian cloud (on the FePt core/shell data it
       sliced the cores into concentric rings).
    4. Components that are mixed pixels or thinner parts of a phase are merged
       away (:mod:`~edx_live.segment.mixing`): ICL alone still spends components
       on boundaries (on the synthetic four-phase acquisition it chose the maximum, 8).
    5. A last mixture with the remaining components, started from them, on all pixels.

    The covariance is shared by all components (``"tied"``) by default. After
    Poisson scaling the noise is about the same in every phase, and with a
    covariance of its own a small cluster grows broad and takes in the mixed
    pixels around it (on the synthetic acquisition with the true cluster count:
    adjusted Rand index 0.80 with full covariances, 0.98 tied).

    Parameters
    ----------
    n_components : int, optional
        PCA components; None chooses the scree knee.
    n_clusters : int, optional
        Mixture components; None chooses by lowest ICL then merges mixes. A given
        count is used as is.
    max_components : int
        Components considered for the scree plot.
    max_clusters : int
        Largest cluster count tried.
    covariance_type : str
        Passed to :class:`sklearn.mixture.GaussianMixture`.
    n_init : int
        Mixture initialisations per candidate (best kept).
    merge_mixed : bool
        Merge components that are mixes of two others (or of one and an empty pixel).
    max_fit_samples : int
        Pixels used to choose the cluster count; all pixels are used for the final mixture.
    random_state : int, RandomState or None
    scaling, energy_rebin, normalize, min_channel_counts, max_pixel_gain : see
        :func:`~edx_live.segment.preprocess.prepare`
    energy_min_kev, energy_max_kev, energy_offset_kev, energy_scale_kev : idem
        The window applies only when the calibration is given.

    Attributes
    ----------
    labels_ : numpy.ndarray of int, shape (n_samples,)
    probabilities_ : numpy.ndarray of float, shape (n_samples,)
        Posterior probability of the assigned cluster.
    n_components_ : int
    n_clusters_ : int
    explained_variance_ratio_ : numpy.ndarray of float
        Of the first ``max_components`` components (the scree plot).
    choices_ : dict
        What was chosen and why, JSON-friendly.
    pca_ : sklearn.decomposition.PCA
    gmm_ : sklearn.mixture.GaussianMixture
    """

    def __init__(self, n_components=None, n_clusters=None, max_components=20, max_clusters=8,
                 covariance_type="tied", n_init=2, merge_mixed=True, max_fit_samples=8192, random_state=None,
                 scaling="poisson", energy_rebin=8, normalize=False, min_channel_counts=1.0, energy_min_kev=0.2,
                 energy_max_kev=None, energy_offset_kev=None, energy_scale_kev=None, max_pixel_gain=2.0):
        self.n_components = n_components
        self.n_clusters = n_clusters
        self.max_components = max_components
        self.max_clusters = max_clusters
        self.covariance_type = covariance_type
        self.n_init = n_init
        self.merge_mixed = merge_mixed
        self.max_fit_samples = max_fit_samples
        self.random_state = random_state
        self.scaling = scaling
        self.energy_rebin = energy_rebin
        self.normalize = normalize
        self.min_channel_counts = min_channel_counts
        self.energy_min_kev = energy_min_kev
        self.energy_max_kev = energy_max_kev
        self.energy_offset_kev = energy_offset_kev
        self.energy_scale_kev = energy_scale_kev
        self.max_pixel_gain = max_pixel_gain

    def fit(self, X, y=None):
        """Fit on counts ``X`` of shape (n_samples, n_channels); returns self."""
        rng = check_random_state(self.random_state)
        prepared = self._prepare(X)
        data = prepared.data
        self.choices_ = dict(prepared.info)
        if data.shape[0] < 2 or data.shape[1] == 0 or not np.any(data.var(axis=0) > 0):
            return self._fit_single(data.shape[0], "no variance: one cluster")
        scores = self._reduce(data, rng)
        empty = self.pca_.transform(prepared.empty[None, :])[0, :scores.shape[1]]
        self._mixture(scores, empty, rng)
        return self

    def fit_sample(self, reduced, stats):
        """Fit on a sample of pixels, with preprocessing fixed from all of them; returns self.

        For scans seen a chunk at a time: ``stats``
        (:func:`~edx_live.segment.preprocess.feature_stats`) comes from the total spectrum of
        every pixel, ``reduced`` holds the sample's counts after ``stats.reduce``. PCA, the
        choice of the cluster count, the merging of mixes and the final mixture all use the
        sample; :meth:`assign` then labels any pixels. ``labels_`` and ``probabilities_`` are
        the sample's.
        """
        rng = check_random_state(self.random_state)
        self.preprocessing_ = stats
        data = stats.scale_reduced(reduced)
        self.choices_ = dict(stats.info)
        if data.shape[0] < 2 or data.shape[1] == 0 or not np.any(data.var(axis=0) > 0):
            self.pca_ = self.gmm_ = None
            return self._fit_single(data.shape[0], "no variance: one cluster")
        scores = self._reduce(data, rng)
        empty = self.pca_.transform(stats.empty[None, :])[0, :scores.shape[1]]
        self._mixture(scores, empty, rng)
        return self

    def assign(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Cluster and posterior of counts ``X`` (n_samples, n_channels) after :meth:`fit_sample`.

        Returns labels (int64, the mixture's component numbers) and the posterior of the
        assigned cluster (float64).
        """
        data = self.preprocessing_.transform(X)
        if getattr(self, "gmm_", None) is None:
            return np.zeros(data.shape[0], dtype=np.int64), np.ones(data.shape[0])
        resp = self.gmm_.predict_proba(self.pca_.transform(data)[:, :self.n_components_])
        return resp.argmax(axis=1).astype(np.int64), resp.max(axis=1)

    def _reduce(self, data: np.ndarray, rng) -> np.ndarray:
        """PCA scores up to the chosen number of components; records the scree."""
        scores, self.pca_, info = pca_to_knee(data, self.max_components, self.n_components, rng)
        self.explained_variance_ratio_ = self.pca_.explained_variance_ratio_
        self.n_components_ = info["kept"]
        self.choices_.update(n_components=info["kept"], n_components_method=info["method"],
                             scree=info["scree"], scree_distance=info["scree_distance"])
        return scores

    def _mixture(self, scores: np.ndarray, empty: np.ndarray, rng) -> None:
        """Choose the count by ICL on a sample, merge mixes, fit the rest on every pixel."""
        n = scores.shape[0]
        if self.n_clusters is None:
            candidates = list(range(1, max(1, min(self.max_clusters, n)) + 1))
        else:
            candidates = [max(1, min(int(self.n_clusters), n))]
        seed = rng.randint(np.iinfo(np.int32).max)
        sample = np.sort(rng.choice(n, self.max_fit_samples, replace=False)) if n > self.max_fit_samples else None
        fit_on = scores if sample is None else scores[sample]
        fits = [GaussianMixture(k, covariance_type=self.covariance_type, n_init=self.n_init,
                                random_state=seed).fit(fit_on) for k in candidates]
        icl, bic = zip(*(_icl(g, fit_on) for g in fits))
        best = int(np.argmin(icl))
        gmm, mixes = fits[best], []
        if self.n_clusters is None and self.merge_mixed and gmm.n_components > 1:
            mixes = mixed_components(gmm.means_, _pooled_covariance(gmm), empty)
        if mixes or sample is not None:
            gmm = _refit(gmm, sorted(set(range(gmm.n_components)) - {m.component for m in mixes}), scores, seed)
        self.gmm_ = gmm
        resp = gmm.predict_proba(scores)
        self.labels_ = resp.argmax(axis=1).astype(np.int64)
        self.probabilities_ = resp.max(axis=1)
        self.n_clusters_ = gmm.n_components
        self.choices_.update(
            n_clusters=self.n_clusters_,
            n_clusters_method=(f"{ICL_METHOD}, then mixed-pixel and thickness components merged"
                               if self.n_clusters is None else "user"),
            cluster_candidates=[float(k) for k in candidates], icl=list(icl), bic=list(bic),
            n_clusters_by_icl=candidates[best], **merged_choices(mixes),
            covariance_type=self.covariance_type,
            fit_samples=int(fit_on.shape[0]))

    def _fit_single(self, n_samples: int, reason: str):
        self.labels_ = np.zeros(n_samples, dtype=np.int64)
        self.probabilities_ = np.ones(n_samples)
        self.n_components_, self.n_clusters_ = 0, 1
        self.explained_variance_ratio_ = np.zeros(0)
        self.choices_.update(n_components=0, n_clusters=1, n_clusters_method=reason)
        return self


def _pooled_covariance(gmm: GaussianMixture) -> np.ndarray:
    """The covariance shared by the components (their weighted mean when each has its own)."""
    cov, d = gmm.covariances_, gmm.means_.shape[1]
    kind = gmm.covariance_type
    if kind == "tied":
        return cov
    if kind == "full":
        return np.tensordot(gmm.weights_, cov, axes=1)
    if kind == "diag":
        return np.diag(gmm.weights_ @ cov)
    return float(gmm.weights_ @ cov) * np.eye(d)


def _refit(gmm: GaussianMixture, keep: list[int], scores: np.ndarray, seed: int) -> GaussianMixture:
    """A mixture of the ``keep`` components of ``gmm``, started from them and fitted on ``scores``."""
    weights = gmm.weights_[keep] / gmm.weights_[keep].sum()
    precisions = gmm.precisions_ if gmm.covariance_type == "tied" else gmm.precisions_[keep]
    return GaussianMixture(len(keep), covariance_type=gmm.covariance_type, weights_init=weights,
                           means_init=gmm.means_[keep], precisions_init=precisions,
                           random_state=seed).fit(scores)

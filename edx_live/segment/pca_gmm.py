"""Workflow 1: PCA to the scree change point, then a Gaussian mixture with an automatic cluster count."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.mixture import GaussianMixture
from sklearn.utils import check_random_state

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

    Steps: :func:`~edx_live.segment.preprocess.prepare` (RobustScaler on counts by
    default, the study's recipe), PCA keeping the components up to the knee of the
    log scree plot (:mod:`~edx_live.segment.scree`), then a full-covariance
    Gaussian mixture on the scores.

    The number of clusters minimises the integrated completed likelihood (ICL,
    BIC plus twice the entropy of the soft assignments) over 1..``max_clusters``.
    Plain BIC rewards any extra component that improves the fit of a non-Gaussian
    cloud: on the FePt core/shell data the projected thickness of each particle
    varies continuously from rim to centre, and BIC chose 4-6 clusters that slice
    the cores into concentric shells. ICL also charges for overlapping components
    (uncertain assignments), so it prefers clusters that are actually separated;
    it chose 3 (core, shell, support) there.

    Parameters
    ----------
    n_components : int, optional
        PCA components; None chooses the scree knee.
    n_clusters : int, optional
        Mixture components; None chooses by lowest ICL.
    max_components : int
        Components considered for the scree plot.
    max_clusters : int
        Largest cluster count tried.
    covariance_type : str
        Passed to :class:`sklearn.mixture.GaussianMixture`.
    n_init : int
        Mixture initialisations per candidate (best kept).
    random_state : int, RandomState or None
    scaling, energy_rebin, normalize, min_channel_counts : see :func:`~edx_live.segment.preprocess.prepare`
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
                 covariance_type="full", n_init=2, random_state=None, scaling="robust", energy_rebin=1,
                 normalize=False, min_channel_counts=1.0, energy_min_kev=0.2, energy_max_kev=None,
                 energy_offset_kev=None, energy_scale_kev=None):
        self.n_components = n_components
        self.n_clusters = n_clusters
        self.max_components = max_components
        self.max_clusters = max_clusters
        self.covariance_type = covariance_type
        self.n_init = n_init
        self.random_state = random_state
        self.scaling = scaling
        self.energy_rebin = energy_rebin
        self.normalize = normalize
        self.min_channel_counts = min_channel_counts
        self.energy_min_kev = energy_min_kev
        self.energy_max_kev = energy_max_kev
        self.energy_offset_kev = energy_offset_kev
        self.energy_scale_kev = energy_scale_kev

    def fit(self, X, y=None):
        """Fit on counts ``X`` of shape (n_samples, n_channels); returns self."""
        rng = check_random_state(self.random_state)
        prepared = self._prepare(X)
        data = prepared.data
        self.choices_ = dict(prepared.info)
        if data.shape[0] < 2 or data.shape[1] == 0 or not np.any(data.var(axis=0) > 0):
            return self._fit_single(data.shape[0], "no variance: one cluster")
        scores = self._reduce(data, rng)
        self._mixture(scores, rng)
        return self

    def _reduce(self, data: np.ndarray, rng) -> np.ndarray:
        """PCA scores up to the chosen number of components; records the scree."""
        scores, self.pca_, info = pca_to_knee(data, self.max_components, self.n_components, rng)
        self.explained_variance_ratio_ = self.pca_.explained_variance_ratio_
        self.n_components_ = info["kept"]
        self.choices_.update(n_components=info["kept"], n_components_method=info["method"],
                             scree=info["scree"], scree_distance=info["scree_distance"])
        return scores

    def _mixture(self, scores: np.ndarray, rng) -> None:
        """Fit every candidate cluster count, keep the lowest ICL."""
        if self.n_clusters is None:
            candidates = list(range(1, max(1, min(self.max_clusters, scores.shape[0])) + 1))
        else:
            candidates = [max(1, min(int(self.n_clusters), scores.shape[0]))]
        seed = rng.randint(np.iinfo(np.int32).max)
        fits = [GaussianMixture(k, covariance_type=self.covariance_type, n_init=self.n_init,
                                random_state=seed).fit(scores) for k in candidates]
        icl, bic = zip(*(_icl(g, scores) for g in fits))
        best = int(np.argmin(icl))
        self.gmm_ = fits[best]
        resp = self.gmm_.predict_proba(scores)
        self.labels_ = resp.argmax(axis=1).astype(np.int64)
        self.probabilities_ = resp.max(axis=1)
        self.n_clusters_ = candidates[best]
        self.choices_.update(
            n_clusters=self.n_clusters_,
            n_clusters_method=ICL_METHOD if self.n_clusters is None else "user",
            cluster_candidates=[float(k) for k in candidates], icl=list(icl), bic=list(bic))

    def _fit_single(self, n_samples: int, reason: str):
        self.labels_ = np.zeros(n_samples, dtype=np.int64)
        self.probabilities_ = np.ones(n_samples)
        self.n_components_, self.n_clusters_ = 0, 1
        self.explained_variance_ratio_ = np.zeros(0)
        self.choices_.update(n_components=0, n_clusters=1, n_clusters_method=reason)
        return self

"""Workflow 2: UMAP to a few dimensions, then HDBSCAN; the cluster count follows from the data.

umap-learn and hdbscan are imported inside the functions that need them: they pull
in numba and take seconds to import, which a command that never refits should not pay.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils import check_random_state

from .mixing import merge_mixed_clusters, merged_choices
from .phases import MIN_CLUSTER_PIXELS, PhaseRule, phase_choices, phase_counts, settle_phases
from .preprocess import PreprocessMixin
from .result import NOISE as NOISE_LABEL
from .refine import assign_noise, gathered, gaussian_boundaries, icl
from .scree import pca_to_knee

#: Default smallest cluster, as a fraction of the (binned) pixels.
MIN_CLUSTER_FRACTION = 0.005
#: ... and never fewer binned pixels than :data:`~edx_live.segment.phases.MIN_CLUSTER_PIXELS`.

#: Where a refit's clusters come from (``choices["layout"]``), by index of the candidate layout.
LAYOUTS = ("this refit's layout", "the previous refit's layout")


def default_min_cluster_size(n_samples: int) -> int:
    """0.5 % of the pixels, at least 20.

    On a 32 x 32 binned map that is 20 pixels: one FePt particle core of the
    core/shell dataset (4-5 binned pixels across) covers about that many.
    """
    return max(MIN_CLUSTER_PIXELS, int(round(MIN_CLUSTER_FRACTION * n_samples)))


def default_min_samples(min_cluster_size: int) -> int:
    """Twice ``min_cluster_size``: HDBSCAN's density scale, in neighbours.

    HDBSCAN's own default (equal to ``min_cluster_size``) follows density
    ripples inside one phase: on the FePt data the projected Pt thickness falls
    from the centre of each core to its rim, and the default split the cores into
    a centre and a rim cluster in every seed tried. Judging density over twice
    the smallest feature keeps such a gradient in one cluster (one core cluster
    in 34 of 36 UMAP seeds) and leaves the pixels between phases, which mix
    both spectra, as noise rather than as clusters of their own.
    """
    return 2 * int(min_cluster_size)


class UmapHdbscan(PreprocessMixin, ClusterMixin, BaseEstimator):
    """Segment spectra with UMAP then HDBSCAN (Euclidean); noise is labelled -1.

    Steps: :func:`~edx_live.segment.preprocess.prepare` (by default 8 detector
    channels summed and Poisson scaling), PCA keeping the components up to the
    scree knee (denoising), UMAP to ``n_components`` dimensions, HDBSCAN.

    Why not UMAP directly on RobustScaler'd counts, as in the study: on the FePt
    core/shell data that clustered Poisson noise. Per-channel scaling gives each of
    ~1000 mostly noise channels the weight of an element line and turns isolated
    counts in sparse channels into outliers, so the neighbour graph follows noise
    (a speckle cluster, shell merged with the support). Summing channels to about
    the detector resolution (8 x 20 eV = 160 eV; Fe Ka/Kb and the Pt M and L lines
    stay apart), Poisson scaling (unit noise per channel) and keeping the signal
    subspace (PCA to the scree knee) let the neighbour graph follow chemistry. UMAP
    works on the PCA scores, which are the rank-k denoised spectra in an
    orthonormal basis: same distances, same graph.

    Live refits hold still: HDBSCAN's choice between a merged and a split cluster
    flips with the layout (from one seed, or one refit, to the next), so the
    unassigned pixels are placed, and the previous refit's clusters (found again
    in the layout it hands on) are kept unless this refit's fit the counts clearly
    better (:mod:`~edx_live.segment.refine`).

    A limit worth knowing: a density method finds a phase only where its pixels
    form a density peak. The Fe-rich shell of the FePt particles, seen in
    projection, grades into the support (partial volume): a plateau, not a peak,
    in every linear projection we looked at. With the defaults it came out as its
    own cluster in 21 of 36 UMAP seeds (random_state=0 is one of them) and merged
    with the support in the others; longer UMAP optimisation (more epochs)
    merges it more often, so the split rests on the embedding, not the density.
    The Gaussian mixture of :class:`~edx_live.segment.PcaGmm` separates core,
    shell and support in every seed; comparing the two is the point of running both.

    Parameters
    ----------
    n_components : int
        Embedding dimensions.
    n_neighbors : int
        UMAP neighbourhood (clamped below the number of samples).
    min_dist : float
        UMAP's minimum distance; 0 packs similar pixels tightly, as clustering wants.
    min_cluster_size : int, optional
        Pixels (binned) the smallest feature of interest covers; None means
        :func:`default_min_cluster_size` (0.5 % of the pixels).
    min_samples : int, optional
        HDBSCAN's density scale (neighbours a core pixel needs); None means
        :func:`default_min_samples` (twice ``min_cluster_size``).
    cluster_selection_method : {"eom", "leaf"}
        HDBSCAN's choice of clusters from its tree.
    pca_components : int, optional
        Components kept before UMAP; None chooses the scree knee; 0 skips PCA.
    max_pca_components : int
        Components considered for the scree plot.
    random_state : int, RandomState or None
        An int or RandomState makes UMAP deterministic (and single-threaded).
    max_fit_samples : int
        Larger scans are embedded and clustered on this many pixels drawn at
        random (the same draw for the same number of pixels, so successive refits
        embed the same pixels); every other pixel is placed by a vote of its
        ``place_neighbors`` nearest fitted pixels in PCA space. Cost then stays
        flat beyond this size.
    place_neighbors : int
        Neighbours voting on a placed pixel's cluster.
    init : numpy.ndarray, optional
        Embedding of the fitted pixels to start UMAP from (the previous refit's
        ``warm_start_["embedding"]``); used when its shape matches, with
        ``warm_epochs`` optimisation epochs instead of UMAP's default.
    warm_epochs : int
    merge_mixed : bool
        Clusters of mixed pixels (boundaries) or thinner parts of a phase are merged
        into the clusters they mix, as in :class:`~edx_live.segment.PcaGmm`
        (:func:`~edx_live.segment.mixing.merge_mixed_clusters`); then clusters that
        are not phases (:func:`~edx_live.segment.phases.settle_phases`) are merged.
    assign_noise : bool
        Give every pixel HDBSCAN leaves unassigned its most likely cluster
        (:func:`~edx_live.segment.refine.assign_noise`); its confidence is that posterior.
    gaussian_boundaries : bool
        After one EM step of a Gaussian mixture seeded by the clusters, move a pixel whose
        posterior for another cluster is at least 0.9 there
        (:func:`~edx_live.segment.refine.gaussian_boundaries`), so that a small phase's mixed
        rim goes to the phase covering most of it.
    gather : float
        The layout handed on in ``warm_start_`` has each cluster drawn in to at most
        this fraction of the layout's spread, so that the next refit finds this
        refit's clusters in it (:func:`~edx_live.segment.refine.gathered`).
    keep_margin : float
        With ``init``, the clusters found in it (the previous refit's) are kept unless
        this refit's layout gives clusters whose ICL is lower by more than this many
        units per pixel.
    scaling, energy_rebin, normalize, min_channel_counts, max_pixel_gain : see
        :func:`~edx_live.segment.preprocess.prepare`
    energy_min_kev, energy_max_kev, energy_offset_kev, energy_scale_kev : idem

    Attributes
    ----------
    labels_ : numpy.ndarray of int, shape (n_samples,)
        0..n_clusters_-1, or -1 for noise.
    probabilities_ : numpy.ndarray of float, shape (n_samples,)
        HDBSCAN membership strength in [0, 1] (0 for noise); for placed pixels,
        the fraction of neighbours that voted for the cluster times their mean strength.
    outlier_scores_ : numpy.ndarray of float, shape (n_samples,)
        HDBSCAN's GLOSH outlier score in [0, 1]; placed pixels get their voters' mean.
    warm_start_ : dict
        ``{"embedding": ...}`` of the fitted pixels, for the next refit's ``init``: the
        layout the clusters came from, each cluster gathered towards its centroid.
    n_clusters_ : int
    n_components_ : int
        PCA components kept before UMAP (0 if skipped).
    embedding_ : numpy.ndarray of float, shape (n_samples, n_components)
    choices_ : dict
    preprocessing_, sample_, scores_ : after :meth:`fit_sample` only
        The fixed preprocessing, the sample's pixel indices and its PCA scores, which :meth:`assign` uses.
    """

    def __init__(self, n_components=4, n_neighbors=15, min_dist=0.0, min_cluster_size=None, min_samples=None,
                 cluster_selection_method="eom", pca_components=None, max_pca_components=20, random_state=None,
                 max_fit_samples=16384, place_neighbors=15, init=None, warm_epochs=60, merge_mixed=True,
                 assign_noise=True, gaussian_boundaries=True, gather=0.05, keep_margin=0.1,
                 scaling="poisson", energy_rebin=8, normalize=False, min_channel_counts=1.0, energy_min_kev=0.2,
                 energy_max_kev=None, energy_offset_kev=None, energy_scale_kev=None, max_pixel_gain=2.0):
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.cluster_selection_method = cluster_selection_method
        self.pca_components = pca_components
        self.max_pca_components = max_pca_components
        self.random_state = random_state
        self.max_fit_samples = max_fit_samples
        self.place_neighbors = place_neighbors
        self.init = init
        self.warm_epochs = warm_epochs
        self.merge_mixed = merge_mixed
        self.assign_noise = assign_noise
        self.gaussian_boundaries = gaussian_boundaries
        self.gather = gather
        self.keep_margin = keep_margin
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
        n = data.shape[0]
        if n <= self.n_components + 2 or data.shape[1] == 0 or not np.any(data.var(axis=0) > 0):
            return self._fit_single(n, "too few pixels or no variance: one cluster")
        data = self._denoise(data, rng)
        phases = (X, PhaseRule(), self.energy_offset_kev, self.energy_scale_kev)
        self._segment(data, prepared.empty, phases, rng)
        return self

    def fit_sample(self, reduced, stats, spectra, rule: PhaseRule | None = None, pixels=None):
        """Fit on a sample of pixels, with preprocessing fixed from all of them; returns self.

        For scans seen a chunk at a time, as :meth:`~edx_live.segment.PcaGmm.fit_sample`:
        ``stats`` (:func:`~edx_live.segment.preprocess.feature_stats`) comes from the total
        spectrum of every pixel, ``reduced`` holds the sample's counts after ``stats.reduce``.
        PCA, UMAP, HDBSCAN, the placing of noise, the boundaries, the merging of mixes and the
        phase rule all use the sample, as :meth:`fit` uses every pixel; :meth:`assign` then
        labels any pixels. ``labels_``, ``probabilities_`` and ``outlier_scores_`` are the sample's.

        Parameters
        ----------
        reduced : array-like of int, shape (n_sample, n_reduced)
        stats : FeatureStats
        spectra : array-like, shape (n_sample, n_bins)
            The sample's counts in the phase rule's bins
            (:func:`~edx_live.segment.phases.binned_spectra`), which ``settle_phases`` judges.
        rule : PhaseRule, optional
            The rule for the sample (its ``min_pixels`` scaled to the sample); None is the default rule.
        pixels : array-like of int, shape (n_sample,), optional
            The sample's pixel indices in the scan, increasing; :meth:`assign` gives these pixels
            their fitted labels. None: the sample is every pixel, in order.
        """
        rng = check_random_state(self.random_state)
        self.preprocessing_ = stats
        data = stats.scale_reduced(reduced)
        self.choices_ = dict(stats.info)
        n = data.shape[0]
        self.sample_ = np.arange(n, dtype=np.int64) if pixels is None else np.asarray(pixels, dtype=np.int64)
        self.pca_, self.scores_, self.neighbors_ = None, None, None
        if n <= self.n_components + 2 or data.shape[1] == 0 or not np.any(data.var(axis=0) > 0):
            return self._fit_single(n, "too few pixels or no variance: one cluster")
        self.scores_ = self._denoise(data, rng)
        self._segment(self.scores_, stats.empty, (spectra, rule or PhaseRule(), None, None), rng)
        return self

    def assign(self, X, pixels=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cluster, strength and outlier score of counts ``X`` (n, n_channels) after :meth:`fit_sample`.

        A pixel of the sample (``pixels`` gives each row's index in the scan) gets its fitted
        values; any other is placed by a vote of its ``place_neighbors`` nearest sample pixels in
        PCA space (:func:`place`, from the sample's final labels). Returns labels (int64, -1 for
        unassigned), strength and outlier scores (float64).
        """
        n = np.shape(X)[0]
        if self.scores_ is None:  # one cluster
            return np.zeros(n, dtype=np.int64), np.ones(n), np.zeros(n)
        labels, strength, outlier = np.empty(n, dtype=np.int64), np.empty(n), np.empty(n)
        fitted = np.zeros(n, dtype=bool)
        if pixels is not None:
            pixels = np.asarray(pixels, dtype=np.int64)
            at = np.minimum(np.searchsorted(self.sample_, pixels), self.sample_.size - 1)
            fitted = self.sample_[at] == pixels
            for out, values in zip((labels, strength, outlier),
                                   (self.labels_, self.probabilities_, self.outlier_scores_)):
                out[fitted] = values[at[fitted]]
        if np.all(fitted):
            return labels, strength, outlier
        data = self.preprocessing_.transform(np.asarray(X)[~fitted])
        if self.pca_ is not None:
            data = self.pca_.transform(data)[:, :self.scores_.shape[1]]
        if self.neighbors_ is None:
            from sklearn.neighbors import NearestNeighbors

            k = max(1, min(int(self.place_neighbors), self.scores_.shape[0]))
            self.neighbors_ = NearestNeighbors(n_neighbors=k).fit(self.scores_)
        _, idx = self.neighbors_.kneighbors(data)
        placed = vote(idx, self.labels_, self.probabilities_, self.outlier_scores_)
        for out, values in zip((labels, strength, outlier), placed):
            out[~fitted] = values
        return labels, strength, outlier

    def _segment(self, data: np.ndarray, empty: np.ndarray, phases: tuple, rng) -> None:
        """Embed (a sample of) the PCA scores ``data``, cluster every pixel; sets the fitted attributes."""
        n = data.shape[0]
        sample = fit_sample(n, self.max_fit_samples)
        fitted = data if sample is None else data[sample]
        embedding = self._embed(fitted, rng)
        previous = [np.asarray(self.init, dtype=np.float64)] if self.choices_["umap_warm_start"] else []
        layouts = [embedding] + previous
        # Which sampled pixels are each placed pixel's nearest, and the counts the phase rule reads,
        # do not depend on the layout: found once.
        near = None if sample is None else nearest_sampled(data, sample, self.place_neighbors)
        counts, rule, offset_kev, scale_kev = phases
        phases = (phase_counts(counts, rule, offset_kev, scale_kev), rule, offset_kev, scale_kev)
        candidates = [self._labelled(layout, data, sample, empty, phases, near) for layout in layouts]
        scores = [icl(data, labels) for labels, *_ in candidates]
        # The previous refit's clusters stay unless this refit's fit the counts clearly better.
        best = int(len(scores) > 1 and scores[0] > scores[1] - self.keep_margin * n)
        labels, strength, outlier, info = candidates[best]
        self.embedding_ = layouts[best]
        fitted_labels = labels if sample is None else labels[sample]
        self.warm_start_ = {"embedding": gathered(self.embedding_, fitted_labels, self.gather)}
        self.n_clusters_ = int(labels.max()) + 1 if labels.size else 0
        self.labels_, self.probabilities_, self.outlier_scores_ = labels, strength, outlier
        self.choices_.update(info, n_clusters=self.n_clusters_, layout=LAYOUTS[best], layout_icl=scores,
                             fit_samples=int(fitted.shape[0]), placed_samples=int(n - fitted.shape[0]),
                             noise_pixels=int(np.count_nonzero(labels < 0)))

    def _labelled(self, embedding: np.ndarray, data: np.ndarray, sample, empty: np.ndarray, phases: tuple,
                  near: np.ndarray | None = None):
        """Every pixel's cluster from one layout: HDBSCAN, placement, noise placed, mixes merged.

        ``empty`` is what a pixel without counts becomes before PCA; ``phases`` is (counts,
        rule, offset_kev, scale_kev) as :func:`~edx_live.segment.phases.settle_phases` takes them.
        Returns labels, strength, outlier scores and what was chosen (for ``choices_``).
        """
        labels, strength, outlier, info = self._cluster(embedding)
        if sample is not None:
            labels, strength, outlier = place(data, sample, labels, strength, outlier, self.place_neighbors, near)
        if self.assign_noise:
            labels, strength, placed = assign_noise(data, labels, strength)
            info["noise_assigned"] = placed
        if self.gaussian_boundaries:
            labels, strength, moved = gaussian_boundaries(data, labels, strength, random_state=self.random_state)
            info["boundary_pixels_moved"] = moved
        if self.merge_mixed:
            empty = empty if self.pca_ is None else self.pca_.transform(empty[None, :])[0]
            labels, strength, mixes = merge_mixed_clusters(data, labels, strength, empty[:data.shape[1]])
            info.update(merged_choices(mixes))
        if labels.size and labels.max() > 0:
            counts, rule, offset_kev, scale_kev = phases
            settled = settle_phases(counts, labels, rule, offset_kev, scale_kev)
            mapping = settled.mapping
            kept = np.unique(mapping[mapping >= 0])
            renumber = np.full(mapping.size, NOISE_LABEL, dtype=np.int64)
            renumber[mapping >= 0] = np.searchsorted(kept, mapping[mapping >= 0])
            labels = np.where(labels >= 0, renumber[np.maximum(labels, 0)], NOISE_LABEL)
            info.update(phase_choices(rule, settled.actions, renumber))  # what it merged, in these labels
        return labels, strength, outlier, info

    def _denoise(self, data: np.ndarray, rng) -> np.ndarray:
        self.pca_ = None
        if self.pca_components == 0:
            self.n_components_ = 0
            self.choices_.update(pca_components=0, pca_method="none")
            return data
        scores, self.pca_, info = pca_to_knee(data, self.max_pca_components, self.pca_components, rng)
        self.n_components_ = info["kept"]
        self.choices_.update(pca_components=info["kept"], pca_method=info["method"], scree=info["scree"],
                             scree_distance=info["scree_distance"])
        return scores

    def _embed(self, data: np.ndarray, rng) -> np.ndarray:
        import umap

        n_neighbors = max(2, min(int(self.n_neighbors), data.shape[0] - 1))
        seeded = self.random_state is not None
        seed = rng.randint(np.iinfo(np.int32).max) if seeded else None
        init = self.init
        warm = init is not None and np.shape(init) == (data.shape[0], self.n_components)
        extra = {"init": np.asarray(init, dtype=np.float64), "n_epochs": int(self.warm_epochs)} if warm else {}
        reducer = umap.UMAP(n_components=self.n_components, n_neighbors=n_neighbors, min_dist=self.min_dist,
                            metric="euclidean", random_state=seed, n_jobs=1 if seeded else -1, **extra)
        self.choices_.update(umap_warm_start=int(warm))
        with warnings.catch_warnings():
            # Small or disconnected inputs make UMAP fall back to a random
            # initialisation with a warning; the result is still usable.
            warnings.simplefilter("ignore", UserWarning)
            embedding = reducer.fit_transform(data)
        self.choices_.update(umap_components=int(self.n_components), n_neighbors=n_neighbors,
                             min_dist=float(self.min_dist))
        return np.asarray(embedding)

    def _cluster(self, embedding: np.ndarray):
        import hdbscan

        n = embedding.shape[0]
        size = default_min_cluster_size(n) if self.min_cluster_size is None else int(self.min_cluster_size)
        size = max(2, min(size, n))
        samples = max(1, min(default_min_samples(size) if self.min_samples is None else int(self.min_samples), n - 1))
        model = hdbscan.HDBSCAN(min_cluster_size=size, min_samples=samples, metric="euclidean",
                                cluster_selection_method=self.cluster_selection_method)
        model.fit(embedding)
        labels = model.labels_.astype(np.int64)
        info = dict(
            hdbscan_clusters=int(labels.max()) + 1 if n else 0,
            min_cluster_size=size,
            min_cluster_size_method=("user" if self.min_cluster_size is not None
                                     else f"{MIN_CLUSTER_FRACTION:.1%} of the pixels, at least {MIN_CLUSTER_PIXELS}"),
            min_samples=samples,
            min_samples_method="user" if self.min_samples is not None else "2 x min_cluster_size",
            cluster_persistence=[float(v) for v in model.cluster_persistence_])
        strength = np.clip(np.nan_to_num(model.probabilities_), 0.0, 1.0)
        outlier = np.clip(np.nan_to_num(np.asarray(model.outlier_scores_, dtype=np.float64)), 0.0, 1.0)
        return labels, strength, outlier, info

    def _fit_single(self, n_samples: int, reason: str):
        self.labels_ = np.zeros(n_samples, dtype=np.int64)
        self.probabilities_ = np.ones(n_samples)
        self.outlier_scores_ = np.zeros(n_samples)
        self.warm_start_ = None
        self.n_clusters_, self.n_components_ = (1 if n_samples else 0), 0
        self.embedding_ = np.zeros((n_samples, self.n_components))
        self.choices_.update(n_clusters=self.n_clusters_, n_clusters_method=reason)
        return self


def fit_sample(n: int, size: int) -> np.ndarray | None:
    """Sorted indices of ``size`` of ``n`` pixels, the same for the same ``n``; None when all fit."""
    if n <= size:
        return None
    return np.sort(np.random.default_rng(n).choice(n, size, replace=False))


def nearest_sampled(data: np.ndarray, sample: np.ndarray, k: int) -> np.ndarray:
    """For each pixel not in ``sample`` (in order), its ``k`` nearest sampled pixels in ``data``: indices into the sample."""
    from sklearn.neighbors import NearestNeighbors

    rest = np.ones(data.shape[0], dtype=bool)
    rest[sample] = False
    k = max(1, min(int(k), sample.size))
    return NearestNeighbors(n_neighbors=k).fit(data[sample]).kneighbors(data[rest])[1]


def place(data: np.ndarray, sample: np.ndarray, labels: np.ndarray, strength: np.ndarray,
          outlier: np.ndarray, k: int, near: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, strengths and outlier scores of every pixel from those of the fitted ``sample``.

    A pixel not in the sample takes the label most of its ``k`` nearest sample
    pixels (in ``data``, the PCA scores) carry, noise included; its strength is
    the fraction that voted so times their mean strength, its outlier score the
    mean of its neighbours'. ``near`` (:func:`nearest_sampled`) saves finding the neighbours again.
    """
    n = data.shape[0]
    rest = np.ones(n, dtype=bool)
    rest[sample] = False
    idx = nearest_sampled(data, sample, k) if near is None else near
    out_labels = np.empty(n, dtype=np.int64)
    out_strength = np.empty(n)
    out_outlier = np.empty(n)
    out_labels[sample], out_strength[sample], out_outlier[sample] = labels, strength, outlier
    out_labels[rest], out_strength[rest], out_outlier[rest] = vote(idx, labels, strength, outlier)
    return out_labels, out_strength, out_outlier


def vote(idx: np.ndarray, labels: np.ndarray, strength: np.ndarray,
         outlier: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label, strength and outlier score of pixels from those of their neighbours ``idx`` (n, k), as :func:`place`."""
    k = idx.shape[1]
    votes = labels[idx] + 1  # noise (-1) votes as 0
    n_labels = int(labels.max()) + 2
    counts = np.zeros((idx.shape[0], n_labels), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(idx.shape[0]), k), votes.ravel()), 1)
    winner = counts.argmax(axis=1)
    agree = votes == winner[:, None]
    mean_strength = (strength[idx] * agree).sum(axis=1) / np.maximum(agree.sum(axis=1), 1)
    return (winner - 1, np.where(winner > 0, counts.max(axis=1) / k * mean_strength, 0.0),
            outlier[idx].mean(axis=1))


def warm_up(random_state: int | None = 0, approximate_neighbors: bool = True) -> float:
    """Compile UMAP's, pynndescent's and HDBSCAN's numba code on a tiny random input.

    The first UMAP fit in a process spends seconds compiling; calling this at
    start-up keeps that delay out of the first live refit.

    Parameters
    ----------
    random_state : int or None
        Warm the path a fit with this kind of ``random_state`` takes: an int uses
        UMAP's serial layout, None its parallel one (they compile separately).

    Returns
    -------
    float
        Seconds spent.
    """
    import hdbscan
    import umap

    t0 = time.perf_counter()
    data = np.random.default_rng(0).normal(size=(64, 8))
    n_jobs = 1 if random_state is not None else -1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for approximate in (False, True)[:1 + bool(approximate_neighbors)]:
            embedding = umap.UMAP(n_components=4, n_neighbors=8, min_dist=0.0, n_epochs=20,
                                  random_state=random_state, n_jobs=n_jobs,
                                  force_approximation_algorithm=approximate).fit_transform(data)
        hdbscan.HDBSCAN(min_cluster_size=5).fit(embedding)
    return time.perf_counter() - t0

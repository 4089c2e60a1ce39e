"""HyperSpy's own segmentation route, as a HyperSpy user would run it on an EDS spectrum image.

The route follows the HyperSpy user guide, "Machine learning" chapter:
"Decomposition" (https://hyperspy.org/hyperspy-doc/current/user_guide/mva/decomposition.html)
and "Cluster analysis" (https://hyperspy.org/hyperspy-doc/current/user_guide/mva/clustering.html):

1. ``s = hs.signals.Signal1D(cube); s.set_signal_type("EDS_TEM")`` (exspy's ``EDSTEMSpectrum``),
   energy axis offset and scale in keV, data as float32 (``s.change_dtype("float32")``);
2. bin 2x2 in space, ``s.rebin(scale=(2, 2, 1))``; the benchmark's cubes come from
   ``phantom.binned_counts(dose, 2)``, already binned, so it is not repeated here;
3. ``s.decomposition(normalize_poissonian_noise=True)``: SVD of the Keenan-Kotula
   weighted counts, library defaults (no centring, full SVD);
4. ``s.estimate_elbow_position()`` on the scree plot; it returns the zero-based index of the
   elbow and HyperSpy's own ``learning_results.number_significant_components`` is that index
   + 1, so that many components are kept;
5. ``s.estimate_number_of_clusters(cluster_source="decomposition", number_of_components=n,
   preprocessing="norm", algorithm="kmeans", metric="elbow")``, k scanned over 1..10;
6. ``s.cluster_analysis(cluster_source="decomposition", number_of_components=n,
   preprocessing="norm", algorithm="kmeans", n_clusters=k)``; labels from the one-hot
   ``s.learning_results.cluster_labels`` (n_clusters, n_pixels).

KMeans gets ``n_init=8`` (the user guide's example) and ``random_state=0`` (repeatable runs).

Two deviations a user would be pushed into on large maps, both recorded in ``info``:
``estimate_number_of_clusters`` computes, for every k, the full pairwise distance matrix of
each cluster (``_distances_within_cluster``; at k=1 that is n_pixels^2 float64, 34 GB for a
256x256 binned map), so above ``max_estimate_pixels`` it runs on a random subset of pixels
given as its ``navigation_mask``; the clustering itself always uses every pixel.

Empty pixels or channels: HyperSpy's Poisson normalisation (``_keenan_kotula_scale``)
replaces a zero row or column sum by 1, so an all-zero pixel or channel stays zero instead of
dividing by zero (no mask, no NaN); the "norm" preprocessing (sklearn ``Normalizer``) leaves a
zero score vector at zero. Only an entirely empty cube is refused (``ValueError``).
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings

import numpy as np

#: estimate_number_of_clusters: the metric, the largest k tried, the pixels it may use.
METRIC = "elbow"
MAX_CLUSTERS = 10
MAX_ESTIMATE_PIXELS = 8192
#: KMeans settings for both the estimate and the final clustering.
KMEANS = {"n_init": 8, "random_state": 0}


@contextlib.contextmanager
def quiet():
    """HyperSpy with no progress bars, its and exspy's loggers at ERROR and warnings ignored; restored after."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import exspy  # noqa: F401  (registers the EDS signal types)
        import hyperspy.api as hs

        general = hs.preferences.General
        bar = general.show_progressbar
        loggers = [logging.getLogger(name) for name in ("hyperspy", "exspy")]
        levels = [logger.level for logger in loggers]
        general.show_progressbar = False
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield hs
        finally:
            general.show_progressbar = bar
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def eds_signal(cube: np.ndarray, offset_kev: float, scale_kev: float):
    """An exspy ``EDSTEMSpectrum`` of ``cube`` (rows, columns, channels) as float32, energy axis in keV."""
    cube = np.asarray(cube)
    if cube.ndim != 3:
        raise ValueError(f"cube must be (rows, columns, channels), got shape {cube.shape}")
    with quiet() as hs:
        s = hs.signals.Signal1D(cube)
        s.set_signal_type("EDS_TEM")
        energy = s.axes_manager.signal_axes[0]
        energy.name, energy.units = "Energy", "keV"
        energy.offset, energy.scale = float(offset_kev), float(scale_kev)
        s.change_dtype("float32")
    return s


def decompose(cube: np.ndarray, offset_kev: float, scale_kev: float):
    """Steps 1-4: the signal with its decomposition, and ``info`` (components, elbow, seconds).

    ``cube`` is taken as already binned 2x2 (a user would ``s.rebin(scale=(2, 2, 1))`` first).
    """
    if not np.any(cube):
        raise ValueError("the cube has no counts: nothing to decompose")
    t0 = time.perf_counter()
    s = eds_signal(cube, offset_kev, scale_kev)
    with quiet():
        s.decomposition(normalize_poissonian_noise=True, print_info=False)
        elbow = int(s.estimate_elbow_position())
    return s, {"elbow_position": elbow, "components": elbow + 1,
               "hyperspy_significant_components": s.learning_results.number_significant_components,
               "decomposition_s": time.perf_counter() - t0}


def one_hot_to_labels(one_hot: np.ndarray) -> np.ndarray:
    """``learning_results.cluster_labels`` (n_clusters, n_pixels) bool -> (n_pixels,) int, -1 where unassigned."""
    one_hot = np.asarray(one_hot, dtype=bool)
    labels = np.full(one_hot.shape[1], -1, dtype=np.int64)
    for i, row in enumerate(one_hot):
        labels[row] = i
    return labels


def cluster(s, n_components: int, n_clusters: int | None = None, *, metric: str = METRIC,
            max_clusters: int = MAX_CLUSTERS, max_estimate_pixels: int = MAX_ESTIMATE_PIXELS):
    """Steps 5-6 on a decomposed signal: (labels (rows, columns), info).

    ``n_clusters`` None: estimated by ``estimate_number_of_clusters`` (``metric`` "elbow",
    "gap" or "silhouette"; silhouette returns every local maximum, the best-scoring one is
    taken). Otherwise used as given.
    """
    shape = s.data.shape[:-1]
    n_pixels = int(np.prod(shape))
    common = {"cluster_source": "decomposition", "number_of_components": int(n_components),
              "preprocessing": "norm", "algorithm": "kmeans"}
    info = {"components": int(n_components), "metric": None, "estimate_pixels": None, "estimate_s": 0.0}
    with quiet():
        if n_clusters is None:
            t0 = time.perf_counter()
            mask = None
            if n_pixels > max_estimate_pixels:
                # True = left out; the same random subset every run.
                keep = np.random.default_rng(0).choice(n_pixels, max_estimate_pixels, replace=False)
                mask = np.ones(n_pixels, dtype=bool)
                mask[keep] = False
                mask = mask.reshape(shape)
            best = s.estimate_number_of_clusters(max_clusters=max_clusters, navigation_mask=mask,
                                                 metric=metric, **common, **KMEANS)
            if isinstance(best, (list, tuple)):
                scores = dict(zip(s.learning_results.cluster_metric_index, s.learning_results.cluster_metric_data))
                best = max(best, key=lambda k: scores[k])
            n_clusters = int(best)
            info.update(metric=metric, estimate_s=time.perf_counter() - t0,
                        estimate_pixels=n_pixels if mask is None else max_estimate_pixels,
                        metric_values=[float(v) for v in s.learning_results.cluster_metric_data])
        t0 = time.perf_counter()
        s.cluster_analysis(n_clusters=int(n_clusters), **common, **KMEANS)
        info["cluster_s"] = time.perf_counter() - t0
    labels = one_hot_to_labels(s.learning_results.cluster_labels).reshape(shape)
    info["clusters"] = int(s.learning_results.number_of_clusters)
    return labels, info


def hyperspy_labels(cube: np.ndarray, offset_kev: float, scale_kev: float, n_clusters: int | None = None,
                    **cluster_options) -> tuple[np.ndarray, dict]:
    """HyperSpy's route end to end on one cube (rows, columns, channels), already binned 2x2.

    Returns the labels (rows, columns) int64 (-1 only for pixels no cluster took, which
    HyperSpy does not produce without a mask) and ``info``: ``components`` (kept),
    ``elbow_position``, ``clusters`` (used), ``metric`` (None when ``n_clusters`` was given),
    ``estimate_pixels``, and seconds: ``decomposition_s``, ``estimate_s``, ``cluster_s``, ``seconds``.
    """
    s, info = decompose(cube, offset_kev, scale_kev)
    labels, more = cluster(s, info["components"], n_clusters, **cluster_options)
    info.update(more)
    info["seconds"] = info["decomposition_s"] + info["estimate_s"] + info["cluster_s"]
    return labels, info

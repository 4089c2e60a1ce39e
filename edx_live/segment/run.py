"""Fit one workflow on a binned spectrum image and build its :class:`SegmentationResult`."""

from __future__ import annotations

import time

import numpy as np
from sklearn.base import clone

from .result import NOISE, SegmentationResult, cluster_sums


def order_by_size(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Renumber clusters 0..n-1 by decreasing pixel count (ties: lower old label first).

    Estimators number clusters arbitrarily (mixture initialisation, HDBSCAN tree
    order); a fixed order keeps cluster 0 the same region from one refit to the
    next as long as the sizes keep their order. Negative labels become ``NOISE``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    found = np.unique(labels[labels >= 0])
    sizes = np.array([np.count_nonzero(labels == k) for k in found], dtype=np.int64)
    order = found[np.lexsort((found, -sizes))]
    mapping = np.full(int(found.max()) + 1 if found.size else 0, NOISE, dtype=np.int64)
    mapping[order] = np.arange(order.size)
    out = np.full(labels.shape, NOISE, dtype=np.int64)
    keep = labels >= 0
    out[keep] = mapping[labels[keep]]
    return out, int(order.size)


def segment(cube, estimator, workflow_name: str, *, offset_kev: float | None = None,
            scale_kev: float | None = None) -> SegmentationResult:
    """Segment a binned spectrum image with a fresh clone of ``estimator``.

    Parameters
    ----------
    cube : array-like, shape (rows, columns, channels)
        Counts of the binned spectrum image.
    estimator : PcaGmm, UmapHdbscan or any estimator with ``labels_`` after ``fit``
        Not modified: a clone is fitted.
    workflow_name : str
        Stored in the result (``"pca-gmm"``, ``"umap-hdbscan"``).
    offset_kev, scale_kev : float, optional
        Energy calibration of the cube's channels. When given, and the estimator
        has ``energy_offset_kev``/``energy_scale_kev`` parameters, they are set on
        the clone so that its energy window (zero-peak cut) applies.

    Returns
    -------
    SegmentationResult
        Labels ordered by decreasing pixel count; cluster-sum spectra over all
        channels of ``cube`` (not only those the fit used); confidence from the
        estimator's ``probabilities_`` (1 where it has none).
    """
    cube = np.asarray(cube)
    if cube.ndim != 3:
        raise ValueError(f"cube must be (rows, columns, channels), got shape {cube.shape}")
    rows, columns, channels = cube.shape
    model = clone(estimator)
    if offset_kev is not None and scale_kev is not None and "energy_offset_kev" in model.get_params():
        model.set_params(energy_offset_kev=float(offset_kev), energy_scale_kev=float(scale_kev))
    t0 = time.perf_counter()
    model.fit(cube.reshape(rows * columns, channels))
    seconds = time.perf_counter() - t0
    flat, n_clusters = order_by_size(model.labels_)
    labels = flat.reshape(rows, columns)
    spectra, pixels = cluster_sums(cube, labels, n_clusters)
    confidence = np.asarray(getattr(model, "probabilities_", np.ones(flat.size)), dtype=np.float64)
    choices = dict(getattr(model, "choices_", {}))
    choices["label_order"] = "decreasing pixels"
    outlier = getattr(model, "outlier_scores_", None)
    if outlier is not None:
        outlier = np.clip(np.asarray(outlier, dtype=np.float64), 0.0, 1.0).reshape(rows, columns)
    return SegmentationResult(workflow=workflow_name, labels=labels, spectra=spectra, pixels=pixels,
                              confidence=np.clip(confidence, 0.0, 1.0).reshape(rows, columns),
                              choices=choices, fit_seconds=seconds, outlier=outlier,
                              warm_start=getattr(model, "warm_start_", None))

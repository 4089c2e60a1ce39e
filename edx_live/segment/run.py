"""Fit one workflow on a binned spectrum image and build its :class:`SegmentationResult`."""

from __future__ import annotations

import time

import numpy as np
from sklearn.base import clone

from .phases import PhaseRule, phase_choices, settle_phases
from .result import INTO_KEY, NOISE, SegmentationResult, cluster_sums

#: The rule :func:`segment` applies by default.
DEFAULT_PHASE_RULE = PhaseRule()


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
            scale_kev: float | None = None, phase_rule: PhaseRule | None = DEFAULT_PHASE_RULE) -> SegmentationResult:
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
    phase_rule : PhaseRule or None
        Which clusters are phases (:mod:`~edx_live.segment.phases`): a cluster
        whose counts cannot tell it from its nearest cluster is merged into it, a
        distinct one too small to be a phase is unassigned. None keeps every
        cluster, and so does an estimator given its cluster count (``n_clusters``).
        An estimator that applies the rule itself (its ``choices_`` carry
        ``not_phase_into``, as :class:`~edx_live.segment.UmapHdbscan`'s) is not
        settled again; its choices are published in this function's label order.

    Returns
    -------
    SegmentationResult
        Labels ordered by decreasing pixel count; cluster-sum spectra over all
        channels of ``cube`` (not only those the fit used); confidence from the
        estimator's ``probabilities_`` (1 where it has none); a pixel of a cluster that is not a
        phase keeps the confidence it had in that cluster.
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
    spectra, pixels = cluster_sums(cube, flat.reshape(rows, columns), n_clusters)
    confidence = np.asarray(getattr(model, "probabilities_", np.ones(flat.size)), dtype=np.float64)
    choices = dict(getattr(model, "choices_", {}))
    if INTO_KEY in choices:  # the estimator settled its phases itself: its labels, in the order above
        raw = np.asarray(model.labels_).ravel()
        choices[INTO_KEY] = [float(flat[raw == label][0]) if label >= 0 and np.any(raw == label) else float(NOISE)
                             for label in choices[INTO_KEY]]
    elif phase_rule is not None and getattr(model, "n_clusters", None) is None and n_clusters > 0:
        settled = settle_phases(cube, flat, phase_rule, offset_kev, scale_kev)
        flat, spectra, pixels, into = _apply(settled.mapping, flat, spectra, pixels)
        choices.update(n_clusters=int(pixels.size), **phase_choices(phase_rule, settled.actions, into))
    labels = flat.reshape(rows, columns)
    choices["label_order"] = "decreasing pixels"
    outlier = getattr(model, "outlier_scores_", None)
    if outlier is not None:
        outlier = np.clip(np.asarray(outlier, dtype=np.float64), 0.0, 1.0).reshape(rows, columns)
    return SegmentationResult(workflow=workflow_name, labels=labels, spectra=spectra, pixels=pixels,
                              confidence=np.clip(confidence, 0.0, 1.0).reshape(rows, columns),
                              choices=choices, fit_seconds=seconds, outlier=outlier,
                              warm_start=getattr(model, "warm_start_", None))


def _apply(mapping: np.ndarray, flat: np.ndarray, spectra: np.ndarray, pixels: np.ndarray):
    """Labels, spectra and pixels after ``mapping`` (cluster -> cluster or -1), renumbered by size.

    Also returns the new label of each old cluster (``NOISE`` where unassigned).
    """
    kept = mapping >= 0
    targets = np.unique(mapping[kept])
    sizes = np.array([pixels[mapping == t].sum() for t in targets], dtype=np.int64)
    rank = np.full(mapping.size, NOISE, dtype=np.int64)
    rank[targets[np.lexsort((targets, -sizes))]] = np.arange(targets.size)  # as order_by_size
    into = np.where(kept, rank[np.maximum(mapping, 0)], NOISE)
    out = np.where(flat >= 0, into[np.maximum(flat, 0)], NOISE)
    new_spectra = np.zeros((targets.size, spectra.shape[1]))
    np.add.at(new_spectra, into[kept], spectra[kept])
    new_pixels = np.bincount(into[kept], weights=pixels[kept], minlength=targets.size).astype(np.int64)
    return out, new_spectra, new_pixels, into

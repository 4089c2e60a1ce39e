"""The immutable result of one segmentation refit."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NOISE = -1
#: The key of ``choices`` whose values are cluster labels (the clusters that non-phases were
#: merged into, :mod:`~edx_live.segment.phases`); tracking renumbers them with the clusters.
INTO_KEY = "not_phase_into"


@dataclass(frozen=True)
class SegmentationResult:
    """One workflow's answer for one snapshot of the binned spectrum image.

    Attributes
    ----------
    workflow : str
        ``"pca-gmm"`` or ``"umap-hdbscan"``.
    labels : numpy.ndarray of int, shape (rows, columns)
        Cluster of each binned pixel, 0..n_clusters-1; ``NOISE`` (-1) for unassigned.
    spectra : numpy.ndarray of float64, shape (n_clusters, channels)
        Sum of the counts of each cluster's pixels (hard masks).
    pixels : numpy.ndarray of int, shape (n_clusters,)
        Binned pixels per cluster.
    confidence : numpy.ndarray of float, shape (rows, columns) or None
        Per-pixel confidence in [0, 1] (GMM posterior of the chosen cluster,
        HDBSCAN membership strength).
    choices : dict
        What was chosen from the data and why (components, clusters, scores).
    fit_seconds : float
        Wall time of the fit.
    outlier : numpy.ndarray of float, shape (rows, columns) or None
        Per-pixel outlier score in [0, 1] (HDBSCAN's GLOSH), when the workflow has one.
    warm_start : dict or None
        What the next refit of the same acquisition may start from (e.g. the UMAP
        embedding of the fitted sample); never published.
    """

    workflow: str
    labels: np.ndarray
    spectra: np.ndarray
    pixels: np.ndarray
    confidence: np.ndarray | None = None
    choices: dict = field(default_factory=dict)
    fit_seconds: float = 0.0
    outlier: np.ndarray | None = None
    warm_start: dict | None = field(default=None, repr=False)

    @property
    def n_clusters(self) -> int:
        return int(self.spectra.shape[0])

    @property
    def noise_pixels(self) -> int:
        return int(np.count_nonzero(self.labels == NOISE))


def cluster_sums(cube: np.ndarray, labels: np.ndarray, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum spectra and pixel counts per cluster.

    Parameters
    ----------
    cube : numpy.ndarray, shape (rows, columns, channels)
    labels : numpy.ndarray of int, shape (rows, columns); negative values are skipped.
    n_clusters : int
    """
    flat = cube.reshape(-1, cube.shape[-1])
    lab = labels.ravel()
    keep = lab >= 0
    onehot = np.zeros((n_clusters, lab.size), dtype=np.float64)
    onehot[lab[keep], np.flatnonzero(keep)] = 1.0
    spectra = np.zeros((n_clusters, flat.shape[1]))
    # Blocks of rows: a float copy of the whole cube would double a refit's memory.
    for r0 in range(0, flat.shape[0], _BLOCK_ROWS):
        spectra += onehot[:, r0:r0 + _BLOCK_ROWS] @ flat[r0:r0 + _BLOCK_ROWS].astype(np.float64)
    pixels = np.bincount(lab[keep], minlength=n_clusters)[:n_clusters]
    return spectra, pixels


_BLOCK_ROWS = 4096

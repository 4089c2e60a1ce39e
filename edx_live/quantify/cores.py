"""The pixels a cluster's composition is measured on: its core, away from boundaries. Pure numpy.

A pixel at a boundary between two phases holds both spectra (the projected interface
and the probe span both, and a 2x2-binned pixel sums four), and a segmentation gives
it to one of them. Summed with the rest of the cluster, those pixels pull its
composition towards the neighbour's: on small grains, whose pixels are mostly
boundary, by several at%. Membership weights (GMM posterior, HDBSCAN membership)
discount them only partly: mixture posteriors are confident far into a mix.

So the composition is measured on the cluster's **core**: its pixels whose whole
3 x 3 neighbourhood (within the map) belongs to the cluster. A cluster whose core
holds too little of its weight (small grains) is measured on its **interior**
(pixels whose four edge neighbours belong to it), and one without enough interior
on all its pixels. Each level must hold ``MIN_CORE_FRACTION`` of the cluster's
weight and ``MIN_CORE_PIXELS`` pixels. Morphological erosion before measuring a
phase is what a microscopist does by hand when drawing a region of interest inside
a grain (e.g. Watanabe & Williams 2006 on boundary segregation measurements).

The bias that remains is estimated from the change between the chosen pixels and
the next wider set (all pixels for a core or interior, the interior for a cluster
measured on all its pixels): :func:`bias` turns the difference into a 1-sigma part
after removing what counting and spread explain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: A level of pixels is used when it holds at least this fraction of the cluster's weight...
MIN_CORE_FRACTION = 0.2
#: ... and at least this many pixels.
MIN_CORE_PIXELS = 4
#: The bias left in the measured pixels, as a fraction of the change from the next wider level.
BIAS_FRACTION = 0.25
#: Names of the levels, as published.
LEVELS = ("all", "interior", "core")


@dataclass(frozen=True)
class Cores:
    """For each cluster: the pixels its composition is measured on, and those the bias is judged against.

    Attributes
    ----------
    measured : numpy.ndarray of int, shape like ``labels``
        Labels restricted to the measured pixels (others -1).
    reference : numpy.ndarray of int, shape like ``labels``
        Labels restricted to the reference pixels (others -1).
    level : list of str
        Per cluster, the level measured ("core", "interior" or "all").
    reference_level : list of str or None
        Per cluster, the reference level; None when there is nothing to compare with.
    pixels : numpy.ndarray of int, shape (n_clusters,)
        Measured pixels per cluster.
    """

    measured: np.ndarray
    reference: np.ndarray
    level: list[str]
    reference_level: list[str | None]
    pixels: np.ndarray


def depth(labels: np.ndarray) -> np.ndarray:
    """Per pixel: 2 if its 3 x 3 neighbourhood has its label, 1 if its four edge neighbours do, else 0.

    Neighbours outside the map do not count against a pixel. A 1-D ``labels`` (no map)
    gives every pixel depth 2.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        return np.full(labels.shape, 2, dtype=np.int8)
    padded = np.pad(labels, 1, mode="edge")
    rows, columns = labels.shape
    same = {(dy, dx): padded[1 + dy:1 + dy + rows, 1 + dx:1 + dx + columns] == labels
            for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)}
    edges = same[(-1, 0)] & same[(1, 0)] & same[(0, -1)] & same[(0, 1)]
    corners = same[(-1, -1)] & same[(-1, 1)] & same[(1, -1)] & same[(1, 1)]
    return np.where(edges & corners, 2, np.where(edges, 1, 0)).astype(np.int8)


def cores(labels: np.ndarray, n_clusters: int, weights: np.ndarray | None = None) -> Cores:
    """Choose, per cluster, the deepest level of pixels that holds enough of its weight.

    Parameters
    ----------
    labels : numpy.ndarray of int, shape (rows, columns) or (pixels,)
        Cluster of each pixel, numbered 0..n_clusters-1; negative for none.
    n_clusters : int
    weights : numpy.ndarray, optional
        Membership of each pixel (1 for all when None).
    """
    labels = np.asarray(labels)
    d = depth(labels).ravel()
    lab = labels.ravel()
    w = np.ones(lab.size) if weights is None else np.clip(np.asarray(weights, dtype=np.float64).ravel(), 0, 1)
    keep = lab >= 0
    total = np.bincount(lab[keep], weights=w[keep], minlength=n_clusters)[:n_clusters]
    measured = np.full(lab.size, -1, dtype=np.int64)
    reference = np.full(lab.size, -1, dtype=np.int64)
    level, reference_level = [], []
    pixels = np.zeros(n_clusters, dtype=np.int64)
    for k in range(n_clusters):
        members = lab == k
        chosen = next((at for at in (2, 1) if np.count_nonzero(members & (d >= at)) >= MIN_CORE_PIXELS), 0)
        measured[members & (d >= chosen)] = k
        pixels[k] = int(np.count_nonzero(members & (d >= chosen)))
        level.append(LEVELS[chosen])
        if chosen > 0:
            reference[members & (d >= chosen - 1)] = k
            reference_level.append(LEVELS[chosen - 1])
        else:
            reference_level.append(None)
    return Cores(measured.reshape(labels.shape), reference.reshape(labels.shape), level, reference_level, pixels)


def bias(value: np.ndarray, sigma: np.ndarray, reference: np.ndarray, reference_sigma: np.ndarray) -> np.ndarray:
    """1-sigma bias part from the change between the measured and the reference pixels.

    The difference ``value - reference`` holds the contamination the wider set of pixels
    carries, plus noise: the two share pixels, so the noise of the difference has variance
    about ``|sigma**2 - reference_sigma**2|``. What the noise does not explain is kept,
    sqrt(max(0, d**2 - |sigma**2 - reference_sigma**2|)); NaN inputs give 0 (nothing to compare).
    """
    d = np.asarray(value, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    noise = np.abs(np.asarray(sigma, dtype=np.float64) ** 2 - np.asarray(reference_sigma, dtype=np.float64) ** 2)
    out = np.sqrt(np.clip(d ** 2 - noise, 0, None))
    return np.where(np.isfinite(out), out, 0.0)

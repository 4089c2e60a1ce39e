"""Candidate regions on one workflow's label map: small and rare clusters, low confidence, boundaries, outliers.

Everything here works on the binned label map of a ``clusters`` document; boxes are
``(row0, col0, row1, col1)`` in binned pixels, end-exclusive. Empty space (a cluster with
almost no counts per pixel: vacuum, resin) and the noise that touches it are not sample,
and no candidate is made there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from edx_protocol import NOISE_LABEL, Clusters
from scipy import ndimage

Box = tuple[int, int, int, int]

#: 8-connected neighbourhoods: a grain touching another at a corner is one region.
EIGHT = np.ones((3, 3), dtype=bool)
#: Opening with it removes lines one pixel wide (the mixed pixels along every boundary) and keeps blobs.
BLOB = np.ones((2, 2), dtype=bool)


@dataclass(frozen=True)
class Candidate:
    """One reason, found by one workflow, to look at one region."""

    reason: str
    workflow: str
    clusters: frozenset[int]
    box: Box
    strength: float


@dataclass(frozen=True)
class MapView:
    """A label map read for candidates.

    Attributes
    ----------
    workflow : str
    labels : numpy.ndarray of int64
        Cluster ids; -1 for noise.
    sample : numpy.ndarray of bool
        Pixels that are neither an empty cluster's nor noise touching one.
    fraction : dict of int to float
        Each non-empty cluster's share of the sample's assigned pixels.
    empty : frozenset of int
        Clusters with almost no counts per pixel.
    confidence, outlier : numpy.ndarray of float or None
    """

    workflow: str
    labels: np.ndarray
    sample: np.ndarray
    fraction: dict[int, float]
    empty: frozenset[int]
    confidence: np.ndarray | None
    outlier: np.ndarray | None

    @property
    def n_sample(self) -> int:
        return max(1, int(self.sample.sum()))


def empty_labels(header: Clusters, empty_fraction: float) -> frozenset[int]:
    """Clusters whose counts per pixel are below ``empty_fraction`` of the pixel-weighted median.

    Vacuum and embedding resin give a few counts where the sample gives hundreds: such a cluster
    is empty space, not a feature.
    """
    infos = [c for c in header.clusters if c.pixels > 0]
    if len(infos) < 2:
        return frozenset()
    rate = np.array([c.counts / c.pixels for c in infos])
    order = np.argsort(rate)
    weights = np.cumsum([infos[i].pixels for i in order])
    median = rate[order][np.searchsorted(weights, weights[-1] / 2)]
    return frozenset(c.label for c, r in zip(infos, rate) if r < empty_fraction * median)


def map_view(header: Clusters, arrays: dict[str, np.ndarray], empty_fraction: float) -> MapView:
    """Read a ``clusters`` document's arrays: which pixels are sample, each cluster's share of it."""
    raw = np.asarray(arrays["labels"])
    labels = np.where(raw == NOISE_LABEL, -1, raw.astype(np.int64))
    empty = empty_labels(header, empty_fraction)
    vacuum = np.isin(labels, list(empty)) if empty else np.zeros(labels.shape, dtype=bool)
    if vacuum.any():
        noise, _ = ndimage.label(labels < 0, structure=EIGHT)
        touching = np.unique(noise[ndimage.binary_dilation(vacuum, structure=EIGHT) & (noise > 0)])
        vacuum |= np.isin(noise, touching[touching > 0])
    sample = ~vacuum
    assigned = sample & (labels >= 0)
    ids, counts = np.unique(labels[assigned], return_counts=True)
    total = max(1, int(assigned.sum()))
    fraction = {int(i): n / total for i, n in zip(ids, counts)}
    optional = {name: None if arrays.get(name) is None else np.asarray(arrays[name], dtype=np.float64)
                for name in ("confidence", "outlier")}
    return MapView(header.workflow, labels, sample, fraction, empty, **optional)


def capped_box(mask: np.ndarray, cap: tuple[int, int]) -> Box:
    """Bounding box of ``mask``'s pixels, or, when larger than ``cap``, the cap-sized window holding most of them."""
    rows, columns = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, columns.min(), columns.max() + 1
    h, w = min(r1 - r0, cap[0]), min(c1 - c0, cap[1])
    if (h, w) == (r1 - r0, c1 - c0):
        return int(r0), int(c0), int(r1), int(c1)
    crop = mask[r0:r1, c0:c1].astype(np.float64)
    density = ndimage.uniform_filter(crop, size=(h, w), mode="constant")
    density[crop == 0] = -1.0  # centre the window on the region itself
    cr, cc = np.unravel_index(int(np.argmax(density)), density.shape)
    top = int(np.clip(r0 + cr - h // 2, r0, r1 - h))
    left = int(np.clip(c0 + cc - w // 2, c0, c1 - w))
    return top, left, top + h, left + w


def _components(mask: np.ndarray, min_px: int):
    """(component mask, pixel count) of each 8-connected component of at least ``min_px`` pixels."""
    found, n = ndimage.label(mask, structure=EIGHT)
    if n == 0:
        return
    sizes = np.bincount(found.ravel(), minlength=n + 1)
    for index, where in enumerate(ndimage.find_objects(found), start=1):
        if sizes[index] >= min_px:
            component = np.zeros(mask.shape, dtype=bool)
            component[where] = found[where] == index
            yield component, int(sizes[index])


def _mean(values: np.ndarray | None, mask: np.ndarray, default: float) -> float:
    return default if values is None else float(values[mask].mean())


def cluster_regions(view: MapView, options, cap: tuple[int, int]) -> list[Candidate]:
    """``rare_cluster``: every region of a cluster covering little of the sample;
    ``small_cluster``: every region small against the sample, of any cluster.

    A region's strength falls with its size (small) or its cluster's share (rare) and,
    for small regions, with a low mean confidence: speckle is seldom confident.
    """
    out = []
    small_limit = options.small_fraction * view.n_sample
    for label, share in view.fraction.items():
        rare = share < options.rare_fraction
        for component, size in _components((view.labels == label) & view.sample, options.min_region_px):
            box = capped_box(component, cap)
            ids = frozenset({label})
            if rare:
                strength = 0.5 + 0.5 * (1 - share / options.rare_fraction)
                out.append(Candidate("rare_cluster", view.workflow, ids, box, strength))
            if size <= small_limit:
                shape = min(1.0, 2 * (1 - size / small_limit))
                trust = 0.5 + 0.5 * _mean(view.confidence, component, 1.0)
                out.append(Candidate("small_cluster", view.workflow, ids, box, shape * trust))
    return out


def _labels_in(view: MapView, component: np.ndarray) -> frozenset[int]:
    return frozenset(int(v) for v in np.unique(view.labels[component]) if v >= 0)


def blob_regions(view: MapView, options, cap: tuple[int, int]) -> list[Candidate]:
    """``low_confidence`` and ``outlier``: blobs (not one-pixel lines) of low confidence or high GLOSH score."""
    out = []
    rules = (("low_confidence", view.confidence, lambda v: v < options.confidence_threshold,
              lambda m: 1 - m / options.confidence_threshold),
             ("outlier", view.outlier, lambda v: v >= options.outlier_threshold, lambda m: m))
    for reason, values, test, strength in rules:
        if values is None:
            continue
        mask = ndimage.binary_opening(test(values) & view.sample, structure=BLOB)
        for component, _ in _components(mask, options.min_region_px):
            level = float(np.clip(strength(float(values[component].mean())), 0.0, 1.0))
            out.append(Candidate(reason, view.workflow, _labels_in(view, component),
                                 capped_box(component, cap), level))
    return out


def boundary_regions(view: MapView, options, cap: tuple[int, int]) -> list[Candidate]:
    """``boundary``: where two clusters of the sample meet, a window per stretch of boundary.

    A boundary's interest is 1 - (the smaller share of the two clusters) / (the second-largest
    share): 0 between the two most common clusters, near 1 where a rare one meets anything.
    A stretch needs ``min_region_px`` pixels on each side, so single misassigned pixels make none.
    """
    valid = (view.labels >= 0) & view.sample & ~np.isin(view.labels, list(view.empty))
    pairs: dict[tuple[int, int], np.ndarray] = {}
    for axis in (0, 1):
        a, b = _shifted(view.labels, axis)
        va, vb = _shifted(valid, axis)
        for x, y in {(int(p), int(q)) for p, q in zip(a[va & vb & (a != b)], b[va & vb & (a != b)])}:
            key = (min(x, y), max(x, y))
            mask = pairs.setdefault(key, np.zeros(view.labels.shape, dtype=bool))
            meet = va & vb & (((a == x) & (b == y)) | ((a == y) & (b == x)))
            _mark(mask, meet, axis)
    shares = sorted(view.fraction.values(), reverse=True)
    second = shares[1] if len(shares) > 1 else 1.0
    out = []
    for (x, y), mask in pairs.items():
        interest = 1 - min(view.fraction.get(x, 0.0), view.fraction.get(y, 0.0)) / second
        if interest <= 0:
            continue
        for component, _ in _components(mask, 2 * options.min_region_px):
            sides = min(int((view.labels[component] == x).sum()), int((view.labels[component] == y).sum()))
            if sides < options.min_region_px:
                continue
            length = min(1.0, sides / options.boundary_length_px)
            out.append(Candidate("boundary", view.workflow, frozenset({x, y}), capped_box(component, cap),
                                 interest * length))
    return out


def _shifted(array: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel and its next neighbour along ``axis``, as two equal-shaped views."""
    return (array[:-1], array[1:]) if axis == 0 else (array[:, :-1], array[:, 1:])


def _mark(mask: np.ndarray, meet: np.ndarray, axis: int) -> None:
    """Mark both pixels of every neighbour pair in ``meet``."""
    first, second = _shifted(mask, axis)
    first |= meet
    second |= meet


def largest_region(view: MapView, label: int, cap: tuple[int, int]) -> Box | None:
    """Capped box of a cluster's largest connected region in the sample; None when it has none."""
    found, n = ndimage.label((view.labels == label) & view.sample, structure=EIGHT)
    if n == 0:
        return None
    biggest = int(np.argmax(np.bincount(found.ravel())[1:])) + 1
    return capped_box(found == biggest, cap)

"""Stable cluster identities across refits, and a convergence measure.

Each refit segments the accumulated spectrum image from scratch, so cluster
numbers are arbitrary from one refit to the next (``order_by_size`` only keeps
them while the sizes keep their order). :func:`match_clusters` renumbers a new
result so that each cluster keeps the id, and hence the viewer colour, of the
previous cluster it corresponds to; :func:`agreement` and
:class:`ConvergenceTracker` say when the answer has stopped changing.

Conventions of a *tracked* result (the ``result`` of a :class:`Matching`):

- label values are cluster ids, not row indices; ids need not be contiguous;
- rows of ``spectra`` and ``pixels`` are in increasing id order;
- ``choices["cluster_ids"]`` lists the id of each row and
  ``choices["next_cluster_id"]`` the first id never used in this acquisition,
  so the previous result alone is the track state (``Analyzer.latest`` keeps it).

An untracked result (straight from :func:`~edx_live.segment.segment`) has ids
``0..n_clusters-1``. Pure code: no I/O.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

from .result import INTO_KEY, NOISE, SegmentationResult

#: Cost given to pairs below the similarity threshold so the assignment avoids them.
_FORBIDDEN = 1e6


def cluster_ids(result: SegmentationResult) -> np.ndarray:
    """The id of each row of ``result.spectra``.

    Returns ``choices["cluster_ids"]`` for a tracked result, else ``0..n_clusters-1``.
    """
    ids = result.choices.get("cluster_ids")
    if ids is None:
        return np.arange(result.n_clusters, dtype=np.int64)
    return np.asarray(ids, dtype=np.int64)


#: Keys of ``choices`` that hold the track state, not a choice of the workflow.
TRACK_STATE_KEYS = ("cluster_ids", "next_cluster_id")


def workflow_choices(result: SegmentationResult) -> dict:
    """``result.choices`` without the track state (the ids are published as cluster labels)."""
    return {k: v for k, v in result.choices.items() if k not in TRACK_STATE_KEYS}


def _next_id(previous: SegmentationResult | None, next_id: int | None) -> int:
    """First id never used, from every source available (the largest wins, so no id is reused)."""
    candidates = [0 if next_id is None else int(next_id)]
    if previous is not None:
        ids = cluster_ids(previous)
        candidates.append(int(ids.max()) + 1 if ids.size else 0)
        candidates.append(int(previous.choices.get("next_cluster_id", 0)))
    return max(candidates)


def _rows(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row index of each pixel's cluster; ``NOISE`` stays ``NOISE``."""
    flat = np.asarray(labels, dtype=np.int64).ravel()
    order = np.argsort(ids)
    out = np.full(flat.shape, NOISE, dtype=np.int64)
    keep = flat >= 0
    out[keep] = order[np.searchsorted(ids, flat[keep], sorter=order)]
    return out


def row_labels(result: SegmentationResult) -> np.ndarray:
    """``result.labels`` as row indices of ``result.spectra`` (``NOISE`` stays ``NOISE``), same shape.

    What code that walks ``range(n_clusters)`` needs: a tracked result's labels are ids.
    """
    return _rows(result.labels, cluster_ids(result)).reshape(result.labels.shape)


def jaccard_matrix(previous: SegmentationResult, current: SegmentationResult) -> np.ndarray:
    """Jaccard index of every (previous, current) pair of cluster masks, shape (n_prev, n_cur).

    Noise pixels belong to no mask.
    """
    n_p, n_c = previous.n_clusters, current.n_clusters
    a = _rows(previous.labels, cluster_ids(previous))
    b = _rows(current.labels, cluster_ids(current))
    both = (a >= 0) & (b >= 0)
    inter = np.bincount(a[both] * n_c + b[both], minlength=n_p * n_c).reshape(n_p, n_c)
    size_a = np.bincount(a[a >= 0], minlength=n_p)
    size_b = np.bincount(b[b >= 0], minlength=n_c)
    union = size_a[:, None] + size_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros((n_p, n_c)), where=union > 0)


def _root_shapes(spectra: np.ndarray) -> np.ndarray:
    """Square roots of the spectra normalised to unit sum (zero rows stay zero)."""
    spectra = np.clip(np.asarray(spectra, dtype=np.float64), 0.0, None)
    totals = spectra.sum(axis=1, keepdims=True)
    return np.sqrt(np.divide(spectra, totals, out=np.zeros_like(spectra), where=totals > 0))


def hellinger_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hellinger distance between the shapes of every pair of spectra, in [0, 1].

    The square root is Poisson's variance-stabilising transform, so a channel's
    weight does not grow with its counts as it would in a plain cosine, and the
    distance between two spectra does not change as counts accumulate.
    A spectrum with no counts is at distance 1 from everything.
    """
    bc = _root_shapes(a) @ _root_shapes(b).T  # Bhattacharyya coefficient
    return np.sqrt(np.clip(1.0 - bc, 0.0, 1.0))


def similarity_matrix(previous: SegmentationResult, current: SegmentationResult,
                      pixel_weight: float = 0.5) -> np.ndarray:
    """``pixel_weight * Jaccard + (1 - pixel_weight) * (1 - Hellinger)``, shape (n_prev, n_cur).

    When the label maps differ in shape (binning changed) only the spectra are
    compared; when the channels differ, only the pixels.
    """
    if previous.labels.shape != current.labels.shape:
        pixel_weight = 0.0
    elif previous.spectra.shape[1] != current.spectra.shape[1]:
        pixel_weight = 1.0
    sim = np.zeros((previous.n_clusters, current.n_clusters))
    if pixel_weight > 0:
        sim += pixel_weight * jaccard_matrix(previous, current)
    if pixel_weight < 1:
        sim += (1.0 - pixel_weight) * (1.0 - hellinger_matrix(previous.spectra, current.spectra))
    return sim


@dataclass(frozen=True)
class Matching:
    """How one refit's clusters were numbered after the previous one's.

    Attributes
    ----------
    result : SegmentationResult
        ``current`` relabelled with tracked ids (see the module docstring).
    ids : numpy.ndarray of int
        The id of each row of ``result.spectra``, increasing.
    mapping : dict of int to int
        Id in ``current`` (its label value) -> tracked id.
    scores : dict of int to float
        Tracked id -> similarity of its accepted match, for matched clusters only.
    appeared : list of int
        Ids new in this refit (given from ``next_id`` on, never reused).
    vanished : list of int
        Previous ids that matched no current cluster.
    next_id : int
        First id not yet used in this acquisition.
    """

    result: SegmentationResult
    ids: np.ndarray
    mapping: dict
    scores: dict
    appeared: list
    vanished: list
    next_id: int


def _assign(sim: np.ndarray, min_similarity: float) -> list[tuple[int, int]]:
    """Row/column pairs at or above the threshold that maximise the total similarity."""
    if sim.size == 0:
        return []
    # Forbidding sub-threshold pairs (rather than filtering afterwards) keeps the
    # solver from trading an acceptable pair for a better-scoring forbidden one.
    cost = np.where(sim >= min_similarity, 1.0 - sim, _FORBIDDEN)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if sim[r, c] >= min_similarity]


def match_clusters(previous: SegmentationResult | None, current: SegmentationResult, *,
                   next_id: int | None = None, pixel_weight: float = 0.5,
                   min_similarity: float = 0.5) -> Matching:
    """Renumber ``current`` so that each cluster keeps its previous cluster's id.

    Parameters
    ----------
    previous : SegmentationResult or None
        The previous tracked result of the same workflow; None for the first refit.
    current : SegmentationResult
        The new result (tracked or not).
    next_id : int, optional
        First unused id; by default taken from ``previous`` (0 without one).
    pixel_weight : float
        Weight of the pixel overlap (Jaccard) against spectrum shape (1 - Hellinger).
    min_similarity : float
        Pairs with a lower combined similarity are never matched.

    Returns
    -------
    Matching
    """
    first_new = _next_id(previous, next_id)
    cur_ids = cluster_ids(current)
    new_ids = np.full(current.n_clusters, -1, dtype=np.int64)
    scores, vanished = {}, []
    if previous is not None:
        prev_ids = cluster_ids(previous)
        sim = similarity_matrix(previous, current, pixel_weight)
        pairs = _assign(sim, min_similarity)
        for r, c in pairs:
            new_ids[c] = prev_ids[r]
            scores[int(prev_ids[r])] = float(sim[r, c])
        kept = {r for r, _ in pairs}
        vanished = sorted(int(prev_ids[r]) for r in range(previous.n_clusters) if r not in kept)
    unmatched = np.flatnonzero(new_ids < 0)  # in current's row order: largest first
    new_ids[unmatched] = first_new + np.arange(unmatched.size)
    result = _relabel(current, new_ids, first_new + unmatched.size)
    return Matching(result=result, ids=cluster_ids(result),
                    mapping={int(a): int(b) for a, b in zip(cur_ids, new_ids)}, scores=scores,
                    appeared=sorted(int(i) for i in new_ids[unmatched]), vanished=vanished,
                    next_id=int(first_new + unmatched.size))


def _relabel(current: SegmentationResult, new_ids: np.ndarray, next_id: int) -> SegmentationResult:
    """``current`` with label values ``new_ids`` and rows sorted by id."""
    rows = _rows(current.labels, cluster_ids(current))
    if new_ids.size:
        labels = np.where(rows >= 0, new_ids[np.maximum(rows, 0)], NOISE).reshape(current.labels.shape)
    else:  # every pixel is noise: there is no id to look up
        labels = np.full(current.labels.shape, NOISE, dtype=np.int64)
    order = np.argsort(new_ids, kind="stable")
    choices = dict(current.choices, cluster_ids=[int(i) for i in new_ids[order]], next_cluster_id=int(next_id))
    if INTO_KEY in choices and new_ids.size:  # the clusters not-phases were merged into, by their new ids
        into = _rows(np.asarray(choices[INTO_KEY], dtype=np.int64), cluster_ids(current))
        choices[INTO_KEY] = [float(new_ids[r]) if r >= 0 else float(NOISE) for r in into]
    return dataclasses.replace(current, labels=labels, spectra=current.spectra[order],
                               pixels=current.pixels[order], choices=choices)


@dataclass(frozen=True)
class Agreement:
    """How much two successive results agree.

    Attributes
    ----------
    ari : float
        Adjusted Rand index of the label maps, noise as its own label (nan if shapes differ).
    spectrum_change : float
        Largest Hellinger distance (0 to 1) between the spectra of clusters sharing an id.
    shared_ids : list of int
        Ids present in both results.
    """

    ari: float
    spectrum_change: float
    shared_ids: list


def agreement(previous: SegmentationResult, current: SegmentationResult) -> Agreement:
    """Adjusted Rand index of the label maps and largest change of the spectra of shared ids.

    Both results should be in the same numbering (``current`` the ``result`` of
    ``match_clusters(previous, ...)``). When no id is shared, or the channels
    differ, ``spectrum_change`` is 1 (the largest Hellinger distance), or 0 when
    neither result has a cluster.
    """
    if previous.labels.shape == current.labels.shape:
        ari = float(adjusted_rand_score(previous.labels.ravel(), current.labels.ravel()))
    else:
        ari = float("nan")
    prev_ids, cur_ids = cluster_ids(previous), cluster_ids(current)
    shared = sorted(set(prev_ids.tolist()) & set(cur_ids.tolist()))
    if not shared or previous.spectra.shape[1] != current.spectra.shape[1]:
        empty = previous.n_clusters == 0 and current.n_clusters == 0
        return Agreement(ari, 0.0 if empty else 1.0, shared)
    a = previous.spectra[[int(np.flatnonzero(prev_ids == i)[0]) for i in shared]]
    b = current.spectra[[int(np.flatnonzero(cur_ids == i)[0]) for i in shared]]
    change = float(np.diag(hellinger_matrix(a, b)).max())
    return Agreement(ari, change, shared)


@dataclass(frozen=True)
class ConvergenceState:
    """The convergence verdict after one refit.

    Attributes
    ----------
    converged : bool
    ari, spectrum_change : float
        This refit's :class:`Agreement` values (nan, nan on the first refit).
    n_clusters : int
    stable_refits : int
        Consecutive refits within the thresholds with an unchanged cluster count.
    criterion : str
        The rule, with its settings, in words.
    """

    converged: bool
    ari: float
    spectrum_change: float
    n_clusters: int
    stable_refits: int
    criterion: str


class ConvergenceTracker:
    """Say when a workflow's answer has stopped changing.

    Converged when, for ``patience`` consecutive refits, the ARI with the
    previous refit is at least ``ari_threshold``, the largest Hellinger distance
    between spectra of shared ids is at most ``spectrum_threshold`` and the
    number of clusters is unchanged. Any other refit resets the count.

    Parameters
    ----------
    ari_threshold : float
    spectrum_threshold : float
        0.05 is below the shape change of a real phase boundary moving, and
        above the Poisson noise of spectra with more than ~1e5 counts.
    patience : int
    """

    def __init__(self, ari_threshold: float = 0.95, spectrum_threshold: float = 0.05, patience: int = 2):
        self.ari_threshold = ari_threshold
        self.spectrum_threshold = spectrum_threshold
        self.patience = patience
        self.stable_refits = 0

    @property
    def criterion(self) -> str:
        return (f"ARI >= {self.ari_threshold:g} and spectrum Hellinger distance <= {self.spectrum_threshold:g} "
                f"with an unchanged cluster count for {self.patience} consecutive refits")

    def update(self, previous: SegmentationResult | None, current: SegmentationResult) -> ConvergenceState:
        """Compare ``current`` with ``previous`` (same numbering) and return the verdict."""
        if previous is None:
            self.stable_refits = 0
            return ConvergenceState(False, float("nan"), float("nan"), current.n_clusters, 0, self.criterion)
        agree = agreement(previous, current)
        # nan ARI (label map reshaped) fails the >= test, as it should.
        stable = (agree.ari >= self.ari_threshold and agree.spectrum_change <= self.spectrum_threshold
                  and previous.n_clusters == current.n_clusters)
        self.stable_refits = self.stable_refits + 1 if stable else 0
        return ConvergenceState(self.stable_refits >= self.patience, agree.ari, agree.spectrum_change,
                                current.n_clusters, self.stable_refits, self.criterion)

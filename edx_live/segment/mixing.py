"""Mixture components that are not phases: mixed pixels at boundaries, thinner parts of a phase.

A Gaussian mixture asked for its best number of components on a spectrum image
spends components on two things that are not phases:

- pixels at a boundary, which hold a mix of the two phases' spectra (the beam
  and the projected interface span both);
- thickness: a phase's counts scale with the thickness, so a wedge stretches
  its cloud along the line towards the empty spectrum, and the mixture cuts it.

Both sit between two end members in the same way: the mean of such a component
lies on the segment joining two other means, or joining one mean and the point
of an empty pixel (zero counts). :func:`mixed_components` finds them by that
geometry, in the whitened space of the mixture's shared (tied) covariance, so
distances are in units of the pixel noise.

A real phase whose spectrum is a mix of two other phases' (an intermediate
compound between two end members) would be merged too; ``merge_mixed=False``
on :class:`~edx_live.segment.PcaGmm` keeps every component.

Pure code: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: A component is a mix when its mean is this close to a segment, relative to the segment's length.
MAX_RESIDUAL_RATIO = 0.1
#: ... and lies this far inside the segment (not beyond an end member).
MIN_FRACTION = 0.05


@dataclass(frozen=True)
class Mix:
    """One component explained as a mix: ``mean ~ t * means[a] + (1 - t) * means[b]``.

    ``b`` is None when the second end member is the empty pixel (a thinner part of ``a``).
    ``ratio`` is the distance of the mean from the segment over the segment's length.
    """

    component: int
    a: int
    b: int | None
    t: float
    ratio: float



def whiten(points: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """``points`` in units of the noise: ``L^-1 x`` with ``covariance = L L^T``."""
    chol = np.linalg.cholesky(np.atleast_2d(covariance))
    return np.linalg.solve(chol, np.atleast_2d(points).T).T


def _on_segment(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(t, ratio) of ``p`` against the segment from ``b`` (t = 0) to ``a`` (t = 1)."""
    d = a - b
    length2 = float(d @ d)
    if length2 == 0.0:
        return 0.0, np.inf
    t = float(np.clip((p - b) @ d / length2, 0.0, 1.0))
    return t, float(np.linalg.norm(p - (t * a + (1 - t) * b)) / np.sqrt(length2))


def best_mix(means: np.ndarray, empty: np.ndarray | None, component: int,
             alive: list[int]) -> Mix | None:
    """The pair of end members (other live components, or one and the empty pixel) closest to ``component``."""
    best = None
    others = [k for k in alive if k != component]
    pairs = [(a, b) for i, a in enumerate(others) for b in others[i + 1:]]
    if empty is not None:
        pairs += [(a, None) for a in others]
    for a, b in pairs:
        t, ratio = _on_segment(means[component], means[a], empty if b is None else means[b])
        if MIN_FRACTION <= t <= 1 - MIN_FRACTION and (best is None or ratio < best.ratio):
            best = Mix(component, a, b, t, ratio)
    return best


def mixed_components(means, covariance, empty=None, max_ratio: float = MAX_RESIDUAL_RATIO) -> list[Mix]:
    """Components to merge away, in the order they were found (clearest first).

    Parameters
    ----------
    means : array-like, shape (k, d)
        Component means.
    covariance : array-like, shape (d, d)
        The shared covariance (the noise) used to whiten.
    empty : array-like, shape (d,), optional
        Where a pixel with no counts lands in the same space; allows "thinner part of" mixes.
    max_ratio : float
        Largest distance from the segment, relative to its length, still called a mix.

    Returns
    -------
    list of Mix
        Found one at a time, removing each before looking again, so an end
        member is never itself a component already merged away.
    """
    means = np.asarray(means, dtype=np.float64)
    points = whiten(np.vstack([means] + ([] if empty is None else [np.asarray(empty, dtype=np.float64)])),
                    covariance)
    w_means, w_empty = points[:len(means)], (None if empty is None else points[-1])
    alive, found = list(range(len(means))), []
    while len(alive) > 1:
        mixes = [m for c in alive if (m := best_mix(w_means, w_empty, c, alive)) is not None
                 and m.ratio <= max_ratio]
        if not mixes:
            break
        clearest = min(mixes, key=lambda m: m.ratio)
        found.append(clearest)
        alive.remove(clearest.component)
    return found


def merged_choices(mixes: list[Mix]) -> dict:
    """The merges as flat number arrays (the ``choices`` of a published update).

    ``merged_component[i]`` (a component of the ICL-chosen mixture) was found to be
    ``merged_t[i]`` of ``merged_a[i]`` plus the rest of ``merged_b[i]`` (-1: an empty
    pixel), ``merged_ratio[i]`` away from that segment relative to its length.
    """
    return {"merged_component": [float(m.component) for m in mixes],
            "merged_a": [float(m.a) for m in mixes],
            "merged_b": [float(-1 if m.b is None else m.b) for m in mixes],
            "merged_t": [round(m.t, 3) for m in mixes],
            "merged_ratio": [round(m.ratio, 4) for m in mixes]}


def merge_mixed_clusters(data: np.ndarray, labels: np.ndarray, strength: np.ndarray, empty=None,
                         max_ratio: float = MAX_RESIDUAL_RATIO):
    """Find mixed clusters of a hard labelling and give their pixels to the nearest kept cluster.

    The clusters' means and their pooled within-cluster covariance stand in for a
    tied Gaussian mixture. A merged pixel's strength becomes the posterior of its new
    cluster under that model (equal weights).

    Parameters
    ----------
    data : numpy.ndarray, shape (n_samples, d)
        The space the clusters were found in (e.g. PCA scores).
    labels : numpy.ndarray of int, shape (n_samples,)
        0..k-1, negative for noise (left alone).
    strength : numpy.ndarray of float, shape (n_samples,)
    empty : numpy.ndarray, shape (d,), optional
        Where a pixel with no counts lands.

    Returns
    -------
    labels, strength : numpy.ndarray
        Relabelled 0..k'-1 in the order of the kept clusters.
    mixes : list of Mix
        In the original cluster numbers.
    """
    k = int(labels.max()) + 1 if labels.size else 0
    model = gaussian_model(data[labels >= 0], labels[labels >= 0]) if k >= 2 else None
    if model is None:
        return labels, strength, []
    means, covariance = model
    mixes = mixed_components(means, covariance, empty, max_ratio)
    if not mixes:
        return labels, strength, []
    kept = [c for c in range(k) if c not in {m.component for m in mixes}]
    moved = np.isin(labels, [m.component for m in mixes])
    nearest, posterior = classify(data[moved], means[kept], covariance)
    renumber = np.full(k, -1, dtype=np.int64)
    renumber[kept] = np.arange(len(kept))
    out = np.where(labels >= 0, renumber[np.maximum(labels, 0)], labels)
    out[moved] = nearest
    new_strength = strength.copy()
    new_strength[moved] = posterior
    return out, new_strength, mixes


def gaussian_model(data: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Means (k, d) of clusters 0..k-1 of ``labels`` and their pooled within-cluster covariance.

    None when a cluster is empty or there are too few pixels for the covariance.
    """
    k = int(labels.max()) + 1 if labels.size else 0
    members = [data[labels == c] for c in range(k)]
    dof = sum(len(m) for m in members) - k
    if k < 1 or dof <= data.shape[1] or any(len(m) == 0 for m in members):
        return None
    means = np.array([m.mean(axis=0) for m in members])
    covariance = sum((m - mu).T @ (m - mu) for m, mu in zip(members, means)) / dof
    covariance += np.eye(data.shape[1]) * 1e-9 * np.trace(covariance)
    return means, covariance


def classify(points: np.ndarray, means: np.ndarray, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Most likely of equal-weight Gaussians with a shared covariance for each point, and its posterior."""
    w = whiten(points, covariance)
    w_means = whiten(means, covariance)
    d2 = ((w[:, None, :] - w_means[None, :, :]) ** 2).sum(axis=2)
    logp = -0.5 * (d2 - d2.min(axis=1, keepdims=True))
    post = np.exp(logp) / np.exp(logp).sum(axis=1, keepdims=True)
    return d2.argmin(axis=1).astype(np.int64), post.max(axis=1)

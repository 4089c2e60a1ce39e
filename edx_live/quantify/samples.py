"""Cluster spectra and the resamplings their uncertainties come from. Pure numpy.

For each cluster this builds, in one ``(n_clusters, 1 + replicas + bootstrap, channels)``
stack that the intensity and Cliff-Lorimer steps then treat alike:

- the measured cluster spectrum: the sum of its pixels, each weighted by its membership
  (GMM posterior, HDBSCAN membership strength) or by 1 (hard mask);
- ``replicas`` counting-statistics resamplings of that spectrum: Poisson draws with its mean
  and its variance (for weighted sums, a scaled Poisson draw with mean S and variance
  sum(w**2 x));
- ``bootstrap`` resamplings of the cluster's pixels with replacement, which carry both the
  counting noise and the real spread of the pixels inside the cluster. Large clusters are
  first grouped at random into ``blocks`` groups and the groups are resampled; for
  exchangeable pixels this keeps the variance of the sum and bounds the cost.

The group sums are one compiled pass over the cluster's pixels, reading the cube
in place: no float copy of the cluster's pixels is made (at 256 x 256 pixels x
2048 channels such copies held a gigabyte, bench/scaling.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np


@dataclass(frozen=True)
class ClusterSamples:
    """Measured cluster spectra and their resamplings.

    Attributes
    ----------
    stack : numpy.ndarray, shape (n_clusters, 1 + replicas + bootstrap, channels)
        Index 0 along axis 1 is the measured spectrum, then the counting replicas, then the
        bootstrap samples.
    replicas, bootstrap : int
    pixels : numpy.ndarray of int, shape (n_clusters,)
        Pixels of each cluster (hard labels).
    weight : numpy.ndarray, shape (n_clusters,)
        Sum of the pixel weights (equals ``pixels`` for hard masks).
    """

    stack: np.ndarray
    replicas: int
    bootstrap: int
    pixels: np.ndarray
    weight: np.ndarray

    def counting(self, values: np.ndarray) -> np.ndarray:
        """The counting-replica part of ``values`` computed from :attr:`stack` (same leading axes)."""
        return values[:, 1:1 + self.replicas]

    def resampled(self, values: np.ndarray) -> np.ndarray:
        """The bootstrap part of ``values`` computed from :attr:`stack`."""
        return values[:, 1 + self.replicas:]


def cluster_samples(cube: np.ndarray, labels: np.ndarray, n_clusters: int, *, weights: np.ndarray | None = None,
                    replicas: int = 64, bootstrap: int = 64, blocks: int = 2048, channels: slice = slice(None),
                    random_state=None) -> ClusterSamples:
    """Weighted cluster spectra with counting replicas and pixel-bootstrap samples.

    Parameters
    ----------
    cube : numpy.ndarray, shape (rows, columns, channels) or (pixels, channels)
    labels : numpy.ndarray of int, shape (rows, columns) or (pixels,)
        Cluster of each pixel; negative values (noise) belong to no cluster.
    n_clusters : int
    weights : numpy.ndarray, optional
        Membership of each pixel in its cluster, in [0, 1]; None for hard masks.
    replicas, bootstrap : int
        Number of counting replicas and pixel-bootstrap samples per cluster.
    blocks : int
        Clusters with more pixels are bootstrapped over this many random groups of pixels.
    channels : slice
        Channels kept (the others are zero in the stack's copy of them, to save the work).
    random_state : None, int or numpy.random.Generator
    """
    rng = np.random.default_rng(random_state)
    flat = np.ascontiguousarray(cube.reshape(-1, cube.shape[-1]))
    lab = np.asarray(labels).ravel()
    w = np.ones(lab.size) if weights is None else np.clip(np.asarray(weights, dtype=np.float64).ravel(), 0, 1)
    stack = np.zeros((n_clusters, 1 + replicas + bootstrap, flat.shape[1]))
    pixels = np.bincount(lab[lab >= 0], minlength=n_clusters)[:n_clusters]
    weight = np.zeros(n_clusters)
    for k in range(n_clusters):
        members = np.flatnonzero(lab == k)
        wk = w[members]
        weight[k] = wk.sum()
        groups, group_w2 = _groups(flat, members, wk, blocks, channels, rng)
        fill_cluster(stack[k], groups, group_w2.sum(axis=0), channels, replicas, bootstrap, rng)
    return ClusterSamples(stack, replicas, bootstrap, pixels, weight)


def fill_cluster(rows: np.ndarray, groups: np.ndarray, variance: np.ndarray, channels: slice, replicas: int,
                 bootstrap: int, rng: np.random.Generator) -> None:
    """One cluster's rows of the stack from its group sums: the total, Poisson replicas, bootstrap resamples."""
    total = groups.sum(axis=0)
    rows[0, channels] = total
    rows[1:1 + replicas, channels] = _scaled_poisson(total, variance, replicas, rng)
    if bootstrap and len(groups):
        draws = rng.multinomial(len(groups), np.full(len(groups), 1 / len(groups)), size=bootstrap)
        rows[1 + replicas:, channels] = draws @ groups


def random_groups(n: int, blocks: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """The group of each of ``n`` pixels: one each when ``n <= blocks``, else ``blocks`` equal groups at random."""
    if n <= blocks:
        return np.arange(n), n
    order = rng.permutation(n)
    starts = np.linspace(0, n, blocks + 1).astype(int)[:-1]
    group = np.empty(n, dtype=np.int64)
    group[order] = np.searchsorted(starts, np.arange(n), side="right") - 1
    return group, blocks


def _groups(flat: np.ndarray, members: np.ndarray, w: np.ndarray, blocks: int, channels: slice,
            rng: np.random.Generator):
    """Weighted spectra of ``members`` summed into at most ``blocks`` random groups, and the sums of w**2 x.

    Only ``channels`` are summed; the results have that many columns.
    """
    lo, hi, step = channels.indices(flat.shape[1])
    if step != 1:
        raise ValueError("channels must be a contiguous slice")
    group, n_groups = random_groups(len(w), blocks, rng)
    return _group_sums(flat, members.astype(np.int64), group, np.asarray(w, np.float64), lo, max(hi, lo), n_groups)


@numba.njit(nogil=True, cache=True)
def _group_sums(flat, members, group, w, lo, hi, n_groups):  # pragma: no cover - compiled
    sums = np.zeros((n_groups, hi - lo))
    squares = np.zeros((n_groups, hi - lo))
    for i in range(members.size):
        row = flat[members[i]]
        total, weighted = sums[group[i]], squares[group[i]]
        wi = w[i]
        wi2 = wi * wi
        for j in range(hi - lo):
            x = row[lo + j]
            total[j] += wi * x
            weighted[j] += wi2 * x
    return sums, squares


def _scaled_poisson(mean: np.ndarray, variance: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws with the given mean and variance per channel: Poisson(mean**2/var) * var/mean.

    For unit weights the variance equals the mean and this is a plain Poisson draw.
    """
    if not n:
        return np.zeros((0, mean.size))
    positive = (mean > 0) & (variance > 0)
    gain = np.where(positive, variance / np.where(positive, mean, 1), 1.0)
    lam = np.where(positive, mean / gain, 0.0)
    return rng.poisson(lam, size=(n, mean.size)) * gain

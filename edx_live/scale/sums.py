"""Cluster sums accumulated a band of pixels at a time: the hard integer sums, and the samples quantification needs.

:func:`edx_live.quantify.samples.cluster_samples` reads the whole cube: per cluster, its pixels'
weighted spectra summed into at most ``blocks`` random groups (and the sums of w**2 x, the
counting variance), then counting replicas from the total and bootstrap resamplings of the
groups. Here each pixel's group is fixed first from the label map (held whole: one integer per
binned pixel), in the same way, and the group sums grow band by band. The stack built from them
is the one :func:`~edx_live.quantify.samples.cluster_samples` would build with the same groups;
neither the order of the bands nor their size changes any sum beyond float rounding.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from edx_live.quantify.samples import ClusterSamples, fill_cluster, random_groups


def pixel_groups(labels: np.ndarray, n_clusters: int, blocks: int, rng: np.random.Generator):
    """Each pixel's row in the group table (-1: in no cluster), and the groups of each cluster.

    A cluster of at most ``blocks`` pixels has one group per pixel; a larger one is cut into
    ``blocks`` groups at random, as :func:`edx_live.quantify.samples.cluster_samples` does.
    """
    lab = np.asarray(labels).ravel()
    row = np.full(lab.size, -1, dtype=np.int64)
    counts, offset = [], 0
    for k in range(n_clusters):
        members = np.flatnonzero(lab == k)
        group, n_groups = random_groups(len(members), blocks, rng)
        row[members] = offset + group
        counts.append(n_groups)
        offset += n_groups
    return row, np.array(counts, dtype=np.int64)


class GroupSums:
    """Weighted group sums of one label map, filled a band at a time.

    Parameters
    ----------
    labels : numpy.ndarray of int, shape (rows, columns)
    n_clusters : int
    weights : numpy.ndarray or None
        Membership of each pixel (None: 1).
    blocks : int
    channels : slice
        Channels summed (those the quantification reads).
    rng : numpy.random.Generator
    """

    def __init__(self, labels, n_clusters: int, weights, blocks: int, channels: slice, n_channels: int, rng):
        self.lab = np.asarray(labels).ravel()
        self.n_clusters = n_clusters
        self.w = (np.ones(self.lab.size) if weights is None
                  else np.clip(np.asarray(weights, dtype=np.float64).ravel(), 0, 1))
        self.row, self.groups = pixel_groups(self.lab, n_clusters, blocks, rng)
        lo, hi, step = channels.indices(n_channels)
        if step != 1:
            raise ValueError("channels must be a contiguous slice")
        self.lo, self.hi, self.n_channels = lo, max(hi, lo), n_channels
        self.sums = np.zeros((int(self.groups.sum()), self.hi - self.lo))
        self.squares = np.zeros_like(self.sums)

    def add(self, first_pixel: int, counts: np.ndarray) -> None:
        """Add the band of pixels ``first_pixel ..`` with counts (pixels, channels)."""
        index = np.arange(first_pixel, first_pixel + counts.shape[0])
        rows = self.row[index]
        inside = rows >= 0
        if not inside.any():
            return
        w = self.w[index[inside]]
        cols = np.flatnonzero(inside)
        shape = (self.sums.shape[0], counts.shape[0])
        x = counts[:, self.lo:self.hi].astype(np.float64)
        self.sums += sp.csr_matrix((w, (rows[inside], cols)), shape=shape) @ x
        self.squares += sp.csr_matrix((w * w, (rows[inside], cols)), shape=shape) @ x

    def samples(self, replicas: int, bootstrap: int, rng: np.random.Generator) -> ClusterSamples:
        """The stack of measured spectra, counting replicas and bootstrap samples of every cluster."""
        n = self.n_clusters
        stack = np.zeros((n, 1 + replicas + bootstrap, self.n_channels))
        keep = self.lab >= 0
        pixels = np.bincount(self.lab[keep], minlength=n)[:n]
        weight = np.bincount(self.lab[keep], weights=self.w[keep], minlength=n)[:n]
        bounds = np.concatenate([[0], np.cumsum(self.groups)])
        ch = slice(self.lo, self.hi)
        for k in range(n):
            fill_cluster(stack[k], self.sums[bounds[k]:bounds[k + 1]],
                         self.squares[bounds[k]:bounds[k + 1]].sum(axis=0), ch, replicas, bootstrap, rng)
        return ClusterSamples(stack, replicas, bootstrap, pixels, weight)

    @property
    def nbytes(self) -> int:
        return self.sums.nbytes + self.squares.nbytes


class HardSums:
    """Integer cluster-sum spectra over all channels, and pixels per cluster, filled a band at a time."""

    def __init__(self, labels, n_clusters: int, n_channels: int):
        self.lab = np.asarray(labels).ravel()
        self.spectra = np.zeros((n_clusters, n_channels), dtype=np.int64)
        keep = self.lab >= 0
        self.pixels = np.bincount(self.lab[keep], minlength=n_clusters)[:n_clusters].astype(np.int64)

    def add(self, first_pixel: int, counts: np.ndarray) -> None:
        lab = self.lab[first_pixel:first_pixel + counts.shape[0]]
        inside = np.flatnonzero(lab >= 0)
        if inside.size:
            onehot = sp.csr_matrix((np.ones(inside.size, dtype=np.int64), (lab[inside], inside)),
                                   shape=(self.spectra.shape[0], counts.shape[0]))
            self.spectra += onehot @ counts.astype(np.int64, copy=False)

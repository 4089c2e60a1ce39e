"""A density method's clusters made to hold still from one live refit to the next.

HDBSCAN on a UMAP embedding chooses between a merged and a split cluster by the
stability of density peaks in the embedding. Where one phase grades into another
(the Fe-rich shells of the FePt particles into the carbon support, seen in
projection) that choice flips with the layout: from one random seed to the next,
and from one live refit to the next as counts accumulate and UMAP moves the
layout again, even from the previous refit's layout. On the bundled demo the
cluster count went 3, 4, 2, 2, 3 and the label map never settled. Two steps make
the answer follow the counts instead:

- :func:`assign_noise`: HDBSCAN leaves a different few percent of the pixels
  unassigned at every refit (the agreement between refits counts each one); each
  goes to its most likely cluster under the clusters' Gaussian model in PCA space
  (means and pooled covariance, as merged mixed pixels do), with that posterior
  as its confidence.
- :func:`gathered` and :func:`icl`: the layout a refit hands on has each of its
  final clusters gathered towards its centroid, so that HDBSCAN finds exactly
  those clusters in it again. The next refit clusters that layout beside its own
  and keeps the previous clusters unless its own describe the counts clearly
  better: a lower ICL of their Gaussian model in PCA space (the criterion
  :class:`~edx_live.segment.PcaGmm` chooses its count by), by more than a margin
  per pixel. A cut that HDBSCAN happens to make differently in a new layout, or
  a boundary that moves by a few noisy pixels, no longer changes the answer; a
  better answer still replaces it, with its own layout.

A third step puts the boundaries where the counts put them:

- :func:`gaussian_boundaries`: UMAP draws a small phase's mixed rim into the
  phase's own cluster (its neighbourhood graph links a pixel to whichever side it
  shares a line with), so a grain's cluster came out twice the grain (116
  binned pixels for 59 of Ag-Cd particles). The clusters HDBSCAN found seed one
  EM step of a Gaussian mixture with a shared covariance in PCA space (what
  :class:`~edx_live.segment.PcaGmm` fits), weighted by their sizes, and a pixel
  whose posterior for another cluster is at least 0.9 moves there: a rim pixel to
  the phase that covers most of it. Undecided pixels stay, or the boundary would
  move with the noise at every refit (the demo's umap-hdbscan stopped converging).

Pure code: no I/O.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from .mixing import classify, gaussian_model, whiten


def assign_noise(data: np.ndarray, labels: np.ndarray, strength: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Give every unassigned pixel (label < 0) its most likely cluster; returns labels, strength, pixels placed."""
    noise = labels < 0
    model = gaussian_model(data[~noise], labels[~noise]) if np.any(noise) else None
    if model is None:
        return labels, strength, 0
    labels, strength = labels.copy(), strength.copy()
    labels[noise], strength[noise] = classify(data[noise], *model)
    return labels, strength, int(noise.sum())


def gaussian_boundaries(data: np.ndarray, labels: np.ndarray, strength: np.ndarray, decisive: float = 0.9,
                        random_state=None) -> tuple[np.ndarray, np.ndarray, int]:
    """Each assigned pixel to its most probable cluster, after one EM step seeded by ``labels``, if decisive.

    The seed is the clusters' means, pooled covariance and sizes (a Gaussian mixture with
    a shared covariance, scikit-learn's ``covariance_type="tied"``). A pixel moves only when
    its posterior for its most probable cluster is at least ``decisive``; an undecided pixel
    keeps its cluster, so that noise does not move a boundary from one refit to the next.
    Returns labels (clusters left empty removed, the rest renumbered in order), strength
    (the posterior of the pixel's cluster) and how many pixels moved. Pixels with label < 0
    stay unassigned.
    """
    keep = labels >= 0
    model = gaussian_model(data[keep], labels[keep]) if np.any(keep) else None
    if model is None or model[0].shape[0] < 2:
        return labels, strength, 0
    means, covariance = model
    k = means.shape[0]
    weights = np.bincount(labels[keep], minlength=k) / np.count_nonzero(keep)
    mixture = GaussianMixture(k, covariance_type="tied", weights_init=weights, means_init=means,
                              precisions_init=np.linalg.inv(covariance), max_iter=1, random_state=random_state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mixture.fit(data[keep])
    posterior = mixture.predict_proba(data[keep])
    chosen = posterior.argmax(axis=1)
    undecided = posterior.max(axis=1) < decisive
    chosen[undecided] = labels[keep][undecided]
    used = np.unique(chosen)
    renumber = np.full(k, -1, dtype=np.int64)
    renumber[used] = np.arange(used.size)
    out, out_strength = labels.copy(), strength.copy()
    changed = int(np.count_nonzero(chosen != labels[keep]))
    out[keep], out_strength[keep] = renumber[chosen], posterior[np.arange(chosen.size), chosen]
    return out, out_strength, changed


def icl(data: np.ndarray, labels: np.ndarray) -> float:
    """ICL of the clusters of ``labels`` as a Gaussian mixture with a shared covariance (lower is better).

    The mixture's means, covariance and weights are those of the clusters; ICL is
    its BIC plus twice the entropy of the memberships (Biernacki, Celeux & Govaert
    2000), as :class:`~edx_live.segment.PcaGmm` chooses its cluster count. Noise
    (label < 0) is left out; inf when the model is undefined.
    """
    keep = labels >= 0
    model = gaussian_model(data[keep], labels[keep])
    if model is None:
        return float("inf")
    means, covariance = model
    x = data[keep]
    n, d = x.shape
    k = means.shape[0]
    weights = np.bincount(labels[keep], minlength=k) / n
    w, w_means = whiten(x, covariance), whiten(means, covariance)
    log_det = 2.0 * np.sum(np.log(np.diag(np.linalg.cholesky(covariance))))
    log_p = (np.log(weights)[None, :] - 0.5 * ((w[:, None, :] - w_means[None, :, :]) ** 2).sum(axis=2)
             - 0.5 * (d * np.log(2 * np.pi) + log_det))
    top = log_p.max(axis=1, keepdims=True)
    log_like = top[:, 0] + np.log(np.exp(log_p - top).sum(axis=1))
    resp = np.exp(log_p - log_like[:, None])
    entropy = -float(np.sum(resp * np.log(np.clip(resp, 1e-300, None))))
    params = k * d + d * (d + 1) / 2 + (k - 1)
    return float(-2.0 * log_like.sum() + params * np.log(n) + 2.0 * entropy)


def gathered(embedding: np.ndarray, labels: np.ndarray, spread: float) -> np.ndarray:
    """``embedding`` with each cluster drawn in around its centroid: what a refit hands on.

    A cluster whose root-mean-square distance from its centroid exceeds ``spread``
    times that of the whole layout is shrunk to it, so that HDBSCAN finds exactly
    the clusters this refit settled on (after merges) when the next refit clusters
    the layout again; a tight cluster, and an unassigned point, stay where they are.
    Gathering a gathered layout changes nothing.
    """
    out = np.array(embedding, dtype=np.float64, copy=True)
    if out.size == 0:
        return out
    limit = spread * np.sqrt(np.mean(np.sum((out - out.mean(axis=0)) ** 2, axis=1)))
    for c in np.unique(labels[labels >= 0]):
        members = labels == c
        offset = out[members] - out[members].mean(axis=0)
        rms = np.sqrt(np.mean(np.sum(offset ** 2, axis=1)))
        if rms > limit > 0:
            out[members] -= offset * (1.0 - limit / rms)
    return out

"""The change point of a PCA scree plot: how many components carry signal.

The criterion is the *knee of the log scree*: on the curve of
``log10(explained variance ratio)`` against component number, over the first
``max_components`` components, the knee is the component farthest below the
straight line (chord) joining the first and the last point. Components
``1..knee`` are kept.

Why this one:

- Poisson noise gives a flat, slowly decaying tail of eigenvalues, while each
  chemically distinct signal adds one component far above it. On a log scale
  the curve is therefore a steep drop followed by a near-straight tail, and
  the point farthest from the chord is where the drop meets the tail (the
  "elbow" a person reads off a scree plot, made reproducible; the same
  geometry as the Kneedle detector of Satopaa et al., 2011).
- The log makes it scale-free: only ratios of variances matter, so the answer
  does not depend on the counts accumulated so far or on the scaling used.
- The knee itself is kept (the first component at the noise floor). Dropping
  a weak but real component loses a phase for good, while one extra noise
  component costs the Gaussian mixture little.

On the FePt core/shell data (RobustScaler on counts) this keeps 3 components;
with Poisson scaling and 8x energy rebinning it keeps 4.
"""

from __future__ import annotations

import numpy as np

METHOD = "knee of log10 explained-variance ratio: farthest below the chord from first to last component"


def scree_knee(explained_variance_ratio, max_components: int | None = None) -> tuple[int, np.ndarray]:
    """Number of components up to the knee of the log scree plot.

    Parameters
    ----------
    explained_variance_ratio : array-like of float, shape (n,)
        Sorted in decreasing order, as ``PCA.explained_variance_ratio_``.
    max_components : int, optional
        Only the first ``max_components`` components are considered (all by default).

    Returns
    -------
    n_components : int
        Components to keep, between 1 and the number considered.
    distance : numpy.ndarray of float, shape (m,)
        Distance of each point below the chord, in decades (the criterion per candidate).
    """
    ratios = np.asarray(explained_variance_ratio, dtype=np.float64)[:max_components]
    m = ratios.size
    if m == 0:
        raise ValueError("empty scree")
    # Components with no variance at all (rank-deficient data) sit at the
    # floor; a tiny positive floor keeps the log finite without moving the knee.
    floor = max(float(np.nanmax(ratios)) * 1e-12, np.finfo(np.float64).tiny)
    y = np.log10(np.clip(np.nan_to_num(ratios, nan=0.0), floor, None))
    if m < 3:
        return m, np.zeros(m)
    x = np.arange(m, dtype=np.float64)
    chord = y[0] + (y[-1] - y[0]) * x / (m - 1)
    # Perpendicular distance in (component, decade) units; dividing by the
    # chord length does not move the maximum but keeps values comparable.
    distance = (chord - y) / np.hypot(1.0, (y[-1] - y[0]) / (m - 1))
    return int(np.argmax(distance)) + 1, distance


def pca_to_knee(data: np.ndarray, max_components: int, n_components: int | None, random_state):
    """PCA of ``data`` keeping the components up to the scree knee, or ``n_components`` if given.

    Returns
    -------
    scores : numpy.ndarray, shape (n_samples, kept)
    pca : sklearn.decomposition.PCA
        Fitted with ``max_components`` (bounded by the data's shape).
    info : dict
        ``kept``, ``method``, ``scree`` (explained-variance ratios) and ``scree_distance``, JSON-friendly.
    """
    from sklearn.decomposition import PCA

    m = max(1, min(max_components, *data.shape))
    pca = PCA(n_components=m, random_state=random_state).fit(data)
    knee, distance = scree_knee(pca.explained_variance_ratio_)
    kept = knee if n_components is None else max(1, min(int(n_components), m))
    info = {"kept": kept, "method": METHOD if n_components is None else "user",
            "scree": [float(v) for v in pca.explained_variance_ratio_],
            "scree_distance": [float(v) for v in distance]}
    return pca.transform(data)[:, :kept], pca, info

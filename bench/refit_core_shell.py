"""Refit wall time of each workflow on the bundled FePt data, after warm-up.

Beside each: the study's workflow as written (RobustScaler on raw counts, PCA to
the same number of components then GaussianMixture; UMAP to 4 dimensions then
HDBSCAN), timed in the same run, so the ratio holds on a noisy shared machine.
"""

from __future__ import annotations

import statistics
import time

import numpy as np


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _as_written(X: np.ndarray, workflow: str, n_components: int, n_clusters: int, min_cluster_size: int):
    import hdbscan
    import umap
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture
    from sklearn.preprocessing import RobustScaler

    Z = RobustScaler().fit_transform(X)
    if workflow == "pca-gmm":
        scores = PCA(n_components=n_components, random_state=0).fit_transform(Z)
        return GaussianMixture(n_clusters, random_state=0).fit_predict(scores)
    emb = umap.UMAP(n_components=4, random_state=0).fit_transform(Z)
    return hdbscan.HDBSCAN(min_cluster_size=min_cluster_size).fit_predict(emb)


def main(repeats: int = 3) -> None:
    import hyperspy.api as hs

    from edx_live.config import load_settings
    from edx_live.segment import PcaGmm, UmapHdbscan, segment, warm_up
    from edx_live.shell.demo import bundled_dataset

    s = hs.load(bundled_dataset())
    cube = s.data.reshape(32, 2, 32, 2, -1).sum(axis=(1, 3))
    X = cube.reshape(-1, cube.shape[-1]).astype(float)
    ax = s.axes_manager.signal_axes[0]
    warm_up()
    p, u = load_settings().pca_gmm, load_settings().umap_hdbscan
    estimators = {"pca-gmm": PcaGmm(random_state=p.random_state),
                  "umap-hdbscan": UmapHdbscan(min_cluster_size=u.min_cluster_size, random_state=u.random_state)}
    print(f"refit on core_shell.hspy binned 2x2: {cube.shape[0]}x{cube.shape[1]} pixels x {cube.shape[2]} channels,"
          f" median of {repeats}")
    for name, est in estimators.items():
        result = segment(cube, est, name, offset_kev=ax.offset, scale_kev=ax.scale)
        ours = _time(lambda: segment(cube, est, name, offset_kev=ax.offset, scale_kev=ax.scale), repeats)
        n_comp = int(result.choices.get("n_components", result.choices.get("pca_components", 3)))
        base = _time(lambda: _as_written(X, name, n_comp, result.n_clusters, 20), repeats)
        print(f"  {name:13s} {ours:6.2f} s   as written {base:6.2f} s   ratio {base / ours:5.2f}x   "
              f"({result.n_clusters} clusters)")


if __name__ == "__main__":
    main()

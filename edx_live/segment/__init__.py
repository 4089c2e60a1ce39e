"""The two segmentation workflows of the study, as scikit-learn-style estimators.

- :class:`PcaGmm`: PCA to the scree change point, Gaussian mixture with the
  cluster count chosen by ICL (or given).
- :class:`UmapHdbscan`: UMAP to 4 dimensions, HDBSCAN; ``min_cluster_size`` is
  the pixels the smallest feature of interest covers.
- :func:`segment`: fit a fresh clone on a binned spectrum image and return an
  immutable :class:`SegmentationResult`.
- :func:`warm_up`: compile UMAP/HDBSCAN's numba code before the first refit.

Pure code: no sockets, threads or sleeps.
"""

from .pca_gmm import PcaGmm
from .result import NOISE, SegmentationResult, cluster_sums
from .run import order_by_size, segment
from .umap_hdbscan import UmapHdbscan, default_min_cluster_size, default_min_samples, warm_up

__all__ = ["NOISE", "PcaGmm", "SegmentationResult", "UmapHdbscan", "cluster_sums", "default_min_cluster_size",
           "default_min_samples", "order_by_size", "segment", "warm_up"]

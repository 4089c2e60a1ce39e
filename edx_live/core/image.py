"""The simultaneous image of one acquisition (HAADF, ADF...), accumulated sweep by sweep. Pure.

Images arrive as blocks of whole scan rows, one sweep at a time. The
accumulator keeps the sum of every pixel (float64, so integer images up to
2**32 stay exact for millions of sweeps) and how many images reached each
row. Every message covers whole rows, so a count per row is a count per
pixel; the mean of a pixel is its sum over its row's count, exactly.
"""

from __future__ import annotations

import numpy as np

from .accumulator import FrameRejected


class ImageAccumulator:
    """Sum and count of the images of one acquisition, for the mean image.

    Parameters
    ----------
    scan_shape : tuple of int
        (rows, columns) of the scan.
    detector : str
        The image detector; every image of the acquisition must name it.

    Attributes
    ----------
    detector : str
    messages : int
        Image messages accepted (the service republishes the mean when it grows).
    """

    def __init__(self, scan_shape: tuple[int, int], detector: str):
        self.scan_shape = tuple(int(n) for n in scan_shape)
        self.detector = detector
        self.messages = 0
        self._sum = np.zeros(self.scan_shape, dtype=np.float64)
        self._count = np.zeros(self.scan_shape[0], dtype=np.uint32)
        self._sweeps: set[int] = set()

    @property
    def sweeps(self) -> int:
        """Sweeps whose image, or at least one row of it, was received."""
        return len(self._sweeps)

    @property
    def mean(self) -> np.ndarray:
        """The mean image (rows, columns) as float32; rows no image has reached yet are 0."""
        count = np.maximum(self._count, 1).astype(np.float64)[:, None]
        return (self._sum / count).astype(np.float32)

    def check(self, image: np.ndarray, first_row: int, detector: str) -> None:
        """Raise :class:`FrameRejected` when ``image`` does not fit this acquisition; changes nothing."""
        rows, columns = self.scan_shape
        if detector != self.detector:
            raise FrameRejected("detector_mismatch", f"image of detector {detector!r}; this acquisition's images "
                                                     f"come from {self.detector!r}")
        if image.shape[1] != columns:
            raise FrameRejected("shape_mismatch", f"image has {image.shape[1]} columns, the scan {columns}")
        if first_row + image.shape[0] > rows:
            raise FrameRejected("pixel_out_of_range", f"image rows {first_row} to {first_row + image.shape[0] - 1} "
                                                      f"run past the scan's {rows} rows")
        if image.dtype.kind == "f" and not np.isfinite(image).all():
            raise FrameRejected("not_finite", f"image holds {int(np.count_nonzero(~np.isfinite(image)))} NaN or "
                                              f"infinite values")

    def add(self, image: np.ndarray, first_row: int, frame_index: int, detector: str) -> None:
        """Add a block of rows of sweep ``frame_index``, after :meth:`check`."""
        self.check(image, first_row, detector)
        rows = slice(first_row, first_row + image.shape[0])
        self._sum[rows] += image
        self._count[rows] += 1
        self.messages += 1
        if image.shape[0]:
            self._sweeps.add(int(frame_index))

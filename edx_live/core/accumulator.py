"""The accumulated spectrum image of one acquisition, at the scan's full resolution."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels
from .memory import zeroed


class FrameRejected(ValueError):
    """A frame that is well formed but does not fit the acquisition; nothing was accumulated."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class EnergySelection:
    """Which detector channels are kept, and how many are summed into one.

    Attributes
    ----------
    lo : int
        First detector channel kept.
    rebin : int
        Detector channels per accumulated channel.
    channels : int
        Accumulated channels; detector channels ``lo .. lo + channels * rebin - 1`` are kept.
    offset_kev, scale_kev : float
        Calibration of the accumulated channels (centre of each summed bin).
    """

    lo: int
    rebin: int
    channels: int
    offset_kev: float
    scale_kev: float

    @classmethod
    def from_range(cls, offset_kev: float, scale_kev: float, detector_channels: int,
                   min_kev: float | None = None, max_kev: float | None = None,
                   rebin: int = 1) -> "EnergySelection":
        """Select channels whose centre lies in [min_kev, max_kev] (None = no limit)."""
        if rebin < 1:
            raise ValueError(f"energy rebin must be >= 1, got {rebin}")
        lo = 0 if min_kev is None else int(np.ceil((min_kev - offset_kev) / scale_kev))
        hi = detector_channels if max_kev is None else int(np.floor((max_kev - offset_kev) / scale_kev)) + 1
        lo, hi = max(lo, 0), min(hi, detector_channels)
        channels = (hi - lo) // rebin
        if channels < 1:
            raise ValueError(f"energy range [{min_kev}, {max_kev}] keV with rebin {rebin} keeps no channel "
                             f"of the detector's {offset_kev:.3f}..{offset_kev + detector_channels * scale_kev:.3f} keV")
        centre = offset_kev + (lo + (rebin - 1) / 2) * scale_kev
        return cls(lo, rebin, channels, float(centre), float(scale_kev * rebin))


class Accumulator:
    """Counts per (pixel, kept channel) for one acquisition.

    Parameters
    ----------
    scan_shape : tuple of int
        (rows, columns) of the scan.
    detector_channels : int
        Channels of the detector as announced by the acquisition start.
    selection : EnergySelection
        Energy crop and rebin applied while accumulating.
    dtype : numpy dtype
        Storage type; uint32 holds 4e9 counts per pixel and channel.
    """

    def __init__(self, scan_shape: tuple[int, int], detector_channels: int,
                 selection: EnergySelection, dtype=np.uint32):
        self.scan_shape = tuple(int(n) for n in scan_shape)
        self.detector_channels = int(detector_channels)
        self.selection = selection
        self.n_pixels = self.scan_shape[0] * self.scan_shape[1]
        self._flat = zeroed((self.n_pixels, selection.channels), dtype, populate_in_background=True)
        self.counts = 0  # counts inside the kept energy range
        self.events = 0  # counts received, kept or not
        self._limit = int(np.iinfo(self._flat.dtype).max)
        self._headroom = self._limit  # no cell can be above limit - headroom
        self._saturated = False  # some cell is within one message of the limit: check touched cells

    @staticmethod
    def nbytes_for(scan_shape: tuple[int, int], selection: EnergySelection, dtype=np.uint32) -> int:
        """Bytes the cube of an acquisition would take, before it is allocated."""
        return int(scan_shape[0]) * int(scan_shape[1]) * selection.channels * np.dtype(dtype).itemsize

    @property
    def cube(self) -> np.ndarray:
        """The accumulated spectrum image, (rows, columns, channels); a view, do not modify."""
        return self._flat.reshape(*self.scan_shape, -1)

    def clear(self) -> None:
        """Discard every count (a reset): the cube is zero again, its memory kept."""
        self._flat[...] = 0
        self.counts = self.events = 0
        self._headroom, self._saturated = self._limit, False

    def add_events(self, pixel: np.ndarray, channel: np.ndarray) -> int:
        """Add X-ray events; return the number inside the kept energy range."""
        if pixel.size:
            self._check_pixels(int(pixel.max()), "event")
            self._check_channel(int(channel.max()))
            self._reserve(pixel.size, lambda: self._cells_max(pixel, channel))
        return self._account(pixel.size, kernels.add_events(
            self._flat, pixel, channel, self.selection.lo, self.selection.rebin))

    def add_velox(self, stream: np.ndarray, pixel_start: int) -> int:
        """Add a Velox SpectrumStream chunk whose first value belongs to ``pixel_start``."""
        max_channel, last, events, markers = kernels.velox_extent(stream)
        # A closing marker after the last pixel is allowed; reaching further is not, even without X-rays.
        if pixel_start + markers > self.n_pixels:
            raise FrameRejected("pixel_out_of_range", f"stream from pixel {pixel_start} closes {markers} pixels, "
                                                      f"the scan {self.scan_shape} has {self.n_pixels}")
        if events:
            self._check_pixels(pixel_start + last, "stream")
            self._check_channel(max_channel)
            self._reserve(events, lambda: self._cells_max(*_velox_events(stream, pixel_start)))
        return self._account(events, kernels.add_velox(
            self._flat, stream, pixel_start, self.selection.lo, self.selection.rebin))

    def add_dense(self, counts: np.ndarray, pixel_start: int) -> int:
        """Add whole spectra (pixels, detector channels) for pixels from ``pixel_start`` on."""
        if counts.shape[1] != self.detector_channels:
            raise FrameRejected("shape_mismatch", f"dense block has {counts.shape[1]} channels, "
                                                  f"the acquisition {self.detector_channels}")
        if pixel_start + counts.shape[0] > self.n_pixels:  # an empty block must start inside the scan too
            raise FrameRejected("pixel_out_of_range", f"dense block of {counts.shape[0]} pixels from pixel "
                                                      f"{pixel_start} runs past the scan's {self.n_pixels}")
        if counts.size:
            rows = slice(pixel_start, pixel_start + counts.shape[0])
            self._reserve(int(counts.max()) * self.selection.rebin, lambda: self._flat[rows].max(initial=0))
        return self._account(*kernels.add_dense(self._flat, counts, pixel_start, self.selection.lo,
                                                self.selection.rebin))

    def binned(self, factor: int) -> np.ndarray:
        """Spectrum image summed over ``factor`` x ``factor`` pixels.

        Scans whose sides are not multiples of ``factor`` leave the last row or
        column of bins covering fewer pixels. The result is uint32 (half the
        memory of uint64) while the acquisition holds fewer than 2**31 counts, so
        no bin can overflow even if that many more arrive while it is summed;
        uint64 after that.
        """
        rows, columns = self.scan_shape
        bins = (-(-rows // factor), -(-columns // factor))  # ceiling division
        dtype = np.uint32 if self.events < 2**31 else np.uint64
        out = zeroed((bins[0] * bins[1], self.selection.channels), dtype)
        kernels.bin_pixels(self._flat, columns, factor, out)
        return out.reshape(*bins, -1)

    def _reserve(self, increment: int, touched) -> None:
        """Refuse a message that could push a cell past the cube's dtype.

        ``increment`` bounds the message's largest addition to one cell; ``touched()``
        returns the largest count now in the cells it adds to. The headroom is a
        lower bound on what every cell can still take: it shrinks by each message's
        bound and is measured exactly (one pass over the cube) only when it runs
        out, after 4e9 counts with uint32. Once some cell is nearly full, each
        message is checked against the cells it touches instead, so that one full
        cell does not refuse the rest of the acquisition.
        """
        if not self._saturated:
            if increment > self._headroom:
                self._headroom = self._limit - int(self._flat.max())
            if increment <= self._headroom:
                self._headroom -= increment
                return
            self._saturated = True
        fullest = int(touched())
        if fullest + increment > self._limit:
            raise FrameRejected("count_overflow", f"a message adding up to {increment} counts to a cell holding "
                                                  f"{fullest} would exceed {self._limit}, the most a cell of the "
                                                  f"cube's {self._flat.dtype} holds")

    def _cells_max(self, pixel: np.ndarray, channel: np.ndarray) -> int:
        """Largest count in the cells that events at (pixel, detector channel) add to."""
        c = (channel.astype(np.int64) - self.selection.lo) // self.selection.rebin
        kept = (channel >= self.selection.lo) & (c < self.selection.channels)
        return int(self._flat[pixel[kept], c[kept]].max(initial=0))

    def _account(self, events: int, kept: int) -> int:
        self.events += int(events)
        self.counts += int(kept)
        return int(kept)

    def _check_pixels(self, highest: int, what: str) -> None:
        if highest >= self.n_pixels:
            raise FrameRejected("pixel_out_of_range", f"{what} reaches pixel {highest}, the scan "
                                                      f"{self.scan_shape} has {self.n_pixels}")

    def _check_channel(self, highest: int) -> None:
        if highest >= self.detector_channels:
            raise FrameRejected("channel_out_of_range", f"channel {highest} >= the acquisition's "
                                                        f"{self.detector_channels} channels")


def _velox_events(stream: np.ndarray, pixel_start: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixel, channel) of every X-ray of a SpectrumStream chunk (for the rare overflow check)."""
    marker = stream == kernels.NEXT_PIXEL
    pixel = pixel_start + np.cumsum(marker) - marker
    return pixel[~marker], stream[~marker]

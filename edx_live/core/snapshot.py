"""A snapshot of an acquisition for one refit: the binned spectrum image and what it holds."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from edx_protocol import Start

from .ingest import Acquisition


@dataclass(frozen=True)
class Snapshot:
    """Input of one refit.

    Attributes
    ----------
    start : Start
        The acquisition's start message (scan, energy axis, beam, detectors, elements).
    cube : numpy.ndarray of uint32 (uint64 past 2**31 counts), shape (rows, columns, channels), or None
        Spectrum image summed over ``bin_factor`` x ``bin_factor`` pixels; None in the
        description a result keeps (:meth:`described`).
    bin_factor : int
    offset_kev, scale_kev : float
        Calibration of the cube's channels (after energy crop and rebin).
    frames, counts : int
        Sweeps and counts accumulated when the snapshot was taken; the cube holds at least these counts.
    refit : int
        Index of this refit within the acquisition.
    final : bool
        True for the refit after the acquisition stopped.
    elapsed_s : float or None
        Seconds from the acquisition's start to the snapshot, when the caller knows them.
    """

    start: Start
    cube: np.ndarray
    bin_factor: int
    offset_kev: float
    scale_kev: float
    frames: int
    counts: int
    refit: int
    final: bool
    elapsed_s: float | None = None

    def described(self) -> "Snapshot":
        """This snapshot without its cube: what results keep, so the cube's memory is freed after the refit."""
        return replace(self, cube=None)


def take_snapshot(acq: Acquisition, bin_factor: int, refit: int, final: bool,
                  elapsed_s: float | None = None) -> Snapshot:
    """Bin the acquisition's cube now; frames and counts are read first so the cube holds at least them."""
    acc = acq.accumulator
    frames, counts = acq.frames, acc.counts
    cube = acc.binned(bin_factor)
    sel = acc.selection
    return Snapshot(acq.start, cube, bin_factor, sel.offset_kev, sel.scale_kev, frames, counts, refit, final,
                    elapsed_s)

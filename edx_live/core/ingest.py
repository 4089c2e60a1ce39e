"""Ingest: decoded messages in, accumulated acquisitions out. Pure: no sockets, no logging.

:class:`Ingest` never raises on bad input. :meth:`Ingest.receive` returns an
:class:`Outcome` that says what happened (accepted, or rejected with a reason
code) so the shell can count, log and move on; a rejected message leaves every
accumulated count as it was.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from edx_protocol import DenseFrame, EventsFrame, ProtocolError, Start, Stop, VeloxFrame, decode

from .accumulator import Accumulator, EnergySelection, FrameRejected

#: Missing seq ranges kept per acquisition (the count is always exact).
MAX_GAP_RANGES = 100


@dataclass
class Acquisition:
    """The state of one acquisition, from its start message on."""

    start: Start
    accumulator: Accumulator
    state: str = "acquiring"  # then "stopped"
    next_seq: int = 1
    messages: int = 1
    frames: int = 0  # sweeps with data so far (highest frame_index + 1), or the stop's count
    stop_reason: str | None = None
    missing: int = 0
    gap_ranges: list[tuple[int, int]] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)
    detector_counts: Counter = field(default_factory=Counter)

    @property
    def acquisition_id(self) -> str:
        return self.start.acquisition_id

    def note_seq(self, seq: int) -> None:
        """Record a gap if ``seq`` skips ahead; duplicates are refused before this."""
        if seq > self.next_seq:
            self.missing += seq - self.next_seq
            self.gap_ranges.append((self.next_seq, seq - 1))
            del self.gap_ranges[:-MAX_GAP_RANGES]
        self.next_seq = seq + 1


@dataclass(frozen=True)
class Outcome:
    """What one message did.

    ``kind`` is ``start``, ``frame``, ``stop`` or ``rejected``; ``reason`` and
    ``detail`` say why a message was rejected; ``gap`` is the seq range that a
    message revealed as missing, if any.
    """

    kind: str
    acquisition_id: str | None = None
    seq: int | None = None
    counts: int = 0
    reason: str | None = None
    detail: str | None = None
    gap: tuple[int, int] | None = None
    replaced: "Acquisition | None" = None  # an unfinished acquisition this start closed


@dataclass(frozen=True)
class AccumulateSettings:
    """Energy crop and rebin applied while accumulating (None = keep everything)."""

    energy_min_kev: float | None = None
    energy_max_kev: float | None = None
    energy_rebin: int = 1


class Ingest:
    """Feeds messages into the current acquisition and keeps count of everything.

    Parameters
    ----------
    settings : AccumulateSettings
    """

    def __init__(self, settings: AccumulateSettings | None = None):
        self.settings = settings or AccumulateSettings()
        self.current: Acquisition | None = None
        self.rejected: Counter = Counter()  # by reason, over all acquisitions
        self.accepted = 0

    def receive(self, frames: Sequence) -> Outcome:
        """Decode and apply one multipart message."""
        try:
            header, arrays = decode(frames)
        except ProtocolError as exc:
            return self._reject(exc.reason, exc.detail, None, None)
        return self.apply(header, arrays)

    def apply(self, header, arrays: dict[str, np.ndarray]) -> Outcome:
        """Apply an already decoded message."""
        if isinstance(header, Start):
            return self._start(header)
        acq = self.current
        if acq is None or acq.acquisition_id != header.acquisition_id or acq.state != "acquiring":
            open_id = acq.acquisition_id if acq is not None and acq.state == "acquiring" else None
            return self._reject("unknown_acquisition", f"{header.kind} for {header.acquisition_id!r}, "
                                f"open acquisition: {open_id!r}", header, acq)
        if header.seq < acq.next_seq:
            return self._reject("duplicate_seq", f"seq {header.seq} already seen (next is {acq.next_seq})",
                                header, acq)
        try:
            counts = self._stop(acq, header) if isinstance(header, Stop) else self._frame(acq, header, arrays)
        except FrameRejected as exc:
            return self._reject(exc.reason, exc.detail, header, acq)
        gap = (acq.next_seq, header.seq - 1) if header.seq > acq.next_seq else None
        acq.note_seq(header.seq)
        acq.messages += 1
        self.accepted += 1
        return Outcome(header.kind, acq.acquisition_id, header.seq, counts, gap=gap)

    def _start(self, start: Start) -> Outcome:
        acq = self.current
        if acq is not None and acq.acquisition_id == start.acquisition_id:
            return self._reject("duplicate_seq", f"start of {start.acquisition_id!r} seen already", start, acq)
        try:
            selection = EnergySelection.from_range(
                start.energy_axis.offset_kev, start.energy_axis.scale_kev, start.energy_axis.channels,
                self.settings.energy_min_kev, self.settings.energy_max_kev, self.settings.energy_rebin)
        except ValueError as exc:
            return self._reject("energy_range", str(exc), start, None)
        replaced = acq if acq is not None and acq.state == "acquiring" else None
        if replaced is not None:  # its producer never sent a stop: close it, keep its counts
            replaced.state, replaced.stop_reason = "stopped", "replaced"
        self.current = Acquisition(start, Accumulator(start.scan_shape, start.energy_axis.channels, selection))
        if start.seq > 0:
            self.current.note_seq(start.seq)
        self.accepted += 1
        return Outcome("start", start.acquisition_id, start.seq, replaced=replaced)

    def _frame(self, acq: Acquisition, header, arrays: dict[str, np.ndarray]) -> int:
        acc = acq.accumulator
        if isinstance(header, EventsFrame):
            counts = acc.add_events(arrays["pixel"], arrays["channel"])
            if "detector" in arrays:
                per_detector = np.bincount(arrays["detector"], minlength=1)  # linear; np.unique sorts
                acq.detector_counts.update({int(d): int(c) for d, c in enumerate(per_detector) if c})
        elif isinstance(header, VeloxFrame):
            counts = acc.add_velox(arrays["stream"], header.pixel_start)
            acq.detector_counts[header.detector or 0] += counts
        elif isinstance(header, DenseFrame):
            counts = acc.add_dense(arrays["counts"], header.pixel_start)
        else:  # a new payload in the models without a handler here
            raise FrameRejected("unsupported_payload", type(header).__name__)
        acq.frames = max(acq.frames, header.frame_index + 1)
        return counts

    @staticmethod
    def _stop(acq: Acquisition, stop: Stop) -> int:
        acq.state = "stopped"
        acq.stop_reason = stop.reason
        acq.frames = max(acq.frames, stop.frames)
        return 0

    def _reject(self, reason: str, detail: str, header, acq: Acquisition | None) -> Outcome:
        self.rejected[reason] += 1
        if acq is not None:
            acq.rejected[reason] += 1
        return Outcome("rejected", getattr(header, "acquisition_id", None), getattr(header, "seq", None),
                       reason=reason, detail=detail)

"""Ingest: decoded messages in, accumulated acquisitions out. Pure: no sockets, no logging.

:class:`Ingest` never raises on bad input. :meth:`Ingest.receive` returns an
:class:`Outcome` that says what happened (accepted, or rejected with a reason
code) so the shell can count, log and move on; a rejected message leaves every
accumulated count as it was.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from edx_protocol import DenseFrame, EventsFrame, Image, ProtocolError, Start, Stop, VeloxFrame, decode

from .accumulator import Accumulator, EnergySelection, FrameRejected
from .image import ImageAccumulator
from .rate import CountRate

#: Missing seq ranges kept per acquisition (the count is always exact). A message resent into a kept
#: range fills it; one older than the kept ranges is refused as a duplicate.
MAX_GAP_RANGES = 10_000

#: Reason codes of the messages Ingest refuses (decode's own are in edx_protocol.codec).
REASONS = ("too_large", "unknown_acquisition", "duplicate_seq", "seq_out_of_window", "pixel_out_of_range",
           "channel_out_of_range", "detector_out_of_range", "shape_mismatch", "energy_range", "count_overflow",
           "acquisition_too_large", "too_many_acquisitions", "out_of_memory", "unsupported_payload",
           "detector_mismatch", "not_finite")


@dataclass
class Acquisition:
    """The state of one acquisition, from its start message on."""

    start: Start
    accumulator: Accumulator
    state: str = "acquiring"  # then "stopped"
    next_seq: int = 1
    messages: int = 1
    frames: int = 0  # sweeps with data so far: highest frame_index + 1
    stop_frames: int | None = None  # the sweeps the stop says were completed
    stop_reason: str | None = None
    missing: int = 0
    gap_ranges: list[tuple[int, int]] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)
    detector_counts: Counter = field(default_factory=Counter)
    images: ImageAccumulator | None = None  # from the first image message on
    rate: CountRate = field(default_factory=CountRate)  # sampled by the service

    @property
    def image(self) -> np.ndarray | None:
        """The mean simultaneous image (rows, columns), float32; None before the first image."""
        return self.images.mean if self.images is not None and self.images.sweeps else None

    @property
    def image_detector(self) -> str | None:
        """The detector of :attr:`image` (e.g. ``"HAADF"``); None before the first image."""
        return self.images.detector if self.images is not None and self.images.sweeps else None

    @property
    def acquisition_id(self) -> str:
        return self.start.acquisition_id

    @property
    def n_detectors(self) -> int:
        return len(self.start.detectors)

    def note_seq(self, seq: int) -> None:
        """Record a gap if ``seq`` skips ahead, or fill one if ``seq`` was missing; duplicates are refused before."""
        if seq < self.next_seq:
            self._fill(seq)
            return
        if seq > self.next_seq:
            self.missing += seq - self.next_seq
            self.gap_ranges.append((self.next_seq, seq - 1))
            del self.gap_ranges[:-MAX_GAP_RANGES]
        self.next_seq = seq + 1

    def was_missing(self, seq: int) -> bool:
        """Whether ``seq``, behind the next expected one, is in a known gap (a resend that fills it)."""
        i = bisect.bisect_right(self.gap_ranges, (seq, float("inf"))) - 1
        return i >= 0 and self.gap_ranges[i][0] <= seq <= self.gap_ranges[i][1]

    def _fill(self, seq: int) -> None:
        i = bisect.bisect_right(self.gap_ranges, (seq, float("inf"))) - 1
        first, last = self.gap_ranges[i]
        self.gap_ranges[i:i + 1] = [r for r in ((first, seq - 1), (seq + 1, last)) if r[0] <= r[1]]
        self.missing -= 1


@dataclass(frozen=True)
class Outcome:
    """What one message did.

    ``kind`` is ``start``, ``frame``, ``image``, ``stop`` or ``rejected``; ``reason`` and
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
class IngestOptions:
    """Energy crop and rebin applied while accumulating (None = keep everything), and the limits of input.

    Attributes
    ----------
    max_message_bytes : int
        Largest message (all frames) accepted; larger ones are refused as ``too_large``.
    max_cube_bytes : int
        Largest spectrum image (scan pixels x kept channels x 4 bytes) a start may open.
    max_open_acquisitions : int
        Acquisitions held at once: the one acquiring and those closed but not yet
        finally refitted. A start beyond that is refused.
    max_seq_gap : int
        A message further than this ahead of the next expected ``seq`` is refused
        (one forged ``seq`` must not make every real message a duplicate).
    """

    energy_min_kev: float | None = None
    energy_max_kev: float | None = None
    energy_rebin: int = 1
    max_cube_bytes: int = 4 * 2**30
    max_open_acquisitions: int = 2
    max_seq_gap: int = 2**20
    max_message_bytes: int = 64 * 2**20


class Ingest:
    """Feeds messages into the current acquisition and keeps count of everything.

    Parameters
    ----------
    options : IngestOptions
    """

    def __init__(self, options: IngestOptions | None = None):
        self.options = options or IngestOptions()
        self.current: Acquisition | None = None
        self.pending: list[Acquisition] = []  # closed (stopped or replaced), awaiting their final refit
        self.rejected: Counter = Counter()  # by reason, since start-up
        self.accepted = 0

    @property
    def open_acquisitions(self) -> int:
        """Acquisitions whose spectrum image is held: the one acquiring and those awaiting a final refit."""
        acquiring = self.current is not None and self.current.state == "acquiring"
        return len(self.pending) + acquiring

    def release(self, acq: Acquisition) -> None:
        """``acq`` had its final refit: it no longer counts against ``max_open_acquisitions``."""
        if acq in self.pending:
            self.pending.remove(acq)

    def receive(self, frames: Sequence) -> Outcome:
        """Decode and apply one multipart message."""
        size = sum(memoryview(getattr(f, "buffer", f)).nbytes for f in frames)
        if size > self.options.max_message_bytes:
            return self._reject("too_large", f"message of {size} bytes exceeds input.max_message_bytes "
                                             f"({self.options.max_message_bytes})", None, None)
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
            named = acq if acq is not None and acq.acquisition_id == header.acquisition_id else None
            return self._reject("unknown_acquisition", f"{header.kind} for {header.acquisition_id!r}, "
                                f"open acquisition: {open_id!r}", header, named)
        if header.seq < acq.next_seq and not acq.was_missing(header.seq):
            return self._reject("duplicate_seq", f"seq {header.seq} already seen (next is {acq.next_seq})",
                                header, acq)
        if header.seq - acq.next_seq > self.options.max_seq_gap:
            return self._reject("seq_out_of_window", f"seq {header.seq} is more than {self.options.max_seq_gap} "
                                f"ahead of the next expected {acq.next_seq}", header, acq)
        try:
            if isinstance(header, Stop):
                counts = self._stop(acq, header)
            elif isinstance(header, Image):
                counts = self._image(acq, header, arrays["image"])
            else:
                counts = self._frame(acq, header, arrays)
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
                self.options.energy_min_kev, self.options.energy_max_kev, self.options.energy_rebin)
        except ValueError as exc:
            return self._reject("energy_range", str(exc), start, None)
        refused = self._refuse_start(start, selection)
        if refused is not None:
            return refused
        if acq is not None and acq.state != "acquiring" and acq not in self.pending:
            self.current = acq = None  # finished and finally refitted: free its cube before allocating the next
        try:
            accumulator = Accumulator(start.scan_shape, start.energy_axis.channels, selection)
        except (MemoryError, OSError) as exc:  # the open acquisition, if any, stays open
            return self._reject("out_of_memory", f"cannot allocate the spectrum image: {exc}", start, None)
        replaced = acq if acq is not None and acq.state == "acquiring" else None
        if replaced is not None:  # its producer never sent a stop: close it, keep its counts
            replaced.state, replaced.stop_reason = "stopped", "replaced"
            self.pending.append(replaced)
        self.current = Acquisition(start, accumulator, next_seq=start.seq + 1)
        self.accepted += 1
        return Outcome("start", start.acquisition_id, start.seq, replaced=replaced)

    def _refuse_start(self, start: Start, selection: EnergySelection) -> Outcome | None:
        """A rejection when the start would exceed the memory limits, else None; costs no memory."""
        nbytes = Accumulator.nbytes_for(start.scan_shape, selection)
        limit = self.options.max_cube_bytes
        if nbytes > limit:
            return self._reject("acquisition_too_large", f"scan {list(start.scan_shape)} x {selection.channels} "
                                f"channels needs {nbytes / 2**30:.2f} GiB, more than accumulate.max_cube_bytes "
                                f"({limit / 2**30:.2f} GiB); raise it, or crop/rebin the energy axis", start, None)
        if self.open_acquisitions + 1 > self.options.max_open_acquisitions:
            return self._reject("too_many_acquisitions", f"{len(self.pending)} acquisitions still await their "
                                f"final refit (accumulate.max_open_acquisitions = "
                                f"{self.options.max_open_acquisitions})", start, None)
        return None

    def _frame(self, acq: Acquisition, header, arrays: dict[str, np.ndarray]) -> int:
        acc = acq.accumulator
        if isinstance(header, EventsFrame):
            per_detector = None
            if "detector" in arrays:
                per_detector = np.bincount(arrays["detector"], minlength=1)  # linear; np.unique sorts
                _check_detector(acq, per_detector.size - 1 if arrays["detector"].size else -1)
            counts = acc.add_events(arrays["pixel"], arrays["channel"])
            if per_detector is not None:
                acq.detector_counts.update({int(d): int(c) for d, c in enumerate(per_detector) if c})
        elif isinstance(header, VeloxFrame):
            _check_detector(acq, header.detector if header.detector is not None else -1)
            counts = acc.add_velox(arrays["stream"], header.pixel_start)
            acq.detector_counts[header.detector or 0] += counts
        elif isinstance(header, DenseFrame):
            counts = acc.add_dense(arrays["counts"], header.pixel_start)
        else:  # a new payload in the models without a handler here
            raise FrameRejected("unsupported_payload", type(header).__name__)
        acq.frames = max(acq.frames, header.frame_index + 1)
        return counts

    def _image(self, acq: Acquisition, header: Image, image: np.ndarray) -> int:
        if acq.images is None:
            try:
                images = ImageAccumulator(acq.start.scan_shape, header.detector)
            except (MemoryError, OSError) as exc:
                raise FrameRejected("out_of_memory", f"cannot allocate the image: {exc}") from None
            images.check(image, header.first_row, header.detector)  # a refused first image leaves none
            acq.images = images
        acq.images.add(image, header.first_row, header.frame_index, header.detector)
        return 0

    def _stop(self, acq: Acquisition, stop: Stop) -> int:
        # frames stays what arrived: a stop claiming more sweeps than came is kept apart, not believed.
        acq.state, acq.stop_reason, acq.stop_frames = "stopped", stop.reason, stop.frames
        self.pending.append(acq)
        return 0

    def _reject(self, reason: str, detail: str, header, acq: Acquisition | None) -> Outcome:
        self.rejected[reason] += 1
        if acq is not None:
            acq.rejected[reason] += 1
        return Outcome("rejected", getattr(header, "acquisition_id", None), getattr(header, "seq", None),
                       reason=reason, detail=detail)


def _check_detector(acq: Acquisition, highest: int) -> None:
    if highest >= acq.n_detectors:
        raise FrameRejected("detector_out_of_range", f"detector {highest} >= the {acq.n_detectors} detectors "
                                                     f"of the start")

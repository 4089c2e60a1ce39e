"""The service loop: receive and accumulate on one thread, refit on another, publish to subscribers.

Ingest never waits for a refit. A refit reads the accumulated cube while
frames keep arriving (the kernels release the GIL), so an in-progress refit
holds at least the counts it reports; the final refit after a stop is exact.
Exceptions from the refit thread are re-raised on the ingest thread.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from edx_protocol import Gaps, Status

from edx_live.core.ingest import Acquisition, Ingest, Outcome
from edx_live.core.snapshot import Snapshot, take_snapshot
from edx_live.logs import get_logger, truncate

from .transport import Connection

log = get_logger("ingest")
refit_log = get_logger("service")

Subscriber = Callable[..., None]
Analyze = Callable[[Snapshot], Iterable]


class Service:
    """Runs ingest, refits and publishing until asked to stop.

    Parameters
    ----------
    settings : edx_live.config.Settings
    connection : Connection
        Where frames come from.
    subscribers : list of callables ``(header, arrays)``
        Receive every document (status, clusters, composition).
    analyze : callable ``Snapshot -> iterable of (header, arrays)``
        The refit: segmentation and quantification of one snapshot; documents are
        published as the iterable yields them.
    warm_up : callable, optional
        Run first on the refit thread (JIT compilation), so start-up does not wait for it;
        the first refit waits instead.
    """

    def __init__(self, settings, connection: Connection, subscribers: list[Subscriber], analyze: Analyze,
                 warm_up: Callable[[], object] | None = None):
        self.settings = settings
        self.connection = connection
        self.subscribers = list(subscribers)
        self.analyze = analyze
        self._warm_up = warm_up
        self.ingest = Ingest(settings.accumulate.to_core())
        self.finished = 0  # acquisitions stopped and finally refitted
        self.refits = 0
        self.last_refit_s: float | None = None
        self._stop = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edx-live-refit")
        self._running: Future | None = None
        self._finals: list[Acquisition] = []
        self._seq: Counter = Counter()
        self._refit_index: Counter = Counter()
        self._last_refit_at = 0.0
        self._frames_at_refit: dict[str, int] = {}
        self._counts_at_refit: dict[str, int] = {}

    def stop(self) -> None:
        """Ask the loop to end (thread-safe)."""
        self._stop.set()

    def run(self, stop_after: int | None = None, poll_s: float = 0.05) -> None:
        """Serve until :meth:`stop`, or until ``stop_after`` acquisitions are finished."""
        self.connection.open()
        if self._warm_up is not None:
            self._running = self._executor.submit(self._warm, self._warm_up)
        next_status = time.monotonic()
        try:
            while not self._stop.is_set():
                frames = self.connection.recv(poll_s)
                if frames is not None:
                    self._handle(self.ingest.receive(frames))
                self._collect()
                now = time.monotonic()
                if now >= next_status:
                    self.emit_status()
                    next_status = now + self.settings.output.status_interval_s
                self._schedule(now)
                if stop_after is not None and self.finished >= stop_after and self._running is None:
                    break
        finally:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self.connection.close()

    # ingest -----------------------------------------------------------------------------------
    def _handle(self, outcome: Outcome) -> None:
        if outcome.kind == "rejected":
            log.warning("message_rejected", reason=outcome.reason, detail=truncate(outcome.detail or ""),
                        acquisition_id=outcome.acquisition_id, seq=outcome.seq,
                        rejected_total=sum(self.ingest.rejected.values()))
            return
        if outcome.gap:
            log.warning("sequence_gap", acquisition_id=outcome.acquisition_id, first=outcome.gap[0],
                        last=outcome.gap[1], missing_total=self.ingest.current.missing)
        if outcome.kind == "start":
            acq = self.ingest.current
            replaced = outcome.replaced
            log.info("acquisition_start", acquisition_id=outcome.acquisition_id,
                     scan_shape=acq.start.scan_shape, channels=acq.accumulator.selection.channels,
                     replaced=replaced.acquisition_id if replaced else None)
            if replaced is not None:
                log.warning("acquisition_replaced", acquisition_id=replaced.acquisition_id,
                            frames=replaced.frames, counts=replaced.accumulator.counts)
                self._finals.append(replaced)
            self._last_refit_at = time.monotonic()
            self.emit_status()
        elif outcome.kind == "stop":
            acq = self.ingest.current
            log.info("acquisition_stop", acquisition_id=outcome.acquisition_id, frames=acq.frames,
                     counts=acq.accumulator.counts, reason=acq.stop_reason, missing=acq.missing)
            self._finals.append(acq)
            self.emit_status()

    # refits -----------------------------------------------------------------------------------
    def _schedule(self, now: float) -> None:
        if self._running is not None:
            return
        if self._finals:
            self._submit(self._finals.pop(0), final=True)
            return
        acq = self.ingest.current
        if acq is None or acq.state != "acquiring" or not self._due(acq, now):
            return
        self._submit(acq, final=False)

    def _due(self, acq: Acquisition, now: float) -> bool:
        refit = self.settings.refit
        counts = acq.accumulator.counts
        if counts < refit.min_counts or counts == self._counts_at_refit.get(acq.acquisition_id, 0):
            return False
        new_frames = acq.frames - self._frames_at_refit.get(acq.acquisition_id, 0)
        return (now - self._last_refit_at >= refit.interval_s
                or (refit.every_frames is not None and new_frames >= refit.every_frames))

    def _submit(self, acq: Acquisition, final: bool) -> None:
        aid = acq.acquisition_id
        index = self._refit_index[aid]
        self._refit_index[aid] += 1
        self._frames_at_refit[aid] = acq.frames
        self._counts_at_refit[aid] = acq.accumulator.counts
        self._last_refit_at = time.monotonic()
        self._running = self._executor.submit(self._refit, acq, index, final)

    def _refit(self, acq: Acquisition, index: int, final: bool) -> bool:
        t0 = time.perf_counter()
        snapshot = take_snapshot(acq, self.settings.accumulate.spatial_bin, index, final)
        for header, arrays in (self.analyze(snapshot) if snapshot.counts else ()):
            self.emit(header, arrays)  # each as soon as the refit yields it
        self.last_refit_s = time.perf_counter() - t0
        refit_log.info("refit_done", acquisition_id=acq.acquisition_id, refit=index, final=final,
                       frames=snapshot.frames, counts=snapshot.counts, seconds=round(self.last_refit_s, 3))
        return final

    @staticmethod
    def _warm(warm_up) -> None:
        t0 = time.perf_counter()
        warm_up()
        refit_log.info("warmed_up", seconds=round(time.perf_counter() - t0, 2))

    def _collect(self) -> None:
        """Finish a completed refit; re-raise its exception here, on the ingest thread."""
        future = self._running
        if future is None or not future.done():
            return
        self._running = None
        final = future.result()  # raises the worker's exception, never lost
        if final is None:  # the warm-up, not a refit
            return
        self.refits += 1
        if final:
            self.finished += 1
            self.emit(self.status(final=True))

    # publishing -------------------------------------------------------------------------------
    def emit(self, header, arrays=None) -> None:
        """Number a document on its topic and hand it to every subscriber."""
        key = (header.kind, getattr(header, "workflow", None))
        header = header.model_copy(update={"seq": self._seq[key]})
        self._seq[key] += 1
        for subscriber in self.subscribers:
            subscriber(header, arrays or {})

    def emit_status(self) -> None:
        self.emit(self.status())

    def status(self, final: bool = False) -> Status:
        """The current ingest state; ``final`` marks the one sent after an acquisition's last refit."""
        acq = self.ingest.current
        base = dict(seq=0, refits=self.refits, last_refit_s=self.last_refit_s, final=final,
                    refit_errors=getattr(self.analyze, "errors", 0))
        if acq is None:
            return Status(acquisition_id=None, frames=0, counts=0, state="idle", messages=0,
                          rejected=dict(self.ingest.rejected), **base)
        return Status(acquisition_id=acq.acquisition_id, frames=acq.frames, counts=acq.accumulator.counts,
                      state=acq.state, messages=acq.messages, rejected=dict(self.ingest.rejected),
                      gaps=Gaps(count=acq.missing, missing=acq.gap_ranges[-100:]),
                      scan_shape=acq.start.scan_shape, expected_frames=acq.start.expected_frames, **base)

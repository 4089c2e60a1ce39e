"""The service loop: receive and accumulate on one thread, refit on another, publish to subscribers.

Ingest never waits for a refit's analysis. A refit's snapshot (the binned cube) is taken on
the ingest thread between two messages, so it holds exactly the messages received before it,
and a recording marks the place; the analysis then runs on a thread of its own while frames
keep arriving. The snapshot pauses ingest once per refit for the time of one binning pass over
the cube (0.37 s at 512 x 512 x 2048, BENCHMARKS.md): the socket queues what arrives meanwhile,
and ingest, many times faster than a detector, catches up.

Nothing a message or a refit does stops the loop: an unexpected error while
ingesting one message is counted (``internal_error``) and logged with its
traceback; a refit that fails is logged, counted in ``refit_errors``, and the
next one runs as planned. Only errors that are not ``Exception`` (a
``KeyboardInterrupt`` in a refit, say) are re-raised on the ingest thread.

The mean simultaneous image is republished from the ingest thread when a new
image has arrived, at most once per status interval (only the latest mean,
never a queue of them), and once more, ``final``, when its acquisition stops.
The count rate is sampled at every periodic status while acquiring (samples are
at least an interval apart), so a stopped acquisition keeps its last rate.

One poll waits on the input and the control socket together; a command is answered on this
thread, between two messages (``edx_live.shell.control``), so it sees the state as it stands.

Warm-up (JIT compilation) runs on a thread of its own, so a refit, a stop's
final refit included, never waits for it. On :meth:`Service.stop` the loop
gives a running refit ``shutdown_grace_s`` to finish, then abandons it (its
thread is a daemon) and logs which acquisitions lost their final refit.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from edx_protocol import Gaps, Status, Stop, encode

import zmq

from edx_live.config import ingest_options
from edx_live.core.ingest import Acquisition, Outcome
from edx_live.core.snapshot import Snapshot, take_snapshot
from edx_live.logs import ReasonLog, get_logger
from edx_live.pipeline.documents import image_document
from edx_live.pipeline.state import AcquisitionRecord, ServiceState

from .recover import Resume
from .transport import Connection, MarksEnd, RefitMark

log = get_logger("ingest")
refit_log = get_logger("service")
publish_log = get_logger("publish")

Subscriber = Callable[..., None]
#: Missing seq ranges a status lists (the newest; its count covers all).
GAPS_PUBLISHED = 100
Analyze = Callable[[Snapshot], Iterable]


class _Job(threading.Thread):
    """One refit (or the warm-up) on a daemon thread, keeping what escaped it for the ingest thread.

    ``acquisition`` and ``final`` say which refit it is (None for the warm-up).
    """

    def __init__(self, target: Callable[[], object], name: str, acquisition: Acquisition | None = None,
                 final: bool = False):
        super().__init__(name=name, daemon=True)
        self._fn = target
        self.acquisition, self.final = acquisition, final
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._fn()
        except BaseException as exc:  # handed to the ingest thread by Service._collect
            self.error = exc


class Service:
    """Runs ingest, refits, control and publishing until asked to stop.

    Parameters
    ----------
    settings : edx_live.config.Settings
    connection : Connection
        Where frames come from.
    subscribers : list of callables ``(header, arrays)``
        Receive every document (status, clusters, composition, image, targets, advice).
    analyze : callable ``(Snapshot, AcquisitionRecord) -> iterable of (header, arrays)``
        The refit: segmentation and quantification of one snapshot; documents are
        published as the iterable yields them.
    warm_up : callable, optional
        Run on a thread of its own at start-up (JIT compilation), beside ingest and refits.
    shutdown_grace_s : float
        How long :meth:`run` waits for a running refit once asked to stop.
    on_finished : SessionWriter, optional
        Writes an acquisition's folder once its final refit is done: ``folder_for(acquisition, record)``
        names it, then ``(acquisition, record, elapsed_s, done=callable)`` writes it and calls ``done``
        (:class:`~edx_live.shell.sessions.SessionWriter`).
    control : zmq.Socket, optional
        A bound REP socket; its commands are answered by :class:`~edx_live.shell.control.Controller`.
    recorder : optional
        Receives every message as it arrived (``message(frames, outcome)``) and where each refit was
        taken (``marker("refit", fields)``): :class:`~edx_live.shell.record.Recorder`.
    state : ServiceState, optional
        What the service knows (default: empty).
    checkpoints : edx_live.shell.recover.Checkpoints, optional
        Saves each acquisition's record beside its recording at its start and after every refit,
        and removes it once its session folder is written (with a recorder only).
    """

    def __init__(self, settings, connection: Connection, subscribers: list[Subscriber], analyze: Analyze,
                 warm_up: Callable[[], object] | None = None, shutdown_grace_s: float = 3.0,
                 on_finished: Callable[..., object] | None = None, control: zmq.Socket | None = None,
                 recorder=None, state: ServiceState | None = None, checkpoints=None):
        from .control import Controller

        self.settings = settings
        self.on_finished = on_finished
        self.connection = connection
        self.subscribers = list(subscribers)
        self.analyze = analyze
        self.recorder = recorder
        self.checkpoints = checkpoints if recorder is not None else None
        self._warm_up = warm_up
        self.shutdown_grace_s = shutdown_grace_s
        self.state = state or ServiceState.with_options(ingest_options(settings))
        self.controller = Controller(self, control) if control is not None else None
        self._stop = threading.Event()
        self._running: _Job | None = None
        self._rejects = ReasonLog(log, "message_rejected")
        self._images_sent = 0  # image messages of the current acquisition in the last image published
        self._next_image = 0.0
        self._refit_now = False  # asked by a control command
        self._marks: list[RefitMark] = []  # refits a replayed recording asks for, in order
        self._after_refit: list[Callable[[], object]] = []  # control changes waiting for the running refit
        self._backlog: deque = deque()  # what a recovery replays before the socket is read
        self.recovering = False
        self._last_message_at = time.monotonic()  # for [input] producer_timeout_s

    # what the status and the tests read ----------------------------------------------------------
    @property
    def ingest(self):
        return self.state.ingest

    @property
    def refits(self) -> int:
        return self.state.refits

    @property
    def finished(self) -> int:
        return self.state.acquisitions_finished

    @property
    def last_refit_s(self) -> float | None:
        return self.state.last_refit_s

    @property
    def refit_running(self) -> bool:
        return self._running is not None

    def stop(self) -> None:
        """Ask the loop to end (thread-safe)."""
        self._stop.set()

    def recover(self, items: Iterable) -> None:
        """Replay ``items`` (``edx_live.shell.recover.plan``) before reading the input: what a killed service left."""
        self._backlog.extend(items)
        self.recovering = bool(self._backlog)

    def run(self, stop_after: int | None = None, poll_s: float = 0.05) -> None:
        """Serve until :meth:`stop`, or until ``stop_after`` acquisitions are finished."""
        self.connection.open()
        if self._warm_up is not None:
            _Job(lambda: self._warm(self._warm_up), "edx-live-warm-up").start()
        pollers = self._poller()
        next_status = time.monotonic()
        try:
            while not self._stop.is_set():
                self._poll(pollers, poll_s)
                self._collect()
                now = time.monotonic()
                if now >= next_status:
                    self._sample_rate(now)
                    self.emit_status()
                    next_status = now + self.settings.output.status_interval_s
                self._publish_image(now)
                self._expire(now)
                self._schedule(now)
                if stop_after is not None and self.finished >= stop_after and self._running is None:
                    break
        finally:
            self._shut_down()
            self.connection.close()
            if self.recorder is not None:
                self.recorder.close()

    def _poller(self) -> tuple[zmq.Poller | None, zmq.Poller | None]:
        """Pollers over the input (when it is a socket) and the control socket, and over the input alone."""
        control = self.controller.socket if self.controller is not None else None
        sockets = [s for s in (self.connection.socket, control) if s is not None]
        if not sockets:
            return None, None
        both, alone = zmq.Poller(), zmq.Poller()
        for sock in sockets:
            both.register(sock, zmq.POLLIN)
        if self.connection.socket is not None:
            alone.register(self.connection.socket, zmq.POLLIN)
        return both, alone

    def _poll(self, pollers: tuple, poll_s: float) -> None:
        """Wait up to ``poll_s`` for a message or a command; handle what came.

        A command is answered only within the controller's budget (``CONTROL_SHARE`` of the time);
        until then the control socket is not polled, so a flood of requests neither spins this
        loop nor takes the interpreter from ingest and the refit thread.
        """
        if self._marks:  # a recorded refit waits for the running one, and no message may pass it
            if self._running is not None:
                self._running.join(poll_s)
            return
        if self._backlog:
            self._replay_backlog()
            return
        both, alone = pollers
        if both is None:  # an in-memory input and no control socket
            self._receive(self.connection.recv(poll_s))
            return
        wait = self.controller.wait_s() if self.controller is not None else 0.0
        poller = both if wait == 0 else alone
        if self.connection.socket is None:  # in-memory input beside a control socket: ask both in turn
            ready = dict(poller.poll(0))
            self._receive(self.connection.recv(0 if ready else min(poll_s, wait or poll_s)))
        else:
            ready = dict(poller.poll(int(1000 * min(poll_s, wait or poll_s)) or 1))
            if self.connection.socket in ready:
                self._receive(self.connection.recv(0))
        if self.controller is not None and self.controller.socket in ready:
            self.controller.answer()

    def _shut_down(self) -> None:
        """Give a running refit ``shutdown_grace_s``, then abandon it and say what was lost."""
        job = self._running
        if job is not None:
            job.join(self.shutdown_grace_s)
            if job.is_alive():
                refit_log.warning("refit_abandoned", acquisition_id=job.acquisition.acquisition_id,
                                  final=job.final, grace_s=self.shutdown_grace_s)
            else:
                self._collect()
        abandoned = self._running.acquisition if self._running is not None else None
        for acq in self.ingest.pending:
            if acq is not abandoned:
                refit_log.warning("final_refit_not_run", acquisition_id=acq.acquisition_id,
                                  frames=acq.frames, counts=acq.accumulator.counts)
        self._rejects.flush()

    # recovery ---------------------------------------------------------------------------------
    def _replay_backlog(self, batch: int = 256) -> None:
        """Replay up to ``batch`` recovered messages, up to the next refit the recording marks."""
        for _ in range(batch):
            if not self._backlog:
                break
            item = self._backlog.popleft()
            if isinstance(item, Resume):
                self._resume(item)
            elif isinstance(item, RefitMark):
                self._marks.append(item)
                break
            else:
                self._receive(item, replayed=True)
        if not self._backlog and self.recovering:
            self._last_message_at = time.monotonic()
            self.recovering = False  # read by other threads: set once everything is replayed
            refit_log.info("recovered", acquisitions=[a.acquisition_id for a in self.state.open],
                           counts=[a.accumulator.counts for a in self.state.open])

    def _resume(self, item: Resume) -> None:
        """Record into the recovered recording again, and put back its acquisition's record."""
        if self.recorder is not None:
            self.recorder.resume(item.recording, {"after_s": item.last_t_s})
        record = item.record
        if record is None:
            return
        record.recording = str(item.recording)
        start = item.start_t_s or 0.0  # elapsed goes on from where the recording ends (downtime not counted)
        record.started_at = time.monotonic() - (item.last_t_s - start)
        record.stopped_at = None if item.stop_t_s is None else record.started_at + (item.stop_t_s - start)
        self.state.records[record.acquisition_id] = record
        for key, n in item.published.items():
            self.state.published[key] = max(self.state.published[key], n)

    def _save_checkpoint(self, record: AcquisitionRecord) -> None:
        if self.checkpoints is not None:
            self.checkpoints.save(record, self.state.published)

    def _expire(self, now: float) -> None:
        """Close the acquisition whose producer has sent nothing for ``[input] producer_timeout_s``.

        The service stops it as its producer would have (a stop with reason ``producer_timeout``,
        received and recorded like any message), so that its final refit and folder follow.
        """
        timeout = self.settings.input.producer_timeout_s
        acq = self.ingest.current
        if (timeout is None or acq is None or acq.state != "acquiring" or self._backlog
                or now - self._last_message_at < timeout):
            return
        log.warning("producer_timeout", acquisition_id=acq.acquisition_id, silent_s=round(now - self._last_message_at, 1),
                    frames=acq.frames, counts=acq.accumulator.counts, setting="[input] producer_timeout_s")
        stop = Stop(acquisition_id=acq.acquisition_id, seq=acq.next_seq, frames=acq.frames, reason="producer_timeout")
        self._receive(encode(stop, {}))

    # ingest -----------------------------------------------------------------------------------
    def _receive(self, frames, replayed: bool = False) -> None:
        """Ingest one message; whatever goes wrong, the loop and the accumulated counts survive."""
        if frames is None:
            return
        if isinstance(frames, RefitMark):  # a replayed recording: refit where the live service did
            self._marks.append(frames)
            return
        if isinstance(frames, MarksEnd):
            self.connection.refits_marked = False
            return
        try:
            outcome = self.ingest.receive(frames)
        except Exception:  # a bug, not bad input (that is an Outcome): count it and keep serving
            self.ingest.rejected["internal_error"] += 1
            log.exception("ingest_failed", frames=len(frames))
            outcome = Outcome("rejected", reason="internal_error")
        if self.recorder is not None and not replayed:
            self.recorder.message(frames, outcome)
        if outcome.acquisition_id is not None:
            self._last_message_at = time.monotonic()
        if outcome.reason != "internal_error":
            self._handle(outcome)

    def _handle(self, outcome: Outcome) -> None:
        if outcome.kind == "rejected":
            self._rejects.note(outcome.reason, detail=outcome.detail, acquisition_id=outcome.acquisition_id,
                               seq=outcome.seq)
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
                self._close(replaced)
            self._images_sent, self._next_image = 0, 0.0
            self.state.prune()
            self.state.last_refit_at = time.monotonic()
            record = self.state.record(acq)
            if record.started_at is None:  # a recovered record has its own
                record.started_at = self.state.last_refit_at
            if self.recorder is not None:
                current = self.recorder.current
                record.recording = str(current) if current is not None else None
            self._save_checkpoint(record)  # from now on, a crash leaves this acquisition to recover
            prepare = getattr(self.analyze, "prepare", None)
            if prepare is not None:  # e.g. the worker process of a large scan starts warming up now
                rows, columns = acq.start.scan_shape
                b = self.settings.accumulate.spatial_bin
                prepare(-(-rows // b) * -(-columns // b))
            self.emit_status()
        elif outcome.kind == "stop":
            acq = self.ingest.current
            record = self.state.record(acq)
            if record.stopped_at is None:
                record.stopped_at = time.monotonic()
            log.info("acquisition_stop", acquisition_id=outcome.acquisition_id, frames=acq.frames,
                     counts=acq.accumulator.counts, reason=acq.stop_reason, missing=acq.missing)
            if acq.stop_frames != acq.frames:
                log.warning("stop_frames_differ", acquisition_id=acq.acquisition_id, claimed=acq.stop_frames,
                            received=acq.frames)
            self._close(acq)
            self.emit_status()

    def _close(self, acq: Acquisition) -> None:
        """An acquisition stopped (or was replaced): publish its final image."""
        if acq.images is not None and acq.images.sweeps:
            self.emit(*image_document(acq, final=True))
            log.info("image_final", acquisition_id=acq.acquisition_id, detector=acq.image_detector,
                     sweeps=acq.images.sweeps)

    def _sample_rate(self, now: float) -> None:
        """Note the current acquisition's counts for its count rate (at each periodic status)."""
        acq = self.ingest.current
        if acq is not None and acq.state == "acquiring":
            acq.rate.note(now, acq.accumulator.counts)

    def _publish_image(self, now: float) -> None:
        """The current mean image, if a new image arrived and the last one went out an interval ago."""
        acq = self.ingest.current
        if acq is None or acq.state != "acquiring" or acq.images is None or now < self._next_image:
            return
        if acq.images.messages == self._images_sent or not acq.images.sweeps:
            return
        self._images_sent = acq.images.messages
        self._next_image = now + self.settings.output.status_interval_s
        self.emit(*image_document(acq, final=False))

    # refits -----------------------------------------------------------------------------------
    def _schedule(self, now: float) -> None:
        if self._running is not None:
            return
        while self._after_refit:  # control changes held back while a refit was running
            self._after_refit.pop(0)()
        if self._marks:
            self._replay_mark(self._marks.pop(0))
            return
        if getattr(self.connection, "refits_marked", False):
            return  # a replayed recording says where every refit goes, until it ends
        if self._backlog:
            return  # recovering: refits go where the recording marks them
        if self.ingest.pending:
            acq = self.ingest.pending[0]
            if self.state.record(acq).final_done:  # recovered after its final refit: only its folder is missing
                self._finish(acq)
            else:
                self._submit(acq, final=True)
            return
        acq = self.ingest.current
        if acq is None or acq.state != "acquiring" or not (self._refit_now or self._due(acq, now)):
            return
        self._refit_now = False
        self._submit(acq, final=False)

    def refit_soon(self) -> None:
        """Refit the acquiring acquisition as soon as no refit runs (a control command)."""
        self._refit_now = True

    def when_idle(self, change: Callable[[], object]) -> bool:
        """Run ``change`` now when no refit runs (True), else once the running refit is done (False)."""
        if self._running is None:
            change()
            return True
        self._after_refit.append(change)
        return False

    def _due(self, acq: Acquisition, now: float) -> bool:
        refit, record = self.settings.refit, self.state.record(acq)
        counts = acq.accumulator.counts
        if counts < refit.min_counts or counts == record.counts_at_refit:
            return False
        new_frames = acq.frames - record.frames_at_refit
        return (now - self.state.last_refit_at >= refit.interval_s
                or (refit.every_frames is not None and new_frames >= refit.every_frames))

    def _replay_mark(self, mark: RefitMark) -> None:
        """Refit as the recording says the live service did, with its elapsed time."""
        held = {a.acquisition_id: a for a in self.state.open}
        acq = held.get(mark.acquisition_id)
        if acq is None or (mark.final and acq.state == "acquiring"):
            log.warning("refit_mark_unmatched", acquisition_id=mark.acquisition_id, refit=mark.refit,
                        final=mark.final)
            return
        self._submit(acq, final=mark.final, elapsed_s=mark.elapsed_s, marked=True)

    def _submit(self, acq: Acquisition, final: bool, elapsed_s: float | None = None, marked: bool = False) -> None:
        """Snapshot ``acq`` now, on this thread (between two messages), and refit it on a thread of its own.

        ``marked``: a recording says where this refit goes (it is marked there already).
        """
        aid, record = acq.acquisition_id, self.state.record(acq)
        index = record.refits
        record.refits += 1
        record.frames_at_refit, record.counts_at_refit = acq.frames, acq.accumulator.counts
        self.state.last_refit_at = time.monotonic()
        if elapsed_s is None:
            elapsed_s = record.elapsed(self.state.last_refit_at)
        refit_log.info("refit_started", acquisition_id=aid, refit=index, final=final, frames=acq.frames,
                       counts=acq.accumulator.counts)
        if self.recorder is not None and not marked:
            self.recorder.marker("refit", {"acquisition_id": aid, "refit": index, "final": final,
                                           "elapsed_s": elapsed_s})
        try:
            snapshot = take_snapshot(acq, self.settings.accumulate.spatial_bin, index, final, elapsed_s)
        except Exception:  # out of memory for the binned copy, say: this refit is lost, the service is not
            self.state.refit_failures += 1
            refit_log.exception("snapshot_failed", acquisition_id=aid, refit=index, final=final)
            work = lambda: None  # noqa: E731 - a final refit still closes its acquisition
        else:
            work = lambda: self._refit(snapshot, record)  # noqa: E731
        self._running = _Job(work, f"edx-live-refit-{aid}-{index}", acq, final)
        self._running.start()

    def _refit(self, snapshot: Snapshot, record: AcquisitionRecord) -> None:
        t0 = time.perf_counter()
        aid, index, final = snapshot.start.acquisition_id, snapshot.refit, snapshot.final
        try:
            for header, arrays in (self.analyze(snapshot, record) if snapshot.counts else ()):
                self.emit(header, arrays)  # each as soon as the refit yields it
        except Exception:  # contained: the next refit, and the acquisition, go on
            self.state.refit_failures += 1
            refit_log.exception("refit_failed", acquisition_id=aid, refit=index, final=final)
            return
        finally:
            self.state.last_refit_s = time.perf_counter() - t0
        refit_log.info("refit_done", acquisition_id=aid, refit=index, final=final, frames=snapshot.frames,
                       counts=snapshot.counts, seconds=round(self.state.last_refit_s, 3))

    @staticmethod
    def _warm(warm_up) -> None:
        t0 = time.perf_counter()
        warm_up()
        refit_log.info("warmed_up", seconds=round(time.perf_counter() - t0, 2))

    def _collect(self) -> None:
        """Finish a completed refit; re-raise what it could not contain here, on the ingest thread."""
        job = self._running
        if job is None or job.is_alive():
            return
        self._running = None
        if job.error is not None:
            raise job.error  # not an Exception (those the refit contains): never lost
        self.state.refits += 1
        record = self.state.record(job.acquisition)
        if job.final:
            record.final_done = True
            self._finish(job.acquisition)
        else:
            self._save_checkpoint(record)

    def _finish(self, acq: Acquisition) -> None:
        """``acq``'s final refit is done: say so, write its session folder, release it.

        Its checkpoint (final results, folder) stays until the folder is written, so that a crash
        meanwhile writes the folder again at recovery rather than refitting.
        """
        record = self.state.record(acq)
        self.emit(self.status(final=True, acq=acq))
        recording, checkpoints = record.recording, self.checkpoints
        done = (lambda: checkpoints.remove(recording)) if checkpoints is not None else None
        if self.on_finished is not None:
            try:
                self.on_finished.folder_for(acq, record)
                self._save_checkpoint(record)  # final results and folder, before the folder is written
                self.on_finished(acq, record, record.elapsed(time.monotonic()), done=done)
            except Exception:  # contained like a subscriber's failure
                log.exception("on_finished_failed", acquisition_id=acq.acquisition_id)
        elif done is not None:
            done()
        self.state.release(acq)

    # publishing -------------------------------------------------------------------------------
    def emit(self, header, arrays=None) -> None:
        """Number a document on its topic and hand it to every subscriber."""
        key = (header.kind, getattr(header, "workflow", None))
        header = header.model_copy(update={"seq": self.state.published[key]})
        self.state.published[key] += 1
        self.state.latest[header.kind] = header
        for subscriber in self.subscribers:
            try:
                subscriber(header, arrays or {})
            except Exception:  # one failing subscriber must not starve the others or stop the service
                publish_log.exception("subscriber_failed", subscriber=type(subscriber).__name__,
                                      kind=header.kind)

    def emit_status(self) -> None:
        self.emit(self.status())

    def status(self, final: bool = False, acq: Acquisition | None = None) -> Status:
        """The ingest state of ``acq`` (default: the current acquisition).

        ``final`` marks the one sent after an acquisition's last refit.
        """
        acq = acq or self.ingest.current
        base = dict(seq=0, refits=self.refits, last_refit_s=self.last_refit_s, final=final,
                    refit_errors=getattr(self.analyze, "errors", 0) + self.state.refit_failures,
                    rejected=dict(self.ingest.rejected))
        if acq is None:
            return Status(acquisition_id=None, frames=0, counts=0, state="idle", messages=0, **base)
        start = acq.start
        return Status(acquisition_id=acq.acquisition_id, frames=acq.frames, counts=acq.accumulator.counts,
                      state=acq.state, messages=acq.messages, acquisition_rejected=dict(acq.rejected),
                      gaps=Gaps(count=acq.missing, missing=acq.gap_ranges[-GAPS_PUBLISHED:]),
                      scan_shape=start.scan_shape, expected_frames=start.expected_frames,
                      pixel_size=start.pixel_size, pixel_unit=start.pixel_unit, title=start.title,
                      count_rate=acq.rate.value, **base)

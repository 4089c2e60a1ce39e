"""The one wiring of the service: input, publisher, control, recorder, session folders, analysis.

``edx-live serve``, the demo, offline processing and the benchmarks all build an :class:`App`
from the settings; they differ only in the connection (a socket, or an in-memory queue fed
from a file or a recording) and in which subscribers they add.
"""

from __future__ import annotations

import threading
import time

from edx_live.logs import get_logger

from .publish import ZmqPublisher
from .service import Service
from .sockets import Sockets, endpoint
from .transport import Connection, ZmqConnection

log = get_logger("service")


def on_free_ports(settings, sessions_dir=None, record_dir=None):
    """``settings`` with every socket on a free loopback port, and session folders and recordings
    only where given (tests, benchmarks, the demo)."""
    free = "tcp://127.0.0.1:*"
    update = {"input": settings.input.model_copy(update={"address": free}),
              "output": settings.output.model_copy(update={"address": free, "sessions_dir": sessions_dir}),
              "control": settings.control.model_copy(update={"address": free}),
              "record": settings.record.model_copy(update={"dir": record_dir})}
    return settings.model_copy(update=update)


class App:
    """The service and what surrounds it, made from ``settings``; close it (or use ``with``).

    Parameters
    ----------
    settings : edx_live.config.Settings
    connection : Connection, optional
        Default: the input socket of ``[input]``.
    publish : bool
        Bind the result PUB socket of ``[output] address``.
    control : bool
        Bind the control REP socket of ``[control] address`` (when it is not None).
    sessions : bool
        Write a session folder per finished acquisition under ``[output] sessions_dir`` (when not None).
    record : bool
        Record every message under ``[record] dir`` (when not None), with a checkpoint of each
        acquisition beside its recording; with ``[record] recover``, first resume the acquisitions
        a killed service left there (``edx_live.shell.recover``).
    subscribers : sequence of callables ``(header, arrays)``
        More receivers of every document (console printer, collector).
    analyze : callable, optional
        The refit (default: :class:`~edx_live.pipeline.refit.Analyzer` of the settings).
    warm_up : callable, optional
        Compilation run beside ingest at start-up.
    source : str, optional
        Where acquisitions come from, for the session folders (default: the input endpoint).
    session_writer : SessionWriter, optional
        Instead of the one ``sessions`` makes (offline processing writes to a fixed folder).
    sockets : Sockets, optional
    """

    def __init__(self, settings, connection: Connection | None = None, publish: bool = True, control: bool = True,
                 sessions: bool = True, record: bool = True, subscribers=(), analyze=None, warm_up=None,
                 source: str | None = None, session_writer=None, sockets: Sockets | None = None):
        self.settings = settings
        self.sockets = sockets or Sockets()
        self._closers: list = []
        try:
            self._build(connection, publish, control, sessions, record, subscribers, analyze, warm_up, source,
                        session_writer)
        except BaseException:
            self.close()
            raise
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def _build(self, connection, publish, control, sessions, record, subscribers, analyze, warm_up, source,
               session_writer) -> None:
        s = self.settings
        if connection is None:
            i = s.input
            connection = ZmqConnection(i.address, i.socket, i.binds, i.high_water_mark,
                                       max_message_bytes=i.max_message_bytes, sockets=self.sockets)
        self.connection = connection
        connection.open()
        self._closers.append(connection.close)
        self.publisher = ZmqPublisher(s.output.address, sockets=self.sockets) if publish else None
        if self.publisher is not None:
            self._closers.append(self.publisher.close)
        self.control_socket = None
        if control and s.control.address is not None:
            self.control_socket = self.sockets.control(s.control.address)
            self._closers.append(lambda: self.control_socket.close(linger=0))
        source = source or self.input_endpoint
        self.sessions = session_writer
        if self.sessions is None and sessions and s.output.sessions_dir is not None:
            from .sessions import SessionWriter

            self.sessions = SessionWriter(s.output.sessions_dir, s, source=source)
        self.recorder = None
        if record and s.record.dir is not None:
            from .record import Recorder

            r = s.record
            self.recorder = Recorder(r.dir, r.max_bytes_per_acquisition, r.max_total_bytes, fsync=r.fsync,
                                     source=source)
        if analyze is None:
            from edx_live.pipeline.refit import Analyzer

            analyze = Analyzer(s)
            self._closers.append(analyze.close)  # its worker process, if one started
        self.analyzer = analyze
        receivers = ([self.publisher] if self.publisher is not None else []) + list(subscribers)
        checkpoints = None
        if self.recorder is not None:
            from .recover import Checkpoints

            checkpoints = Checkpoints(fsync=s.record.fsync)
        self.service = Service(s, connection, receivers, analyze, warm_up=warm_up, on_finished=self.sessions,
                               control=self.control_socket, recorder=self.recorder, checkpoints=checkpoints)
        if self.recorder is not None and s.record.recover:
            from .recover import plan

            self.service.recover(plan(s.record.dir))
        if self.service.controller is not None:
            self.service.controller.exporter = self.sessions

    # endpoints ------------------------------------------------------------------------------------
    @property
    def input_endpoint(self) -> str:
        return getattr(self.connection, "endpoint", "memory")

    @property
    def output_endpoint(self) -> str | None:
        return self.publisher.endpoint if self.publisher is not None else None

    @property
    def control_endpoint(self) -> str | None:
        return endpoint(self.control_socket) if self.control_socket is not None else None

    # running --------------------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> None:
        """Serve on this thread until stopped, or until ``stop_after`` acquisitions are finished."""
        log.info("serving", input=self.input_endpoint, output=self.output_endpoint, control=self.control_endpoint,
                 sessions=str(self.sessions.root) if self.sessions else None,
                 record=str(self.settings.record.dir) if self.recorder else None)
        self.service.run(stop_after=stop_after)

    def start(self, stop_after: int | None = None) -> "App":
        """Serve on a thread of its own; :meth:`wait` or :meth:`close` ends it."""
        def target() -> None:
            try:
                self.service.run(stop_after=stop_after)
            except BaseException as exc:  # re-raised by wait()
                self.error = exc

        self._thread = threading.Thread(target=target, name="edx-live-service", daemon=True)
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout_s: float = 300.0) -> None:
        """Wait for the service thread to end (``stop_after`` reached) and its session folders; raise its error."""
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise TimeoutError(f"the service did not finish within {timeout_s} s")
        if self.sessions is not None:
            self.sessions.join(max(1.0, timeout_s))
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self.service.stop() if hasattr(self, "service") else None

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the service, wait for it and for the session folders being written, close every socket."""
        self.stop()
        deadline = time.monotonic() + timeout_s
        if getattr(self, "_thread", None) is not None:
            self._thread.join(timeout_s)
        if getattr(self, "sessions", None) is not None:  # folders being written are finished, not cut short
            self.sessions.join(max(1.0, deadline - time.monotonic()))
        for close in reversed(self._closers):
            try:
                close()
            except Exception:  # closing is best effort: the others still close
                log.exception("close_failed")
        self._closers = []

    def __enter__(self) -> "App":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""The control socket: one table of command handlers, answered on the service's own thread.

Each request is parsed and its arguments validated by ``edx_protocol.control``; a handler
returns the reply's ``result`` or raises :class:`~edx_protocol.control.ControlError`, whose
message becomes ``{ok: false, error: ...}``. A handler that changes what a refit reads (``set``,
``reset``) waits for the running refit, so no refit sees half a change.
"""

from __future__ import annotations

import time
from pathlib import Path

import zmq
from edx_protocol.control import (
    COMMANDS,
    ControlError,
    ExportArgs,
    Reply,
    SetArgs,
    encode_reply,
    parse_request,
)

from edx_live.config import ConfigError, changed_settings
from edx_live.logs import get_logger

log = get_logger("control")

#: While requests keep coming, answering them takes at most this share of the service thread's time
#: (ingest and the refit thread share the interpreter with it). bench/consumers.py, condition e: a
#: client pipelining ``status`` without reading, answered whenever no message waited, held the
#: service thread at 100 % of a core and made the final refit 4 to 6x slower.
CONTROL_SHARE = 0.05
#: Answering time saved up while idle: a burst of this many seconds of commands is answered at once.
CONTROL_BURST_S = 0.02
#: Commands that change nothing, logged at debug (a client may ask them many times a second).
READ_ONLY = frozenset({"status", "list", "targets"})


class Budget:
    """Seconds for answering commands: ``share`` of the time that passes, at most ``burst_s`` saved up."""

    def __init__(self, share: float = CONTROL_SHARE, burst_s: float = CONTROL_BURST_S, clock=time.monotonic):
        self.share, self.burst_s, self.clock = share, burst_s, clock
        self.credit, self._at = burst_s, clock()

    def wait_s(self) -> float:
        """0 when a command may be answered now, else the seconds until it may."""
        now = self.clock()
        self.credit = min(self.burst_s, self.credit + self.share * (now - self._at))
        self._at = now
        return 0.0 if self.credit > 0 else -self.credit / self.share

    def spend(self, seconds: float) -> None:
        self.credit -= seconds


class Controller:
    """Answers the commands of a bound REP socket for ``service``.

    Parameters
    ----------
    service : edx_live.shell.service.Service
    socket : zmq.Socket
        A REP socket; :meth:`answer` is called when it is readable.
    """

    def __init__(self, service, socket: zmq.Socket):
        self.service, self.socket = service, socket
        self.handlers = {"status": self.status, "list": self.list, "refit": self.refit, "set": self.set,
                         "reset": self.reset, "export": self.export, "targets": self.targets}
        assert set(self.handlers) == set(COMMANDS), "a command without a handler"
        self.exporter = None  # set by the application when session folders are written
        self.budget = Budget()
        self.answered = 0  # requests answered
        self.seconds = 0.0  # spent answering them

    def wait_s(self) -> float:
        """0 when the next request may be answered, else how long until it may (:class:`Budget`)."""
        return self.budget.wait_s()

    def answer(self) -> None:
        """Read one request, carry it out, send the reply (never raises for a bad request)."""
        t0 = time.perf_counter()
        try:
            frames = self.socket.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        self.socket.send(encode_reply(self.handle(frames)))
        spent = time.perf_counter() - t0
        self.budget.spend(spent)
        self.answered += 1
        self.seconds += spent

    def handle(self, frames: list[bytes]) -> Reply:
        command = None
        try:
            if len(frames) != 1:
                raise ControlError(f"a request is one frame, got {len(frames)}")
            request, args = parse_request(frames[0])
            command = request.command
            result = self.handlers[command](args)
        except ControlError as exc:
            log.warning("command_refused", command=command, error=str(exc)[:300])
            return Reply(command=command, ok=False, error=str(exc))
        except Exception as exc:  # a bug in a handler: the service goes on, the client is told
            log.exception("command_failed", command=command)
            return Reply(command=command, ok=False, error=f"internal error: {type(exc).__name__}: {exc}")
        (log.debug if command in READ_ONLY else log.info)("command", command=command)
        return Reply(command=command, ok=True, result=result)

    # handlers -------------------------------------------------------------------------------------
    def status(self, args) -> dict:
        service = self.service
        status = service.status().model_dump(mode="json")
        return {**status, "refit_running": service.refit_running}

    def list(self, args) -> list[dict]:
        return self.service.state.listing()

    def refit(self, args) -> dict:
        acq = self.service.ingest.current
        if acq is None or acq.state != "acquiring":
            raise ControlError("no acquisition is acquiring: nothing to refit (a stopped one has its final refit)")
        self.service.refit_soon()
        return {"acquisition_id": acq.acquisition_id, "queued": True}

    def set(self, args: SetArgs) -> dict:
        try:
            settings = changed_settings(self.service.settings, args.values)
        except ConfigError as exc:
            raise ControlError(f"set refused: {exc}") from None

        def apply() -> None:
            self.service.settings = settings
            reconfigure = getattr(self.service.analyze, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(settings)
            log.info("settings_changed", values=args.values)

        now = self.service.when_idle(apply)
        return {"values": args.values, "applied": "now" if now else "after the running refit"}

    def reset(self, args) -> dict:
        acq = self.service.ingest.current
        if acq is None or acq.state != "acquiring":
            raise ControlError("no acquisition is acquiring: nothing to reset")
        record = self.service.state.record(acq)

        def apply() -> None:
            acq.accumulator.clear()
            acq.images = None
            acq.rate.samples.clear()
            record.reset()
            log.warning("acquisition_reset", acquisition_id=acq.acquisition_id)

        now = self.service.when_idle(apply)
        return {"acquisition_id": acq.acquisition_id, "applied": "now" if now else "after the running refit"}

    def _export_folder(self, name: str) -> Path:
        """``name`` inside the sessions folder (relative to it, or absolute within it); nowhere else."""
        root = Path(self.exporter.root).resolve()
        folder = (root / name).resolve()
        if folder == root or root not in folder.parents:
            raise ControlError(f"folder {name!r} is not inside the sessions folder {root}: name a new folder "
                               f"there (a control client writes nowhere else)")
        return folder

    def export(self, args: ExportArgs) -> dict:
        if self.exporter is None:
            raise ControlError("this service writes no session folders ([output] sessions_dir is off)")
        held = {a.acquisition_id: a for a in self.service.state.open}
        current = self.service.ingest.current
        if current is not None:
            held.setdefault(current.acquisition_id, current)
        aid = args.acquisition_id or (current.acquisition_id if current is not None else None)
        if aid not in held:
            raise ControlError(f"no acquisition {aid!r} is held; held: {sorted(held) or 'none'}")
        folder = self._export_folder(args.folder) if args.folder else None
        if folder is not None and folder.exists():
            raise ControlError(f"folder {folder} exists already: name a new one")
        acq = held[aid]
        record = self.service.state.record(acq)
        if not record.outputs:
            raise ControlError(f"acquisition {aid!r} has no refit yet: nothing to export")
        written = self.exporter.export(acq, record, folder)
        return {"acquisition_id": aid, "folder": str(written)}

    def targets(self, args) -> dict:
        document = self.service.state.latest.get("targets")
        if document is None:
            raise ControlError("no targets yet: they come with the first refit of an acquisition")
        return document.model_dump(mode="json")

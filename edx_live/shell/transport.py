"""Connections the service receives frames from: one small interface, several transports.

A connection has ``open()``, ``recv(timeout_s) -> list of frames or None`` and
``close()``. ``ZmqConnection`` is the real thing; ``MemoryConnection`` feeds the
same service in-process (offline processing, tests).
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Protocol

import zmq

from edx_live.core.ingest import IngestOptions

from .sockets import Sockets, endpoint


@dataclass(frozen=True)
class RefitMark:
    """Put on a :class:`MemoryConnection` between messages: refit here (a recording's ``refit`` marker)."""

    acquisition_id: str
    refit: int
    final: bool
    elapsed_s: float | None = None


@dataclass(frozen=True)
class MarksEnd:
    """Put on a :class:`MemoryConnection` after the last mark: the service schedules refits itself again."""


class Connection(Protocol):
    """Where messages come from. A connection over a ZeroMQ socket exposes it as ``socket``, so the
    service polls it together with its control socket; others (``socket = None``) are asked in turn."""

    socket: zmq.Socket | None

    def open(self) -> None: ...

    def recv(self, timeout_s: float) -> list | None: ...

    def close(self) -> None: ...


class ZmqConnection:
    """A PULL or SUB socket (from :class:`~edx_live.shell.sockets.Sockets`) that binds or connects.

    Parameters
    ----------
    address : str
        ZeroMQ endpoint; with ``bind`` a port of ``*`` picks a free one (see ``endpoint``).
    kind : {"pull", "sub"}
    bind : bool
    high_water_mark : int
        Messages queued in the socket before it pushes back (PULL) or drops (SUB).
    max_message_bytes : int
        ``ZMQ_MAXMSGSIZE``: ZeroMQ drops a larger frame unread and closes that connection,
        so queue memory stays below about ``high_water_mark * max_message_bytes``.
    context : zmq.Context, optional
    sockets : Sockets, optional
        The factory that makes the socket (default: one on ``context``).
    """

    def __init__(self, address: str, kind: str = "pull", bind: bool = True, high_water_mark: int = 100,
                 context: zmq.Context | None = None, max_message_bytes: int = IngestOptions.max_message_bytes,
                 sockets: Sockets | None = None):
        self.address, self.kind, self.bind, self.hwm = address, kind, bind, high_water_mark
        self.max_message_bytes = max_message_bytes
        self._sockets = sockets or Sockets(context)
        self.socket: zmq.Socket | None = None

    @property
    def endpoint(self) -> str:
        """The endpoint actually bound or connected (with the port chosen for ``*``)."""
        return endpoint(self.socket) if self.socket is not None else self.address

    def open(self) -> None:
        if self.socket is None:
            self.socket = self._sockets.input(self.address, self.kind, self.bind, self.hwm, self.max_message_bytes)

    def recv(self, timeout_s: float) -> list | None:
        if timeout_s > 0 and not self.socket.poll(int(timeout_s * 1000)):
            return None
        try:
            return self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None


class MemoryConnection:
    """An in-process queue of multipart messages; ``None`` put on it is ignored.

    ``refits_marked``: the service refits only where a :class:`RefitMark` on the queue says,
    until a :class:`MarksEnd` (a recording replayed as the live service analysed it).
    """

    socket = None

    def __init__(self, maxsize: int = 0):
        self._queue: queue.Queue = queue.Queue(maxsize)
        self.refits_marked = False

    def put(self, frames: Sequence | RefitMark | MarksEnd) -> None:
        """Queue one message (a list of bytes-like frames) or a mark, blocking when full."""
        self._queue.put(frames if isinstance(frames, (RefitMark, MarksEnd)) else list(frames))

    def open(self) -> None:
        pass

    def recv(self, timeout_s: float) -> list | None:
        try:
            return self._queue.get(timeout=timeout_s) if timeout_s > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def close(self) -> None:
        pass

"""Connections the service receives frames from: one small interface, several transports.

A connection has ``open()``, ``recv(timeout_s) -> list of frames or None`` and
``close()``. ``ZmqConnection`` is the real thing; ``MemoryConnection`` feeds the
same service in-process (offline processing, tests).
"""

from __future__ import annotations

import queue
from collections.abc import Sequence
from typing import Protocol

import zmq

from edx_live.core.ingest import IngestOptions


class Connection(Protocol):
    def open(self) -> None: ...

    def recv(self, timeout_s: float) -> list | None: ...

    def close(self) -> None: ...


class ZmqConnection:
    """A PULL or SUB socket that binds or connects.

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
    """

    def __init__(self, address: str, kind: str = "pull", bind: bool = True, high_water_mark: int = 100,
                 context: zmq.Context | None = None, max_message_bytes: int = IngestOptions.max_message_bytes):
        self.address, self.kind, self.bind, self.hwm = address, kind, bind, high_water_mark
        self.max_message_bytes = max_message_bytes
        self._context = context or zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._poller = zmq.Poller()

    @property
    def endpoint(self) -> str:
        """The endpoint actually bound or connected (with the port chosen for ``*``)."""
        return self._socket.getsockopt_string(zmq.LAST_ENDPOINT) if self._socket else self.address

    def open(self) -> None:
        if self._socket is not None:
            return
        sock = self._context.socket(zmq.PULL if self.kind == "pull" else zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, self.hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        sock.setsockopt(zmq.LINGER, 0)
        if self.kind == "sub":
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            sock.bind(self.address) if self.bind else sock.connect(self.address)
        except zmq.ZMQError as exc:
            sock.close()
            verb = "bind" if self.bind else "connect"
            raise OSError(f"cannot {verb} the input {self.kind.upper()} socket to {self.address}: {exc}; "
                          f"choose another input address (port * picks a free one)") from None
        self._socket = sock
        self._poller.register(sock, zmq.POLLIN)

    def recv(self, timeout_s: float) -> list | None:
        if not self._poller.poll(int(timeout_s * 1000)):
            return None
        return self._socket.recv_multipart(copy=False)

    def close(self) -> None:
        if self._socket is not None:
            self._poller.unregister(self._socket)
            self._socket.close(linger=0)
            self._socket = None


class MemoryConnection:
    """An in-process queue of multipart messages; ``None`` put on it is ignored."""

    def __init__(self, maxsize: int = 0):
        self._queue: queue.Queue = queue.Queue(maxsize)

    def put(self, frames: Sequence) -> None:
        """Queue one message (a list of bytes-like frames), blocking when full."""
        self._queue.put(list(frames))

    def open(self) -> None:
        pass

    def recv(self, timeout_s: float) -> list | None:
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def close(self) -> None:
        pass

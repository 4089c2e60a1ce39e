"""Send a :class:`~edx_adapters.replay.Replay` over ZeroMQ.

The service listens with PULL (producers PUSH to it) or SUB (it subscribes
to a producer's PUB). Messages carry no topic frame: a SUB socket must
subscribe to everything (``b""``).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import zmq
from edx_protocol import Stop, encode

from .replay import Replay, xray_count

#: Socket kinds a producer can use, with the side that binds by default.
SOCKET_KINDS = {"push": False, "pub": True}
#: Messages (and bytes) a producer keeps to send again after its connection dropped: enough to cover
#: what the socket buffers of both sides and the service's input queue (100 messages) may have held.
RESEND_MESSAGES = 512
RESEND_BYTES = 512 * 2**20
_MONITORS = itertools.count()


class Sent(NamedTuple):
    """What :func:`send_replay` sent: ``messages`` includes start and stop."""

    messages: int
    sweeps: int
    xrays: int
    nbytes: int
    aborted: bool
    resent: int = 0  # messages sent again after a reconnection (the service drops those it had)


class SweepDone(NamedTuple):
    """Passed to ``on_sweep`` after the last message of a sweep."""

    frame_index: int
    messages: int
    xrays: int
    nbytes: int


def make_socket(address: str, kind: str = "push", bind: bool | None = None,
                context: zmq.Context | None = None, linger_ms: int = 10_000, keys=None) -> zmq.Socket:
    """Create the producer's socket.

    Parameters
    ----------
    address : str
        A ZeroMQ endpoint, e.g. ``tcp://127.0.0.1:5556``.
    kind : {"push", "pub"}
        PUSH delivers every message to one service and waits when it is slow.
        "pub" makes an XPUB socket: it sends like PUB, and it also reports
        subscribers (see :func:`wait_for_subscriber`) and blocks instead of
        dropping messages when a subscriber falls behind.
    bind : bool, optional
        Default: PUSH connects, PUB binds.
    context : zmq.Context, optional
        Default: the process-wide instance.
    linger_ms : int
        How long closing the socket may wait to deliver queued messages.
    keys : edx_protocol.security.ClientKeys or ServerKeys, optional
        CurveZMQ (a service with ``[security] curve = true``): a socket that connects needs
        ``ClientKeys`` (``load_client_keys(NAME.key_secret, server.key)``); one that binds needs
        ``ServerKeys`` and then admits only the subscribers whose public key is in their folder
        (it starts its context's ZAP handler, which runs as long as the process).
    """
    if kind not in SOCKET_KINDS:
        raise ValueError(f"socket kind must be one of {sorted(SOCKET_KINDS)}, got {kind!r}")
    binds = SOCKET_KINDS[kind] if bind is None else bind
    context = context or zmq.Context.instance()
    socket = context.socket(zmq.PUSH if kind == "push" else zmq.XPUB)
    socket.setsockopt(zmq.LINGER, linger_ms)
    if kind == "pub":
        socket.setsockopt(zmq.XPUB_NODROP, 1)
    try:
        if keys is not None:
            from edx_protocol.security import ClientKeys, Security, apply_keys

            sides = Security(client=keys) if isinstance(keys, ClientKeys) else Security(server=keys)
            apply_keys(socket, sides, binds, f"producer {kind.upper()}")
        if binds:
            socket.bind(address)
        else:
            socket.connect(address)
    except (zmq.ZMQError, ValueError):
        socket.close(linger=0)
        raise
    return socket


def wait_for_subscriber(socket: zmq.Socket, timeout_s: float) -> bool:
    """Wait until a subscriber joins an XPUB socket; True if one did within ``timeout_s``.

    XPUB hands each new subscription up as a message, so no blind sleep is
    needed: once it has arrived, that subscriber receives what is sent next.
    """
    if socket.socket_type != zmq.XPUB:
        raise ValueError("wait_for_subscriber needs the XPUB socket that make_socket(kind='pub') returns")
    deadline = time.monotonic() + timeout_s
    while socket.poll(max(0, int((deadline - time.monotonic()) * 1000)), zmq.POLLIN):
        if socket.recv()[:1] == b"\x01":  # b"\x00" would be an unsubscription
            return True
    return False


def send_replay(replay: Replay, socket: zmq.Socket, interval_s: float = 0.0,
                stop_event: threading.Event | None = None,
                on_sweep: Callable[[SweepDone], None] | None = None,
                resend: int = RESEND_MESSAGES) -> Sent:
    """Send start, every frame message and stop.

    Parameters
    ----------
    replay : Replay
    socket : zmq.Socket
        From :func:`make_socket` (or any PUSH/PUB-like socket).
    interval_s : float
        Pause between sweeps (not between the messages of one sweep), to
        mimic the microscope's frame time.
    stop_event : threading.Event, optional
        When set, no more frames are sent, also while waiting for a slow or
        absent receiver; the stop message then says ``reason="aborted"`` and
        counts only the sweeps sent completely.
    on_sweep : callable, optional
        Called with a :class:`SweepDone` after each sweep's last message.
    resend : int
        With a PUSH socket that connects: when its connection drops and comes back (the service
        restarted after a crash, a network cut), send the last ``resend`` messages again (at most
        :data:`RESEND_BYTES`), then go on with the same acquisition id. The service recognises
        those it had by their ``seq`` and drops them (``duplicate_seq``); a lost one fills its gap.
        0: never.

    Returns
    -------
    Sent
    """
    stop_event = stop_event or threading.Event()
    watch = socket.socket_type == zmq.PUSH and resend > 0
    tally = _Tally(socket, stop_event, on_sweep, _Resender(socket, resend) if watch else None)
    if tally.send(replay.start, {}):
        for header, arrays in replay.messages():
            if isinstance(header, Stop):
                tally.finish_sweep()
                if tally.send(header, {}):
                    return tally.result(aborted=False)
                break
            if tally.frame_index is not None and header.frame_index != tally.frame_index:
                tally.finish_sweep()
                if interval_s > 0:
                    stop_event.wait(interval_s)
            if stop_event.is_set() or not tally.send(header, arrays):
                break
    if tally.messages == 0:  # not even the start went out: there is nothing to close
        return tally.result(aborted=True)
    tally.send_abort(Stop(acquisition_id=replay.start.acquisition_id, seq=tally.last_seq + 1,
                          frames=tally.sweeps, reason="aborted"))
    return tally.result(aborted=True)


class _Tally:
    """Sends messages, counts them and reports finished sweeps."""

    #: How often a blocked send looks at the stop event, and how long the abort notice may wait.
    POLL_MS = 100
    ABORT_WAIT_MS = 1000

    def __init__(self, socket, stop_event, on_sweep, resender: "_Resender | None" = None):
        self.socket, self.stop_event, self.on_sweep = socket, stop_event, on_sweep
        self.resender = resender
        self.messages = self.sweeps = self.xrays = self.nbytes = self.last_seq = self.resent = 0
        self.frame_index = None
        self.sweep = [0, 0, 0]  # messages, xrays, bytes of the sweep in progress

    def send(self, header, arrays) -> bool:
        """Send once the socket can take it; False if the stop event came first."""
        # A plain blocking send would hang here for good when no receiver is there.
        if not self._resend():
            return False
        while not self.socket.poll(self.POLL_MS, zmq.POLLOUT):
            if self.stop_event.is_set():
                return False
        frames = encode(header, arrays)
        self._count(header, arrays, frames)
        if self.resender is not None:
            self.resender.keep(frames)
        return True

    def _resend(self) -> bool:
        """After a reconnection, send again what the dropped connection may have lost; False if stopped."""
        again = self.resender.after_reconnect() if self.resender is not None else []
        for frames in again:
            while not self.socket.poll(self.POLL_MS, zmq.POLLOUT):
                if self.stop_event.is_set():
                    return False
            self.socket.send_multipart(frames, copy=False)
            self.resent += 1
        return True

    def send_abort(self, stop: Stop) -> None:
        """Tell the receiver the acquisition ended early, if it can still be reached."""
        if self.socket.poll(self.ABORT_WAIT_MS, zmq.POLLOUT):
            try:
                self._count(stop, {}, encode(stop, {}), zmq.NOBLOCK)
            except zmq.Again:
                pass  # the receiver is gone; it will see the acquisition end without a stop

    def _count(self, header, arrays, frames, flags: int = 0) -> None:
        self.socket.send_multipart(frames, flags=flags, copy=False)
        nbytes = sum(memoryview(f).nbytes for f in frames)
        xrays = xray_count(header, arrays)
        self.messages += 1
        self.xrays += xrays
        self.nbytes += nbytes
        self.last_seq = header.seq
        if header.kind in ("frame", "image"):  # a sweep's image belongs to the sweep
            self.frame_index = header.frame_index
            self.sweep = [self.sweep[0] + 1, self.sweep[1] + xrays, self.sweep[2] + nbytes]

    def finish_sweep(self) -> None:
        if not self.sweep[0]:
            return
        self.sweeps += 1
        if self.on_sweep is not None:
            self.on_sweep(SweepDone(self.frame_index, *self.sweep))
        self.sweep = [0, 0, 0]

    def result(self, aborted: bool) -> Sent:
        if self.resender is not None:
            self.resender.close()
        return Sent(self.messages, self.sweeps, self.xrays, self.nbytes, aborted, self.resent)


class _Resender:
    """Keeps the last messages sent and says, after the connection dropped and came back, what to send again.

    It watches the socket's connection events (``zmq_socket_monitor``): ZeroMQ reconnects by
    itself and delivers what was still queued, but what the dropped connection had taken (in
    its buffers, or in the service's input queue when the service was killed) is lost.
    """

    def __init__(self, socket: zmq.Socket, messages: int, max_bytes: int = RESEND_BYTES):
        self.socket = socket
        self.kept: deque = deque(maxlen=messages)
        self.max_bytes, self.bytes = max_bytes, 0
        # An address of its own: the previous send_replay's monitor of this socket may not be unbound yet.
        self.monitor = socket.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED,
                                                 addr=f"inproc://edx-resend-{next(_MONITORS)}")
        self.dropped = False
        self.reconnections = 0

    def keep(self, frames: list) -> None:
        if len(self.kept) == self.kept.maxlen:
            self.bytes -= self._size(self.kept[0])
        self.kept.append(frames)
        self.bytes += self._size(frames)
        while self.bytes > self.max_bytes and len(self.kept) > 1:
            self.bytes -= self._size(self.kept.popleft())

    @staticmethod
    def _size(frames) -> int:
        return sum(memoryview(f).nbytes for f in frames)

    def after_reconnect(self) -> list:
        """The messages to send again if the connection came back since the last call; else []."""
        from zmq.utils.monitor import recv_monitor_message

        again: list = []
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)["event"]
            if event == zmq.EVENT_DISCONNECTED:
                self.dropped = True
            elif event == zmq.EVENT_CONNECTED and self.dropped:
                self.dropped = False
                self.reconnections += 1
                again = list(self.kept)  # a later drop supersedes an earlier one: send the newest list once
        return again

    def close(self) -> None:
        try:
            self.socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)

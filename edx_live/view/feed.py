"""The latest result documents of a running service, read from its PUB socket on a background thread.

The thread drains the socket as fast as documents come and keeps only the newest of each
topic, so a slow page gets the newest state, never a queue. A document naming another
acquisition than the one shown starts afresh (a new acquisition, or a restarted service).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import zmq
from edx_protocol import ProtocolError, decode_result
from edx_protocol.security import ClientKeys, Security

from edx_live.shell.sockets import Sockets
from edx_live.core.rate import CountRate
from edx_live.logs import get_logger


log = get_logger("view")

#: Kinds of document the page shows (topic prefixes).
SUBSCRIBED = (b"status", b"clusters/", b"composition/", b"image", b"targets", b"advice")


@dataclass
class State:
    """What the page shows: the newest document of each kind, for one acquisition."""

    acquisition_id: str | None = None
    status: object = None
    clusters: dict = field(default_factory=dict)        # workflow -> (header, arrays)
    composition: dict = field(default_factory=dict)     # workflow -> header
    image: tuple | None = None                          # (header, arrays)
    targets: object = None                              # the newest targets document
    advice: object = None                               # the newest advice document
    count_rate: float | None = None
    received: int = 0
    malformed: int = 0
    last_message_s: float | None = None                 # monotonic time of the newest document
    version: int = 0                                    # increases with every change


class Feed:
    """Subscribe to ``endpoint`` and keep the newest documents (:class:`State`).

    Parameters
    ----------
    endpoint : str
        The service's result PUB endpoint, e.g. ``tcp://127.0.0.1:5557``.
    context : zmq.Context, optional
    keys : edx_protocol.security.ClientKeys, optional
        CurveZMQ client keys, for a service with ``[security] curve = true``.
    """

    def __init__(self, endpoint: str, context: zmq.Context | None = None, keys: ClientKeys | None = None):
        self.endpoint, self.keys = endpoint, keys
        self._context = context or zmq.Context.instance()
        self._state = State()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rate = CountRate(deque(maxlen=10))  # for a service whose status has no count_rate

    def start(self) -> "Feed":
        self._thread = threading.Thread(target=self._run, name="edx-live-view-feed", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def snapshot(self) -> State:
        """A shallow copy of the state (documents are immutable once decoded)."""
        with self._lock:
            s = self._state
            return dataclasses.replace(s, clusters=dict(s.clusters), composition=dict(s.composition))

    def _run(self) -> None:
        security = Security(client=self.keys) if self.keys is not None else None
        sub = Sockets(self._context, security=security).subscriber(self.endpoint, SUBSCRIBED)
        log.info("view_subscribed", endpoint=self.endpoint, curve=self.keys is not None)
        try:
            while not self._stop.is_set():
                if not sub.poll(100):
                    continue
                while True:  # drain: only the newest of each kind matters
                    try:
                        frames = sub.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._receive(frames)
        finally:
            sub.close(linger=0)

    def _receive(self, frames) -> None:
        try:
            header, arrays = decode_result(frames[1:])
        except (ProtocolError, ValueError, IndexError) as exc:
            with self._lock:
                self._state.malformed += 1
            log.warning("view_malformed_document", topic=bytes(frames[0].bytes[:40]), error=str(exc)[:200])
            return
        now = time.monotonic()
        with self._lock:
            self._apply(self._state, header, arrays, now)

    def _apply(self, s: State, header, arrays, now: float) -> None:
        s.received += 1
        s.last_message_s = now
        acq = header.acquisition_id
        if acq is not None and acq != s.acquisition_id:
            log.info("view_acquisition", acquisition_id=acq, previous=s.acquisition_id)
            s.acquisition_id, s.clusters, s.composition, s.image, s.count_rate = acq, {}, {}, None, None
            s.targets = s.advice = None
            self._rate = CountRate(deque(maxlen=10))
        kind = header.kind
        if kind == "status":
            s.status = header
            if acq is not None and acq == s.acquisition_id:
                self._rate.note(now, header.counts)
                published = getattr(header, "count_rate", None)
                s.count_rate = published if published is not None else self._rate.value
        elif acq is None or acq != s.acquisition_id:
            return
        elif kind == "clusters":
            s.clusters[header.workflow] = (header, arrays)
        elif kind == "composition":
            s.composition[header.workflow] = header
        elif kind == "image":
            s.image = (header, arrays)
        elif kind == "targets":
            s.targets = header
        elif kind == "advice":
            s.advice = header
        s.version += 1

"""Every ZeroMQ socket of the service is made here.

Addresses, high-water marks, size limits, linger and reconnection are set in one
place; the rest of the code asks :class:`Sockets` for a socket of a role. The
default endpoints are on loopback: another host can reach the service only when
the configuration names an interface. Security settings (CurveZMQ keys) plug in here.

Imports only pyzmq, so the viewer and the control client use it without the analysis stack.
"""

from __future__ import annotations

import zmq

#: Results queued per subscriber before PUB drops for that subscriber (documents are conflated downstream).
PUBLISH_HWM = 1000


class SocketError(OSError):
    """A socket could not bind or connect; the message says which and what to change."""


class Sockets:
    """The factory of the service's sockets.

    Parameters
    ----------
    context : zmq.Context, optional
        Default: the process-wide instance.
    """

    def __init__(self, context: zmq.Context | None = None):
        self.context = context or zmq.Context.instance()

    def _make(self, kind: int, role: str, address: str, bind: bool, linger_ms: int = 0, **options) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, linger_ms)
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name.upper()), value)
        try:
            sock.bind(address) if bind else sock.connect(address)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            verb = "bind" if bind else "connect"
            raise SocketError(f"cannot {verb} the {role} socket to {address}: {exc}; choose another "
                              f"address (port * picks a free one)") from None
        return sock

    def input(self, address: str, kind: str = "pull", bind: bool = True, high_water_mark: int = 100,
              max_message_bytes: int = 64 * 2**20) -> zmq.Socket:
        """The socket frames arrive on: PULL (producers PUSH; nothing is dropped) or SUB (every topic).

        ``max_message_bytes`` is ``ZMQ_MAXMSGSIZE``: ZeroMQ drops a larger frame unread and
        closes that connection, so the queue holds at most about ``high_water_mark`` such frames.
        """
        if kind not in ("pull", "sub"):
            raise ValueError(f"input socket must be pull or sub, got {kind!r}")
        options = dict(rcvhwm=high_water_mark, maxmsgsize=max_message_bytes)
        if kind == "sub":
            options["subscribe"] = b""
        return self._make(zmq.PULL if kind == "pull" else zmq.SUB, f"input {kind.upper()}", address, bind,
                          **options)

    def publisher(self, address: str) -> zmq.Socket:
        """The bound PUB socket results leave on; a subscriber that falls behind loses documents, never the service."""
        return self._make(zmq.PUB, "result PUB", address, True, linger_ms=1000, sndhwm=PUBLISH_HWM)

    def subscriber(self, address: str, topics=(b"",), high_water_mark: int = 64) -> zmq.Socket:
        """A SUB socket connected to a service's results (the viewer, the demo's printer, tests)."""
        sock = self._make(zmq.SUB, "result SUB", address, False, rcvhwm=high_water_mark, reconnect_ivl_max=2000)
        for topic in topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        return sock

    def control(self, address: str) -> zmq.Socket:
        """The bound REP socket the service answers commands on."""
        return self._make(zmq.REP, "control REP", address, True, maxmsgsize=2**20)

    def request(self, address: str, timeout_s: float = 5.0) -> zmq.Socket:
        """A REQ socket to a service's control socket; a reply later than ``timeout_s`` raises ``zmq.Again``."""
        ms = int(timeout_s * 1000)
        return self._make(zmq.REQ, "control REQ", address, False, rcvtimeo=ms, sndtimeo=ms)


def endpoint(sock: zmq.Socket) -> str:
    """The endpoint a socket actually bound or connected (with the port chosen for ``*``)."""
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)

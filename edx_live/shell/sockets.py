"""Every ZeroMQ socket of the service is made here.

Addresses, high-water marks, size limits, linger and reconnection are set in one
place; the rest of the code asks :class:`Sockets` for a socket of a role. The
default endpoints are on loopback: another host can reach the service only when
the configuration names an interface. CurveZMQ keys (``[security]``) plug in here: with them,
a socket that binds is a CURVE server that admits only authorised client keys (the context's
ZAP handler, :mod:`edx_protocol.security`), and a socket that connects is a CURVE client.

Imports only pyzmq and the protocol, so the viewer and the control client use it without the analysis stack.
"""

from __future__ import annotations

import zmq
from edx_protocol.security import Security, SecurityError, apply_keys

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
    security : edx_protocol.security.Security, optional
        CurveZMQ keys: ``server`` for the sockets that bind, ``client`` for those that connect.
        None (default): plain sockets, as without ``[security]``.
    log : structlog-like logger, optional
        Where the ZAP handler reports refused client keys and reloads of the authorised folder.

    A factory that made a CURVE server socket shares its context's ZAP handler; :meth:`close` it
    (after its sockets) so the handler stops before the context is terminated.
    """

    def __init__(self, context: zmq.Context | None = None, security: Security | None = None, log=None):
        self.context = context or zmq.Context.instance()
        self.security, self.log = security, log
        self._authorizer = None

    @property
    def curve(self) -> bool:
        """Whether the sockets made here use CurveZMQ."""
        return self.security is not None

    @property
    def authorizer(self):
        """The context's ZAP handler this factory shares (``refused``: client keys turned away), or None."""
        return self._authorizer

    def close(self) -> None:
        """Stop sharing the context's ZAP handler (the last user stops it); the sockets are closed by their owners."""
        if self._authorizer is not None:
            self._authorizer.release()
            self._authorizer = None

    def __enter__(self) -> "Sockets":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _secure(self, sock: zmq.Socket, role: str, bind: bool) -> None:
        try:
            authorizer = apply_keys(sock, self.security, bind, role, self.log)
        except SecurityError as exc:
            sock.close(linger=0)
            raise SocketError(str(exc)) from None
        if authorizer is not None:
            if self._authorizer is None:
                self._authorizer = authorizer
            else:
                authorizer.release()  # one share per factory is enough

    def _make(self, kind: int, role: str, address: str, bind: bool, linger_ms: int = 0, **options) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, linger_ms)
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name.upper()), value)
        if self.security is not None:
            self._secure(sock, role, bind)
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

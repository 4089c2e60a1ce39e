"""The client side of the control socket: what ``edx-live ctl`` runs (no analysis stack needed)."""

from __future__ import annotations

import json

import zmq
from edx_protocol.control import COMMANDS, Reply, decode_reply, encode_request

from .sockets import Sockets


def parse_value(text: str):
    """A command-line value as JSON when it reads as JSON (2, 2.5, true, null, [1, 2]), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_values(command: str, pairs: list[str]) -> dict:
    """``NAME=VALUE`` pairs as the command's arguments (``set`` takes them as ``values``)."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; known: {', '.join(COMMANDS)}")
    fields = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"expected NAME=VALUE, got {pair!r}")
        fields[name] = parse_value(value)
    if command == "set":
        if not fields:
            raise ValueError("set needs at least one NAME=VALUE, e.g. refit.interval_s=2")
        return {"values": fields}
    return fields


def call(address: str, command: str, timeout_s: float = 5.0, sockets: Sockets | None = None, **args) -> Reply:
    """Send one command and return the service's reply; TimeoutError when none comes in ``timeout_s``.

    ``sockets`` made with CurveZMQ client keys (``Sockets(security=Security(client=...))``) talk to a
    service with ``[security] curve = true``; a service refuses a client whose key it does not
    admit, which then sees no reply at all.
    """
    sockets = sockets or Sockets()
    sock = sockets.request(address, timeout_s)
    try:
        sock.send(encode_request(command, **args))
        try:
            return decode_reply(sock.recv())
        except zmq.Again:
            keys = ("are this client's keys admitted (the service's authorized_keys folder)?" if sockets.curve
                    else "does it require CurveZMQ keys (--curve-secret-key, --curve-server-key)?")
            raise TimeoutError(f"no reply from {address} within {timeout_s} s: is the service running there, "
                               f"with its control socket on; {keys}") from None
    finally:
        sock.close(linger=0)

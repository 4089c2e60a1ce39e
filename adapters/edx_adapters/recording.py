"""Replay a recorded session (``.edxrec``) byte for byte, at its own pace or faster.

>>> send_recording("run-20250101T120000.edxrec", socket, speed=10)     # doctest: +SKIP
>>> for frames in recording_messages("run.edxrec"):                     # doctest: +SKIP
...     ingest.receive(frames)

Every recorded message is sent unchanged, the ones the live service rejected too, so
that a receiver sees exactly what the service saw. :func:`refit_points` says after which
message the live service took each refit's snapshot, so offline processing can refit at
the same places.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import zmq
from edx_protocol.container import Recording, read_recording

#: How often a blocked send or a pause looks at the stop event.
POLL_MS = 100


def recording_messages(path: str | Path | Recording) -> Iterator[tuple[bytes, ...]]:
    """The frames of every recorded message, in the order received."""
    recording = path if isinstance(path, Recording) else read_recording(path)
    return recording.messages()


def refit_points(path: str | Path | Recording) -> Iterator[tuple[int, dict]]:
    """``(n, fields)`` for every ``refit`` marker: its snapshot held the first ``n`` messages of the file.

    ``fields`` is the marker's map, ``{"refit": i, "final": bool, "elapsed_s": float}``.
    Feeding messages ``[0, n)`` to an ``Ingest`` and refitting reproduces that refit's input.
    """
    recording = path if isinstance(path, Recording) else read_recording(path)
    n = 0
    for entry in recording:
        if entry.kind == "message":
            n += 1
        elif entry.name == "refit":
            yield n, dict(entry.fields)


def send_recording(path: str | Path | Recording, socket: zmq.Socket, speed: float = 1.0,
                   on_message: Callable[[int, tuple[bytes, ...]], None] | None = None,
                   stop_event: threading.Event | None = None) -> int:
    """Send every recorded message unchanged; returns the number sent.

    Parameters
    ----------
    path : str, pathlib.Path or Recording
    socket : zmq.Socket
        A PUSH (or PUB) socket, e.g. from ``edx_adapters.producer.make_socket``.
    speed : float
        1: the original pace (message ``i`` leaves ``t_i / speed`` seconds after the
        first, measured from the recorded receive times); 10: ten times faster;
        0: as fast as the receiver takes them.
    on_message : callable, optional
        Called as ``on_message(index, frames)`` after each message is sent.
    stop_event : threading.Event, optional
        When set, sending stops (also while waiting for a slow or absent receiver).
        Nothing is added to the stream: a replay is the recording, or a prefix of it.
    """
    if not speed >= 0:  # also refuses NaN
        raise ValueError(f"speed must be zero or more, got {speed!r}")
    stop_event = stop_event or threading.Event()
    sent, t_first, wall_first = 0, None, 0.0
    for t_s, frames in _timed_messages(path):
        if t_first is None:
            t_first, wall_first = t_s, time.monotonic()
        elif speed > 0:
            delay = wall_first + (t_s - t_first) / speed - time.monotonic()
            if delay > 0 and stop_event.wait(delay):
                break
        while not socket.poll(POLL_MS, zmq.POLLOUT):  # a plain blocking send would hang with no receiver
            if stop_event.is_set():
                return sent
        if stop_event.is_set():
            break
        socket.send_multipart(frames, copy=False)
        if on_message is not None:
            on_message(sent, frames)
        sent += 1
    return sent


def _timed_messages(path) -> Iterator[tuple[float, tuple[bytes, ...]]]:
    recording = path if isinstance(path, Recording) else read_recording(path)
    return ((entry.t_s, entry.frames) for entry in recording if entry.kind == "message")

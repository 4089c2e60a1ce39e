"""Subscribers to the service's documents: each is a callable ``(header, arrays) -> None``.

The service emits protocol documents (status, clusters, composition, image); the
ZeroMQ publisher, the console printer and the in-memory collector are peers
that receive the same documents.
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import zmq
from edx_protocol import encode, topic_for

from edx_live.logs import get_logger

from .sockets import Sockets, endpoint

log = get_logger("publish")


def topic(header) -> bytes:
    """ZeroMQ topic of a document."""
    return topic_for(header.kind, getattr(header, "workflow", None))


class ZmqPublisher:
    """Sends each document as ``[topic, header, *buffers]`` on a bound PUB socket.

    Thread-safe: refits and status come from different threads, a ZeroMQ
    socket must only be used by one at a time.
    """

    def __init__(self, address: str, context: zmq.Context | None = None, sockets: Sockets | None = None):
        self._socket = (sockets or Sockets(context)).publisher(address)
        self._lock = threading.Lock()
        self.endpoint = endpoint(self._socket)

    def __call__(self, header, arrays: dict[str, np.ndarray] | None = None) -> None:
        frames = [topic(header)] + encode(header, arrays or {})
        with self._lock:
            self._socket.send_multipart(frames, copy=False)

    def close(self) -> None:
        with self._lock:
            self._socket.close()


class Collector:
    """Keeps every document in memory (offline processing, tests)."""

    def __init__(self):
        self.documents: list[tuple[object, dict]] = []
        self._lock = threading.Lock()

    def __call__(self, header, arrays: dict[str, np.ndarray] | None = None) -> None:
        with self._lock:
            self.documents.append((header, dict(arrays or {})))

    def latest(self, kind: str, workflow: str | None = None):
        """The last document of a kind (and workflow), or None."""
        with self._lock:
            for header, arrays in reversed(self.documents):
                if header.kind == kind and getattr(header, "workflow", None) == workflow:
                    return header, arrays
        return None


def format_document(header) -> str:
    """A few human lines for one document (used by the console printer and the demo)."""
    if header.kind == "status":
        rej = sum(header.rejected.values())
        return (f"[status] {header.acquisition_id} {header.state}: {header.frames} frames, "
                f"{header.counts} counts, {header.messages} messages, {rej} rejected, "
                f"{header.gaps.count} missing")
    if header.kind == "image":
        rows, columns = header.arrays[0].shape
        return (f"[image] {header.acquisition_id} {header.detector} {rows}x{columns}: mean of {header.sweeps} "
                f"sweeps" + (" (final)" if header.final else ""))
    if header.kind == "clusters":
        sizes = ", ".join(f"#{c.label}:{c.pixels}px" for c in header.clusters)
        change = []
        if header.appeared and header.agreement is not None:
            change.append("new " + ", ".join(f"#{i}" for i in header.appeared))
        if header.vanished:
            change.append("gone " + ", ".join(f"#{i}" for i in header.vanished))
        if header.agreement is not None:
            change.append(f"agreement {header.agreement:.2f}")
        if header.converged:
            change.append("converged")
        return (f"[{header.workflow}] refit {header.refit} at {header.frames} frames / {header.counts} counts: "
                f"{len(header.clusters)} clusters ({sizes}), noise {header.noise_pixels}px, "
                f"{header.refit_s:.2f} s" + (f"; {'; '.join(change)}" if change else ""))
    if header.kind == "targets":
        return _targets_text(header)
    if header.kind == "advice":
        return f"[advice] refit {header.refit}: {header.message}"
    lines = [f"[{header.workflow}] composition, refit {header.refit} ({header.method.split(' (')[0]}; "
             f"k-factors: {header.kfactor_source}; {header.quantify_s:.2f} s)"]
    for c in header.clusters:
        parts = [_element_text(el, r) for el, r in c.elements.items()]
        where = f", {c.pixel_level} {c.core_pixels}px" if c.pixel_level not in (None, "all") else ""
        lines.append(f"    cluster {c.label} ({c.pixels}px{where}): " + ", ".join(parts) + " at%"
                     + _target_text(c.time_to_target))
    return "\n".join(lines)


def _targets_text(header, shown: int = 3) -> str:
    """The best few targets, one line each."""
    lines = [f"[targets] refit {header.refit}: {len(header.targets)} regions worth a closer look"
             + (":" if header.targets else "")]
    for t in header.targets[:shown]:
        r0, c0, r1, c1 = t.box_px
        dose = f", {t.sweeps:.0f} sweeps" if t.sweeps is not None else ""
        lines.append(f"    {t.rank}. rows {r0}-{r1 - 1}, columns {c0}-{c1 - 1}: {', '.join(t.reasons)} "
                     f"(score {t.score:.2f}; {' + '.join(t.workflows)}{dose})")
    return "\n".join(lines)


def _element_text(element: str, r) -> str:
    if not r.detected:
        limit = f"<{r.detection_limit_atomic_percent:.1f}" if r.detection_limit_atomic_percent is not None else ""
        return f"{element} n.d.{limit}"
    if r.atomic_percent is None:
        return f"{element} ?"
    sigma = f"±{r.atomic_percent_sigma:.1f}" if r.atomic_percent_sigma is not None else ""
    return f"{element} {r.atomic_percent:5.1f}{sigma}"


def _target_text(t) -> str:
    """The time to the target sigma, in words."""
    if t is None or t.limiting_element is None:
        return ""
    goal = f"±{t.target_sigma_atomic_percent:g}"
    if t.reached:
        return f"; {goal} reached"
    if not t.reachable:
        return f"; {goal} not reachable ({t.limiting_element}: spread or bias)"
    when = f"{t.sweeps:.0f} more sweeps" if t.sweeps is not None else f"x{t.counts_factor:.1f} counts"
    if t.seconds is not None:
        when += f", {t.seconds:.0f} s"
    return f"; {goal} in {when} ({t.limiting_element})"


class ConsolePrinter:
    """Prints each document in a few human lines (the demo uses it)."""

    def __init__(self, stream=None, kinds=("clusters", "composition")):
        self.stream = stream or sys.stdout
        self.kinds = kinds

    def __call__(self, header, arrays=None) -> None:
        if header.kind in self.kinds:
            print(format_document(header), file=self.stream, flush=True)

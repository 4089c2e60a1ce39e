"""Structured logging: one structlog logger per concern, rendered for a console or as JSON lines."""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from collections import Counter

import structlog

CONCERNS = ("ingest", "accumulate", "segment", "quantify", "publish", "service", "control", "record", "recover",
            "view", "security", "scale")


class _StderrLogger:
    """Writes each rendered line to whatever ``sys.stderr`` is at that moment.

    Holding on to the stream object at configure time breaks when it is later
    replaced (a supervisor reopening logs, a test harness capturing output).
    Each line is one write under one lock: ingest, a refit and the recorder log
    from different threads, and ``print`` writes the newline separately, so two
    lines could otherwise run together and neither would parse.
    """

    _lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            stream = sys.stderr
            stream.write(message + "\n")
            stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _stderr_factory(*args):
    return _StderrLogger()


#: Deprecation warnings HyperSpy gives while its own lazy signals load (not ours to act on).
QUIET_WARNINGS = r"Importing `\w+` from `hyperspy\._signals\."


#: The format and level :func:`configure` was last given, for worker processes to log alike.
configured = {"fmt": "console", "level": "info"}


def configure(fmt: str = "console", level: str = "info", stream=None) -> None:
    """Route all edx_live loggers to ``stream`` (default: the current stderr) as console or JSON lines."""
    configured.update(fmt=fmt, level=level)
    renderer = (structlog.processors.JSONRenderer(serializer=_strict_json) if fmt == "json"
                else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream) if stream is not None else _stderr_factory,
        cache_logger_on_first_use=False,
    )


def _finite(value):
    """``value`` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _strict_json(event: dict, **kwargs) -> str:
    """One JSON line that any JSON parser reads: NaN and infinities become null."""
    kwargs.setdefault("default", repr)
    return json.dumps(_finite(event), allow_nan=False, **kwargs)


def get_logger(concern: str):
    """The logger of one concern, e.g. ``get_logger("ingest")`` -> ``edx_live.ingest``.

    Lazy: safe at import time, it follows :func:`configure` whenever that is called.
    """
    return structlog.get_logger(logger_name=f"edx_live.{concern}")


def truncate(text: str, limit: int = 200) -> str:
    """Shorten untrusted text (a bad message's detail) before it reaches a log line."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more chars)"


class ReasonLog:
    """Rate-limited warnings for events counted by reason (rejected messages).

    The first ``first`` events of each reason are logged one by one with their
    detail; after that, one ``<event>_summary`` line every ``interval_s`` gives how
    many of each reason were not logged. Counting stays the caller's job: this
    only decides what reaches the log.
    """

    def __init__(self, logger, event: str, first: int = 10, interval_s: float = 10.0):
        self.logger, self.event, self.first, self.interval_s = logger, event, first, interval_s
        self._seen: Counter = Counter()
        self._quiet: Counter = Counter()
        self._next_summary = time.monotonic() + interval_s
        self._lock = threading.Lock()

    def note(self, reason: str, detail: str | None = None, **fields) -> None:
        """Record one event of ``reason``; log it if it is among the first, else count it for the summary."""
        with self._lock:
            self._seen[reason] += 1
            loud = self._seen[reason] <= self.first
            if not loud:
                self._quiet[reason] += 1
        if loud:
            last = self._seen[reason] == self.first
            self.logger.warning(self.event, reason=reason, count=self._seen[reason], detail=truncate(detail or ""),
                                **fields,
                                **({"further": f"later {reason} events are summarised every "
                                              f"{self.interval_s:g} s"} if last else {}))
        if time.monotonic() >= self._next_summary:
            self.flush()

    def flush(self) -> None:
        """Log the summary of the events not logged one by one, if any."""
        with self._lock:
            quiet, self._quiet = dict(self._quiet), Counter()
            self._next_summary = time.monotonic() + self.interval_s
        if quiet:
            self.logger.warning(self.event + "_summary", not_logged=quiet, total=dict(self._seen))

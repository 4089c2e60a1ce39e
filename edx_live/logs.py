"""Structured logging: one structlog logger per concern, rendered for a console or as JSON lines."""

from __future__ import annotations

import logging
import sys

import structlog

CONCERNS = ("ingest", "accumulate", "segment", "quantify", "publish", "service")


class _StderrLogger:
    """Writes each rendered line to whatever ``sys.stderr`` is at that moment.

    Holding on to the stream object at configure time breaks when it is later
    replaced (a supervisor reopening logs, a test harness capturing output).
    """

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _stderr_factory(*args):
    return _StderrLogger()


def configure(fmt: str = "console", level: str = "info", stream=None) -> None:
    """Route all edx_live loggers to ``stream`` (default: the current stderr) as console or JSON lines."""
    renderer = (structlog.processors.JSONRenderer() if fmt == "json"
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


def get_logger(concern: str):
    """The logger of one concern, e.g. ``get_logger("ingest")`` -> ``edx_live.ingest``.

    Lazy: safe at import time, it follows :func:`configure` whenever that is called.
    """
    return structlog.get_logger(logger_name=f"edx_live.{concern}")


def truncate(text: str, limit: int = 200) -> str:
    """Shorten untrusted text (a bad message's detail) before it reaches a log line."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more chars)"

"""Structured logs: valid JSON always, and rejections that cannot flood the log."""

from __future__ import annotations

import io
import json
import sys
import threading
import time

import numpy as np
import pytest

from edx_live.logs import ReasonLog, configure, get_logger


def _records(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


@pytest.fixture
def json_log():
    """JSON log lines into a buffer for the test, the console on stderr again afterwards."""
    buf = io.StringIO()
    configure("json", "info", stream=buf)
    yield buf
    configure("console", "info")


def test_json_logs_never_write_nan(json_log):
    get_logger("segment").info("segmented", agreement=float("nan"), change=float("inf"),
                               scores=[1.0, float("nan")], nested={"x": float("-inf")}, value=np.float64(2.5))
    line = json_log.getvalue().strip()
    assert "NaN" not in line and "Infinity" not in line
    record = json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert record["agreement"] is None and record["change"] is None
    assert record["scores"] == [1.0, None] and record["nested"] == {"x": None} and record["value"] == 2.5


def test_rejections_are_logged_one_by_one_then_summarised(json_log):
    log = ReasonLog(get_logger("ingest"), "message_rejected", first=3, interval_s=3600)
    for i in range(1000):
        log.note("schema", detail="x" * 10_000, seq=i)
    for i in range(2):
        log.note("version", detail="protocol 2")
    log.flush()
    records = _records(json_log)
    single = [r for r in records if r["event"] == "message_rejected"]
    assert [(r["reason"], r["count"]) for r in single] == [("schema", 1), ("schema", 2), ("schema", 3),
                                                           ("version", 1), ("version", 2)]
    assert all(len(r["detail"]) < 300 for r in single)  # truncated
    assert "summarised" in single[2]["further"]
    summary = [r for r in records if r["event"] == "message_rejected_summary"]
    assert len(summary) == 1
    assert summary[0]["not_logged"] == {"schema": 997} and summary[0]["total"] == {"schema": 1000, "version": 2}
    assert len(json_log.getvalue()) < 20_000  # 1002 rejections, a few lines


def test_the_summary_comes_periodically_while_rejections_go_on(json_log):
    log = ReasonLog(get_logger("ingest"), "message_rejected", first=1, interval_s=0.0)
    for _ in range(5):
        log.note("schema")
    summaries = [r for r in _records(json_log) if r["event"] == "message_rejected_summary"]
    assert sum(s["not_logged"].get("schema", 0) for s in summaries) == 4


class _SlowStream(io.StringIO):
    """A stream that gives other threads a turn inside every write, as a busy pipe does."""

    def write(self, text):
        time.sleep(0.0005)
        return super().write(text)


def test_lines_from_many_threads_never_run_together(monkeypatch):
    """Threads that log at once (ingest, a refit, the recorder) each leave whole JSON lines on stderr."""
    stream = _SlowStream()
    monkeypatch.setattr(sys, "stderr", stream)
    configure("json", "info")
    try:
        def emit(worker):
            for i in range(40):
                get_logger("record").info("recording_closed", worker=worker, i=i)

        threads = [threading.Thread(target=emit, args=(w,)) for w in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        configure("console", "info")
    records = _records(stream)
    assert len(records) == 240
    assert sorted((r["worker"], r["i"]) for r in records) == [(w, i) for w in range(6) for i in range(40)]

"""The service's structured logs: a rejected message is one JSON line with its reason, detail truncated."""

import io
import json
import threading
import time

from edx_live.config import load_settings
from edx_live.logs import configure
from edx_live.shell.publish import Collector
from edx_live.shell.service import Service
from edx_live.shell.transport import MemoryConnection


def test_rejected_message_is_logged_as_structured_json():
    buf = io.StringIO()
    configure("json", "info", stream=buf)
    try:
        conn = MemoryConnection()
        collector = Collector()
        service = Service(load_settings(), conn, [collector], analyze=lambda s, record: [])
        conn.put([b"\x81\xa8protocol\x01" + b"x" * 5000])  # valid msgpack map, garbage after it
        runner = threading.Thread(target=service.run, daemon=True)
        runner.start()
        for _ in range(1000):  # bounded: at most 10 s
            if service.ingest.rejected:
                break
            runner.join(0.01)
        service.stop()
        runner.join(10)
    finally:
        configure("console", "info")  # back to the current stderr
    records = [json.loads(line) for line in buf.getvalue().splitlines()]
    rejected = [r for r in records if r["event"] == "message_rejected"]
    assert len(rejected) == 1
    r = rejected[0]
    assert r["logger_name"] == "edx_live.ingest" and r["level"] == "warning"
    assert r["reason"] == "not_msgpack" and r["count"] == 1
    assert len(r["detail"]) <= 250
    assert service.status().rejected == {"not_msgpack": 1}
    assert collector.latest("status") is not None


def test_a_final_refit_does_not_wait_for_the_warm_up():
    """A stop in the first seconds after start-up gets its final documents while compilation still runs."""
    import numpy as np
    from edx_protocol import encode

    from test_ingest import events, start, stop  # the same message builders

    compiling = threading.Event()
    order = []

    def warm_up():
        order.append(("warm", threading.current_thread().name))
        compiling.wait(60)  # held until the final refit has run

    def analyze(snap, record):
        order.append(("refit", snap.final, snap.counts, compiling.is_set()))
        compiling.set()
        return []

    conn = MemoryConnection()
    settings = load_settings(overrides={"refit": {"min_counts": 1}})
    service = Service(settings, conn, [Collector()], analyze=analyze, warm_up=warm_up)
    conn.put(encode(start()))
    conn.put(events(1, np.arange(24), np.full(24, 3)))
    conn.put(stop(2))
    t0 = time.monotonic()
    service.run(stop_after=1)
    assert time.monotonic() - t0 < 30
    assert ("warm", "edx-live-warm-up") in order
    assert order[-1] == ("refit", True, 24, False)  # ran while the warm-up was still compiling
    assert service.refits == 1


def test_an_acquisition_replaced_without_stop_still_gets_its_final_refit():
    import numpy as np
    from edx_protocol import encode

    from test_ingest import events, start, stop  # the same message builders

    finals = []
    conn = MemoryConnection()
    service = Service(load_settings(), conn, [Collector()],
                      analyze=lambda snap, record: (finals.append((snap.start.acquisition_id, snap.counts))
                                            if snap.final else None) or [])
    conn.put(encode(start("acq-1")))
    conn.put(events(1, np.arange(10), np.full(10, 3), aid="acq-1"))
    conn.put(encode(start("acq-2")))  # acq-1's producer died before its stop
    conn.put(events(1, np.arange(4), np.full(4, 3), aid="acq-2"))
    conn.put(stop(2, aid="acq-2"))
    service.run(stop_after=2)
    assert finals == [("acq-1", 10), ("acq-2", 4)]


def test_logs_follow_stderr_even_after_the_configured_one_is_closed(monkeypatch):
    """A closed, replaced stderr (log rotation, output capture) must not break a later log line."""
    from edx_live.logs import get_logger

    first = io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    configure("json", "info")
    first.close()
    second = io.StringIO()
    monkeypatch.setattr("sys.stderr", second)
    get_logger("service").info("still_logging", n=1)
    assert json.loads(second.getvalue())["event"] == "still_logging"


def test_each_document_is_published_as_soon_as_the_refit_yields_it():
    """The second workflow's work starts only after the first workflow's document went out."""
    import numpy as np
    from edx_protocol import Status, encode

    from test_ingest import events, start, stop  # the same message builders

    first_published = threading.Event()
    seen_before_second = []

    def analyze(snapshot, record):
        yield Status(seq=0, acquisition_id="first", frames=0, counts=0, state="idle", messages=0,
                     refits=0, final=False), {}
        seen_before_second.append(first_published.wait(30))  # False if publishing waited for the whole refit
        yield Status(seq=0, acquisition_id="second", frames=0, counts=0, state="idle", messages=0,
                     refits=0, final=False), {}

    def subscriber(header, arrays):
        if header.acquisition_id == "first":
            first_published.set()

    conn = MemoryConnection()
    service = Service(load_settings(), conn, [subscriber], analyze=analyze)
    conn.put(encode(start()))
    conn.put(events(1, np.arange(24), np.full(24, 3)))
    conn.put(stop(2))
    service.run(stop_after=1)
    assert seen_before_second == [True]


def test_a_snapshot_that_fails_loses_its_refit_not_the_service(monkeypatch):
    """The snapshot is taken on the ingest thread: a failure there (no memory for the binned copy) is
    counted and the acquisition still finishes, with its counts intact."""
    import edx_live.shell.service as service_module
    import numpy as np
    from edx_protocol import encode
    from test_ingest import events, start, stop

    real = service_module.take_snapshot
    calls = []

    def failing(acq, *args):
        calls.append(args[2])  # final
        if len(calls) == 1:
            raise MemoryError("no room for the binned copy")
        return real(acq, *args)

    monkeypatch.setattr(service_module, "take_snapshot", failing)
    conn, collector = MemoryConnection(), Collector()
    settings = load_settings(overrides={"refit": {"min_counts": 1, "every_frames": 1}})
    service = Service(settings, conn, [collector], analyze=lambda s, record: [])
    conn.put(encode(start()))
    conn.put(events(1, np.arange(24), np.full(24, 3)))
    conn.put(events(2, np.arange(24), np.full(24, 4), frame_index=1))
    conn.put(stop(3, frames=2))
    service.run(stop_after=1)
    final = collector.latest("status")[0]
    assert calls[0] is False and calls[-1] is True
    assert final.final and final.counts == 48 and final.refit_errors == 1

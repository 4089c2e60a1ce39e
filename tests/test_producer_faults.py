"""Producer faults: a producer that reconnects and resends what it is unsure of loses and doubles nothing; one that
dies without a stop has its acquisition closed after ``[input] producer_timeout_s``, refitted and exported, saying so."""

from __future__ import annotations

import json
import time

import numpy as np
import zmq
from edx_adapters.replay import open_replay
from edx_protocol import Stop, decode, encode
from edx_protocol.container import read_recording

from edx_live.config import load_settings
from edx_live.shell.app import App, on_free_ports
from edx_live.shell.demo import bundled_dataset
from edx_live.shell.publish import Collector
from edx_live.shell.sockets import Sockets


def _messages(acquisition_id: str, sweeps: int = 4) -> list[list[bytes]]:
    replay = open_replay(bundled_dataset(), frames=sweeps, acquisition_id=acquisition_id)
    return [encode(replay.start, {})] + [encode(h, a) for h, a in replay.messages()]


def _app(tmp_path, context, **input_settings):
    settings = load_settings(overrides={"input": input_settings, "refit": {"min_counts": 1, "interval_s": 600}})
    collector = Collector()
    app = App(on_free_ports(settings, sessions_dir=tmp_path / "ses", record_dir=tmp_path / "rec"), control=False,
              publish=False, subscribers=[collector], analyze=lambda snapshot, record: [], sockets=Sockets(context))
    return app, collector


def _file_cube():
    import hyperspy.api as hs

    return np.asarray(hs.load(bundled_dataset()).data)


def test_a_producer_that_reconnects_and_resends_loses_and_doubles_nothing(tmp_path):
    """The first connection sends part of the stream and drops what it had queued (linger 0); a new one resends
    the last 40 messages and goes on. Those the service had are duplicates, the lost ones fill their gaps."""
    context = zmq.Context()
    messages = _messages("resend-1", sweeps=10)  # 10 sweeps of the bundled file sum to the file
    app, _ = _app(tmp_path, context)
    try:
        app.start(stop_after=1)
        first = context.socket(zmq.PUSH)
        first.connect(app.input_endpoint)
        cut = len(messages) // 2
        for frames in messages[:cut]:
            first.send_multipart(frames)
        deadline = time.monotonic() + 60  # the producer is unsure of its last 40 messages only
        while app.service.ingest.current is None or app.service.ingest.current.messages < cut - 40:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        first.close(linger=0)  # what it had not delivered is gone
        second = context.socket(zmq.PUSH)
        second.connect(app.input_endpoint)
        for frames in messages[cut - 40:]:
            second.send_multipart(frames)
        app.wait(120)
        second.close(linger=0)
    finally:
        app.close()
        context.destroy(linger=0)
    acq = app.service.state.finished[-1]
    ingest = app.service.ingest
    np.testing.assert_array_equal(ingest.current.accumulator.cube, _file_cube())
    assert acq["stop_reason"] == "complete" and ingest.current.missing == 0
    assert ingest.current.messages == len(messages)  # every message exactly once
    assert 0 < ingest.rejected["duplicate_seq"] <= 40 and sum(ingest.rejected.values()) == ingest.rejected[
        "duplicate_seq"]  # the resent ones it had, and nothing else refused


def test_a_producer_that_dies_without_a_stop_is_timed_out_refitted_and_exported(tmp_path):
    context = zmq.Context()
    messages = _messages("silent-1", sweeps=4)
    app, collector = _app(tmp_path, context, producer_timeout_s=0.5)
    try:
        app.start(stop_after=1)
        push = context.socket(zmq.PUSH)
        push.connect(app.input_endpoint)
        sent = messages[:-1]  # all but the stop: then the producer is gone
        for frames in sent:
            push.send_multipart(frames)
        app.wait(120)
        push.close(linger=0)
    finally:
        app.close()
        context.destroy(linger=0)
    (listing,) = app.service.state.finished
    assert listing["stop_reason"] == "producer_timeout" and listing["messages"] == len(sent) + 1
    final = [h for h, _ in collector.documents if h.kind == "status" and h.final]
    assert len(final) == 1 and final[0].state == "stopped"  # its final refit ran
    summary = json.loads((tmp_path / "ses" / "silent-1" / "summary.json").read_text())
    assert summary["acquisition"]["stop_reason"] == "producer_timeout"
    assert summary["acquisition"]["counts"] == sum(
        int(a["counts"].sum()) if "counts" in a else len(a.get("pixel", ()))
        for h, a in (decode(m) for m in sent[1:]))
    (recording,) = (tmp_path / "rec").glob("silent-1-*.edxrec")
    last, _ = decode(list([e for e in read_recording(recording) if e.kind == "message"][-1].frames))
    assert isinstance(last, Stop) and last.reason == "producer_timeout"  # a replay closes it the same way

"""A recorded live session, analysed again offline, gives the live run's answer exactly; replayed byte for
byte into another service, the same spectrum image."""

from __future__ import annotations

import numpy as np
import pytest
import zmq
from conftest import ServedApp
from edx_adapters.producer import send_replay
from edx_adapters.recording import send_recording
from edx_adapters.replay import open_replay
from edx_protocol.container import read_recording

from edx_live.config import load_settings
from edx_live.shell.demo import DEMO_KFACTORS, bundled_dataset
from edx_live.shell.offline import process_recording
from edx_live.shell.publish import Collector

SWEEPS = 10


def _settings(**refit):
    return load_settings(overrides={
        "refit": {"interval_s": 0.3, "min_counts": 1, **refit},  # clock-driven refits, wherever they fall
        "quantify": {"kfactors": DEMO_KFACTORS, "replicas": 8, "bootstrap": 8}})


def _by_refit(documents, kind):
    return {(h.workflow, h.refit): (h, a) for h, a in documents if h.kind == kind}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One live acquisition through the real service over loopback, recorded."""
    from edx_live.core.kernels import warm_up as warm_up_kernels
    from edx_live.pipeline.refit import Analyzer
    from edx_live.segment import warm_up

    warm_up_kernels()
    warm_up(approximate_neighbors=False)  # compiled now, so that refits follow each other during the acquisition
    root = tmp_path_factory.mktemp("recorded")
    context = zmq.Context()
    settings = _settings()
    served = ServedApp(settings, context, analyze=Analyzer(settings), record_dir=root / "recordings").start()
    push = context.socket(zmq.PUSH)
    push.connect(served.endpoint)
    send_replay(open_replay(bundled_dataset(), frames=SWEEPS, acquisition_id="recorded-1"), push, interval_s=0.5)
    ingest = served.finish(600)
    push.close(linger=0)
    files = sorted((root / "recordings").glob("*.edxrec"))
    yield {"root": root, "ingest": ingest, "documents": served.collector.documents, "files": files,
           "settings": settings, "context": context}
    context.destroy(linger=0)


def test_the_recording_holds_every_message_and_each_refit(live):
    assert len(live["files"]) == 1 and live["files"][0].name.startswith("recorded-1-")
    recording = read_recording(live["files"][0])
    entries = list(recording)
    assert not recording.truncated
    messages = [e for e in entries if e.kind == "message"]
    assert len(messages) == live["ingest"].current.messages  # every message, the start included
    refits = [e.fields for e in entries if e.kind == "marker" and e.name == "refit"]
    live_refits = sorted({h.refit for h, _ in live["documents"] if h.kind == "clusters"})
    assert [r["refit"] for r in refits] == live_refits and len(live_refits) >= 3  # several live refits
    assert refits[-1]["final"] and not any(r["final"] for r in refits[:-1])


def test_processing_the_recording_gives_the_live_answer_exactly(live, tmp_path):
    collector = Collector()
    summary = process_recording(live["files"][0], tmp_path / "offline", live["settings"], subscribers=[collector])
    assert summary["acquisition"]["counts"] == live["ingest"].current.accumulator.counts
    live_maps, offline_maps = _by_refit(live["documents"], "clusters"), _by_refit(collector.documents, "clusters")
    assert set(live_maps) == set(offline_maps) and len(live_maps) >= 6  # every refit of both workflows
    for key, (header, arrays) in live_maps.items():
        other, other_arrays = offline_maps[key]
        assert (header.counts, header.frames) == (other.counts, other.frames), key
        assert [c.model_dump() for c in header.clusters] == [c.model_dump() for c in other.clusters], key
        np.testing.assert_array_equal(arrays["labels"], other_arrays["labels"], err_msg=str(key))
    live_comp, offline_comp = _by_refit(live["documents"], "composition"), _by_refit(collector.documents,
                                                                                       "composition")
    assert set(live_comp) == set(offline_comp) and live_comp
    for key, (header, _) in live_comp.items():
        a = {c.label: {el: r.atomic_percent for el, r in c.elements.items()} for c in header.clusters}
        b = {c.label: {el: r.atomic_percent for el, r in c.elements.items()} for c in offline_comp[key][0].clusters}
        assert a == b, key
        ta = [c.time_to_target.model_dump() if c.time_to_target else None for c in header.clusters]
        tb = [c.time_to_target.model_dump() if c.time_to_target else None for c in offline_comp[key][0].clusters]
        assert ta == tb, key  # the live elapsed time travelled in the recording


def test_replaying_the_recording_byte_for_byte_rebuilds_the_cube(live):
    context = live["context"]
    served = ServedApp(load_settings(overrides={"refit": {"interval_s": 3600}}), context).start()
    push = context.socket(zmq.PUSH)
    push.connect(served.endpoint)
    sent = send_recording(live["files"][0], push, speed=0)
    ingest = served.finish(120)
    push.close(linger=0)
    assert sent == live["ingest"].current.messages
    np.testing.assert_array_equal(ingest.current.accumulator.cube, live["ingest"].current.accumulator.cube)
    assert not ingest.rejected

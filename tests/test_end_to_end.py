"""Producer -> service -> result subscriber over real loopback sockets, with the real analysis."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
import zmq
from edx_protocol import NOISE_LABEL, decode_result
from edx_protocol.check import DocumentChecker

from edx_live.shell.demo import bundled_dataset, run_demo

KFACTORS = {"Fe_Ka": 1.450226, "Pt_La": 5.075602}


def _receive_until_final(sub, server, timeout_s=300.0):
    documents, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not sub.poll(200):
            assert server.alive, "the service thread ended before its final update"
            continue
        frames = sub.recv_multipart(copy=False)
        header, arrays = decode_result(frames[1:])
        assert bytes(frames[0].buffer).decode().startswith(header.kind)
        documents.append((header, arrays))
        if header.kind == "status" and header.final:
            return documents
    pytest.fail("no final status within the timeout")


def test_producer_to_result_subscriber(tmp_path):
    from edx_adapters.producer import send_replay
    from edx_adapters.replay import open_replay

    from edx_live.config import load_settings
    from edx_live.shell.app import App, on_free_ports
    from edx_live.shell.sockets import Sockets

    ctx = zmq.Context()
    settings = load_settings(overrides={"refit": {"interval_s": 3600, "every_frames": 3},
                                        "output": {"address": "tcp://127.0.0.1:*", "status_interval_s": 0.2},
                                        "quantify": {"kfactors": KFACTORS, "replicas": 16}})
    app = App(on_free_ports(settings), control=False, sockets=Sockets(ctx))
    sub = app.sockets.subscriber(app.output_endpoint)
    app.start(stop_after=1)
    while not (sub.poll(200) and sub.recv_multipart()[0] == b"status"):  # subscription is live
        assert app.alive
    push = ctx.socket(zmq.PUSH)
    push.connect(app.input_endpoint)
    send_replay(open_replay(bundled_dataset(), frames=6), push)
    documents = _receive_until_final(sub, app)
    app.wait(60)
    for s in (push, sub):
        s.close(linger=0)
    app.close()
    ctx.term()

    kinds = [(h.kind, getattr(h, "workflow", None)) for h, _ in documents]
    for workflow in ("pca-gmm", "umap-hdbscan"):
        assert kinds.count(("clusters", workflow)) >= 2  # at least one live refit and the final one
        assert kinds.count(("composition", workflow)) >= 2
        header, arrays = [d for d in documents if d[0].kind == "clusters" and d[0].workflow == workflow][-1]
        assert header.final and header.frames == 6 and header.counts == 884071
        labels = arrays["labels"]
        assert labels.shape == (32, 32)
        ids = [c.label for c in header.clusters]
        assert [(labels == i).sum() for i in ids] == [c.pixels for c in header.clusters]
        assert np.isin(labels[labels != NOISE_LABEL], ids).all()
        assert arrays["spectra"].sum(axis=1).tolist() == [c.counts for c in header.clusters]
        comp = [d[0] for d in documents if d[0].kind == "composition" and d[0].workflow == workflow][-1]
        assert comp.kfactors == KFACTORS and comp.final
        for cluster in comp.clusters:
            values = [e.atomic_percent for e in cluster.elements.values() if e.detected]
            assert None not in values and sum(values) == pytest.approx(100.0)  # the detected elements
            assert all(e.detection_limit_atomic_percent is not None
                       for e in cluster.elements.values() if not e.detected)
        # the FePt cores: one cluster of each workflow holds far more Pt than the Fe-rich shells and support
        pt = sorted(c.elements["Pt"].atomic_percent if c.elements["Pt"].detected else 0.0 for c in comp.clusters)
        assert 25.0 < pt[-1] < 65.0 and pt[0] < 10.0
    checker = DocumentChecker()  # every refit, live ones included: compositions sit on the clusters' ids
    for header, arrays in documents:
        checker(header, arrays)
    checker.assert_consistent()
    assert sum(h.kind == "clusters" and not h.final for h, _ in documents) >= 2
    seqs = [h.seq for h, _ in documents if h.kind == "clusters" and h.workflow == "pca-gmm"]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    json.dumps([h.model_dump(mode="json") for h, _ in documents])  # documents are JSON-friendly


def test_demo_runs_to_the_final_update(capsys, tmp_path):
    seconds = run_demo(frames=4, interval_s=0.05, view_port=0, sessions_dir=tmp_path)
    out = capsys.readouterr().out
    assert "replaying core_shell.hspy as 4 frames" in out
    assert re.search(r"live page at http://127\.0\.0\.1:\d+/", out)
    assert "until Ctrl-C" not in out  # not a terminal: it does not wait
    folders = [p for p in tmp_path.iterdir() if (p / "report.png").exists()]
    assert len(folders) == 1 and f"session folder {folders[0]}" in out
    assert "[pca-gmm] composition" in out and "[umap-hdbscan] composition" in out
    assert "stopped" in [line for line in out.splitlines() if line.startswith("[status]")][-1]
    assert seconds > 0

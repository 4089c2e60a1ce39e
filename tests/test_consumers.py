"""Consumers that never read: the service still finishes its acquisition and publishes its final results.

Real sockets on free loopback ports. Attached for the whole acquisition: a result SUB with a
4 kB kernel receive buffer and a receive high-water mark of 1 that never reads, REQ sockets
that each send ``status`` and never read the reply, and a DEALER that pipelines requests and
never reads either. Documents are large (a 256 x 256 label map and its confidence, 0.4 MB) and
frequent, so the queues of those that never read fill. The acquisition must still end with
exactly the counts sent, its final documents must reach a subscriber that reads, and a control
client that reads must still get its answer.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq
from edx_protocol import Detector, EnergyAxis, EventsFrame, Start, Stop, decode_result, describe, encode
from edx_protocol.control import encode_request
from edx_protocol.examples import result_examples

from edx_live.config import load_settings
from edx_live.shell.app import App, on_free_ports
from edx_live.shell.ctl import call
from edx_live.shell.publish import Collector
from edx_live.shell.sockets import Sockets

SHAPE, CHANNELS, EVENTS, FRAMES = (64, 64), 256, 4096, 200


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def large_clusters(side: int = 256):
    """The golden clusters document with a ``side`` x ``side`` label map and confidence map."""
    golden = next(e for e in result_examples() if e.name == "clusters")
    labels = np.zeros((side, side), "<u2")
    labels[side // 2:] = 1
    arrays = {"labels": labels, "spectra": golden.arrays["spectra"],
              "confidence": np.ones((side, side), "<f4")}
    clusters = [c.model_copy(update={"pixels": int((labels == c.label).sum())}) for c in golden.header.clusters]
    header = golden.header.model_copy(update={"clusters": clusters, "noise_pixels": 0, "arrays": describe(arrays)})
    return header, arrays


def analyze_large(snapshot, record):
    """A stand-in refit that yields one large clusters document for the snapshot."""
    header, arrays = large_clusters()
    yield header.model_copy(update={"acquisition_id": snapshot.start.acquisition_id, "refit": snapshot.refit,
                                    "final": snapshot.final, "frames": snapshot.frames,
                                    "counts": snapshot.counts}), arrays


class Reader:
    """A result subscriber that reads everything on a thread."""

    def __init__(self, context, endpoint: str):
        self.sock = Sockets(context).subscriber(endpoint, high_water_mark=10_000)
        self.headers: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.sock.poll(50):
                self.headers.append(decode_result(self.sock.recv_multipart()[1:])[0])

    def final(self, kind: str):
        return next((h for h in reversed(self.headers) if h.kind == kind and h.final), None)

    def wait_for_final(self, kinds, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(self.final(k) is not None for k in kinds):
            assert time.monotonic() < deadline, f"no final {kinds} reached the reading subscriber"
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close(linger=0)


def dead_consumers(context, output: str, control: str, requests: int = 16, pipelined: int = 200) -> list:
    """A SUB with tiny buffers, REQ sockets and a DEALER: each has asked or subscribed, none ever reads."""
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVBUF, 4096)
    sub.setsockopt(zmq.RCVHWM, 1)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(output)
    socks = [sub]
    for _ in range(requests):
        req = context.socket(zmq.REQ)
        req.connect(control)
        req.send(encode_request("status"))
        socks.append(req)
    dealer = context.socket(zmq.DEALER)
    dealer.connect(control)
    for _ in range(pipelined):  # a REP peer reads [empty delimiter, request]
        dealer.send_multipart([b"", encode_request("status")])
    socks.append(dealer)
    return socks


def produce(context, endpoint: str, aid: str) -> tuple[list, int]:
    """A PUSH producer's socket, and the start and frames it sent (the stop is the caller's); counts sent."""
    rng = np.random.default_rng(1)
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, -1)
    push.connect(endpoint)
    push.send_multipart(encode(Start(acquisition_id=aid, seq=0, scan_shape=SHAPE, beam_energy_kev=200.0,
                                     energy_axis=EnergyAxis(offset_kev=0.0, scale_kev=0.01, channels=CHANNELS),
                                     detectors=[Detector(elevation_deg=18.0, azimuth_deg=45.0)])))
    counts = 0
    for seq in range(1, FRAMES + 1):
        arrays = {"pixel": rng.integers(0, SHAPE[0] * SHAPE[1], EVENTS).astype(np.uint32),
                  "channel": rng.integers(0, CHANNELS, EVENTS).astype(np.uint16)}
        push.send_multipart(encode(EventsFrame(acquisition_id=aid, seq=seq, frame_index=seq - 1,
                                               arrays=describe(arrays)), arrays))
        counts += EVENTS
    return push, counts


def test_consumers_that_never_read_do_not_stop_an_acquisition_or_its_final_results(context):
    settings = load_settings(overrides={"refit": {"interval_s": 3600, "every_frames": 10, "min_counts": 0},
                                        "output": {"status_interval_s": 0.01}})
    collector = Collector()
    app = App(on_free_ports(settings), subscribers=[collector], analyze=analyze_large, sessions=False,
              sockets=Sockets(context))
    dead = dead_consumers(context, app.output_endpoint, app.control_endpoint)
    reader = Reader(context, app.output_endpoint)
    app.start(stop_after=1)
    push = None
    try:
        aid = "never-read"
        push, counts = produce(context, app.input_endpoint, aid)
        reply = call(app.control_endpoint, "status", timeout_s=30, sockets=Sockets(context))
        assert reply.ok and reply.result["acquisition_id"] == aid  # a client that reads is answered
        push.send_multipart(encode(Stop(acquisition_id=aid, seq=FRAMES + 1, frames=FRAMES)))
        app.wait(timeout_s=120)
        reader.wait_for_final(("status", "clusters"))
    finally:
        for sock in dead:
            sock.close(linger=0)
        reader.close()
        app.close()
        if push is not None:
            push.close(linger=0)
    acq = app.service.ingest.current
    assert acq.state == "stopped" and acq.messages == FRAMES + 2 and acq.missing == 0
    assert not app.service.ingest.rejected
    assert acq.accumulator.counts == counts
    status, clusters = reader.final("status"), reader.final("clusters")
    assert status.acquisition_id == aid and status.counts == counts and status.messages == FRAMES + 2
    assert clusters.acquisition_id == aid and clusters.counts == counts and clusters.frames == FRAMES
    refits = [h for h, _ in collector.documents if h.kind == "clusters"]
    assert len(refits) >= 2, "the refits ran while the consumers were attached"


def test_a_subscriber_that_never_reads_holds_a_bounded_number_of_documents(context):
    """The publisher queues at most PUBLISH_HWM documents for a subscriber that stopped reading: resident
    memory levels off there, whatever is published after (each document with arrays of its own, as a refit makes)."""
    from edx_live.shell.publish import ZmqPublisher
    from edx_live.shell.sockets import PUBLISH_HWM

    publisher = ZmqPublisher("tcp://127.0.0.1:*", sockets=Sockets(context))
    dead = context.socket(zmq.SUB)
    dead.setsockopt(zmq.RCVBUF, 4096)
    dead.setsockopt(zmq.RCVHWM, 1)
    dead.setsockopt(zmq.SUBSCRIBE, b"")
    dead.connect(publisher.endpoint)
    reader = Reader(context, publisher.endpoint)  # connected after the dead one: once it reads, both are subscribed
    header, arrays = large_clusters(side=128)  # 0.1 MB of arrays
    size = sum(a.nbytes for a in arrays.values())
    deadline = time.monotonic() + 30
    while not reader.headers:
        assert time.monotonic() < deadline, "the subscriber never received anything"
        publisher(header.model_copy(update={"seq": 0}), arrays)
        time.sleep(0.01)
    reader.close()  # what it would queue in this process is not the publisher's
    try:
        rss = [_rss()]
        for batch in range(3):
            for i in range(PUBLISH_HWM):
                publisher(header.model_copy(update={"seq": i}), {k: v.copy() for k, v in arrays.items()})
            rss.append(_rss())
    finally:
        dead.close(linger=0)
        publisher.close()
    grown = [r - rss[0] for r in rss[1:]]
    assert grown[2] <= PUBLISH_HWM * size * 1.25 + 32 * 2**20, f"grew {grown[2] / 2**20:.0f} MiB"
    assert grown[2] - grown[1] <= 0.1 * PUBLISH_HWM * size + 8 * 2**20, \
        f"still growing after {2 * PUBLISH_HWM} documents: {[g / 2**20 for g in grown]} MiB"


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _thread_cpu_s(thread: threading.Thread) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def test_a_flood_of_requests_gets_a_bounded_share_of_the_service_thread(context):
    """A DEALER that pipelines thousands of ``status`` requests and never reads, into a service with
    nothing to ingest: the service thread answers them within its budget for commands, and polls
    rather than spins, so a refit running beside it keeps the interpreter; an operator's ``ctl status``
    is still answered at once."""
    from edx_live.shell.control import CONTROL_BURST_S, CONTROL_SHARE

    app = App(on_free_ports(load_settings()), analyze=analyze_large, sessions=False, sockets=Sockets(context))
    app.start()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.SNDHWM, 0)
    try:
        assert call(app.control_endpoint, "status", timeout_s=30, sockets=Sockets(context)).ok  # serving
        thread = app._thread
        dealer.connect(app.control_endpoint)
        for _ in range(20_000):
            dealer.send_multipart([b"", encode_request("status")])
        cpu0, t0 = _thread_cpu_s(thread), time.monotonic()
        answered0, spent0 = app.service.controller.answered, app.service.controller.seconds
        time.sleep(1.0)  # the flood lasts: what the service thread does meanwhile is measured
        t_reply = time.monotonic()
        reply = call(app.control_endpoint, "status", timeout_s=5, sockets=Sockets(context))
        t_reply = time.monotonic() - t_reply
        time.sleep(1.0)
        cpu, wall = _thread_cpu_s(thread) - cpu0, time.monotonic() - t0
        answered = app.service.controller.answered - answered0
        spent = app.service.controller.seconds - spent0
    finally:
        dealer.close(linger=0)
        app.close()
    assert reply.ok and reply.result["state"] == "idle"
    assert t_reply < 1.0, f"an operator's request waited {t_reply:.2f} s behind the flood"
    assert cpu <= 0.25 * wall, f"the service thread used {cpu:.2f} s of CPU in {wall:.2f} s during the flood"
    assert spent <= CONTROL_SHARE * wall + CONTROL_BURST_S + 0.05, f"{spent:.2f} s of {wall:.2f} s answering"
    assert answered > 0, "the flood was not answered at all"

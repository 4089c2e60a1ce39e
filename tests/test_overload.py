"""Overload: a producer faster than ingest is held back (PULL) or its losses are counted (SUB), never silent.

Real sockets on free loopback ports. Ingest is made slower than the producer at will: a
subscriber on the ingest thread holds it at the start's status document until the test opens
the gate, so the producer meets full queues every time, on any machine. Every message sent is
then accounted for: accepted + rejected == sent on PULL, accepted + missing == sent on SUB,
and the accumulated counts are exactly those of the accepted frames. Resident memory grows
by less than a stated bound while several times that bound flows through.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq
from conftest import ServedApp
from edx_protocol import Detector, EnergyAxis, EventsFrame, Start, Stop, describe, encode

from edx_live.config import load_settings
from edx_live.shell.transport import ZmqConnection

SHAPE, CHANNELS = (32, 32), 256
EVENTS = 16_384  # per frame message: 96 kB (pixel uint32 + channel uint16)
MESSAGE_BYTES = EVENTS * 6
#: Resident memory a flood may add to this process (service and producer): far less than what flows through.
RSS_BOUND = 96 * 2**20
#: What the queues (both high-water marks and the kernel's socket buffers) may hold before the producer waits.
QUEUED_BOUND = 64 * 2**20


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def settings(high_water_mark: int = 4):
    return load_settings(overrides={"refit": {"interval_s": 3600}, "input": {"high_water_mark": high_water_mark},
                                    "output": {"status_interval_s": 0.2}})


class Gate:
    """A subscriber that holds the ingest thread at the start's status until ``open`` is set."""

    def __init__(self):
        self.held, self.open = threading.Event(), threading.Event()

    def __call__(self, header, arrays) -> None:
        if header.kind == "status" and header.state == "acquiring" and header.messages == 1 and not self.held.is_set():
            self.held.set()
            self.open.wait(60)


class Messages:
    """One acquisition: a start, ``n`` event frames of ``EVENTS`` events each (the same arrays), a stop."""

    def __init__(self, aid: str, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.aid, self.n = aid, n
        self.arrays = {"pixel": rng.integers(0, SHAPE[0] * SHAPE[1], EVENTS).astype(np.uint32),
                       "channel": rng.integers(0, CHANNELS, EVENTS).astype(np.uint16)}
        self.described = describe(self.arrays)

    def start(self) -> list:
        return encode(Start(acquisition_id=self.aid, seq=0, scan_shape=SHAPE, beam_energy_kev=200.0,
                            energy_axis=EnergyAxis(offset_kev=0.0, scale_kev=0.01, channels=CHANNELS),
                            detectors=[Detector(elevation_deg=18.0, azimuth_deg=45.0)]))

    def frame(self, seq: int) -> list:
        return encode(EventsFrame(acquisition_id=self.aid, seq=seq, frame_index=0, arrays=self.described),
                      self.arrays)

    def stop(self) -> list:
        return encode(Stop(acquisition_id=self.aid, seq=self.n + 1, frames=1))

    def cube(self, frames: int) -> np.ndarray:
        """The spectrum image ``frames`` of these frames accumulate to, the naive way."""
        one = np.zeros(SHAPE[0] * SHAPE[1] * CHANNELS, np.int64)
        np.add.at(one, self.arrays["pixel"].astype(np.int64) * CHANNELS + self.arrays["channel"], 1)
        return (one * frames).reshape(*SHAPE, CHANNELS)


def final_status(collector):
    """The status sent after the acquisition's final refit (a periodic one may follow it)."""
    finals = [h for h, _ in collector.documents if h.kind == "status" and h.final]
    assert finals, "no final status was published"
    return finals[-1]


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakRss:
    """The highest resident memory of this process, sampled every 10 ms on a thread."""

    def __init__(self):
        self.before = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss())

    def stop(self) -> int:
        """Growth: highest minus before."""
        self._stop.set()
        self._thread.join()
        return max(self.peak, rss()) - self.before


def fill_until_held_back(sock, message, first_seq: int, limit: int, wait_s: float = 0.5) -> int:
    """Send without blocking until the socket has refused for ``wait_s``; the next seq to send."""
    seq = first_seq
    while seq < first_seq + limit:
        try:
            sock.send_multipart(message(seq), zmq.NOBLOCK, copy=False)
            seq += 1
        except zmq.Again:
            if not sock.poll(int(wait_s * 1000), zmq.POLLOUT):
                return seq
    raise AssertionError(f"{limit} messages went out with ingest standing still: no backpressure")


def wait_until_quiet(acq_messages, quiet_s: float = 0.5, timeout_s: float = 60.0) -> None:
    """Poll until the count ``acq_messages()`` has not changed for ``quiet_s``: ingest has drained its queue."""
    deadline = time.monotonic() + timeout_s
    last, since = acq_messages(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.01)
        now = acq_messages()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
    raise TimeoutError("ingest never went quiet")


def test_a_push_producer_faster_than_ingest_waits_and_every_message_is_accounted_for(context):
    """PULL input, high-water marks of 4: the producer waits while ingest stands still, then everything
    arrives; accepted + rejected == sent, and the counts are exactly those sent."""
    n, bad_every = 2000, 250
    acq = Messages("overload-push", n)
    server = ServedApp(settings(high_water_mark=4), context)
    gate = Gate()
    server.service.subscribers.append(gate)
    server.start()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 4)
    push.setsockopt(zmq.LINGER, -1)
    push.connect(server.endpoint)
    garbage = [b"\xc1 not msgpack"]

    def message(seq: int) -> list:
        return acq.frame(seq)

    memory = PeakRss()
    push.send_multipart(acq.start())
    assert gate.held.wait(30), "the start never reached ingest"
    seq = seq_held = fill_until_held_back(push, message, 1, limit=n)
    queued = (seq - 1) * MESSAGE_BYTES
    assert queued < QUEUED_BOUND, f"{seq - 1} messages ({queued / 2**20:.0f} MiB) queued before the producer waited"
    gate.open.set()
    sent, rejected_sent = seq, 0  # start and frames 1 .. seq - 1
    while seq <= n:
        push.send_multipart(acq.frame(seq), copy=False)
        seq += 1
        sent += 1
        if seq % bad_every == 0:  # refused by ingest, counted: never silently lost either
            push.send_multipart(garbage)
            sent += 1
            rejected_sent += 1
    push.send_multipart(acq.stop())
    sent += 1
    ingest = server.finish(timeout=120)
    growth = memory.stop()
    push.close()
    a = ingest.current
    assert a.state == "stopped" and a.missing == 0
    assert dict(ingest.rejected) == {"not_msgpack": rejected_sent}
    assert a.messages + sum(ingest.rejected.values()) == sent == n + 2 + rejected_sent
    assert a.accumulator.counts == n * EVENTS
    np.testing.assert_array_equal(a.accumulator.cube, acq.cube(n))
    status = final_status(server.collector)
    assert status.messages == n + 2 and status.counts == n * EVENTS and status.gaps.count == 0
    assert growth < RSS_BOUND, f"resident memory grew {growth / 2**20:.0f} MiB while {n * MESSAGE_BYTES / 2**20:.0f} " \
                               f"MiB went through"
    print(f"\n[overload, PULL] {seq_held - 1} frames ({queued / 2**20:.1f} MiB) queued before the producer waited; "
          f"sent {sent}, accepted {a.messages}, rejected {sum(ingest.rejected.values())}; resident memory "
          f"+{growth / 2**20:.0f} MiB while {n * MESSAGE_BYTES / 2**20:.0f} MiB went through")


def test_a_fast_publisher_loses_messages_to_a_sub_input_and_each_loss_is_counted(context):
    """SUB input, a PUB producer (XPUB without NODROP: it drops for a full subscriber): what the queues
    cannot hold while ingest stands still is lost, and every lost message is counted as missing."""
    n = 2000
    acq = Messages("overload-sub", n)
    pub = context.socket(zmq.XPUB)  # like PUB, but it tells when the service has subscribed
    pub.setsockopt(zmq.SNDHWM, 8)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:*")
    endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    server = ServedApp(settings(high_water_mark=4), context,
                       connection=ZmqConnection(endpoint, "sub", bind=False, high_water_mark=4, context=context))
    gate = Gate()
    server.service.subscribers.append(gate)
    server.start()
    from edx_adapters.producer import wait_for_subscriber

    assert wait_for_subscriber(pub, 30.0)
    memory = PeakRss()
    pub.send_multipart(acq.start())
    assert gate.held.wait(30), "the start never reached ingest"
    for seq in range(1, n + 1):  # never blocks: PUB drops what a full queue cannot take
        pub.send_multipart(acq.frame(seq), copy=False)
    gate.open.set()
    wait_until_quiet(lambda: server.service.ingest.current.messages)
    pub.send_multipart(acq.stop())  # the queues are empty now: the stop arrives, and closes every gap
    ingest = server.finish(timeout=120)
    growth = memory.stop()
    pub.close()
    a = ingest.current
    sent = n + 2
    assert a.state == "stopped" and not ingest.rejected
    assert a.missing > 0, "nothing was lost: the flood did not overload the queues"
    assert a.messages + a.missing == sent
    frames_accepted = a.messages - 2
    assert a.accumulator.counts == frames_accepted * EVENTS
    np.testing.assert_array_equal(a.accumulator.cube, acq.cube(frames_accepted))
    status = final_status(server.collector)
    assert status.gaps.count == a.missing and status.messages + status.gaps.count == sent
    assert status.gaps.missing, "the missing ranges are published"
    assert growth < RSS_BOUND, f"resident memory grew {growth / 2**20:.0f} MiB while {n * MESSAGE_BYTES / 2**20:.0f} " \
                               f"MiB were sent"
    print(f"\n[overload, SUB] sent {sent}: accepted {a.messages}, missing {a.missing} "
          f"({len(a.gap_ranges)} gap ranges kept); "
          f"resident memory +{growth / 2**20:.0f} MiB while {n * MESSAGE_BYTES / 2**20:.0f} MiB were sent")


def _flood(context, kind: str, seconds: float) -> tuple[list[int], int, object]:
    """A producer flat out for ``seconds`` (no gate): resident memory every second, messages sent, ingest."""
    acq = Messages(f"flood-{kind}", 10**9)
    if kind == "pull":
        server = ServedApp(settings(high_water_mark=100), context)
        server.start()
        sock = context.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, -1)
        sock.connect(server.endpoint)
    else:
        sock = context.socket(zmq.XPUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind("tcp://127.0.0.1:*")
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        server = ServedApp(settings(high_water_mark=100), context,
                           connection=ZmqConnection(endpoint, "sub", bind=False, high_water_mark=100, context=context))
        server.start()
        from edx_adapters.producer import wait_for_subscriber

        assert wait_for_subscriber(sock, 30.0)
    sock.send_multipart(acq.start())
    samples, seq, t0 = [rss()], 1, time.monotonic()
    next_sample = t0 + 1
    while time.monotonic() - t0 < seconds:
        sock.send_multipart(acq.frame(seq), copy=False)
        seq += 1
        if time.monotonic() >= next_sample:
            samples.append(rss())
            next_sample += 1
    if kind == "sub":
        wait_until_quiet(lambda: server.service.ingest.current.messages)
    acq.n = seq - 1
    sock.send_multipart(acq.stop())
    ingest = server.finish(timeout=120)
    sock.close()
    return samples, seq + 1, ingest


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pull", "sub"])
def test_a_minute_of_flood_keeps_memory_flat_and_accounts_for_every_message(context, kind):
    samples, sent, ingest = _flood(context, kind, 60.0)
    a = ingest.current
    assert a.state == "stopped" and not ingest.rejected
    if kind == "pull":
        assert a.missing == 0 and a.messages == sent
    assert a.messages + a.missing == sent
    assert a.accumulator.counts == (a.messages - 2) * EVENTS
    half = len(samples) // 2
    growth = max(samples[half:]) - max(samples[:half])
    assert growth < 16 * 2**20, f"resident memory still grew {growth / 2**20:.0f} MiB in the second half: {samples}"
    assert max(samples) - samples[0] < RSS_BOUND
    print(f"\n[flood, {kind}] {sent} messages sent in 60 s: accepted {a.messages}, missing {a.missing}; resident "
          f"memory {samples[0] / 2**20:.0f} MiB at the start, at most {max(samples) / 2**20:.0f} MiB")

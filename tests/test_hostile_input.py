"""Messages that are valid msgpack, often valid against a lax reading of the schema, and hostile.

Each fault found from outside has its own test: the message is refused with its reason code,
the accumulated counts stay exact, and the status can still be encoded.
"""

from __future__ import annotations

import os
import resource

import msgpack
import numpy as np
import pytest
from edx_protocol import DenseFrame, EventsFrame, Stop, VeloxFrame, decode_result, describe, encode

from edx_live.config import ingest_options, load_settings
from edx_live.core.ingest import Ingest, IngestOptions
from edx_live.shell.service import Service
from edx_live.shell.transport import MemoryConnection
from test_ingest import CH, SHAPE, events, start

N_PIXELS = SHAPE[0] * SHAPE[1]
U64 = 2**64 - 1


def raw(header: dict, *buffers: bytes) -> list[bytes]:
    """A message whose header bypasses the models, as a producer in another language could send it."""
    return [msgpack.packb(header, use_bin_type=True), *buffers]


def events_header(seq=2, frame_index=0, n=1, aid="acq-1", detector=False) -> dict:
    arrays = {"pixel": np.zeros(n, "<u4"), "channel": np.zeros(n, "<u2")}
    if detector:
        arrays["detector"] = np.zeros(n, "|u1")
    return EventsFrame(acquisition_id=aid, seq=seq, frame_index=frame_index,
                       arrays=describe(arrays)).model_dump(mode="json")


def velox_header(stream, seq=2, pixel_start=0, detector=None) -> dict:
    return VeloxFrame(acquisition_id="acq-1", seq=seq, frame_index=0, pixel_start=pixel_start, detector=detector,
                      arrays=describe({"stream": stream})).model_dump(mode="json")


def dense_header(counts, seq=2, pixel_start=0) -> dict:
    return DenseFrame(acquisition_id="acq-1", seq=seq, frame_index=0, pixel_start=pixel_start,
                      arrays=describe({"counts": counts})).model_dump(mode="json")


@pytest.fixture
def ingest():
    ing = Ingest()
    assert ing.receive(encode(start())).kind == "start"
    assert ing.receive(events(1, np.arange(24), np.full(24, 5))).kind == "frame"
    return ing


def _unchanged(ing: Ingest) -> None:
    expected = np.zeros((N_PIXELS, CH), np.uint32)
    expected[np.arange(24), 5] = 1
    np.testing.assert_array_equal(ing.current.accumulator.cube.reshape(N_PIXELS, CH), expected)
    assert ing.current.accumulator.counts == 24


def _status_encodes(ing: Ingest) -> None:
    service = Service(load_settings(), MemoryConnection(), [], analyze=lambda s, record: [])
    service.state.ingest = ing
    status = service.status()
    assert decode_result(encode(status)).header == status


# item 3: one schema-valid-looking message used to stop the service ----------------------------------
@pytest.mark.parametrize("name, message, reason", [
    ("events frame_index 2**64-1", lambda: raw({**events_header(), "frame_index": U64}, b"\0" * 4, b"\0" * 2),
     "schema"),
    ("velox of markers at pixel 2**64-1", lambda: raw({**velox_header(np.full(3, 65535, "<u2")), "pixel_start": U64},
                                                      np.full(3, 65535, "<u2").tobytes()), "schema"),
    ("dense of 0 rows at pixel 2**64-1", lambda: raw({**dense_header(np.zeros((0, CH), "<u2")), "pixel_start": U64},
                                                     b""), "schema"),
])
def test_a_huge_integer_is_refused_and_the_status_still_encodes(ingest, name, message, reason):
    out = ingest.receive(message())
    assert (out.kind, out.reason) == ("rejected", reason)
    _unchanged(ingest)
    _status_encodes(ingest)


def test_the_largest_frame_index_allowed_still_encodes_in_the_status(ingest):
    header = {**events_header(), "frame_index": 2**31 - 1}
    assert ingest.receive(raw(header, b"\0" * 4, b"\0" * 2)).kind == "frame"
    assert ingest.current.frames == 2**31
    _status_encodes(ingest)


def test_a_start_too_large_to_hold_is_refused_without_allocating():
    ing = Ingest()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    big = start().model_dump(mode="json") | {"scan_shape": [65535, 65535]}
    big["energy_axis"]["channels"] = 65534
    out = ing.receive(raw(big))
    assert (out.kind, out.reason) == ("rejected", "acquisition_too_large")
    assert "max_cube_bytes" in out.detail
    assert ing.current is None
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB: nothing allocated


def test_a_start_the_machine_cannot_hold_is_out_of_memory_not_a_crash():
    """With the size limit lifted, the real allocation of ~1 PB fails and is counted."""
    ing = Ingest(IngestOptions(max_cube_bytes=2**62))
    big = start().model_dump(mode="json") | {"scan_shape": [65535, 65535]}
    big["energy_axis"]["channels"] = 65534
    out = ing.receive(raw(big))
    assert (out.kind, out.reason) == ("rejected", "out_of_memory")
    assert ing.current is None and ing.rejected == {"out_of_memory": 1}


# item 4: memory without bound ---------------------------------------------------------------------
def _rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_starts_in_a_row_hold_at_most_max_open_acquisitions():
    """Each start of a 256 x 256 x 2048 scan maps 512 MiB; replaced ones wait for their final refit."""
    ing = Ingest(IngestOptions(max_open_acquisitions=2))
    cube_kib = 256 * 256 * 2048 * 4 // 1024
    before = _rss_kib()
    outcomes = []
    for i in range(5):
        s = start(aid=f"big-{i}").model_dump(mode="json") | {"scan_shape": [256, 256]}
        s["energy_axis"]["channels"] = 2048
        outcomes.append(ing.receive(raw(s)))
    assert [o.kind for o in outcomes] == ["start", "start", "rejected", "rejected", "rejected"]
    assert {o.reason for o in outcomes[2:]} == {"too_many_acquisitions"}
    assert ing.open_acquisitions == 2 and ing.current.acquisition_id == "big-1"
    # pages are faulted in by a background thread; give it the time to do all of them
    ing.current.accumulator.cube[-1, -1, -1] = 0
    from edx_live.core.memory import populate

    for acq in (ing.pending[0], ing.current):
        populate(acq.accumulator._flat)
    assert _rss_kib() - before < 2.3 * cube_kib
    ing.release(ing.pending[0])  # its final refit ran
    s = start(aid="big-5").model_dump(mode="json")
    assert ing.receive(raw(s)).kind == "start"


def test_a_message_larger_than_the_limit_is_refused_before_decoding():
    ing = Ingest(IngestOptions(max_message_bytes=2**16))
    ing.receive(encode(start()))
    n = 20_000  # 6 bytes per event: 120 kB
    arrays = {"pixel": np.zeros(n, "<u4"), "channel": np.zeros(n, "<u2")}
    header = EventsFrame(acquisition_id="acq-1", seq=1, frame_index=0, arrays=describe(arrays))
    out = ing.receive(encode(header, arrays))
    assert (out.kind, out.reason) == ("rejected", "too_large")
    assert ing.current.accumulator.counts == 0 and ing.current.next_seq == 1


def test_the_socket_limits_come_from_the_configuration():
    import zmq

    from edx_live.shell.transport import ZmqConnection

    settings = load_settings(overrides={"input": {"max_message_bytes": 123456, "high_water_mark": 7}})
    ctx = zmq.Context()
    conn = ZmqConnection("tcp://127.0.0.1:*", "pull", True, settings.input.high_water_mark, context=ctx,
                         max_message_bytes=settings.input.max_message_bytes)
    conn.open()
    try:
        assert conn.socket.getsockopt(zmq.MAXMSGSIZE) == 123456
        assert conn.socket.getsockopt(zmq.RCVHWM) == 7
    finally:
        conn.close()
        ctx.destroy(linger=0)
    assert ingest_options(settings).max_message_bytes == 123456


# item 5: lenient decoding lost real counts --------------------------------------------------------
def test_a_boolean_protocol_cannot_steal_the_next_seq(ingest):
    forged = raw({**events_header(seq=2), "protocol": True}, b"\0" * 4, b"\0" * 2)
    assert ingest.receive(forged).reason == "version"
    assert ingest.receive(events(2, [3], [7])).kind == "frame"  # the real frame with that seq
    assert ingest.current.accumulator.counts == 25 and ingest.current.missing == 0


@pytest.mark.parametrize("field, value", [("seq", True), ("seq", "2"), ("frame_index", "0"),
                                          ("acquisition_id", b"acq-1")])
def test_coerced_fields_are_schema_errors(ingest, field, value):
    out = ingest.receive(raw({**events_header(seq=2), field: value}, b"\0" * 4, b"\0" * 2))
    assert (out.kind, out.reason) == ("rejected", "schema")
    _unchanged(ingest)
    assert ingest.current.next_seq == 2


# item 6: spec and service disagreed --------------------------------------------------------------
def test_event_detectors_beyond_the_declared_ones_are_refused(ingest):
    header = events_header(seq=2, n=2, detector=True)
    out = ingest.receive(raw(header, np.array([1, 2], "<u4").tobytes(), np.array([3, 3], "<u2").tobytes(),
                             np.array([0, 1], "|u1").tobytes()))  # the start declares one detector
    assert (out.kind, out.reason) == ("rejected", "detector_out_of_range")
    _unchanged(ingest)


def test_a_velox_detector_beyond_the_declared_ones_is_refused(ingest):
    stream = np.array([3, 65535], "<u2")
    out = ingest.receive(raw(velox_header(stream, detector=1), stream.tobytes()))
    assert (out.kind, out.reason) == ("rejected", "detector_out_of_range")
    _unchanged(ingest)


@pytest.mark.parametrize("message", [
    lambda: raw(dense_header(np.zeros((0, CH), "<u2"), pixel_start=N_PIXELS + 1), b""),
    lambda: raw(velox_header(np.full(2, 65535, "<u2"), pixel_start=N_PIXELS + 7), np.full(2, 65535, "<u2").tobytes()),
    lambda: raw(velox_header(np.full(3, 65535, "<u2"), pixel_start=N_PIXELS - 2), np.full(3, 65535, "<u2").tobytes()),
])
def test_empty_blocks_beyond_the_scan_are_refused(ingest, message):
    out = ingest.receive(message())
    assert (out.kind, out.reason) == ("rejected", "pixel_out_of_range")
    assert ingest.current.next_seq == 2


def test_empty_blocks_at_the_end_of_the_scan_are_accepted(ingest):
    assert ingest.receive(raw(dense_header(np.zeros((0, CH), "<u2"), pixel_start=N_PIXELS), b"")).kind == "frame"
    closing = np.array([4, 65535], "<u2")  # the last pixel closed, as Velox files do
    assert ingest.receive(raw(velox_header(closing, seq=3, pixel_start=N_PIXELS - 1), closing.tobytes())).kind == "frame"
    assert ingest.current.accumulator.counts == 25


def test_a_seq_far_ahead_is_refused_and_does_not_block_the_acquisition(ingest):
    far = raw(events_header(seq=2 + 2**20 + 1), b"\0" * 4, b"\0" * 2)
    assert ingest.receive(far).reason == "seq_out_of_window"
    assert ingest.receive(events(2, [3], [7])).kind == "frame"
    assert ingest.current.missing == 0 and ingest.current.accumulator.counts == 25


def test_a_start_with_a_late_seq_records_no_phantom_gap():
    ing = Ingest()
    ing.receive(encode(start(seq=5)))
    ing.receive(events(6, [1], [1]))
    assert (ing.current.missing, ing.current.gap_ranges, ing.current.next_seq) == (0, [], 7)


def test_a_stop_claiming_more_frames_does_not_raise_frames(ingest):
    ingest.receive(encode(Stop(acquisition_id="acq-1", seq=2, frames=1000)))
    assert (ingest.current.frames, ingest.current.stop_frames) == (1, 1000)


def test_rejections_are_counted_per_acquisition_and_since_start_up(ingest):
    ingest.receive([b"\xc1"])  # names no acquisition
    ingest.receive(events(1, [0], [0]))  # a duplicate of acq-1
    service = Service(load_settings(), MemoryConnection(), [], analyze=lambda s, record: [])
    service.state.ingest = ingest
    status = service.status()
    assert status.rejected == {"not_msgpack": 1, "duplicate_seq": 1}
    assert status.acquisition_rejected == {"duplicate_seq": 1}


# item 8: silent overflow ----------------------------------------------------------------------------
def test_a_count_beyond_the_cube_dtype_is_refused_not_wrapped(ingest):
    counts = np.zeros((1, CH), "<u8")
    counts[0, 3] = 2**32 + 5
    out = ingest.receive(raw(dense_header(counts), counts.tobytes()))
    assert (out.kind, out.reason) == ("rejected", "count_overflow")
    _unchanged(ingest)


def test_accumulated_counts_that_would_overflow_a_cell_are_refused(ingest):
    counts = np.zeros((1, CH), "<u4")
    counts[0, 5] = 2**32 - 2  # pixel 0 channel 5 already holds 1: now full
    assert ingest.receive(raw(dense_header(counts), counts.tobytes())).kind == "frame"
    assert ingest.receive(events(3, [0], [5])).reason == "count_overflow"
    assert ingest.receive(events(3, [1], [6])).kind == "frame"  # other cells still take counts
    cube = ingest.current.accumulator.cube.reshape(N_PIXELS, CH)
    assert (int(cube[0, 5]), int(cube[1, 6])) == (2**32 - 1, 1)
    assert ingest.current.accumulator.counts == 24 + 2**32 - 2 + 1
    stream = np.array([5, 65535, 6, 65535], "<u2")  # pixel 0 channel 5 (full), pixel 1 channel 6
    assert ingest.receive(raw(velox_header(stream, seq=4), stream.tobytes())).reason == "count_overflow"
    stream = np.array([65535, 6, 65535], "<u2")  # pixel 1 channel 6 only
    assert ingest.receive(raw(velox_header(stream, seq=4), stream.tobytes())).kind == "frame"
    assert int(cube[1, 6]) == 2


def test_the_socket_drops_a_frame_over_the_limit_unread():
    """ZMQ_MAXMSGSIZE: a 16 MiB frame never reaches the service with a 1 MiB limit; later messages do."""
    import time

    import zmq

    from edx_live.shell.transport import ZmqConnection

    ctx = zmq.Context()
    conn = ZmqConnection("tcp://127.0.0.1:*", "pull", True, 10, context=ctx, max_message_bytes=2**20)
    conn.open()
    push = ctx.socket(zmq.PUSH)
    push.connect(conn.endpoint)
    try:
        push.send_multipart([b"\x80", b"\0" * (16 * 2**20)])
        received = []
        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:  # ZeroMQ reconnects the producer by itself
            push.send_multipart([b"probe"], flags=zmq.NOBLOCK) if push.poll(100, zmq.POLLOUT) else None
            frames = conn.recv(0.2)
            if frames is not None:
                received.append([bytes(f) for f in frames])
        assert received and received[0] == [b"probe"]
        while (frames := conn.recv(0.2)) is not None:
            assert [bytes(f) for f in frames] == [b"probe"]  # the large message never arrives
    finally:
        push.close(linger=0)
        conn.close()
        ctx.destroy(linger=0)


def test_a_start_that_cannot_be_allocated_leaves_the_open_acquisition_open(ingest):
    ingest.options = IngestOptions(max_cube_bytes=2**62)
    big = start(aid="huge").model_dump(mode="json") | {"scan_shape": [65535, 65535]}
    big["energy_axis"]["channels"] = 65534
    assert ingest.receive(raw(big)).reason == "out_of_memory"
    assert ingest.current.acquisition_id == "acq-1" and ingest.current.state == "acquiring"
    assert ingest.receive(events(2, [3], [7])).kind == "frame" and ingest.pending == []


# the simultaneous image ----------------------------------------------------------------------------
def image_header(shape, dtype="<u2", seq=2, aid="acq-1", **fields) -> dict:
    return {"protocol": 1, "acquisition_id": aid, "seq": seq, "kind": "image", "frame_index": 0,
            "detector": "HAADF", **fields, "arrays": [{"name": "image", "dtype": dtype, "shape": list(shape)}]}


@pytest.mark.parametrize("name, message, reason", [
    ("rows 2**32-1", lambda: raw(image_header((2**32 - 1, 6)), b"\0" * 12), "buffer_size"),
    ("a row far past the scan", lambda: raw(image_header((1, 6), first_row=65534), b"\0" * 12),
     "pixel_out_of_range"),
    ("first_row 2**64-1", lambda: raw(image_header((1, 6), first_row=U64), b"\0" * 12), "schema"),
    ("signed dtype", lambda: raw(image_header((1, 6), dtype="<i2"), b"\0" * 12), "schema"),
    ("zero columns", lambda: raw(image_header((4, 0)), b""), "shape_mismatch"),
    ("boolean detector", lambda: raw(image_header((1, 6), detector=True), b"\0" * 12), "schema"),
    ("infinite pixel", lambda: raw(image_header((1, 6), dtype="<f8"), np.array([0, 1, 2, np.inf, 4, 5]).tobytes()),
     "not_finite"),
])
def test_a_hostile_image_is_refused_and_changes_nothing(ingest, name, message, reason):
    out = ingest.receive(message())
    assert (out.kind, out.reason) == ("rejected", reason)
    assert ingest.current.images is None
    _unchanged(ingest)
    _status_encodes(ingest)


def test_a_flood_of_images_publishes_the_latest_mean_not_a_backlog():
    """Thousands of images inside one status interval: one live image document, then the final one."""
    from edx_protocol import Image, Stop

    from edx_live.shell.publish import Collector

    settings = load_settings(overrides={"output": {"status_interval_s": 3600.0}, "refit": {"interval_s": 3600}})
    connection, collector = MemoryConnection(), Collector()
    service = Service(settings, connection, [collector], analyze=lambda s, record: [])
    connection.put(encode(start()))
    n = 2000
    for seq in range(1, n + 1):
        arrays = {"image": np.full(SHAPE, seq, np.uint32)}
        connection.put(encode(Image(acquisition_id="acq-1", seq=seq, frame_index=seq - 1, detector="HAADF",
                                    arrays=describe(arrays)), arrays))
    connection.put(encode(Stop(acquisition_id="acq-1", seq=n + 1, frames=n)))
    service.run(stop_after=1, poll_s=0.01)
    images = [(h, a) for h, a in collector.documents if h.kind == "image"]
    assert [h.final for h, _ in images] == [False, True]
    final, arrays = images[-1]
    assert final.sweeps == n and final.seq == 1
    np.testing.assert_array_equal(arrays["image"], np.full(SHAPE, (n + 1) / 2, np.float32))

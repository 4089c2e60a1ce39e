"""The live loop over real loopback sockets: producer -> service -> accumulated data, bad input included."""

from __future__ import annotations


import numpy as np
import pytest
import zmq
from conftest import DATA_FILES, ServedApp, load_file_sum
from edx_adapters.producer import send_replay
from edx_adapters.replay import open_replay

from edx_live.config import load_settings
from edx_live.shell.transport import ZmqConnection

#: Odd message sizes that do not divide the scans.
ODD_CHUNK = {"View000_0000006.pts": 1001, "SiO2 EDS Spectrum Image.hspy": 37}


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def settings():
    return load_settings(overrides={"refit": {"interval_s": 3600}})


def push_socket(context, endpoint):
    sock = context.socket(zmq.PUSH)
    sock.connect(endpoint)
    return sock


def assert_cube_equals(cube: np.ndarray, reference: np.ndarray) -> None:
    """Exact equality, a slab of rows at a time (the .pts cube is 512 x 512 x 4096)."""
    assert cube.shape == reference.shape
    for lo in range(0, cube.shape[0], 64):
        np.testing.assert_array_equal(cube[lo:lo + 64], reference[lo:lo + 64])


@pytest.mark.parametrize("name", list(DATA_FILES))
def test_every_file_through_sockets_equals_its_own_sum(name, data_dir, context, settings):
    replay = open_replay(data_dir / name, chunk_pixels=ODD_CHUNK.get(name, 7))
    server = ServedApp(settings, context)
    server.start()
    push = push_socket(context, server.endpoint)
    sent = send_replay(replay, push, interval_s=0.0)
    ingest = server.finish()
    push.close()
    acq = ingest.current
    assert acq.state == "stopped" and not ingest.rejected and acq.missing == 0
    assert acq.messages == sent.messages
    reference = load_file_sum(data_dir / name)
    assert acq.accumulator.counts == int(reference.sum(dtype=np.uint64))
    assert_cube_equals(acq.accumulator.cube, reference)


def test_malformed_messages_are_dropped_and_the_data_stay_intact(data_dir, context, settings):
    """Garbage between real frames: each is counted and dropped, and the sum is still exact."""
    replay = open_replay(data_dir / "core_shell.hspy", frames=4, chunk_pixels=129)
    messages = [(replay.start, {})] + list(replay.messages())
    server = ServedApp(settings, context)
    server.start()
    push = push_socket(context, server.endpoint)
    from edx_protocol import encode

    good = [[bytes(f) for f in encode(h, a)] for h, a in messages]
    frame = good[5]
    bad = {
        "not_msgpack": [b"\xc1garbage"],
        "version": [frame[0].replace(b"\xa8protocol\x01", b"\xa8protocol\x07")] + frame[1:],
        "buffer_size": [frame[0], frame[1][:-3]],
        "buffer_count": [frame[0]],
        "duplicate_seq": good[3],
    }
    for i, parts in enumerate(good):
        push.send_multipart(parts)
        if i == 6:
            for parts_bad in bad.values():
                push.send_multipart(parts_bad)
    ingest = server.finish()
    push.close()
    assert dict(ingest.rejected) == {reason: 1 for reason in bad}
    acq = ingest.current
    assert acq.messages == len(good) and acq.missing == 0
    reference = load_file_sum(data_dir / "core_shell.hspy")
    np.testing.assert_array_equal(acq.accumulator.cube, reference)
    status = server.collector.latest("status")[0]
    assert status.final and status.rejected == dict(ingest.rejected)


def test_pixel_outside_the_scan_is_rejected_over_the_socket(data_dir, context, settings):
    from edx_protocol import EventsFrame, describe, encode

    replay = open_replay(data_dir / "test_TEM.bcf", frames=2)
    messages = [(replay.start, {})] + list(replay.messages())
    server = ServedApp(settings, context)
    server.start()
    push = push_socket(context, server.endpoint)
    stop = messages.pop()
    for h, a in messages:
        push.send_multipart(encode(h, a))
    arrays = {"pixel": np.array([0, 64 * 64], np.uint32), "channel": np.array([100, 100], np.uint16)}
    outside = EventsFrame(acquisition_id=replay.start.acquisition_id, seq=stop[0].seq, frame_index=1,
                          arrays=describe(arrays))
    push.send_multipart(encode(outside, arrays))
    push.send_multipart(encode(stop[0].model_copy(update={"seq": stop[0].seq + 1}), {}))
    ingest = server.finish()
    push.close()
    assert dict(ingest.rejected) == {"pixel_out_of_range": 1}
    np.testing.assert_array_equal(ingest.current.accumulator.cube, load_file_sum(data_dir / "test_TEM.bcf"))


def test_service_subscribes_to_a_publishing_producer(data_dir, context, settings):
    """SUB input: the producer binds an XPUB, the service connects and the sum is still exact."""
    from edx_adapters.producer import make_socket, wait_for_subscriber

    pub = make_socket("tcp://127.0.0.1:*", "pub", bind=True, context=context)
    endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    server = ServedApp(settings, context, connection=ZmqConnection(endpoint, "sub", bind=False, context=context))
    server.start()
    assert wait_for_subscriber(pub, 30.0)
    send_replay(open_replay(data_dir / "test_TEM.bcf", frames=3), pub)
    ingest = server.finish()
    pub.close()
    assert not ingest.rejected and ingest.current.missing == 0
    np.testing.assert_array_equal(ingest.current.accumulator.cube, load_file_sum(data_dir / "test_TEM.bcf"))


def test_acquisitions_in_a_row_each_start_fresh(data_dir, context, settings):
    seen = []
    server = ServedApp(settings, context, analyze=lambda snap, record: seen.append(
        (snap.start.acquisition_id, snap.counts, snap.final)) or [], stop_after=2)
    server.start()
    push = push_socket(context, server.endpoint)
    names = ["test_TEM.bcf", "EMDReader_SpectrumImage_Si.emd"]
    for name in names:
        send_replay(open_replay(data_dir / name, acquisition_id=name.split(".")[0].replace("_", "-")), push)
    server.finish(120)
    push.close()
    finals = [s for s in seen if s[2]]
    expected = [int(load_file_sum(data_dir / n).sum(dtype=np.uint64)) for n in names]
    assert [f[1] for f in finals] == expected
    assert [f[0] for f in finals] == ["test-TEM", "EMDReader-SpectrumImage-Si"]
    assert server.service.finished == 2

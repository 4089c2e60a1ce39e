"""Recordings: the ``.edxrec`` container, the service's recorder and the byte-for-byte replay.

The reference is the bytes themselves: what is read back, or received over a real
loopback PUSH -> PULL pair, must equal what was written, frame for frame.
"""

from __future__ import annotations

import os
import random
import stat
import struct
import time

import numpy as np
import pytest
import zmq
from edx_protocol import Detector, EnergyAxis, EventsFrame, Start, Stop, describe, encode
from edx_protocol.container import SIGNATURE, Entry, RecordingError, RecordingWriter, read_recording
from structlog.testing import capture_logs

from edx_adapters.cli import main as replay_main
from edx_adapters.recording import recording_messages, refit_points, send_recording
from edx_live.core.ingest import Ingest, IngestOptions
from edx_live.logs import configure
from edx_live.shell import record
from edx_live.shell.record import Recorder, check_writable

@pytest.fixture(autouse=True)
def _info_logs():
    """The recorder's info events are part of what these tests check, whatever level an earlier test set."""
    configure("console", "info")


ODD_FRAMES = [b"", b"x", bytes(range(256)) * 3 + b"\x07", b"", np.arange(70_001, dtype=np.uint8).tobytes(), b"\x00"]


def write(path, messages, markers=(), header=None):
    """Write ``messages`` (lists of frames) with ``markers`` {message index: fields} before them."""
    markers = dict(markers)
    with RecordingWriter(path, header or {"source": "test"}) as writer:
        for i, frames in enumerate(messages):
            if i in markers:
                writer.marker("refit", markers[i])
            writer.message(frames, t_s=0.2 * i)
    return path


# --- the container -------------------------------------------------------------------------------

def test_round_trip_keeps_every_frame_and_the_header(tmp_path):
    frame = zmq.Frame(b"zmq frame")
    messages = [ODD_FRAMES, [b""], [memoryview(b"view"), frame, np.arange(5, dtype="<u2")], []]
    path = tmp_path / "a.edxrec"
    with RecordingWriter(path, {"source": "tcp://x:1", "acquisition_id": "acq-1", "meta": {"k": [1, 2]}}) as w:
        sizes = [w.message(m) for m in messages]
        w.marker("refit", {"refit": 0, "final": True, "elapsed_s": 1.5}, t_s=9.0)
        assert w.nbytes == path.stat().st_size
    assert all(s > sum(len(bytes(getattr(f, "buffer", f))) for f in m) for s, m in zip(sizes, messages))
    rec = read_recording(path)
    assert rec.header["source"] == "tcp://x:1" and rec.header["acquisition_id"] == "acq-1"
    assert rec.header["meta"] == {"k": [1, 2]} and rec.header["format"] == 1 and rec.header["protocol"] == 1
    assert rec.header["created"].endswith("Z")
    entries = list(rec)
    expected = [[bytes(getattr(f, "buffer", f)) for f in m] for m in messages]
    assert [list(e.frames) for e in entries[:-1]] == expected
    assert all(e.kind == "message" and e.name is None for e in entries[:-1])
    times = [e.t_s for e in entries[:-1]]
    assert times == sorted(times) and times[0] >= 0
    assert entries[-1] == Entry("marker", 9.0, (), "refit", {"refit": 0, "final": True, "elapsed_s": 1.5})
    assert not rec.truncated and rec.problem is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_any_sequence_of_frame_lists_round_trips(tmp_path):
    for seed in range(150):
        rng = random.Random(seed)
        messages = [[rng.randbytes(rng.choice([0, 1, 2, 255, 256, 65535, 65536, rng.randrange(3000)]))
                     for _ in range(rng.randrange(6))] for _ in range(rng.randrange(8))]
        times = sorted(rng.uniform(0, 1e4) for _ in messages)
        path = tmp_path / f"{seed}.edxrec"
        with RecordingWriter(path, {}) as w:
            for frames, t in zip(messages, times):
                w.message(frames, t_s=t)
        rec = read_recording(path)
        assert [(e.t_s, list(e.frames)) for e in rec] == list(zip(times, messages)), seed
        assert not rec.truncated


def test_a_torn_tail_returns_every_earlier_record(tmp_path):
    path = write(tmp_path / "a.edxrec", [[b"h", b"abc"], [b""], [b"last", b"", b"frame"]], {1: {"refit": 0}})
    data = path.read_bytes()
    whole = list(read_recording(path))
    last_start = _offsets(data)[-1]
    cut = tmp_path / "cut.edxrec"
    for end in range(last_start, len(data)):
        cut.write_bytes(data[:end])
        rec = read_recording(cut)
        assert list(rec) == whole[:-1], end
        assert rec.truncated == (end > last_start), end
    for end in range(len(SIGNATURE), _offsets(data)[0]):  # inside the header: not a readable recording
        cut.write_bytes(data[:end])
        with pytest.raises(RecordingError, match="no readable header"):
            read_recording(cut)


def test_a_corrupted_byte_is_detected_and_the_records_before_it_kept(tmp_path):
    path = write(tmp_path / "a.edxrec", [[b"first"], [b"second", b"x" * 40], [b"third"]])
    data = path.read_bytes()
    first = list(read_recording(path))[:1]
    start, end = _offsets(data)[2], _offsets(data)[3]  # the second message ([0] is the header)
    bad = tmp_path / "bad.edxrec"
    for i in range(start, end):
        flipped = bytearray(data)
        flipped[i] ^= 0x10
        bad.write_bytes(bytes(flipped))
        rec = read_recording(bad)
        assert list(rec) == first, i
        assert rec.truncated and "record 1" in rec.problem, i


def test_truncated_is_known_without_iterating_first(tmp_path):
    path = write(tmp_path / "a.edxrec", [[b"a"], [b"b"]])
    path.write_bytes(path.read_bytes()[:-1])
    rec = read_recording(path)
    assert rec.truncated and "torn record" in rec.problem
    assert [e.frames for e in rec] == [(b"a",)]


def test_files_that_are_not_recordings_say_what_is_wrong(tmp_path):
    path = tmp_path / "x.edxrec"
    path.write_bytes(b"PK\x03\x04 a zip file, not a recording")
    with pytest.raises(RecordingError, match=r"not a recording: it starts with b'PK\\x03\\x04"):
        read_recording(path)
    path.write_bytes(b"EDX")
    with pytest.raises(RecordingError, match="shorter than the 8-byte signature"):
        read_recording(path)
    path.write_bytes(b"EDXREC\x00\x02" + bytes(20))
    with pytest.raises(RecordingError, match="format version 2; this reader knows version 1"):
        read_recording(path)
    path.write_bytes(SIGNATURE)
    with pytest.raises(RecordingError, match="ends after the signature"):
        read_recording(path)
    assert issubclass(RecordingError, ValueError)


def test_the_writer_refuses_unknown_header_keys_and_never_overwrites(tmp_path):
    with pytest.raises(ValueError, match="unknown recording header keys \\['colour'\\]"):
        RecordingWriter(tmp_path / "a.edxrec", {"colour": "red"})
    write(tmp_path / "b.edxrec", [[b"x"]])
    with pytest.raises(FileExistsError):
        RecordingWriter(tmp_path / "b.edxrec", {})
    writer = RecordingWriter(tmp_path / "c.edxrec", {})
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.message([b"x"])


def _offsets(data: bytes) -> list[int]:
    """Byte offset of every record, the header first."""
    out, at = [], len(SIGNATURE)
    while at < len(data):
        out.append(at)
        at += 8 + struct.unpack_from("<I", data, at)[0]
    return out


# --- the recorder --------------------------------------------------------------------------------

def acquisition(acq_id: str, n_frames: int = 3, events: int = 50) -> list[list[bytes]]:
    """Encoded start, frames and stop of a small acquisition."""
    rng = np.random.default_rng(len(acq_id))
    start = Start(acquisition_id=acq_id, seq=0, scan_shape=(4, 6), beam_energy_kev=200.0,
                  energy_axis=EnergyAxis(offset_kev=0.0, scale_kev=0.01, channels=32),
                  detectors=[Detector(elevation_deg=18.0, azimuth_deg=45.0)])
    out = [encode(start)]
    for i in range(n_frames):
        arrays = {"pixel": rng.integers(0, 24, events).astype("<u4"),
                  "channel": rng.integers(0, 32, events).astype("<u2")}
        out.append(encode(EventsFrame(acquisition_id=acq_id, seq=i + 1, frame_index=i, arrays=describe(arrays)),
                          arrays))
    out.append(encode(Stop(acquisition_id=acq_id, seq=n_frames + 1, frames=n_frames)))
    return [[bytes(memoryview(f)) for f in m] for m in out]


def feed(recorder: Recorder, messages, ingest: Ingest | None = None) -> Ingest:
    ingest = ingest or Ingest()
    for frames in messages:
        recorder.message(frames, ingest.receive(frames))
    return ingest


def test_the_recorder_splits_acquisitions_and_keeps_pre_start_messages_apart(tmp_path):
    a, b = acquisition("run:a.1"), acquisition("run-b")
    stray = a[1]  # a frame before any start: rejected, recorded all the same
    root = tmp_path / "deep" / "recordings"
    recorder = Recorder(root, source="tcp://127.0.0.1:5556")
    ingest = feed(recorder, [stray] + a[:3])
    recorder.marker("refit", {"refit": 0, "final": False, "elapsed_s": 0.5})
    feed(recorder, a[3:] + b, ingest=ingest)
    recorder.close()
    names = [p.name for p in recorder.files]
    assert len(names) == 3
    assert names[0].startswith("unassigned-") and names[1].startswith("run_a.1-") and names[2].startswith("run-b-")
    assert all(len(n.split("-")[-1]) == len("20250101T120000.edxrec") for n in names)
    unassigned, first, second = (read_recording(p) for p in recorder.files)
    assert [list(m) for m in unassigned.messages()] == [stray]
    assert unassigned.header["acquisition_id"] is None
    assert first.header["acquisition_id"] == "run:a.1" and first.header["source"] == "tcp://127.0.0.1:5556"
    assert [list(m) for m in first.messages()] == a
    assert list(refit_points(first)) == [(3, {"refit": 0, "final": False, "elapsed_s": 0.5})]
    assert [list(m) for m in second.messages()] == b
    assert recorder.messages == 1 + len(a) + len(b) and not recorder.dropped
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in recorder.files)


def test_a_replayed_recording_accumulates_exactly_what_the_live_ingest_did(tmp_path):
    messages = acquisition("same", n_frames=5, events=400)
    recorder = Recorder(tmp_path)
    live = feed(recorder, messages)
    recorder.close()
    offline = Ingest()
    for frames in recording_messages(recorder.files[0]):
        assert offline.receive(frames).kind != "rejected"
    assert np.array_equal(offline.current.accumulator.cube, live.current.accumulator.cube)
    assert offline.current.accumulator.counts == live.current.accumulator.counts == 2000


def test_the_recorder_stops_a_file_at_max_bytes_per_acquisition(tmp_path):
    a, b = acquisition("a", n_frames=6, events=200), acquisition("b", n_frames=1)
    limit = 2500
    recorder = Recorder(tmp_path, max_bytes_per_acquisition=limit)
    with capture_logs() as logs:
        feed(recorder, a + b)
    recorder.close()
    full = [e for e in logs if e["event"] == "recording_full"]
    assert len(full) == 1 and full[0]["reason"] == "acquisition_full" and full[0]["log_level"] == "warning"
    first, second = recorder.files
    assert first.stat().st_size <= limit
    kept = len(list(recording_messages(first)))
    assert 0 < kept < len(a)
    assert recorder.dropped == {"acquisition_full": len(a) - kept}
    assert [list(m) for m in recording_messages(second)] == b  # the next acquisition is recorded again


def test_the_recorder_pauses_at_max_total_bytes_until_space_is_freed(tmp_path, monkeypatch):
    monkeypatch.setattr(record, "RESCAN_S", 0.0)
    (tmp_path / "old.edxrec").write_bytes(bytes(3000))
    a = acquisition("a", n_frames=4, events=200)
    recorder = Recorder(tmp_path, max_total_bytes=4000)  # a frame is ~1400 bytes, this file ~600 after the start
    with capture_logs() as logs:
        feed(recorder, a[:3])
        dropped = recorder.dropped["folder_full"]
        assert dropped > 0
        (tmp_path / "old.edxrec").unlink()  # space freed: recording resumes, with a gap marker
        feed(recorder, a[3:], ingest=_ingest_after(a[:3]))
    recorder.close()
    assert [e["event"] for e in logs if e["event"].startswith("recording_")].count("recording_full") == 1
    entries = list(read_recording(recorder.files[0]))
    gap = [e for e in entries if e.kind == "marker"]
    assert gap == [Entry("marker", gap[0].t_s, (), "gap", {"messages": dropped, "reason": "folder_full"})]
    recorded = [list(e.frames) for e in entries if e.kind == "message"]
    assert recorded == a[:3 - dropped] + a[3:]


def _ingest_after(messages) -> Ingest:
    ingest = Ingest()
    for frames in messages:
        ingest.receive(frames)
    return ingest


def test_a_failing_disk_stops_that_recording_and_nothing_else(tmp_path, monkeypatch):
    a, b = acquisition("a"), acquisition("b")
    recorder = Recorder(tmp_path)
    real_writev = os.writev
    feed(recorder, a[:2])

    def full_disk(fd, buffers):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "writev", full_disk)
    with capture_logs() as logs:
        feed(recorder, a[2:], ingest=_ingest_after(a[:2]))
    monkeypatch.setattr(os, "writev", real_writev)
    feed(recorder, b)
    recorder.close()
    assert [e["event"] for e in logs] == ["recording_failed", "recording_closed"]
    assert "No space left" in logs[0]["error"]
    assert recorder.dropped == {"write_error": len(a) - 2}
    assert [list(m) for m in recording_messages(recorder.files[0])] == a[:2]
    assert [list(m) for m in recording_messages(recorder.files[1])] == b


def test_an_unwritable_folder_is_a_clear_start_up_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match=r"recording folder .*file/rec is not writable.*\[record\] dir.*--record"):
        check_writable(tmp_path / "file" / "rec")
    with pytest.raises(OSError, match="--record"):
        Recorder(tmp_path / "file" / "rec")


def test_two_starts_in_the_same_second_get_two_files(tmp_path):
    recorder = Recorder(tmp_path)
    ingest = feed(recorder, acquisition("same")[:1], Ingest(IngestOptions(max_open_acquisitions=10)))
    feed(recorder, acquisition("same")[:1], ingest)  # a duplicate start: rejected, stays in the first file
    feed(recorder, acquisition("other")[:1] + acquisition("same")[:1], ingest)
    recorder.close()
    first, other, again = (p.name for p in recorder.files)
    assert first.startswith("same-") and other.startswith("other-")
    assert again == first.replace(".edxrec", "-2.edxrec") or again[:-len(".edxrec")] > first[:-len(".edxrec")]
    assert len(list(recording_messages(recorder.files[0]))) == 2


# --- the replay ----------------------------------------------------------------------------------

@pytest.fixture
def pair():
    """A PUSH socket connected to a PULL socket bound on a random loopback port."""
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = context.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    yield push, pull, port
    context.destroy(linger=0)


def receive(socket: zmq.Socket, n: int, timeout_ms: int = 10_000) -> list[list[bytes]]:
    out = []
    for _ in range(n):
        assert socket.poll(timeout_ms, zmq.POLLIN), f"no message within {timeout_ms} ms after {len(out)}"
        out.append(socket.recv_multipart())
    assert not socket.poll(50, zmq.POLLIN), "more messages than recorded"
    return out


def test_send_recording_delivers_byte_identical_frames_in_order(tmp_path, pair):
    push, pull, _ = pair
    messages = [ODD_FRAMES, [b""], *acquisition("wire")]
    path = write(tmp_path / "a.edxrec", messages, {2: {"refit": 0}})
    seen = []
    assert send_recording(path, push, speed=0, on_message=lambda i, f: seen.append(i)) == len(messages)
    assert receive(pull, len(messages)) == messages
    assert seen == list(range(len(messages)))


def test_send_recording_keeps_the_recorded_pace_scaled_by_speed(tmp_path, pair):
    push, pull, _ = pair
    path = write(tmp_path / "a.edxrec", [[b"%d" % i] for i in range(6)])  # 0.2 s apart: 1 s in all
    t0 = time.monotonic()
    send_recording(path, push, speed=100)
    fast = time.monotonic() - t0
    t0 = time.monotonic()
    send_recording(path, push, speed=5)
    paced = time.monotonic() - t0
    assert fast < 0.15 <= 0.2 <= paced, (fast, paced)  # 1 s recorded: 0.01 s at x100, 0.2 s at x5
    assert receive(pull, 12) == [[b"%d" % i] for i in range(6)] * 2
    with pytest.raises(ValueError, match="speed must be zero or more"):
        send_recording(path, push, speed=-1)


def test_refit_points_say_how_many_messages_each_snapshot_held(tmp_path):
    path = write(tmp_path / "a.edxrec", [[b"m"]] * 5, {0: {"refit": 0}, 3: {"refit": 1, "final": True}})
    assert list(refit_points(path)) == [(0, {"refit": 0}), (3, {"refit": 1, "final": True})]


def test_the_replay_command_sends_a_recording_byte_for_byte(tmp_path, pair, capsys):
    _, pull, port = pair
    messages = acquisition("cli")
    path = write(tmp_path / "a.edxrec", messages)
    assert replay_main([str(path), "--address", f"tcp://127.0.0.1:{port}", "--speed", "0"]) == 0
    assert receive(pull, len(messages)) == messages
    assert f"complete: {len(messages)} messages" in capsys.readouterr().err


def test_the_replay_command_refuses_options_that_do_not_apply(tmp_path, capsys):
    path = write(tmp_path / "a.edxrec", [[b"x"]])
    assert replay_main([str(path), "--frames", "3", "--interval", "1"]) == 2
    assert "--frames, --interval shape a spectrum image file's messages" in capsys.readouterr().err
    assert replay_main([str(tmp_path / "core_shell.hspy"), "--speed", "2"]) == 2
    assert "--speed applies to recorded sessions" in capsys.readouterr().err
    (tmp_path / "b.edxrec").write_bytes(b"not a recording at all")
    assert replay_main([str(tmp_path / "b.edxrec")]) == 2
    assert "is not a recording" in capsys.readouterr().err

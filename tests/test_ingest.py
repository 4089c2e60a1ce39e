"""Ingest state machine: sequences, gaps, several acquisitions, and bad input that changes nothing."""

import msgpack
import numpy as np
import pytest
from edx_protocol import Detector, EnergyAxis, EventsFrame, Start, Stop, describe, encode

from edx_live.core.ingest import Ingest

SHAPE, CH = (4, 6), 32


def start(aid="acq-1", seq=0, detectors=1):
    return Start(acquisition_id=aid, seq=seq, scan_shape=SHAPE, beam_energy_kev=200.0,
                 energy_axis=EnergyAxis(offset_kev=0.0, scale_kev=0.01, channels=CH),
                 detectors=[Detector(elevation_deg=18.0, azimuth_deg=45.0)] * detectors)


def events(seq, pixel, channel, aid="acq-1", frame_index=0):
    arrays = {"pixel": np.asarray(pixel, np.uint32), "channel": np.asarray(channel, np.uint16)}
    return encode(EventsFrame(acquisition_id=aid, seq=seq, frame_index=frame_index, arrays=describe(arrays)),
                  arrays)


def stop(seq, aid="acq-1", frames=1):
    return encode(Stop(acquisition_id=aid, seq=seq, frames=frames))


@pytest.fixture
def ingest():
    ing = Ingest()
    assert ing.receive(encode(start())).kind == "start"
    rng = np.random.default_rng(0)
    ing.receive(events(1, rng.integers(0, 24, 300), rng.integers(0, CH, 300)))
    return ing


def _bytes(frames):
    return [bytes(f) for f in frames]


def _malformed():
    good = _bytes(events(2, [1, 2, 3], [4, 5, 6]))
    header = msgpack.unpackb(good[0])
    wrong_version = msgpack.packb({**header, "protocol": 2})
    bad_shape = msgpack.packb({**header, "arrays": [{**a, "shape": [4]} for a in header["arrays"]]})
    bad_dtype = msgpack.packb({**header, "arrays": [{**header["arrays"][0], "dtype": "<u2"}, header["arrays"][1]]})
    return {
        "garbage": ([b"\x00\xffnot msgpack at all"], "not_msgpack"),
        "wrong version": ([wrong_version] + good[1:], "version"),
        "truncated buffer": ([good[0], good[1][:-2], good[2]], "buffer_size"),
        "missing buffer": (good[:2], "buffer_count"),
        "shape larger than the buffer": ([bad_shape] + good[1:], "buffer_size"),
        "dtype not allowed for the array": ([bad_dtype] + good[1:], "schema"),
        "pixel outside the scan": (_bytes(events(2, [24], [0])), "pixel_out_of_range"),
        "channel outside the axis": (_bytes(events(2, [0], [CH])), "channel_out_of_range"),
        "unknown acquisition": (_bytes(events(2, [0], [0], aid="other")), "unknown_acquisition"),
        "duplicate seq": (_bytes(events(1, [0], [0])), "duplicate_seq"),
        "empty": ([], "empty"),
    }


@pytest.mark.parametrize("case", list(_malformed()))
def test_malformed_message_is_counted_dropped_and_changes_nothing(ingest, case):
    frames, reason = _malformed()[case]
    acq = ingest.current
    before, counts, messages = acq.accumulator.cube.copy(), acq.accumulator.counts, acq.messages
    outcome = ingest.receive(frames)
    assert (outcome.kind, outcome.reason) == ("rejected", reason)
    assert ingest.rejected[reason] == 1
    np.testing.assert_array_equal(acq.accumulator.cube, before)
    assert (acq.accumulator.counts, acq.messages) == (counts, messages)
    # and the acquisition goes on
    assert ingest.receive(events(2, [5], [7])).kind == "frame"
    assert acq.accumulator.cube[0, 5, 7] == before[0, 5, 7] + 1


def test_gaps_are_counted_and_reported_by_range(ingest):
    out = ingest.receive(events(5, [0], [0]))
    assert out.gap == (2, 4)
    ingest.receive(events(6, [0], [0]))
    out = ingest.receive(events(9, [0], [0]))
    assert out.gap == (7, 8)
    acq = ingest.current
    assert acq.missing == 5 and acq.gap_ranges == [(2, 4), (7, 8)]
    counts = acq.accumulator.counts
    late = ingest.receive(events(3, [0], [0]))  # a resend of a lost message fills its gap, once
    assert late.kind == "frame" and late.gap is None
    assert acq.missing == 4 and acq.gap_ranges == [(2, 2), (4, 4), (7, 8)] and acq.accumulator.counts == counts + 1
    assert ingest.receive(events(3, [0], [0])).reason == "duplicate_seq"  # twice is a duplicate
    for seq in (2, 4, 7, 8):
        assert ingest.receive(events(seq, [0], [0])).kind == "frame"
    assert acq.missing == 0 and acq.gap_ranges == [] and acq.next_seq == 10
    assert ingest.receive(events(8, [0], [0])).reason == "duplicate_seq"


def test_stop_then_new_acquisition_starts_fresh(ingest):
    first = ingest.current
    assert ingest.receive(stop(2, frames=3)).kind == "stop"
    assert first.state == "stopped" and (first.frames, first.stop_frames) == (1, 3)  # what arrived, what was claimed
    assert ingest.receive(events(3, [0], [0])).reason == "unknown_acquisition"
    assert ingest.receive(encode(start("acq-2"))).kind == "start"
    second = ingest.current
    assert second is not first and second.accumulator.counts == 0
    ingest.receive(events(1, [3], [3], aid="acq-2", frame_index=4))
    assert second.accumulator.counts == 1 and second.frames == 5
    assert first.accumulator.counts == 300  # the finished one is untouched


def test_start_of_a_new_acquisition_replaces_an_unfinished_one(ingest):
    first = ingest.current
    out = ingest.receive(encode(start("acq-2")))
    assert out.replaced is first
    assert (first.state, first.stop_reason, first.accumulator.counts) == ("stopped", "replaced", 300)
    assert ingest.current.acquisition_id == "acq-2"
    assert ingest.receive(encode(start("acq-2"))).reason == "duplicate_seq"


def test_energy_selection_that_keeps_nothing_rejects_the_start():
    from edx_live.core.ingest import IngestOptions

    ing = Ingest(IngestOptions(energy_min_kev=50.0))
    out = ing.receive(encode(start()))
    assert out.reason == "energy_range" and ing.current is None


def test_status_of_an_idle_service_is_a_valid_document():
    from edx_protocol import decode_result, encode

    from edx_live.config import load_settings
    from edx_live.shell.service import Service
    from edx_live.shell.transport import MemoryConnection

    service = Service(load_settings(), MemoryConnection(), [], analyze=lambda s, record: [])
    status = service.status()
    assert (status.state, status.acquisition_id, status.gaps.count) == ("idle", None, 0)
    assert decode_result(encode(status)).header == status


def test_counts_per_detector_of_events_frames():
    ingest = Ingest()
    ingest.receive(encode(start(detectors=4)))
    rng = np.random.default_rng(7)
    detector = rng.integers(0, 4, 500).astype(np.uint8)
    arrays = {"pixel": rng.integers(0, 24, 500).astype(np.uint32),
              "channel": rng.integers(0, CH, 500).astype(np.uint16), "detector": detector}
    frame = EventsFrame(acquisition_id="acq-1", seq=1, frame_index=0, arrays=describe(arrays))
    assert ingest.receive(encode(frame, arrays)).kind == "frame"
    expected = {d: int((detector == d).sum()) for d in range(4)}
    assert dict(ingest.current.detector_counts) == expected


# the simultaneous image ----------------------------------------------------------------------------
def image(seq, array, aid="acq-1", frame_index=0, first_row=0, detector="HAADF"):
    from edx_protocol import Image

    arrays = {"image": np.asarray(array)}
    return encode(Image(acquisition_id=aid, seq=seq, frame_index=frame_index, first_row=first_row,
                        detector=detector, arrays=describe(arrays)), arrays)


def test_images_are_accepted_in_sequence_and_averaged(ingest):
    acq = ingest.current
    assert acq.image is None and acq.image_detector is None
    cube = acq.accumulator.cube.copy()
    outcome = ingest.receive(image(2, np.full(SHAPE, 4, np.uint16)))
    assert (outcome.kind, outcome.counts) == ("image", 0)
    assert ingest.receive(image(3, np.full((2, SHAPE[1]), 8.0, np.float32), frame_index=1, first_row=2)).kind == "image"
    assert acq.messages == 4 and acq.next_seq == 4 and acq.frames == 1  # images are no X-ray sweeps
    assert acq.image_detector == "HAADF" and acq.images.sweeps == 2
    np.testing.assert_array_equal(acq.image[:, 0], [4.0, 4.0, 6.0, 6.0])
    assert acq.image.dtype == np.float32
    np.testing.assert_array_equal(acq.accumulator.cube, cube)


def test_refused_images_are_counted_and_change_nothing(ingest):
    acq = ingest.current
    ingest.receive(image(2, np.full(SHAPE, 4, np.uint16)))
    before = acq.image.copy()
    cases = {
        "shape_mismatch": image(3, np.zeros((SHAPE[0], SHAPE[1] + 1), np.uint16)),
        "pixel_out_of_range": image(3, np.zeros((2, SHAPE[1]), np.uint16), first_row=3),
        "detector_mismatch": image(3, np.zeros(SHAPE, np.uint16), detector="DF4"),
        "not_finite": image(3, np.full(SHAPE, np.nan, np.float32)),
        "unknown_acquisition": image(3, np.zeros(SHAPE, np.uint16), aid="acq-0"),
        "duplicate_seq": image(2, np.zeros(SHAPE, np.uint16)),
    }
    for reason, frames in cases.items():
        outcome = ingest.receive(frames)
        assert (outcome.kind, outcome.reason) == ("rejected", reason)
    assert dict(ingest.rejected) == {reason: 1 for reason in cases}
    np.testing.assert_array_equal(acq.image, before)
    assert acq.next_seq == 3 and acq.images.sweeps == 1 and acq.images.messages == 1
    # a wrong dtype never reaches the acquisition: the decoder refuses it
    header = msgpack.unpackb(_bytes(image(3, np.zeros(SHAPE, np.uint16)))[0])
    header["arrays"][0]["dtype"] = "<u8"
    assert ingest.receive([msgpack.packb(header), np.zeros(SHAPE, "<u8").tobytes()]).reason == "schema"
    assert ingest.receive(image(3, np.zeros(SHAPE, np.uint16))).kind == "image"


def test_an_image_after_the_stop_is_for_no_open_acquisition(ingest):
    assert ingest.receive(stop(2)).kind == "stop"
    assert ingest.receive(image(3, np.zeros(SHAPE, np.uint16))).reason == "unknown_acquisition"
    assert ingest.current.image is None and ingest.current.rejected == {"unknown_acquisition": 1}

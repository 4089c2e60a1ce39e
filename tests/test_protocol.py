"""The wire protocol: generated files in step with the models, golden messages, codec errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import msgpack
import numpy as np
import pytest
from edx_protocol import (
    PROTOCOL_VERSION,
    VELOX_NEXT_PIXEL,
    Clusters,
    DenseFrame,
    EventsFrame,
    Image,
    MeanImage,
    ProtocolError,
    Start,
    Stop,
    VeloxFrame,
    decode,
    decode_result,
    describe,
    encode,
    topic_for,
)
from edx_protocol.examples import ACQUISITION_ID, ENERGY_AXIS, acquisition_examples, result_examples
from edx_protocol.generate import (
    PROTOCOL_DIR,
    differences,
    examples,
    main,
    pack_container,
    render,
    unpack_container,
)
from pydantic import ValidationError

GOLDEN = PROTOCOL_DIR / "golden"
SCHEMA = PROTOCOL_DIR / "schema"
REGENERATE = "python -m edx_protocol.generate"
NAMES = [ex.name for ex in examples()]
RESULT_NAMES = {ex.name for ex in result_examples()}


# generated files ----------------------------------------------------------------------------------
def test_committed_files_equal_the_models():
    diff = differences(PROTOCOL_DIR, render())
    assert not diff, ("protocol/schema or protocol/golden drifted from the models:\n  " + "\n  ".join(diff)
                      + f"\nregenerate with `{REGENERATE}` and commit the result")


def test_golden_paths_are_inside_the_source_checkout():
    assert PROTOCOL_DIR == Path(__file__).resolve().parents[1] / "protocol"


def test_render_is_deterministic():
    assert render() == render()


def test_check_cli_names_the_files_that_differ(tmp_path, capsys):
    root = tmp_path / "protocol"
    (root / "edx_protocol").mkdir(parents=True)
    shutil.copy(PROTOCOL_DIR / "SPEC.md", root / "SPEC.md")
    assert main(["--root", str(root)]) == 0
    assert main(["--check", "--root", str(root)]) == 0
    (root / "golden" / "stop.json").write_text("{}\n")
    (root / "schema" / "old.schema.json").write_text("{}\n")
    capsys.readouterr()
    assert main(["--check", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "changed: golden/stop.json" in err and "unexpected: schema/old.schema.json" in err
    assert REGENERATE in err
    assert main(["--root", str(root)]) == 0
    assert not (root / "schema" / "old.schema.json").exists()
    assert main(["--check", "--root", str(root)]) == 0


def test_generator_refuses_a_folder_that_is_not_the_protocol_folder(tmp_path):
    with pytest.raises(SystemExit, match="not the protocol folder"):
        main(["--check", "--root", str(tmp_path)])


def test_schemas_are_valid_draft_2020_12_and_carry_the_version():
    for name in ("acquisition", "results"):
        schema = _schema(name)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$id"] == f"urn:edx-live:protocol:{PROTOCOL_VERSION}:{name}"
        assert f"protocol {PROTOCOL_VERSION}" in schema["title"]


def test_every_example_has_committed_golden_files():
    from edx_protocol.examples import control_examples

    names = sorted(NAMES + [f"control_{name}" for name, _, _ in control_examples()])
    assert sorted(p.stem for p in GOLDEN.glob("*.bin")) == names
    assert sorted(p.stem for p in GOLDEN.glob("*.json")) == names


# golden messages ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_golden_binary_decodes_to_its_sidecar(name):
    frames, side = _golden(name)
    assert [len(f) for f in frames] == side["frame_lengths"]
    if name in RESULT_NAMES:
        assert frames[0].decode("ascii") == side["topic"]
        header, arrays = decode_result(frames[1:])
    else:
        assert "topic" not in side
        header, arrays = decode(frames)
    assert header.model_dump(mode="json") == side["header"]
    assert list(arrays) == list(side["arrays"])
    for key, array in arrays.items():
        expected = side["arrays"][key]
        assert (array.dtype.str, list(array.shape)) == (expected["dtype"], expected["shape"])
        assert array.tolist() == expected["data"]


@pytest.mark.parametrize("name", NAMES)
def test_golden_header_validates_against_the_committed_schema(name):
    frames, side = _golden(name)
    result = name in RESULT_NAMES
    header = msgpack.unpackb(frames[1] if result else frames[0])
    validator = jsonschema.Draft202012Validator(_schema("results" if result else "acquisition"))
    errors = [e.message for e in validator.iter_errors(header)]
    assert not errors
    assert header == side["header"]


def test_golden_acquisition_is_a_consecutive_stream():
    headers = [decode(ex.frames()).header for ex in acquisition_examples()]
    assert [h.seq for h in headers] == list(range(len(headers)))
    assert isinstance(headers[0], Start) and isinstance(headers[-1], Stop)
    assert {h.acquisition_id for h in headers} == {ACQUISITION_ID}


def test_golden_velox_next_chunk_starts_after_the_markers():
    velox = next(ex for ex in acquisition_examples() if ex.name == "frame_velox")
    stream = velox.arrays["stream"]
    assert velox.header.pixel_start + int((stream == VELOX_NEXT_PIXEL).sum()) == 10


def test_container_round_trip_and_truncation():
    frames = [b"", b"abc", bytes(range(256)) * 3]
    data = pack_container(frames)
    assert data[:4] == b"\x00\x00\x00\x00" and data[4:8] == b"\x03\x00\x00\x00"
    assert unpack_container(data) == frames
    with pytest.raises(ValueError):
        unpack_container(data[:-1])
    with pytest.raises(ValueError):
        unpack_container(data[:6])


# round trips --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_examples_round_trip(name):
    ex = next(e for e in examples() if e.name == name)
    header, arrays = (decode_result if ex.topic is not None else decode)(encode(ex.header, ex.arrays))
    assert header == ex.header
    _assert_same_arrays(arrays, ex.arrays)


@pytest.mark.parametrize("seed", range(20))
def test_random_frames_round_trip(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 50))
    events = {"pixel": rng.integers(0, 2**32, n, dtype=np.uint32),
              "channel": rng.integers(0, 2**16, n, dtype=np.uint16)}
    if rng.random() < 0.5:
        events["detector"] = rng.integers(0, 256, n, dtype=np.uint8)
    dense = {"counts": rng.integers(0, 200, (int(rng.integers(0, 5)), int(rng.integers(1, 40))))
             .astype(rng.choice(["|u1", "<u2", "<u4", "<u8"]))}
    velox = {"stream": rng.integers(0, 2**16, n, dtype=np.uint16)}
    for model, arrays, extra in ((EventsFrame, events, {}), (DenseFrame, dense, {"pixel_start": 3}),
                                 (VeloxFrame, velox, {"pixel_start": 7, "detector": None})):
        header = _frame(model, arrays, seq=int(rng.integers(0, 2**31)), **extra)
        decoded = decode(encode(header, arrays))
        assert decoded.header == header
        _assert_same_arrays(decoded.arrays, arrays)


@pytest.mark.parametrize("order", ["C", "F", "slice"])
def test_non_contiguous_arrays_travel_in_c_order(order):
    base = np.arange(6 * 32, dtype="<u2").reshape(6, 32)
    counts = {"C": base, "F": np.asfortranarray(base), "slice": base[::2]}[order]
    header = _frame(DenseFrame, {"counts": counts}, pixel_start=0)
    frames = encode(header, {"counts": counts})
    assert bytes(frames[1]) == np.ascontiguousarray(counts).tobytes()
    np.testing.assert_array_equal(decode(frames).arrays["counts"], counts)


def test_big_endian_arrays_are_sent_little_endian():
    arrays = {"pixel": np.array([1, 2**24 + 5], dtype=">u4"), "channel": np.array([258, 3], dtype=">u2")}
    header = _frame(EventsFrame, arrays)
    assert [d.dtype for d in header.arrays] == ["<u4", "<u2"]
    frames = encode(header, arrays)
    assert bytes(frames[1]) == b"\x01\x00\x00\x00\x05\x00\x00\x01"
    assert bytes(frames[2]) == b"\x02\x01\x03\x00"
    _assert_same_arrays(decode(frames).arrays, arrays)


def test_empty_arrays_of_any_rank_round_trip():
    arrays = {"labels": np.zeros((0, 3), np.uint16), "spectra": np.zeros((0, 32), np.uint64)}
    header = Clusters(acquisition_id="a", seq=0, frames=0, counts=0, workflow="umap-hdbscan", refit=0,
                      refit_s=0.0, bin_factor=1, energy_offset_kev=0.0, energy_scale_kev=0.01, clusters=[],
                      noise_pixels=0, arrays=describe(arrays))
    frames = encode(header, arrays)
    assert [bytes(f) for f in frames[1:]] == [b"", b""]
    _assert_same_arrays(decode_result(frames).arrays, arrays)


# malformed input ----------------------------------------------------------------------------------
def _reason(frames, decoder=decode) -> str:
    with pytest.raises(ProtocolError) as info:
        decoder(frames)
    return info.value.reason


@pytest.mark.parametrize("header", [b"", b"\xc1", b"\x00\x01garbage", b"\x92\x01", bytes(range(40))])
def test_garbage_header_is_not_msgpack(header):
    assert _reason([header]) == "not_msgpack"


@pytest.mark.parametrize("value", [[1, 2], 3, "start", None, {1: "int key"}])
def test_header_that_is_not_a_string_keyed_map_is_not_msgpack(value):
    assert _reason([msgpack.packb(value)]) == "not_msgpack"


def test_result_frames_with_the_topic_still_attached_are_not_msgpack():
    frames, _ = _golden("status")
    assert _reason(frames, decode_result) == "not_msgpack"


def test_no_frames_is_empty():
    assert _reason([]) == "empty"


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_other_protocol_versions_are_refused(version):
    doc = _golden_header("stop")
    doc["protocol"] = version
    assert _reason([msgpack.packb(doc)]) == "version"


def test_missing_protocol_field_is_a_version_error():
    doc = _golden_header("stop")
    del doc["protocol"]
    assert _reason([msgpack.packb(doc)]) == "version"


#: Header mutations that the models and the JSON Schema must both refuse: (golden, change).
SCHEMA_VIOLATIONS = {
    "negative seq": ("stop", lambda d: d.update(seq=-1)),
    "unknown kind": ("stop", lambda d: d.update(kind="pause")),
    "missing kind": ("stop", lambda d: d.pop("kind")),
    "extra field": ("stop", lambda d: d.update(comment="hello")),
    "bad acquisition id": ("stop", lambda d: d.update(acquisition_id="has space")),
    "stop with arrays": ("stop", lambda d: d.update(arrays=[{"name": "x", "dtype": "|u1", "shape": [1]}])),
    "unknown payload": ("frame_velox", lambda d: d.update(payload="jpeg")),
    "missing payload": ("frame_velox", lambda d: d.pop("payload")),
    "missing arrays": ("frame_velox", lambda d: d.pop("arrays")),
    "velox detector 255": ("frame_velox", lambda d: d.update(detector=255)),
    "velox wrong dtype": ("frame_velox", lambda d: d["arrays"][0].update(dtype="<u4")),
    "events missing channel": ("frame_events", lambda d: d["arrays"].pop(1)),
    "events unknown array": ("frame_events", lambda d: d["arrays"].append(
        {"name": "energy", "dtype": "<f4", "shape": [5]})),
    "events duplicate array": ("frame_events", lambda d: d["arrays"].append(dict(d["arrays"][0]))),
    "events 2-d pixel": ("frame_events", lambda d: d["arrays"][0].update(shape=[5, 1])),
    "events 0-d pixel": ("frame_events", lambda d: d["arrays"][0].update(shape=[])),
    "dense float counts": ("frame_dense_u8", lambda d: d["arrays"][0].update(dtype="<f4")),
    "dense negative shape": ("frame_dense_u8", lambda d: d["arrays"][0].update(shape=[-2, 32])),
    "start zero channels": ("start", lambda d: d["energy_axis"].update(channels=0)),
    "start 65535 channels": ("start", lambda d: d["energy_axis"].update(channels=65535)),
    "start without detectors": ("start", lambda d: d.update(detectors=[])),
    "start scan of 3 dims": ("start", lambda d: d.update(scan_shape=[4, 6, 2])),
    "start string seq": ("start", lambda d: d.update(seq="zero")),
    # msgpack types the schema forbids, which a lax decoder would coerce
    "boolean seq": ("stop", lambda d: d.update(seq=True)),
    "numeric string seq": ("stop", lambda d: d.update(seq="5")),
    "numeric string frame_index": ("frame_velox", lambda d: d.update(frame_index="0")),
    "boolean pixel_start": ("frame_velox", lambda d: d.update(pixel_start=True)),
    "boolean detector": ("frame_velox", lambda d: d.update(detector=True)),
    "numeric string shape": ("frame_velox", lambda d: d["arrays"][0].update(shape=["10"])),
    "numeric string scan_shape": ("start", lambda d: d.update(scan_shape=["4", 6])),
    "fractional seq": ("stop", lambda d: d.update(seq=1.5)),
    "bin acquisition_id": ("stop", lambda d: d.update(acquisition_id=b"golden-0001")),
    "bin dtype": ("frame_velox", lambda d: d["arrays"][0].update(dtype=b"<u2")),
    "string beam energy": ("start", lambda d: d.update(beam_energy_kev="200")),
    # bounds: every integer has one, so no arithmetic on it can overflow
    "seq 2**64-1": ("stop", lambda d: d.update(seq=2**64 - 1)),
    "seq 2**31": ("stop", lambda d: d.update(seq=2**31)),
    "frame_index 2**64-1": ("frame_events", lambda d: d.update(frame_index=2**64 - 1)),
    "frame_index 2**62": ("frame_events", lambda d: d.update(frame_index=2**62)),
    "pixel_start 2**64-1": ("frame_velox", lambda d: d.update(pixel_start=2**64 - 1)),
    "dense pixel_start 2**32": ("frame_dense_u8", lambda d: d.update(pixel_start=2**32)),
    "stop frames 2**62": ("stop", lambda d: d.update(frames=2**62)),
    "scan side 65536": ("start", lambda d: d.update(scan_shape=[65536, 1])),
    "expected_frames 2**40": ("start", lambda d: d.update(expected_frames=2**40)),
    "shape 2**33": ("frame_velox", lambda d: d["arrays"][0].update(shape=[2**33])),
    "offset 1e300": ("start", lambda d: d["energy_axis"].update(offset_kev=1e300)),
    "huge title": ("start", lambda d: d.update(title="x" * 5000)),
    # the image message
    "image u8 dtype": ("image", lambda d: d["arrays"][0].update(dtype="<u8")),
    "image 1-d": ("image", lambda d: d["arrays"][0].update(shape=[12])),
    "image 3-d": ("image", lambda d: d["arrays"][0].update(shape=[2, 6, 1])),
    "image renamed array": ("image", lambda d: d["arrays"][0].update(name="haadf")),
    "image without arrays": ("image", lambda d: d.pop("arrays")),
    "image two arrays": ("image", lambda d: d["arrays"].append({"name": "image", "dtype": "<u2", "shape": [1, 6]})),
    "image without detector": ("image", lambda d: d.pop("detector")),
    "image empty detector": ("image", lambda d: d.update(detector="")),
    "image numeric detector": ("image", lambda d: d.update(detector=2)),
    "image negative first_row": ("image", lambda d: d.update(first_row=-1)),
    "image first_row 65535": ("image", lambda d: d.update(first_row=65535)),
    "image boolean first_row": ("image", lambda d: d.update(first_row=True)),
    "image without frame_index": ("image", lambda d: d.pop("frame_index")),
    "image with payload": ("image", lambda d: d.update(payload="dense")),
}


#: Values JSON cannot carry, so only the decoder can refuse them.
NON_FINITE = {
    "nan offset": ("start", lambda d: d["energy_axis"].update(offset_kev=float("nan"))),
    "inf scale": ("start", lambda d: d["energy_axis"].update(scale_kev=float("inf"))),
    "nan beam energy": ("start", lambda d: d.update(beam_energy_kev=float("nan"))),
    "nan elevation": ("start", lambda d: d["detectors"][0].update(elevation_deg=float("nan"))),
}


def _changed_golden(name: str, change) -> tuple[dict, str]:
    """The golden message ``name`` with ``change`` applied to its header; (header, decode's reason)."""
    frames, _ = _golden(name)
    doc = msgpack.unpackb(frames[0])
    change(doc)
    return doc, _reason([msgpack.packb(doc, use_bin_type=True), *frames[1:]])


@pytest.mark.parametrize("case", sorted(NON_FINITE))
def test_non_finite_numbers_are_refused(case):
    assert _changed_golden(*NON_FINITE[case])[1] == "schema"


@pytest.mark.parametrize("version", [True, 1.5, "1", b"\x01", None, 2])
def test_only_the_integer_1_is_version_1(version):
    doc = _golden_header("stop")
    doc["protocol"] = version
    assert _reason([msgpack.packb(doc, use_bin_type=True)]) == "version"


def test_an_oversized_header_is_refused_before_it_is_parsed():
    doc = _golden_header("stop")
    doc["padding"] = "x" * 70_000
    assert _reason([msgpack.packb(doc)]) == "too_large"


@pytest.mark.parametrize("case", sorted(SCHEMA_VIOLATIONS))
def test_schema_violations_are_refused_by_decoder_and_schema(case):
    doc, reason = _changed_golden(*SCHEMA_VIOLATIONS[case])
    assert reason == "schema"
    assert not jsonschema.Draft202012Validator(_schema("acquisition")).is_valid(doc)


def test_an_image_without_first_row_starts_at_row_0():
    doc = _golden_header("image")
    del doc["first_row"]
    frames, _ = _golden("image")
    header, arrays = decode([msgpack.packb(doc), *frames[1:]])
    assert header.first_row == 0 and header.detector == "HAADF" and arrays["image"].shape == (2, 6)
    assert jsonschema.Draft202012Validator(_schema("acquisition")).is_valid(doc)


@pytest.mark.parametrize("dtype", ["|u1", "<u2", "<u4", "<f4", "<f8"])
def test_images_travel_in_every_allowed_dtype(dtype):
    image = np.arange(12, dtype=dtype).reshape(2, 6)
    header = Image(acquisition_id=ACQUISITION_ID, seq=6, frame_index=0, detector="ADF",
                   arrays=describe({"image": image}))
    decoded = decode(encode(header, {"image": image}))
    assert decoded.header == header
    np.testing.assert_array_equal(decoded.arrays["image"], image)
    assert decoded.arrays["image"].dtype == np.dtype(dtype)


def test_a_truncated_image_buffer_is_a_buffer_size_error():
    frames, _ = _golden("image")
    assert _reason([frames[0], frames[1][:-2]]) == "buffer_size"


def test_the_mean_image_document_needs_its_float32_image():
    image = np.zeros((4, 6), "<f8")
    with pytest.raises(ValueError, match="dtype"):
        MeanImage(acquisition_id=ACQUISITION_ID, seq=0, frames=1, counts=0, detector="HAADF", sweeps=1,
                  arrays=describe({"image": image}))
    with pytest.raises(ValueError, match="missing"):
        MeanImage(acquisition_id=ACQUISITION_ID, seq=0, frames=1, counts=0, detector="HAADF", sweeps=1)
    assert topic_for("image") == b"image"


def test_events_of_unequal_length_are_a_schema_error():
    doc = _golden_header("frame_events")
    doc["arrays"][1]["shape"] = [4]
    frames = [msgpack.packb(doc), np.zeros(5, "<u4").tobytes(), np.zeros(4, "<u2").tobytes()]
    assert _reason(frames) == "schema"


def test_result_schema_violation():
    frames, _ = _golden("clusters")
    doc = msgpack.unpackb(frames[1])
    doc["workflow"] = "k-means"
    assert _reason([msgpack.packb(doc), *frames[2:]], decode_result) == "schema"
    assert not jsonschema.Draft202012Validator(_schema("results")).is_valid(doc)


@pytest.mark.parametrize("cut", [1, 2, 63])
def test_truncated_buffer(cut):
    frames, _ = _golden("frame_dense_u16")
    assert _reason([frames[0], frames[1][:-cut]]) == "buffer_size"


def test_buffer_longer_than_described():
    frames, _ = _golden("frame_velox")
    assert _reason([frames[0], frames[1] + b"\x00\x00"]) == "buffer_size"


def test_missing_and_extra_buffers():
    frames, _ = _golden("frame_events")
    assert _reason(frames[:-1]) == "buffer_count"
    assert _reason(frames + [b""]) == "buffer_count"
    stop, _ = _golden("stop")
    assert _reason(stop + [b"\x00"]) == "buffer_count"


def test_dtype_inconsistent_with_the_buffer():
    # the header says uint16 but the producer sent its uint8 block
    frames, _ = _golden("frame_dense_u8")
    doc = msgpack.unpackb(frames[0])
    doc["arrays"][0]["dtype"] = "<u2"
    assert _reason([msgpack.packb(doc), frames[1]]) == "buffer_size"


def test_shape_inconsistent_with_the_buffer():
    frames, _ = _golden("frame_dense_u16")
    doc = msgpack.unpackb(frames[0])
    doc["arrays"][0]["shape"] = [2, ENERGY_AXIS.channels]
    assert _reason([msgpack.packb(doc), frames[1]]) == "buffer_size"


def test_huge_shape_does_not_overflow_into_a_match():
    doc = _golden_header("frame_dense_u16")
    doc["arrays"][0]["shape"] = [2**32 - 1, 2**32 - 1]  # 2**65 bytes: wraps in int64 arithmetic
    assert _reason([msgpack.packb(doc), b""]) == "buffer_size"


# encode -------------------------------------------------------------------------------------------
def test_encode_refuses_a_header_that_does_not_describe_the_arrays():
    arrays = {"pixel": np.arange(3, dtype="<u4"), "channel": np.arange(3, dtype="<u2")}
    header = _frame(EventsFrame, arrays)
    for wrong in ({"pixel": arrays["pixel"][:2], "channel": arrays["channel"][:2]},
                  {"channel": arrays["channel"], "pixel": arrays["pixel"]},
                  {"pixel": arrays["pixel"].astype("<u8"), "channel": arrays["channel"]},
                  {"pixel": arrays["pixel"]}, {}):
        with pytest.raises(ValueError, match="describe"):
            encode(header, wrong)
    with pytest.raises(ValueError, match="describe"):
        encode(Stop(acquisition_id="a", seq=1, frames=0), {"x": np.zeros(1, np.uint8)})


def test_models_refuse_arrays_that_break_the_payload_rules():
    with pytest.raises(ValidationError, match="equal lengths"):
        EventsFrame(acquisition_id="a", seq=1, frame_index=0,
                    arrays=describe({"pixel": np.zeros(2, "<u4"), "channel": np.zeros(3, "<u2")}))
    with pytest.raises(ValidationError, match="dtype"):
        DenseFrame(acquisition_id="a", seq=1, frame_index=0, pixel_start=0,
                   arrays=describe({"counts": np.zeros((1, 2), "<f4")}))
    labels, spectra = np.zeros((2, 2), "<u2"), np.zeros((1, 8), "<u8")
    with pytest.raises(ValidationError, match="rows"):
        Clusters(acquisition_id="a", seq=0, frames=0, counts=0, workflow="pca-gmm", refit=0, refit_s=0.0,
                 bin_factor=1, energy_offset_kev=0.0, energy_scale_kev=0.01, clusters=[], noise_pixels=0,
                 arrays=describe({"labels": labels, "spectra": spectra}))


# helpers ------------------------------------------------------------------------------------------
def _schema(name: str) -> dict:
    return json.loads((SCHEMA / f"{name}.schema.json").read_text())


def _golden(name: str) -> tuple[list[bytes], dict]:
    frames = unpack_container((GOLDEN / f"{name}.bin").read_bytes())
    return frames, json.loads((GOLDEN / f"{name}.json").read_text())


def _golden_header(name: str) -> dict:
    return json.loads((GOLDEN / f"{name}.json").read_text())["header"]


def _frame(model, arrays: dict[str, np.ndarray], seq: int = 1, **fields):
    return model(acquisition_id=ACQUISITION_ID, seq=seq, frame_index=0, arrays=describe(arrays), **fields)


def _assert_same_arrays(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(got) == list(expected)
    for name, array in expected.items():
        assert got[name].dtype == array.dtype.newbyteorder("<")
        np.testing.assert_array_equal(got[name], array)

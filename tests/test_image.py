"""The simultaneous (HAADF/ADF) image from producer to published result, over real loopback sockets."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq
from conftest import ServedApp, load_file_sum
from edx_adapters.producer import send_replay
from edx_adapters.replay import open_replay
from edx_adapters.synthetic import ADF_MEAN, ADF_NOISE, make_phantom, synthetic_replay
from edx_protocol import Image, Stop, decode_result, describe, encode
from edx_protocol.check import DocumentChecker

from edx_live.config import load_settings
from edx_live.shell.publish import format_document

STATUS_INTERVAL_S = 0.05
SWEEP_INTERVAL_S = 0.06  # between sweeps: the acquisition spans several status intervals


def Server(context) -> ServedApp:
    """The service on random loopback ports, publishing on ZeroMQ, until one acquisition is finished."""
    settings = load_settings(overrides={"refit": {"interval_s": 3600},
                                        "output": {"status_interval_s": STATUS_INTERVAL_S}})
    return ServedApp(settings, context, publish=True)


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def subscribe(context, server: Server) -> zmq.Socket:
    """A SUB socket on ``image`` and ``status``, live once it has received a status (no sleep)."""
    sub = context.socket(zmq.SUB)
    sub.connect(server.app.output_endpoint)
    for topic in (b"image", b"status"):
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    server.start()
    deadline = time.monotonic() + 30
    while not (sub.poll(100) and sub.recv_multipart()[0] == b"status"):
        assert time.monotonic() < deadline and server.is_alive(), "no status reached the subscriber"
    return sub


def documents_until_final(sub: zmq.Socket, timeout_s: float = 120.0) -> list[tuple[bytes, object, dict]]:
    """(topic, header, arrays) of every document up to the final status, checked as they arrive."""
    checker, out = DocumentChecker(), []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not sub.poll(100):
            continue
        frames = sub.recv_multipart()
        header, arrays = decode_result(frames[1:])
        checker(header, arrays)
        out.append((frames[0], header, {k: np.array(a) for k, a in arrays.items()}))
        if header.kind == "status" and header.final:
            checker.assert_consistent()
            return out
    pytest.fail("no final status within the timeout")


def file_image(data_dir, name: str) -> tuple[np.ndarray, str, float]:
    """The file's own image via HyperSpy: (mean over its frames, detector, pixel size in nm)."""
    import hyperspy.api as hs

    if name.endswith(".hspy"):
        signal = hs.load(data_dir / name.replace("EDS Spectrum Image", "HAADF Image"))
    else:
        found = (hs.load(data_dir / name, select_type="image") if name.endswith(".bcf")
                 else hs.load(data_dir / name, select_type="images", load_SI_image_stack=True))
        signal = next(s for s in (found if isinstance(found, list) else [found])
                      if s.metadata.General.title == "HAADF")
    data = np.asarray(signal.data, dtype=np.float64)
    axis = signal.axes_manager.signal_axes[0]
    nm = axis.scale * {"µm": 1e3, "nm": 1.0}[axis.units]
    return data.reshape(-1, *data.shape[-2:]).mean(axis=0), "HAADF", nm


@pytest.mark.parametrize("name", ["SiO2 EDS Spectrum Image.hspy", "test_TEM.bcf", "EMDReader_SpectrumImage_Si.emd"])
def test_the_published_image_is_the_files_image(name, data_dir, context):
    replay = open_replay(data_dir / name, frames=5 if not name.endswith(".emd") else None)
    reference, detector, pixel_nm = file_image(data_dir, name)
    server = Server(context)
    sub = subscribe(context, server)
    push = context.socket(zmq.PUSH)
    push.connect(server.endpoint)
    sent = send_replay(replay, push, interval_s=SWEEP_INTERVAL_S)
    documents = documents_until_final(sub)
    ingest = server.finish()
    push.close()
    sub.close()

    acq = ingest.current
    assert not ingest.rejected and acq.messages == sent.messages
    images = [(t, h, a) for t, h, a in documents if h.kind == "image"]
    assert images and all(t == b"image" for t, _, _ in images)
    final = [(h, a) for _, h, a in images if h.final]
    assert len(final) == 1 and images[-1][1].final  # once at the stop, nothing after it
    header, arrays = final[0]
    assert header.detector == detector and header.sweeps == replay.frames
    assert header.pixel_unit == "nm" and header.pixel_size == pytest.approx(pixel_nm, rel=1e-6)
    assert arrays["image"].dtype == np.float32 and arrays["image"].shape == reference.shape
    np.testing.assert_allclose(arrays["image"], reference, rtol=2e-7, atol=0)
    # the state the exporter reads holds the same image
    assert acq.image_detector == detector
    np.testing.assert_array_equal(acq.image, arrays["image"])
    # at most one image per status interval while acquiring, and only when a new image arrived
    live = [h for _, h, _ in images if not h.final]
    assert len(live) <= replay.frames and [h.sweeps for h in live] == sorted({h.sweeps for h in live})
    assert [h.seq for _, h, _ in images] == list(range(len(images)))

    statuses = [h for _, h, _ in documents if h.kind == "status" and h.acquisition_id == acq.acquisition_id]
    last = statuses[-1]
    assert last.final and last.pixel_size == pytest.approx(pixel_nm, rel=1e-6) and last.pixel_unit == "nm"
    assert last.title == replay.start.title
    assert statuses[0].count_rate is None  # the start's status: no interval measured yet
    rates = [h.count_rate for h in statuses if h.count_rate is not None]
    assert rates, "no status carried a count rate"
    # the counts of a sweep arrive within about one sweep interval: the rate is of that order
    per_second = acq.accumulator.counts / (replay.frames * SWEEP_INTERVAL_S)
    assert 0 < last.count_rate < 20 * per_second
    assert format_document(header).startswith(f"[image] {acq.acquisition_id} HAADF")


def _raw_image(acquisition_id: str, seq: int, array: np.ndarray, dtype: str, **fields) -> list[bytes]:
    """An image message built by hand, so that it can break what the models refuse."""
    header = {"protocol": 1, "acquisition_id": acquisition_id, "seq": seq, "kind": "image", "frame_index": 0,
              "detector": "HAADF", "first_row": 0, **fields,
              "arrays": [{"name": "image", "dtype": dtype, "shape": list(array.shape)}]}
    return [msgpack.packb(header, use_bin_type=True), array.astype(np.dtype(dtype)).tobytes()]


def test_malformed_images_are_counted_and_change_nothing(data_dir, context):
    name = "test_TEM.bcf"
    replay = open_replay(data_dir / name, frames=3)
    reference, _, _ = file_image(data_dir, name)
    messages = [(replay.start, {})] + list(replay.messages())
    stop, _ = messages.pop()
    assert isinstance(stop, Stop)
    aid, seq = replay.start.acquisition_id, stop.seq  # rejected messages do not use up a seq
    good = np.full((64, 64), 7, np.uint16)
    nan = good.astype(np.float32)
    nan[3, 5] = np.nan
    bad = {
        "schema": _raw_image(aid, seq, good, "<u8"),  # a dtype images do not travel in
        "shape_mismatch": _raw_image(aid, seq, good[:, :63], "<u2"),  # columns are not the scan's
        "pixel_out_of_range": _raw_image(aid, seq, good[:10], "<u2", first_row=60),  # rows past the scan
        "unknown_acquisition": _raw_image("another-acquisition", seq, good, "<u2"),
        "detector_mismatch": _raw_image(aid, seq, good, "<u2", detector="BF"),
        "not_finite": _raw_image(aid, seq, nan, "<f4"),
    }
    server = Server(context)
    sub = subscribe(context, server)
    push = context.socket(zmq.PUSH)
    push.connect(server.endpoint)
    for header, arrays in messages:
        push.send_multipart(encode(header, arrays))
    for frames in bad.values():
        push.send_multipart(frames)
    push.send_multipart(encode(stop))
    documents = documents_until_final(sub)
    ingest = server.finish()
    push.close()
    sub.close()

    assert dict(ingest.rejected) == {reason: 1 for reason in bad}
    acq = ingest.current
    assert dict(acq.rejected) == {reason: 1 for reason in bad if reason not in ("schema", "unknown_acquisition")}
    assert acq.messages == len(messages) + 1 and acq.missing == 0
    np.testing.assert_array_equal(acq.accumulator.cube, load_file_sum(data_dir / name))
    np.testing.assert_array_equal(acq.image, reference.astype(np.float32))
    final_image = next(a["image"] for _, h, a in documents if h.kind == "image" and h.final)
    np.testing.assert_array_equal(final_image, reference.astype(np.float32))
    final_status = documents[-1][1]
    assert final_status.rejected == {reason: 1 for reason in bad}


def test_a_first_image_refused_leaves_no_image(context):
    """An acquisition whose only image is refused publishes none and exposes none."""
    phantom = make_phantom((40, 56), channels=256, scale_kev=0.08, seed=2)
    replay = synthetic_replay(phantom, dose=5, frames=2, seed=3)
    messages = [(h.model_copy(update={"seq": seq}), a)
                for seq, (h, a) in enumerate(((h, a) for h, a in replay.messages() if h.kind != "image"), 1)]
    stop = messages.pop()[0]
    arrays = {"image": np.zeros((40, 55), np.float32)}
    wrong = Image(acquisition_id=replay.start.acquisition_id, seq=stop.seq, frame_index=0, detector="HAADF",
                  arrays=describe(arrays))
    server = Server(context)
    sub = subscribe(context, server)
    push = context.socket(zmq.PUSH)
    push.connect(server.endpoint)
    for header, arrays_ in [(replay.start, {})] + messages + [(wrong, arrays), (stop, {})]:
        push.send_multipart(encode(header, arrays_))
    documents = documents_until_final(sub)
    ingest = server.finish()
    push.close()
    sub.close()
    assert dict(ingest.rejected) == {"shape_mismatch": 1}
    assert ingest.current.image is None and ingest.current.image_detector is None
    assert not [h for _, h, _ in documents if h.kind == "image"]


def test_the_synthetic_image_has_contrast_between_phases():
    phantom = make_phantom((128, 128), seed=0)
    replay = synthetic_replay(phantom, dose=2, frames=3, seed=5)
    images = [(h, a["image"]) for h, a in replay.messages() if h.kind == "image"]
    assert [h.frame_index for h, _ in images] == [0, 1, 2] and {h.detector for h, _ in images} == {"HAADF"}
    image = images[0][1]
    assert image.dtype == np.float32 and image.shape == phantom.shape
    # every sweep has its own noise, the same at every replay
    again = [a["image"] for h, a in replay.messages() if h.kind == "image"]
    np.testing.assert_array_equal(again[1], images[1][1])
    assert not np.array_equal(images[0][1], images[1][1])
    pure = {p.name: phantom.fractions[k] > 0.99 for k, p in enumerate(phantom.phases)}
    mean = {name: float(image[mask].mean()) for name, mask in pure.items()}
    # Z contrast: Ag-Cd (Z ~ 47) > Cu (29) > Fe-Cr-Ni (26) > Al2O3 (10), far beyond the noise
    order = ["Ag-Cd particles", "Cu-rich grains", "Fe-Cr-Ni alloy matrix", "Al2O3 inclusion"]
    assert [mean[name] for name in order] == sorted(mean.values(), reverse=True)
    steps = np.diff([mean[name] for name in order])
    assert np.all(-steps > 10 * ADF_NOISE * ADF_MEAN / np.sqrt(pure["Ag-Cd particles"].sum()))
    assert mean["Ag-Cd particles"] > 2 * mean["Fe-Cr-Ni alloy matrix"] > 4 * mean["Al2O3 inclusion"]
    # thickness contrast inside one phase: the wedge thickens along the columns
    matrix = pure["Fe-Cr-Ni alloy matrix"]
    left, right = matrix.copy(), matrix.copy()
    left[:, 40:], right[:, :88] = False, False
    assert image[right].mean() > 1.2 * image[left].mean()

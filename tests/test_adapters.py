"""The producers in edx_adapters: every real file replayed, decoded and summed back to the file.

The reference is the file's own sum as HyperSpy loads it (``load_file_sum``);
the replay is accumulated naively with ``np.add.at``. Sockets are real
loopback ZeroMQ sockets on random ports, waited on with poll timeouts.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq
from conftest import DATA_FILES, load_file_sum
from edx_protocol import DenseFrame, EventsFrame, Start, Stop, VeloxFrame, decode, encode

from edx_adapters.cli import main
from edx_adapters.producer import make_socket, send_replay, wait_for_subscriber
from edx_adapters.replay import default_acquisition_id, open_replay

#: An odd message size per file that does not divide its scan (small enough to cut rows in pieces,
#: large enough to keep the 512x512 .pts at a few thousand messages).
ODD_CHUNK = {"core_shell.hspy": 37, "SiO2 EDS Spectrum Image.hspy": 37, "test_TEM.bcf": 37,
             "30x30_instructively_packed_16bit_compressed.bcf": 7, "View000_0000006.pts": 1001,
             "Test SI 16x16 215 kx.emd": 7, "EMDReader_SpectrumImage_Si.emd": 7}

#: What the files say, from shared/data/SOURCES.md and the files' metadata.
EXPECTED = {
    "core_shell.hspy": dict(scan=(64, 64), offset=0.16, scale=0.02, beam=200, frames=10,
                            elevation=[35], azimuth=[0], elements=["Fe", "Pt"]),
    "SiO2 EDS Spectrum Image.hspy": dict(scan=(128, 128), offset=0.0, scale=0.01, beam=200, frames=10,
                                         elevation=[40], azimuth=[0], elements=[]),
    "test_TEM.bcf": dict(scan=(64, 64), offset=-0.4754, scale=0.01, beam=200, frames=10,
                         elevation=[18], azimuth=[45], elements=["Cu", "O", "Pd", "Ti"]),
    "30x30_instructively_packed_16bit_compressed.bcf": dict(
        scan=(30, 30), offset=-0.4723, scale=0.01, beam=20, frames=10, elevation=[35], azimuth=[90],
        elements="Al C Ca Ce Fe Gd K Mg Na Nd O P Si Sm Th Ti".split()),
    "View000_0000006.pts": dict(scan=(512, 512), offset=-0.9607, scale=0.01, beam=200, frames=14,
                                elevation=[22.3], azimuth=[90], elements=[]),
    "Test SI 16x16 215 kx.emd": dict(scan=(16, 16), offset=-0.25, scale=0.01, beam=300, frames=2,
                                     elevation=[18] * 4, azimuth=[225, 45, 315, 135],
                                     elements=["C", "O", "Ca", "Cu"]),
    "EMDReader_SpectrumImage_Si.emd": dict(scan=(16, 16), offset=-1.0, scale=0.01, beam=200, frames=5,
                                           elevation=[22], azimuth=[0], elements=[]),
}

FORBIDDEN = ("hyperspy", "exspy", "sklearn", "umap", "hdbscan")


@pytest.fixture(scope="module")
def replay_of(data_dir):
    """The default replay of a file, opened once per module (the .pts takes seconds)."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = open_replay(data_dir / name, acquisition_id="test-" + name[:20].replace(" ", "_"))
        return cache[name]
    return get


@pytest.fixture(scope="module")
def file_sum(data_dir):
    """The file's own sum as (flat indices, counts, shape), loaded once and kept sparse.

    ``load_file_sum`` returns a dense cube: 1 GB for the 512x512x4096 .pts.
    """
    cache = {}

    def get(name):
        if name not in cache:
            ref = load_file_sum(data_dir / name)
            flat = ref.reshape(-1)
            nonzero = np.flatnonzero(flat)
            cache[name] = (nonzero, flat[nonzero].copy(), ref.shape)
        return cache[name]
    return get


def _velox_pixels(stream: np.ndarray, pixel_start: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixel, channel) of every event in a SpectrumStream chunk, decoded the slow obvious way."""
    marks = stream == 65535
    before = np.concatenate([[0], np.cumsum(marks)[:-1]])
    return pixel_start + before[~marks], stream[~marks]


def to_events(messages) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixel, channel, count) of everything the frame messages carry, whatever the payload."""
    parts = []
    for header, arrays in messages:
        if isinstance(header, EventsFrame):
            parts.append((arrays["pixel"], arrays["channel"], np.ones(arrays["pixel"].size, np.uint64)))
        elif isinstance(header, VeloxFrame):
            pixel, channel = _velox_pixels(arrays["stream"], header.pixel_start)
            parts.append((pixel, channel, np.ones(pixel.size, np.uint64)))
        elif isinstance(header, DenseFrame):
            pixel, channel = np.nonzero(arrays["counts"])
            parts.append((header.pixel_start + pixel, channel, arrays["counts"][pixel, channel]))
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint64)
    return tuple(np.concatenate([p[i] for p in parts]).astype(np.uint64 if i == 2 else np.int64)
                 for i in range(3))


def accumulate(events, channels: int, lo: int, hi: int) -> np.ndarray:
    """Naive sum of ``events`` for pixels lo..hi-1 into a (pixels, channels) uint64 cube."""
    pixel, channel, count = events
    keep = (pixel >= lo) & (pixel < hi)
    cube = np.zeros((hi - lo, channels), np.uint64)
    np.add.at(cube, (pixel[keep] - lo, channel[keep]), count[keep])
    return cube


def cube_of(start: Start, messages) -> np.ndarray:
    """The whole (pixels, channels) cube the messages add up to (small scans only)."""
    return accumulate(to_events(messages), start.energy_axis.channels, 0, start.n_pixels)


def assert_equals_file(events, reference) -> None:
    """Exact equality with the file's sum, a block of pixels at a time.

    A whole 512x512x4096 uint64 cube would take 8.6 GB (transparent huge pages
    make even a sparsely touched one resident), so the .pts is compared in slabs.
    """
    nonzero, counts, (rows, columns, channels) = reference
    pixel, channel, count = events
    n_pixels = rows * columns
    assert pixel.size == 0 or (pixel.min() >= 0 and pixel.max() < n_pixels and channel.max() < channels)
    assert int(count.sum()) == int(counts.sum())
    block = max(1, 2 ** 24 // channels)
    ref_pixel = nonzero // channels
    for lo in range(0, n_pixels, block):
        hi = min(lo + block, n_pixels)
        want = np.zeros((hi - lo, channels), np.uint64)
        sel = (ref_pixel >= lo) & (ref_pixel < hi)
        want.reshape(-1)[nonzero[sel] - lo * channels] = counts[sel]
        np.testing.assert_array_equal(accumulate(events, channels, lo, hi), want)


def roundtrip(replay):
    """Every message through encode and decode, checking it on the way."""
    out = []
    for header, arrays in replay.messages():
        decoded = decode(encode(header, arrays))
        assert decoded.header == header
        out.append(decoded)
    return out


@pytest.mark.parametrize("chunked", [False, True], ids=["default", "odd_chunk"])
@pytest.mark.parametrize("name", list(DATA_FILES))
def test_replay_sums_exactly_to_the_file(name, chunked, replay_of, file_sum):
    replay = replay_of(name)
    if chunked:
        replay = replay.rechunk(ODD_CHUNK[name])
        assert replay.start.n_pixels % ODD_CHUNK[name] != 0
    messages = roundtrip(replay)
    frames, stop = messages[:-1], messages[-1].header

    assert [m.header.seq for m in messages] == list(range(1, len(messages) + 1))
    assert isinstance(stop, Stop) and stop.reason == "complete" and stop.frames == replay.frames
    indexes = [m.header.frame_index for m in frames]
    assert indexes == sorted(indexes) and sorted(set(indexes)) == list(range(replay.frames))
    assert all(m.header.acquisition_id == replay.start.acquisition_id for m in messages)
    assert_equals_file(to_events(frames), file_sum(name))
    _check_chunks(replay, frames)


def _check_chunks(replay, frames) -> None:
    for header, arrays in frames:
        if isinstance(header, DenseFrame):
            counts = arrays["counts"]
            assert counts.shape[0] <= replay.chunk_pixels
            assert counts.dtype == np.min_scalar_type(int(counts.max()) if counts.size else 0)
        elif isinstance(header, VeloxFrame):
            assert np.count_nonzero(arrays["stream"] == 65535) <= replay.chunk_pixels
            assert 0 <= header.detector < len(replay.start.detectors)
        elif isinstance(header, EventsFrame) and arrays["pixel"].size:
            pixel = arrays["pixel"]
            assert np.all(np.diff(pixel.astype(np.int64)) >= 0), "events must come in raster order"
            assert pixel[-1] // replay.chunk_pixels == pixel[0] // replay.chunk_pixels


@pytest.mark.parametrize("name", list(DATA_FILES))
def test_start_describes_the_file(name, replay_of, file_sum):
    start, want = replay_of(name).start, EXPECTED[name]
    shape = file_sum(name)[2]
    assert start.scan_shape == want["scan"] == tuple(shape[:2])
    assert start.energy_axis.channels == shape[2]
    assert start.energy_axis.offset_kev == pytest.approx(want["offset"], abs=1e-3)
    assert start.energy_axis.scale_kev == pytest.approx(want["scale"], rel=1e-3)
    assert start.beam_energy_kev == pytest.approx(want["beam"])
    assert [d.elevation_deg for d in start.detectors] == pytest.approx(want["elevation"], abs=1e-3)
    assert [d.azimuth_deg for d in start.detectors] == pytest.approx(want["azimuth"], abs=1e-3)
    assert start.elements == want["elements"]
    assert start.expected_frames == replay_of(name).frames == want["frames"]
    assert start.pixel_size > 0 and start.pixel_unit == "nm"


@pytest.mark.parametrize("name", ["Test SI 16x16 215 kx.emd", "EMDReader_SpectrumImage_Si.emd"])
def test_velox_frames_and_detectors_match_rosettasciio(name, data_dir, replay_of):
    """Each (frame, detector) of the replay equals what rosettasciio decodes for it."""
    import hyperspy.api as hs

    signals = hs.load(data_dir / name, select_type="spectrum_image", sum_frames=False, sum_EDS_detectors=False)
    signals = signals if isinstance(signals, list) else [signals]
    replay = replay_of(name).rechunk(5)
    assert len(replay.start.detectors) == len(signals)
    for frame in range(replay.frames):
        for detector, signal in enumerate(signals):
            part = [(h, a) for h, a in replay.messages() if getattr(h, "frame_index", None) == frame
                    and h.detector == detector]
            cube = cube_of(replay.start, part)
            np.testing.assert_array_equal(cube.reshape(signal.data.shape[1:]), signal.data[frame])


def test_pts_sweeps_are_the_recorded_ones(replay_of):
    replay = replay_of("View000_0000006.pts")
    per_sweep = np.zeros(replay.frames, np.int64)
    for header, arrays in replay.messages():
        if isinstance(header, EventsFrame):
            per_sweep[header.frame_index] += arrays["pixel"].size
    # 14 real sweeps of about 22 k X-rays each (SOURCES.md), not one sum cut in pieces.
    assert per_sweep.sum() == 308_261
    assert np.all((per_sweep > 21_000) & (per_sweep < 23_000))


def test_dense_split_is_binomial_reproducible_and_chunk_independent(data_dir):
    def per_frame(replay):
        messages = list(replay.messages())
        return np.stack([cube_of(replay.start, [(h, a) for h, a in messages
                                                if getattr(h, "frame_index", None) == i])
                         for i in range(replay.frames)])

    path = data_dir / "core_shell.hspy"
    a = per_frame(open_replay(path, frames=4, seed=3))
    total = a.sum(axis=0)
    assert a.shape[0] == 4 and total.sum() == 884_071
    # Each sweep is a fair quarter of the dose: within 5 binomial sigmas of n/4.
    sigma = np.sqrt(884_071 * 0.25 * 0.75)
    assert np.all(np.abs(a.sum(axis=(1, 2)) - 884_071 / 4) < 5 * sigma)
    np.testing.assert_array_equal(per_frame(open_replay(path, frames=4, seed=3, chunk_pixels=37)), a)
    assert not np.array_equal(per_frame(open_replay(path, frames=4, seed=4)), a)
    one = per_frame(open_replay(path, frames=1))
    np.testing.assert_array_equal(one[0], total)


def test_recorded_files_replay_only_the_first_frames(data_dir):
    replay = open_replay(data_dir / "EMDReader_SpectrumImage_Si.emd", frames=2)
    messages = roundtrip(replay)
    assert replay.start.expected_frames == messages[-1].header.frames == 2
    assert {m.header.frame_index for m in messages[:-1]} == {0, 1}
    assert cube_of(replay.start, messages).sum() == 1353 + 1298  # the first two frames as rosettasciio reads them


def test_default_acquisition_id_is_the_safe_stem_plus_a_random_suffix(data_dir):
    ids = {default_acquisition_id(data_dir / "Test SI 16x16 215 kx.emd") for _ in range(5)}
    assert len(ids) == 5
    assert all(re.fullmatch(r"Test_SI_16x16_215_kx-[0-9a-f]{6}", i) for i in ids)
    assert re.fullmatch(r"a_b_\.c-[0-9a-f]{6}", default_acquisition_id("/x/a (b).c.hspy"))


def test_importing_the_producers_does_not_import_the_analysis_stack():
    code = ("import sys, edx_adapters.replay, edx_adapters.producer, edx_adapters.cli; "
            f"print(','.join(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == ""


def test_bad_paths_and_arguments_give_clear_errors(tmp_path, data_dir, capsys):
    with pytest.raises(FileNotFoundError, match="no such file.*nothere.hspy"):
        open_replay(tmp_path / "nothere.hspy")
    (tmp_path / "spectra.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match=r"'\.txt' is not supported.*\.bcf.*\.emd.*\.hspy.*\.pts"):
        open_replay(tmp_path / "spectra.txt")
    with pytest.raises(ValueError, match="is not a file"):
        open_replay(tmp_path)
    with pytest.raises(ValueError, match="no spectrum image"):
        open_replay(data_dir / "SiO2 HAADF Image.hspy")
    with pytest.raises(ValueError, match="frames must be a positive integer"):
        open_replay(data_dir / "core_shell.hspy", frames=0)
    with pytest.raises(ValueError, match="chunk_pixels must be a positive integer"):
        open_replay(data_dir / "core_shell.hspy", chunk_pixels=-7)
    assert main([str(tmp_path / "nothere.emd")]) == 2
    assert "no such file" in capsys.readouterr().err


# --- real sockets ---------------------------------------------------------------------------

def receive_until_stop(socket: zmq.Socket, timeout_ms: int = 10_000) -> list:
    """Decoded messages up to and including a stop; fails if the stream stalls."""
    out = []
    while not out or not isinstance(out[-1].header, Stop):
        assert socket.poll(timeout_ms, zmq.POLLIN), f"no message within {timeout_ms} ms after {len(out)}"
        out.append(decode(socket.recv_multipart(copy=False)))
    return out


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def _sender(replay, socket, **kwargs):
    result = {}
    thread = threading.Thread(target=lambda: result.update(sent=send_replay(replay, socket, **kwargs)))
    thread.start()
    return thread, result


def test_push_to_pull_over_loopback_sums_to_the_file(context, replay_of, file_sum):
    name = "core_shell.hspy"
    replay = replay_of(name).rechunk(37)
    push = context.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    pull = context.socket(zmq.PULL)
    pull.connect(f"tcp://127.0.0.1:{port}")
    thread, result = _sender(replay, push)
    received = receive_until_stop(pull)
    thread.join(10)
    assert isinstance(received[0].header, Start) and received[0].header == replay.start
    assert [m.header.seq for m in received] == list(range(len(received)))
    assert_equals_file(to_events(received), file_sum(name))
    assert result["sent"].messages == len(received) and not result["sent"].aborted
    assert result["sent"].sweeps == 10 and result["sent"].xrays == 884_071


def test_pub_waits_for_a_subscriber_then_loses_nothing(context, replay_of, file_sum):
    name = "Test SI 16x16 215 kx.emd"
    pub = make_socket("tcp://127.0.0.1:*", "pub", context=context, linger_ms=0)
    assert not wait_for_subscriber(pub, 0.05)
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(pub.getsockopt(zmq.LAST_ENDPOINT).decode())
    assert wait_for_subscriber(pub, 10)
    replay = replay_of(name).rechunk(7)
    thread, _ = _sender(replay, pub)
    received = receive_until_stop(sub)
    thread.join(10)
    assert received[0].header == replay.start  # nothing lost to a slow join
    assert_equals_file(to_events(received), file_sum(name))


def test_sleeps_between_sweeps_only_and_stops_on_request(context, replay_of):
    replay = replay_of("EMDReader_SpectrumImage_Si.emd")  # 5 sweeps of 16 row messages
    push = context.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    pull = context.socket(zmq.PULL)
    pull.connect(f"tcp://127.0.0.1:{port}")
    t0 = time.monotonic()
    thread, result = _sender(replay, push, interval_s=0.1)
    received = receive_until_stop(pull)
    thread.join(10)
    elapsed = time.monotonic() - t0
    assert 0.4 <= elapsed < 0.1 * 79, "four pauses between five sweeps, none between messages of a sweep"
    assert result["sent"].sweeps == 5 and received[-1].header.reason == "complete"

    stop = threading.Event()
    done = []
    thread, result = _sender(replay, push, interval_s=30, stop_event=stop,
                             on_sweep=lambda s: (done.append(s), stop.set()))
    received = receive_until_stop(pull)
    thread.join(5)
    assert not thread.is_alive(), "setting the event must cut the 30 s pause short"
    assert [d.frame_index for d in done] == [0] and done[0].messages == 16 + 1  # its rows, then its HAADF image
    last = received[-1].header
    assert last.reason == "aborted" and last.frames == 1 and result["sent"].aborted
    assert [m.header.seq for m in received] == list(range(len(received)))
    assert {m.header.frame_index for m in received[1:-1]} == {0}


def test_cli_pushes_a_file_and_reports_each_sweep(context, data_dir, file_sum, capsys):
    name = "Test SI 16x16 215 kx.emd"
    pull = context.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    status = main([str(data_dir / name), "--address", f"tcp://127.0.0.1:{port}", "--chunk-pixels", "7",
                   "--acquisition-id", "cli-test"])
    assert status == 0
    received = receive_until_stop(pull)
    assert received[0].header.acquisition_id == "cli-test"
    assert_equals_file(to_events(received), file_sum(name))
    err = capsys.readouterr().err
    assert "sweep 1/2:" in err and "sweep 2/2:" in err and "42097 X-rays" in err


def test_cli_pub_without_subscriber_fails_clearly(data_dir, capsys):
    status = main([str(data_dir / "EMDReader_SpectrumImage_Si.emd"), "--socket", "pub",
                   "--address", "tcp://127.0.0.1:*", "--wait-subscribers", "0.05"])
    assert status == 1
    assert "no subscriber within 0.05 s" in capsys.readouterr().err


def test_a_file_saved_after_exspy_set_microscope_parameters_keeps_its_beam_energy(data_dir, tmp_path, caplog):
    """exspy 0.3.2 writes the key ``"beam_energy "`` (trailing space); the file is still read, with a warning."""
    import logging

    import hyperspy.api as hs

    s = hs.load(data_dir / "core_shell.hspy")
    del s.metadata.Acquisition_instrument.TEM.beam_energy
    s.set_microscope_parameters(beam_energy=300)
    path = tmp_path / "saved_by_exspy.hspy"
    s.save(path)
    with caplog.at_level(logging.WARNING, logger="edx_adapters"):
        replay = open_replay(path, frames=2)
    assert replay.start.beam_energy_kev == 300.0
    assert any("'beam_energy '" in r.getMessage() for r in caplog.records)


# the simultaneous image -------------------------------------------------------------------------------
def _images_by_sweep(replay) -> dict[int, list]:
    out: dict[int, list] = {}
    for header, arrays in replay.messages():
        if header.kind == "image":
            out.setdefault(header.frame_index, []).append((header, arrays["image"]))
    return out


def _rsciio_images(data_dir, name: str) -> np.ndarray:
    """The file's HAADF image(s) as rosettasciio reads them: (frames, rows, columns)."""
    if name.endswith(".bcf"):
        from rsciio.bruker import file_reader

        found = file_reader(str(data_dir / name), select_type="image")
    elif name.endswith(".emd"):
        from rsciio.emd import file_reader

        found = file_reader(str(data_dir / name), select_type="images", load_SI_image_stack=True)
    else:
        from rsciio.hspy import file_reader

        found = file_reader(str(data_dir / name.replace("EDS Spectrum Image", "HAADF Image")))
    data = next(np.asarray(s["data"]) for s in found if s["metadata"]["General"]["title"].startswith("HAADF"))
    return data.reshape(-1, *data.shape[-2:])


@pytest.mark.parametrize("name", ["SiO2 EDS Spectrum Image.hspy", "test_TEM.bcf", "Test SI 16x16 215 kx.emd",
                                  "EMDReader_SpectrumImage_Si.emd"])
def test_each_sweep_is_followed_by_the_files_image(name, data_dir, replay_of):
    replay = replay_of(name)
    reference = _rsciio_images(data_dir, name)
    images = _images_by_sweep(replay)
    assert sorted(images) == list(range(replay.frames))
    messages = list(replay.messages())
    for index, parts in images.items():
        # after the sweep's X-rays, before the next sweep's
        positions = [i for i, (h, _) in enumerate(messages) if h.kind == "image" and h.frame_index == index]
        sweep = [i for i, (h, _) in enumerate(messages) if h.kind == "frame" and h.frame_index == index]
        after = messages[max(positions) + 1][0]
        assert min(positions) > max(sweep) and (isinstance(after, Stop) or after.frame_index > index)
        assert {h.detector for h, _ in parts} == {"HAADF"}
        image = np.concatenate([a for _, a in sorted(parts, key=lambda p: p[0].first_row)])
        expected = reference[index if len(reference) > 1 else 0]
        assert image.dtype == expected.dtype.newbyteorder("<") and image.shape == replay.start.scan_shape
        np.testing.assert_array_equal(image, expected)
    for header, arrays in messages:
        decoded = decode(encode(header, arrays))  # every image message is a valid one
        assert decoded.header == header


@pytest.mark.parametrize("name", ["core_shell.hspy", "View000_0000006.pts"])
def test_files_without_an_image_send_none(name, replay_of):
    assert _images_by_sweep(replay_of(name)) == {}


def test_a_bcf_without_a_dark_field_image_sends_its_own(replay_of):
    """An SEM map has no ADF detector: its backscatter image (AsB) is the one sent."""
    images = _images_by_sweep(replay_of("30x30_instructively_packed_16bit_compressed.bcf"))
    assert len(images) == 10 and {h.detector for parts in images.values() for h, _ in parts} == {"AsB"}


def test_sibling_images_are_named_after_the_spectrum_image(tmp_path):
    from edx_adapters.formats.dense import sibling_image_paths

    names = [(p.name, d) for p, d in sibling_image_paths(tmp_path / "SiO2 EDS Spectrum Image.hspy")]
    assert names[:2] == [("SiO2 HAADF Image.hspy", "HAADF"), ("SiO2 ADF Image.hspy", "ADF")]
    assert [(p.name, d) for p, d in sibling_image_paths(tmp_path / "area1_EDS.hspy")] == [
        ("area1_HAADF.hspy", "HAADF"), ("area1_ADF.hspy", "ADF")]
    assert sibling_image_paths(tmp_path / "core_shell.hspy") == []


def test_an_image_finer_than_the_scan_is_averaged_and_another_shape_skipped(caplog):
    from edx_adapters.formats.common import fit_to_scan, wire_image

    fine = np.arange(8 * 12, dtype=np.uint16).reshape(8, 12)
    coarse = fit_to_scan(fine, (4, 6), "fine")
    expected = fine.reshape(4, 2, 6, 2).astype(np.float64).mean(axis=(1, 3))
    assert coarse.dtype == np.float32 and np.array_equal(coarse, expected.astype(np.float32))
    assert fit_to_scan(fine, (8, 12), "same") is fine
    with caplog.at_level("WARNING", logger="edx_adapters"):
        assert fit_to_scan(fine, (5, 6), "odd") is None
        assert fit_to_scan(fine[:, :10], (4, 6), "narrow") is None
    assert "odd is 8x12, the scan 5x6: not sent" in caplog.text
    assert wire_image(np.array([[1, -2]], np.int16)).dtype == np.float64
    assert wire_image(np.array([[1.0, np.nan]])) is None
    assert wire_image(np.ones((2, 2), np.uint64)).dtype == np.float64


def _copy_with_sibling(data_dir, tmp_path, image: np.ndarray, scale_um: float):
    import shutil

    import hyperspy.api as hs

    name = "SiO2 EDS Spectrum Image.hspy"
    shutil.copy(data_dir / name, tmp_path / name)
    signal = hs.signals.Signal2D(image)
    for axis in signal.axes_manager.signal_axes:
        axis.scale, axis.units = scale_um, "µm"
    signal.save(tmp_path / "SiO2 HAADF Image.hspy")
    return tmp_path / name


def test_a_sibling_image_twice_as_fine_is_averaged_to_the_scan(data_dir, tmp_path):
    fine = np.random.default_rng(0).random((256, 256)).astype(np.float32)
    path = _copy_with_sibling(data_dir, tmp_path, fine, 0.008552446030080318 / 2)
    images = _images_by_sweep(open_replay(path, frames=2))
    assert sorted(images) == [0, 1]
    (header, image), = images[1]
    expected = fine.astype(np.float64).reshape(128, 2, 128, 2).mean(axis=(1, 3)).astype(np.float32)
    np.testing.assert_array_equal(image, expected)


def test_a_sibling_image_of_another_field_of_view_is_not_sent(data_dir, tmp_path, caplog):
    path = _copy_with_sibling(data_dir, tmp_path, np.ones((128, 128), np.float32), 0.02)
    with caplog.at_level("WARNING", logger="edx_adapters"):
        assert _images_by_sweep(open_replay(path, frames=2)) == {}
    assert "SiO2 HAADF Image.hspy covers 2560x2560 nm" in caplog.text

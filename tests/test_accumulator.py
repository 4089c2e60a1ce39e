"""The accumulator against naive numpy references, and rejection without side effects."""

import numpy as np
import pytest

from edx_live.core.accumulator import Accumulator, EnergySelection, FrameRejected

SHAPE, CH = (5, 7), 40


def _events(rng, n):
    return rng.integers(0, SHAPE[0] * SHAPE[1], n).astype(np.uint32), rng.integers(0, CH, n).astype(np.uint16)


def _naive(pixel, channel):
    ref = np.zeros((SHAPE[0] * SHAPE[1], CH), np.uint64)
    np.add.at(ref, (pixel, channel), 1)
    return ref.reshape(*SHAPE, CH)


def _velox(ref_flat, pixel_start, n_pixels, rng):
    """Encode pixels [pixel_start, pixel_start + n_pixels) of a dense reference as a SpectrumStream."""
    out = []
    for p in range(pixel_start, pixel_start + n_pixels):
        chans = np.repeat(np.arange(CH), ref_flat[p].astype(np.int64)).astype(np.uint16)
        out.extend(rng.permutation(chans).tolist() + [65535])
    return np.array(out, dtype=np.uint16)


def test_events_in_odd_chunks_equal_naive_sum():
    rng = np.random.default_rng(1)
    pixel, channel = _events(rng, 10_000)
    acc = Accumulator(SHAPE, CH, EnergySelection.from_range(0.0, 0.01, CH))
    for lo in range(0, pixel.size, 997):
        acc.add_events(pixel[lo:lo + 997], channel[lo:lo + 997])
    np.testing.assert_array_equal(acc.cube, _naive(pixel, channel))
    assert acc.counts == acc.events == pixel.size


def test_velox_stream_chunks_equal_dense_reference():
    rng = np.random.default_rng(2)
    ref = rng.poisson(0.3, (SHAPE[0] * SHAPE[1], CH)).astype(np.uint64)
    acc = Accumulator(SHAPE, CH, EnergySelection.from_range(0.0, 0.01, CH))
    for start in range(0, ref.shape[0], 3):
        n = min(3, ref.shape[0] - start)
        acc.add_velox(_velox(ref, start, n, rng), start)
    np.testing.assert_array_equal(acc.cube.reshape(-1, CH), ref)


def test_long_velox_stream_with_crop_and_rebin_equals_naive_sum():
    """A stream far longer than the kernel's prefetch distance, with empty pixels and a crop."""
    rng = np.random.default_rng(5)
    ref = rng.poisson(2.0, (SHAPE[0] * SHAPE[1], CH)).astype(np.uint64)
    ref[[3, 4, 20]] = 0
    sel = EnergySelection.from_range(0.0, 0.01, CH, min_kev=0.05, max_kev=0.31, rebin=4)
    acc = Accumulator(SHAPE, CH, sel)
    stream = _velox(ref, 0, ref.shape[0], rng)
    assert stream.size > 2000
    acc.add_velox(stream, 0)
    kept = ref[:, sel.lo:sel.lo + sel.channels * sel.rebin]
    np.testing.assert_array_equal(acc.cube.reshape(-1, sel.channels),
                                  kept.reshape(ref.shape[0], sel.channels, sel.rebin).sum(-1))
    assert acc.events == int(ref.sum())


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_dense_blocks_with_crop_and_rebin(dtype):
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 50, (SHAPE[0] * SHAPE[1], CH)).astype(dtype)
    sel = EnergySelection.from_range(0.0, 0.01, CH, min_kev=0.05, max_kev=0.31, rebin=4)
    acc = Accumulator(SHAPE, CH, sel)
    for start in range(0, ref.shape[0], 4):
        acc.add_dense(ref[start:start + 4], start)
    kept = ref[:, sel.lo:sel.lo + sel.channels * sel.rebin].astype(np.uint64)
    expected = kept.reshape(ref.shape[0], sel.channels, sel.rebin).sum(-1)
    np.testing.assert_array_equal(acc.cube.reshape(-1, sel.channels), expected)
    assert (sel.lo, sel.channels) == (5, 6)
    assert sel.offset_kev == pytest.approx(0.05 + 1.5 * 0.01)
    assert acc.counts == int(expected.sum()) and acc.events == int(ref.sum())


def test_energy_crop_applies_to_events():
    rng = np.random.default_rng(4)
    pixel, channel = _events(rng, 5000)
    sel = EnergySelection.from_range(0.0, 0.01, CH, min_kev=0.10, max_kev=0.299, rebin=2)
    acc = Accumulator(SHAPE, CH, sel)
    acc.add_events(pixel, channel)
    full = _naive(pixel, channel)[..., sel.lo:sel.lo + 2 * sel.channels]
    np.testing.assert_array_equal(acc.cube, full.reshape(*SHAPE, sel.channels, 2).sum(-1))


def test_binned_matches_reshape_sum_and_pads_odd_scans():
    rng = np.random.default_rng(5)
    pixel, channel = _events(rng, 3000)
    acc = Accumulator(SHAPE, CH, EnergySelection.from_range(0.0, 0.01, CH))
    acc.add_events(pixel, channel)
    b = acc.binned(2)
    assert b.shape == (3, 4, CH)
    ref = _naive(pixel, channel)
    assert b[0, 0].tolist() == ref[0:2, 0:2].sum((0, 1)).tolist()
    assert b[2, 3].tolist() == ref[4, 6].tolist()  # corner bin holds one pixel
    assert int(b.sum()) == pixel.size


@pytest.mark.parametrize("call, reason", [
    (lambda a: a.add_events(np.array([35], np.uint32), np.array([0], np.uint16)), "pixel_out_of_range"),
    (lambda a: a.add_events(np.array([0], np.uint32), np.array([CH], np.uint16)), "channel_out_of_range"),
    (lambda a: a.add_velox(np.array([1, 65535, 2], np.uint16), 34), "pixel_out_of_range"),
    (lambda a: a.add_velox(np.array([CH + 3], np.uint16), 0), "channel_out_of_range"),
    (lambda a: a.add_dense(np.ones((2, CH), np.uint8), 34), "pixel_out_of_range"),
    (lambda a: a.add_dense(np.ones((2, CH - 1), np.uint8), 0), "shape_mismatch"),
])
def test_rejected_input_leaves_the_cube_untouched(call, reason):
    rng = np.random.default_rng(6)
    acc = Accumulator(SHAPE, CH, EnergySelection.from_range(0.0, 0.01, CH))
    acc.add_events(*_events(rng, 500))
    before, counts = acc.cube.copy(), acc.counts
    with pytest.raises(FrameRejected) as err:
        call(acc)
    assert err.value.reason == reason
    np.testing.assert_array_equal(acc.cube, before)
    assert acc.counts == counts


def test_velox_trailing_marker_after_last_pixel_is_accepted():
    acc = Accumulator(SHAPE, CH, EnergySelection.from_range(0.0, 0.01, CH))
    acc.add_velox(np.array([3, 65535], np.uint16), SHAPE[0] * SHAPE[1] - 1)
    assert acc.cube[-1, -1, 3] == 1


def test_energy_range_that_keeps_nothing_is_an_error():
    with pytest.raises(ValueError, match="keeps no channel"):
        EnergySelection.from_range(0.0, 0.01, CH, min_kev=5.0)


def test_large_cube_accumulates_exactly_while_its_pages_are_populated():
    """A cube above the huge-page threshold: mapped memory, populated by a thread while events arrive."""
    import mmap

    from edx_live.core.memory import LARGE_BYTES

    shape, channels = (96, 96), 1024
    assert shape[0] * shape[1] * channels * 4 >= LARGE_BYTES
    rng = np.random.default_rng(6)
    pixel = np.sort(rng.integers(0, shape[0] * shape[1], 200_000)).astype(np.uint32)
    channel = rng.integers(0, channels, pixel.size).astype(np.uint16)
    acc = Accumulator(shape, channels, EnergySelection.from_range(0.0, 0.01, channels))
    assert isinstance(acc._flat.base.base.obj, mmap.mmap)  # the mapped, populated path
    for lo in range(0, pixel.size, 7919):
        acc.add_events(pixel[lo:lo + 7919], channel[lo:lo + 7919])
    ref = np.zeros((shape[0] * shape[1], channels), np.uint64)
    np.add.at(ref, (pixel, channel), 1)
    np.testing.assert_array_equal(acc.cube.reshape(-1, channels), ref)
    binned = acc.binned(4)
    assert binned.dtype == np.uint32
    np.testing.assert_array_equal(binned, ref.reshape(24, 4, 24, 4, channels).sum(axis=(1, 3)))


def test_binned_switches_to_uint64_before_counts_could_overflow_uint32():
    rng = np.random.default_rng(7)
    pixel, channel = _events(rng, 2000)
    acc = Accumulator(SHAPE, CH, EnergySelection.from_range(0.0, 0.01, CH))
    acc.add_events(pixel, channel)
    small = acc.binned(2)
    acc.events = 2**31  # as if the acquisition had this many counts
    large = acc.binned(2)
    assert small.dtype == np.uint32 and large.dtype == np.uint64
    np.testing.assert_array_equal(small, large)


# the simultaneous image ---------------------------------------------------------------------------
def test_images_in_odd_row_blocks_average_exactly():
    from edx_live.core.image import ImageAccumulator

    rng = np.random.default_rng(4)
    sweeps = rng.integers(0, 2**32, size=(5, 13, 7), dtype=np.uint64).astype(np.uint32)
    acc = ImageAccumulator((13, 7), "HAADF")
    for index, image in enumerate(sweeps):
        for lo in range(0, 13, 4):  # blocks of 4, 4, 4 and 1 rows
            acc.add(image[lo:lo + 4], lo, index, "HAADF")
    assert acc.sweeps == 5 and acc.messages == 20
    naive = sweeps.astype(np.float64).mean(axis=0).astype(np.float32)
    np.testing.assert_array_equal(acc.mean, naive)


def test_image_rows_not_yet_received_are_zero_and_rows_count_their_own_sweeps():
    from edx_live.core.image import ImageAccumulator

    acc = ImageAccumulator((4, 3), "ADF")
    acc.add(np.full((2, 3), 10.0, np.float32), 0, 0, "ADF")
    acc.add(np.full((1, 3), 30.0, np.float32), 1, 1, "ADF")
    acc.add(np.zeros((0, 3), np.float32), 3, 2, "ADF")  # an empty block is no sweep's image
    np.testing.assert_array_equal(acc.mean[:, 0], [10.0, 20.0, 0.0, 0.0])
    assert acc.sweeps == 2


@pytest.mark.parametrize("image, first_row, detector, reason", [
    (np.zeros((2, 4)), 0, "HAADF", "shape_mismatch"),
    (np.zeros((2, 3)), 3, "HAADF", "pixel_out_of_range"),
    (np.zeros((2, 3)), 0, "BF", "detector_mismatch"),
    (np.array([[0.0, np.inf, 1.0]]), 0, "HAADF", "not_finite"),
])
def test_an_image_that_does_not_fit_changes_nothing(image, first_row, detector, reason):
    from edx_live.core.image import ImageAccumulator

    acc = ImageAccumulator((4, 3), "HAADF")
    acc.add(np.ones((4, 3), np.float32), 0, 0, "HAADF")
    with pytest.raises(FrameRejected) as raised:
        acc.add(image, first_row, 1, detector)
    assert raised.value.reason == reason
    assert acc.sweeps == 1 and acc.messages == 1
    np.testing.assert_array_equal(acc.mean, np.ones((4, 3), np.float32))


def test_the_count_rate_spans_the_samples_kept():
    from edx_live.core.rate import CountRate

    rate = CountRate()
    assert rate.value is None
    rate.note(10.0, 100)
    assert rate.value is None
    rate.note(11.0, 400)
    assert rate.value == 300.0
    rate.note(11.0, 900)  # no time has passed: not a sample
    rate.note(12.0, 600)
    assert rate.value == (600 - 100) / 2.0
    rate.note(13.0, 1600)  # the oldest sample drops out: the last two intervals
    assert rate.value == (1600 - 400) / 2.0

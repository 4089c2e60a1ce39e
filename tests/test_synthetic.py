"""The synthetic acquisition: its draws match its model, its truth is what it says, it replays exactly."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from edx_adapters.replay import xray_count
from edx_adapters.synthetic import DEFAULT_PHASES, Phase, _family, make_phantom, synthetic_replay
from edx_protocol import EventsFrame, Start, Stop, decode, encode

FORBIDDEN = ("hyperspy", "exspy", "sklearn", "umap", "hdbscan")


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((128, 128), channels=1024, seed=3)


def cube_of(events_list, n_pixels: int, channels: int) -> np.ndarray:
    """Naive accumulation of event dicts into (n_pixels, channels) counts."""
    cube = np.zeros(n_pixels * channels, dtype=np.int64)
    for events in events_list:
        np.add.at(cube, events["pixel"].astype(np.int64) * channels + events["channel"], 1)
    return cube.reshape(n_pixels, channels)


def test_frames_sum_to_a_poisson_draw_of_the_expected_counts(phantom):
    dose, channels = 200.0, phantom.energy_axis.channels
    total = cube_of(phantom.frames(dose, 7, seed=1), phantom.labels.size, channels)
    expected_total = phantom.expected_total(dose).sum()
    assert expected_total == pytest.approx(dose * phantom.labels.size)
    assert abs(total.sum() - expected_total) < 4 * np.sqrt(expected_total)
    # per-pixel totals follow thickness and brightness
    per_pixel = phantom.expected_total(dose).ravel()
    assert np.corrcoef(total.sum(axis=1), per_pixel)[0, 1] > 0.5
    for k in range(len(phantom.phases)):
        mask = (phantom.labels == k).ravel()
        model = phantom.expected_sum(dose, mask.reshape(phantom.shape))
        assert np.corrcoef(total[mask].sum(axis=0), model)[0, 1] > 0.99
        assert abs(total[mask].sum() - model.sum()) < 4 * np.sqrt(model.sum())


def test_expected_cube_agrees_with_its_cheap_sums():
    small = make_phantom((32, 40), channels=256, scale_kev=0.05, seed=1)
    cube = small.expected(50.0)
    assert cube.shape == (32, 40, 256)
    np.testing.assert_allclose(cube.sum(axis=2), small.expected_total(50.0), rtol=1e-4)
    np.testing.assert_allclose(cube.sum(axis=(0, 1)), small.expected_sum(50.0), rtol=1e-4, atol=1e-6)


def test_truth_has_the_intended_phases_and_grain_sizes(phantom):
    labels, fractions = phantom.labels, phantom.fractions
    assert labels.shape == (128, 128) and set(np.unique(labels)) == {0, 1, 2, 3}
    np.testing.assert_allclose(fractions.sum(axis=0), 1, atol=1e-5)
    assert fractions.min() >= 0
    area = np.bincount(labels.ravel(), minlength=4)
    assert area[0] > 0.7 * labels.size  # the matrix
    # grain areas ~ count * pi r^2 at the phase's radii (a wobbly edge changes little)
    for k, phase in enumerate(DEFAULT_PHASES[1:], start=1):
        lo, hi = (np.pi * (r * 128) ** 2 * phase.grains for r in phase.radius)
        assert 0.7 * lo < area[k] < 1.3 * hi, (phase.name, area[k], lo, hi)
    # small particles are 4-8 pixels across
    assert 3.5 ** 2 * np.pi / 4 * 6 < area[3] < 9 ** 2 * np.pi / 4 * 6
    # boundaries are mixed over a few pixels: some pixels are neither pure nor empty
    mixed = ((fractions > 0.05) & (fractions < 0.95)).any(axis=0)
    assert 0.02 * labels.size < mixed.sum() < 0.3 * labels.size
    assert 0.6 < phantom.thickness.min() and phantom.thickness.max() < 1.4
    # compositions are the phases' own, in at%
    assert phantom.compositions[2] == pytest.approx({"Al": 40.0, "O": 60.0})
    assert all(sum(c.values()) == pytest.approx(100) for c in phantom.compositions)


def test_grain_sizes_scale_with_the_scan():
    big = make_phantom((512, 512), channels=64, scale_kev=0.3, seed=3)
    area = np.bincount(big.labels.ravel(), minlength=4) / big.labels.size
    small = make_phantom((128, 128), channels=64, scale_kev=0.3, seed=3)
    np.testing.assert_allclose(area, np.bincount(small.labels.ravel(), minlength=4) / small.labels.size,
                               rtol=0.15)


def test_peaks_sit_at_exspy_line_energies(phantom):
    axis = phantom.energy_axis
    for phase, spectrum in zip(phantom.phases, phantom.spectra):
        peak = axis.offset_kev + axis.scale_kev * int(np.argmax(spectrum))
        energies = [e for line in phase.xray_lines for e, _ in _family(line)]
        assert min(abs(peak - e) for e in energies) <= axis.scale_kev, phase.name
    # the principal lines are exspy's (Chantler) energies
    assert dict(_family("Fe_Ka"))[6.4039] == 1.0
    assert 2.9844 in dict(_family("Ag_La"))


def test_a_seed_reproduces_everything():
    a, b = make_phantom((48, 48), channels=128, scale_kev=0.1, seed=5), \
        make_phantom((48, 48), channels=128, scale_kev=0.1, seed=5)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.thickness, b.thickness)
    for fa, fb in zip(a.frames(20, 3, seed=9), b.frames(20, 3, seed=9)):
        np.testing.assert_array_equal(fa["pixel"], fb["pixel"])
        np.testing.assert_array_equal(fa["channel"], fb["channel"])
    other = next(a.frames(20, 3, seed=10))
    assert not np.array_equal(other["channel"][:100], next(a.frames(20, 3, seed=9))["channel"][:100])
    assert not np.array_equal(make_phantom((48, 48), channels=128, scale_kev=0.1, seed=6).labels, a.labels)


@pytest.mark.parametrize("chunk_pixels", [None, 1000, 77])
def test_replay_through_the_codec_equals_the_frames_exactly(chunk_pixels):
    small = make_phantom((40, 56), channels=512, scale_kev=0.04, seed=2)
    replay = synthetic_replay(small, dose=30, frames=4, seed=11, chunk_pixels=chunk_pixels)
    start = replay.start
    assert isinstance(start, Start) and start.expected_frames == 4 and start.scan_shape == (40, 56)
    assert start.title.startswith("synthetic") and "Cd_La" in start.xray_lines and "O" in start.elements
    assert start.energy_axis.channels == 512 and start.detectors[0].energy_resolution_mnka_ev == 130
    decoded = [decode(encode(start))] + [decode(encode(h, a)) for h, a in replay.messages()]
    frames = [d for d in decoded if isinstance(d.header, EventsFrame)]
    assert isinstance(decoded[-1].header, Stop) and decoded[-1].header.frames == 4
    assert [d.header.seq for d in decoded] == list(range(len(decoded)))
    assert {d.header.frame_index for d in frames} == {0, 1, 2, 3}
    got = cube_of([d.arrays for d in frames], start.n_pixels, 512)
    want = cube_of(small.frames(30, 4, seed=11), start.n_pixels, 512)
    np.testing.assert_array_equal(got, want)
    assert sum(xray_count(d.header, d.arrays) for d in frames) == want.sum()
    # every call replays the same events
    again = cube_of([a for h, a in replay.rechunk(500).messages() if isinstance(h, EventsFrame)],
                    start.n_pixels, 512)
    np.testing.assert_array_equal(again, want)


def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="dose must be positive"):
        synthetic_replay(make_phantom((16, 16), channels=64, scale_kev=0.3), dose=0)
    with pytest.raises(ValueError, match="cannot place a grain"):
        make_phantom((16, 16), phases=DEFAULT_PHASES[:1] + (Phase("big", {"Cu": 1}, ("Cu_Ka",), grains=3,
                                                                         radius=(0.4, 0.4)),))
    with pytest.raises(ValueError, match="one X-ray line per element"):
        make_phantom((16, 16), phases=(Phase("m", {"Fe": 1, "Ni": 1}, ("Fe_Ka",)),))


def test_importing_synthetic_does_not_import_the_analysis_stack():
    code = ("import sys, edx_adapters.synthetic; "
            f"print(','.join(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == ""

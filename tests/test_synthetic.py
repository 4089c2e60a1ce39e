"""The synthetic acquisition: its draws match its model, its truth is what it says, it replays exactly."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
from edx_adapters.replay import xray_count
from edx_adapters.synthetic import (DEFAULT_PHASES, RESIN, SULFIDE_PHASES, Phase, _family, make_phantom,
                                  synthetic_replay)
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


# --- what real samples also have: embedding, steep thickness, small grains, a calibration that is off ---

MISCALIBRATION = (0.04, -0.003)  # +40 eV offset, -0.3 % gain


@pytest.fixture(scope="module")
def sulfide():
    return make_phantom((128, 128), SULFIDE_PHASES, seed=1, embedding=RESIN, thickness_range=(0.4, 1.6),
                        miscalibration=MISCALIBRATION)


def test_the_default_phantom_is_unchanged():
    """Fingerprints of make_phantom((64, 64)) recorded before the opt-in options existed.

    On the machine they were recorded on, sha256 of ``expected(100).tobytes()`` was
    b6b18a494547c44c1365960e6d87ae6e436f074584685434506dd60433c9d273; the moments below
    allow for float32 rounding that differs between CPUs, and nothing more.
    """
    p = make_phantom((64, 64))
    assert hashlib.sha256(p.labels.astype("<i8").tobytes()).hexdigest() == \
        "db103c9c4b5d790ff2226b01c7c5fb9529fdbab55e31d58539157b3277971aa7"
    cube = p.expected(100).astype(np.float64)
    per_channel, per_pixel = cube.sum(axis=(0, 1)), cube.sum(axis=2).ravel()
    assert cube.sum() == pytest.approx(409599.97977273515, rel=1e-7)
    assert per_channel @ np.arange(per_channel.size) / cube.sum() == pytest.approx(621.0448168081638, rel=1e-7)
    assert per_pixel @ np.arange(per_pixel.size) / cube.sum() == pytest.approx(2091.2216513114467, rel=1e-7)
    assert (cube ** 2).sum() == pytest.approx(715617.2935625706, rel=1e-6)
    assert p.thickness.astype(np.float64).sum() == pytest.approx(4083.2000371217728, rel=1e-7)
    assert p.fractions[1:].astype(np.float64).sum() == pytest.approx(574.2680829763412, rel=1e-6)
    assert p.embedding_label is None and (p.true_offset_kev, p.true_scale_kev) == (0.0, 0.01)
    assert len(p.phases) == 4 and len(p.grains) == sum(ph.grains for ph in DEFAULT_PHASES)


def test_the_embedding_band_holds_a_few_counts_per_pixel(sulfide):
    k = sulfide.embedding_label
    assert k == len(SULFIDE_PHASES) == len(sulfide.phases) - 1 and sulfide.phases[k] is RESIN
    assert sulfide.compositions[k] == pytest.approx({"C": 84.0, "O": 16.0})
    assert {"C_Ka", "O_Ka"} <= set(sulfide.start_fields()["xray_lines"])
    band = sulfide.labels == k
    assert 0.15 < band.mean() < 0.25                       # embedding_fraction 0.2
    assert band[0].all() and not band[-1].any()            # along the top edge
    assert not band[int(0.35 * 128):].any()                # its boundary wanders a little, not far
    np.testing.assert_allclose(sulfide.fractions.sum(axis=0), 1, atol=1e-5)
    assert sulfide.fractions.min() >= 0
    # no grain inside the band: grain phases are absent wherever the embedding is present
    assert sulfide.fractions[1:k][:, sulfide.fractions[k] > 0].max(initial=0) == 0
    mixed = (sulfide.fractions[k] > 0.05) & (sulfide.fractions[k] < 0.95)
    assert mixed.any(axis=0).mean() > 0.9                  # a mixed boundary across the whole width
    # at 200 counts per sample pixel, the embedding's pixels hold a few counts each
    dose = 200.0 / sulfide.expected_total(1.0)[~band].mean()
    counts = sulfide.expected_total(dose)
    assert counts[~band].mean() == pytest.approx(200.0)
    assert 2 <= counts[band].mean() <= 10
    assert 2 <= counts[sulfide.fractions[k] > 0.999].mean() <= 10
    # its spectrum is C and O on a weak continuum
    pure = sulfide.expected_sum(dose, sulfide.fractions[k] > 0.999)
    ax = sulfide.energy_axis
    assert ax.offset_kev + ax.scale_kev * int(np.argmax(pure)) < 0.6


def test_a_miscalibrated_phantom_puts_lines_at_their_true_energies():
    offset_error, gain_error = MISCALIBRATION
    right = make_phantom((64, 64))
    wrong = make_phantom((64, 64), miscalibration=MISCALIBRATION)
    assert wrong.energy_axis == right.energy_axis                     # what the file declares
    assert wrong.start_fields()["energy_axis"] == right.energy_axis
    assert wrong.true_offset_kev == pytest.approx(offset_error)
    assert wrong.true_scale_kev == pytest.approx(0.01 * (1 + gain_error))
    np.testing.assert_array_equal(wrong.labels, right.labels)       # same specimen, other axis
    ax = right.energy_axis
    for line in ("Al_Ka", "Fe_Ka", "Cu_Ka", "Ag_La"):
        energy = max(_family(line), key=lambda e_w: e_w[1])[0]
        declared = ax.offset_kev + (energy - ax.offset_kev - offset_error) / (1 + gain_error)
        assert abs(declared - energy) > 1.5 * ax.scale_kev, line  # the test can tell the two apart
        for phantom, where in ((right, energy), (wrong, declared)):
            peak = _peak_kev(phantom.expected_sum(100.0), ax, where)
            assert abs(peak - where) <= 0.5 * ax.scale_kev, (line, peak, where)


def _peak_kev(spectrum: np.ndarray, axis, near_kev: float) -> float:
    """Energy (declared axis) of the local maximum within 5 channels of ``near_kev``, to a fraction of a channel."""
    c = int(round((near_kev - axis.offset_kev) / axis.scale_kev))
    i = c - 5 + int(np.argmax(spectrum[c - 5:c + 6]))
    a, b, d = np.log(spectrum[i - 1:i + 2])  # a Gaussian is a parabola in log
    return axis.offset_kev + axis.scale_kev * (i + 0.5 * (a - d) / (a - 2 * b + d))


def test_the_thickness_range_is_the_wedge_asked_for():
    for low, high in ((0.4, 1.6), (0.8, 1.2), (1.0, 1.0)):
        t = make_phantom((64, 64), seed=2, thickness_range=(low, high)).thickness
        x = np.arange(64) / 64
        slope, intercept = np.polyfit(x, t.mean(axis=0), 1)
        assert slope == pytest.approx(high - low, abs=0.08) and intercept == pytest.approx(low, abs=0.05)
        assert low - 0.15 <= t.min() and t.max() <= high + 0.15
    with pytest.raises(ValueError, match="thickness_range"):
        make_phantom((32, 32), DEFAULT_PHASES[:1], thickness_range=(0.1, 1.0))


def test_sulfide_grains_are_3_to_10_pixels_across(sulfide):
    from scipy import ndimage

    for k, phase in enumerate(SULFIDE_PHASES[1:], start=1):
        radii = [r for j, _, _, r in sulfide.grains if j == k]
        assert len(radii) == phase.grains
        assert all(3 <= 2 * r <= 10 for r in radii), (phase.name, radii)
        # as the truth labels show them: one region per grain, about as wide as its radius says
        regions, n = ndimage.label(sulfide.labels == k)
        assert n == phase.grains, phase.name
        areas = np.bincount(regions.ravel())[1:]
        across = 2 * np.sqrt(areas / np.pi)
        assert across.min() >= 2.5 and across.max() <= 11, (phase.name, across)
    assert {"Pb_Ma", "S_Ka", "Ag_La", "Zn_Ka", "Cu_Ka", "Fe_Ka"} <= set(sulfide.xray_lines)
    assert sulfide.compositions[3] == pytest.approx({"Ag": 200 / 3, "S": 100 / 3})


def test_opt_in_options_reject_nonsense():
    with pytest.raises(ValueError, match="embedding_fraction"):
        make_phantom((32, 32), DEFAULT_PHASES[:1], embedding=RESIN, embedding_fraction=0.9)
    with pytest.raises(ValueError, match="miscalibration"):
        make_phantom((32, 32), DEFAULT_PHASES[:1], miscalibration=(0.0, 0.7))

"""Quantification against a naive reference: synthetic lines of known intensity, and HyperSpy's own answer."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import ndtr

from edx_live.quantify import (KFactorError, LineError, Windows, parse_kfactors, quantify_clusters,
                               resolve_lines)
from edx_live.quantify.lines import line_energy

OFFSET, SCALE, CHANNELS, BEAM = 0.16, 0.02, 992, 200.0
KFACTORS = {"Cu_Ka": 1.6, "Fe_Ka": 1.450226, "Pt_La": 5.075602, "Si_Ka": 0.95}
LINES = sorted(KFACTORS)
CORE_SHELL_K = {"Fe_Ka": 1.450226, "Pt_La": 5.075602}
#: Line counts per cluster, in LINES order; the last cluster is empty.
AREAS = np.array([[2.0e5, 5.0e5, 1.0e5, 3.0e5],
                  [1.0e4, 8.0e5, 6.0e5, 1.0e5],
                  [3.0e5, 3.0e5, 3.0e5, 3.0e5],
                  [0.0, 0.0, 0.0, 0.0]])


def atomic_weight(element: str) -> float:
    from exspy.material import elements

    return float(elements[element]["General_properties"]["atomic_weight"])


def expected_atomic_percent(intensities: np.ndarray, lines: list[str], kfactors: dict) -> np.ndarray:
    """Cliff-Lorimer by hand: weight fraction ~ k * I, then at% ~ wt / atomic weight (exspy's convention)."""
    k = np.array([kfactors[line] for line in lines])
    a = np.array([atomic_weight(line.partition("_")[0]) for line in lines])
    x = k * intensities / a
    return 100 * x / x.sum(axis=-1, keepdims=True)


def synthetic_spectra(areas: np.ndarray, lines: list[str], sigma_kev: float = 0.01) -> np.ndarray:
    """Gaussian lines of exactly ``areas`` counts (integrated over each channel) on a linear background.

    The lines are narrower than the detector FWHM exspy assumes, so its
    integration windows (2 x FWHM) hold all of each line's counts.
    """
    edges = OFFSET + (np.arange(CHANNELS + 1) - 0.5) * SCALE
    energy = OFFSET + np.arange(CHANNELS) * SCALE
    spectra = np.tile(50.0 + 3.0 * energy, (len(areas), 1))
    for j, line in enumerate(lines):
        cdf = ndtr((edges - line_energy(line)) / sigma_kev)
        spectra += areas[:, j, None] * np.diff(cdf)[None, :]
    spectra[(areas == 0).all(axis=1)] = 0.0
    return spectra


def quantify(spectra, **kwargs):
    # Lines narrower than the detector: the window method's test bed (the model assumes the detector width).
    kwargs = {"xray_lines": LINES, "kfactors": KFACTORS, "random_state": 0, "intensities": "windows", **kwargs}
    return quantify_clusters(spectra, offset_kev=OFFSET, scale_kev=SCALE, beam_energy_kev=BEAM, **kwargs)


def test_noise_free_lines_are_recovered():
    q = quantify(synthetic_spectra(AREAS, LINES), replicas=8, pixels=[10, 20, 30, 0])
    assert q.xray_lines == tuple(LINES)
    assert q.elements == ("Cu", "Fe", "Pt", "Si")
    # exspy rounds window edges to channels, so the linear background
    # (3 counts/keV per channel) is removed exactly only to ~ 3 * 0.02 keV * 15 channels ~ 1 count.
    np.testing.assert_allclose(q.intensities[:3], AREAS[:3], rtol=1e-6, atol=2.0)
    np.testing.assert_allclose(q.atomic_percent[:3], expected_atomic_percent(AREAS[:3], LINES, KFACTORS),
                               atol=1e-3)
    np.testing.assert_allclose(q.atomic_percent[:3].sum(axis=1), 100.0)
    assert list(q.pixels) == [10, 20, 30, 0]


def test_empty_cluster_is_unknown_not_a_crash():
    q = quantify(synthetic_spectra(AREAS, LINES), replicas=8)
    assert np.isnan(q.atomic_percent[3]).all() and np.isnan(q.atomic_percent_sigma[3]).all()
    docs = q.clusters
    assert len(docs) == 4 and docs[3].label == 3
    assert all(e.atomic_percent is None and e.atomic_percent_sigma is None and e.intensity == 0
               for e in docs[3].elements.values())  # published as null: JSON has no NaN
    assert all(e.atomic_percent_sigma > 0 for e in docs[0].elements.values())


def test_all_clusters_empty():
    q = quantify(np.zeros((3, CHANNELS)), replicas=4)
    assert np.isnan(q.atomic_percent).all()
    assert all(e.atomic_percent_sigma is None for c in q.clusters for e in c.elements.values())


def test_poisson_noise_truth_within_three_sigma():
    areas = AREAS[:3] / 100  # 1e2 .. 8e3 counts per line
    truth = expected_atomic_percent(areas, LINES, KFACTORS)
    noisy = np.random.default_rng(1).poisson(synthetic_spectra(areas, LINES)).astype(float)
    q = quantify(noisy, replicas=64)
    detected = q.detected
    assert detected.sum() >= detected.size - 1  # a 100-count line may sit below 3 sigma of its background
    assert np.all(q.atomic_percent_sigma[detected] > 0)
    assert np.all(np.abs(q.atomic_percent - truth)[detected] < 3 * q.atomic_percent_sigma[detected])
    assert np.all(truth[~detected] < q.detection_limit[~detected] + 3 * q.atomic_percent_sigma.max())


def test_replica_sigma_matches_the_spread_of_independent_measurements():
    mean = synthetic_spectra(AREAS[2:3] / 100, LINES)[0]
    rng = np.random.default_rng(2)
    spread = quantify(rng.poisson(mean, size=(300, CHANNELS)).astype(float), replicas=0)
    assert np.isnan(spread.atomic_percent_sigma).all()
    one = quantify(rng.poisson(mean)[None].astype(float), replicas=64)
    np.testing.assert_allclose(one.atomic_percent_sigma[0], spread.atomic_percent.std(axis=0), rtol=0.3)


def test_same_random_state_same_sigma():
    spectra = np.random.default_rng(3).poisson(synthetic_spectra(AREAS[:2] / 100, LINES)).astype(float)
    a, b = quantify(spectra, random_state=7), quantify(spectra, random_state=7)
    np.testing.assert_array_equal(a.atomic_percent_sigma, b.atomic_percent_sigma)


def test_elements_only_get_exspy_lines_for_the_beam_and_range():
    spectra = synthetic_spectra(AREAS[:1, 1:3], ["Fe_Ka", "Pt_La"])
    q = quantify(spectra, xray_lines=(), elements=["Pt", "Fe"], kfactors=CORE_SHELL_K)
    assert q.xray_lines == ("Fe_Ka", "Pt_La")
    assert resolve_lines([], ["Fe", "Pt"], BEAM, offset_kev=OFFSET, scale_kev=SCALE,
                         channels=CHANNELS) == ["Fe_Ka", "Pt_La"]
    assert resolve_lines(["Fe_Kb"], ["Pt"], BEAM, offset_kev=OFFSET, scale_kev=SCALE,
                         channels=CHANNELS) == ["Fe_Kb", "Pt_La"]
    assert resolve_lines([], [], BEAM) == []


def test_method_and_kfactor_source_are_reported():
    q = quantify(synthetic_spectra(AREAS[:1], LINES), replicas=16, kfactor_source="user: test")
    assert "Cliff-Lorimer" in q.method and "16 Poisson" in q.method
    assert q.kfactor_source == "user: test"
    assert q.kfactors == KFACTORS
    assert np.shape(q.fit["background_windows_kev"]) == (4, 4)


def test_missing_kfactor_names_the_line_and_the_fix():
    with pytest.raises(KFactorError, match=r"Si_Ka.*--kfactor Si_Ka="):
        quantify(synthetic_spectra(AREAS[:1], LINES), kfactors={k: v for k, v in KFACTORS.items()
                                                                if k != "Si_Ka"})


@pytest.mark.parametrize("lines, match", [
    (["Fe_Ka"], "at least two"),
    (["Fe_Ka", "Pt_Ka"], "outside the spectrum"),
    (["Fe_Ka", "Fe_La"], "one X-ray line per element"),
    (["Fe_Kz", "Pt_La"], "not an X-ray line of Fe"),
])
def test_unusable_lines_are_clear_errors(lines, match):
    with pytest.raises(ValueError, match=match):
        quantify(synthetic_spectra(AREAS[:1], LINES), xray_lines=lines)


def test_unknown_element_is_a_line_error():
    with pytest.raises(LineError, match="Xx"):
        quantify(synthetic_spectra(AREAS[:1], LINES), xray_lines=(), elements=["Fe", "Xx"])


def test_core_shell_total_matches_hyperspy(data_dir):
    import hyperspy.api as hs

    total = hs.load(data_dir / "core_shell.hspy").sum()
    total.add_lines()
    bw = total.estimate_background_windows(line_width=[5.0, 2.0])
    intensities = total.get_lines_intensity(background_windows=bw)
    reference = total.quantification(intensities, "CL", factors=[CORE_SHELL_K["Fe_Ka"], CORE_SHELL_K["Pt_La"]])
    reference = np.array([float(r.data[0]) for r in reference])
    np.testing.assert_allclose(reference, [79.82, 20.18], atol=0.01)

    ax = total.axes_manager.signal_axes[0]
    eds = total.metadata.Acquisition_instrument.TEM.Detector.EDS
    spectra = np.stack([total.data, np.zeros_like(total.data)]).astype(float)
    q = quantify_clusters(spectra, offset_kev=ax.offset, scale_kev=ax.scale, beam_energy_kev=200.0,
                          elements=["Fe", "Pt"], kfactors=CORE_SHELL_K, windows=Windows(line_width=(5.0, 2.0)),
                          elevation_deg=eds.elevation_angle, azimuth_deg=eds.azimuth_angle,
                          energy_resolution_ev=eds.energy_resolution_MnKa, random_state=0, intensities="windows")
    assert q.xray_lines == ("Fe_Ka", "Pt_La")
    np.testing.assert_allclose(q.atomic_percent[0], reference, atol=0.1)
    np.testing.assert_allclose(q.intensities[0], [float(i.data[0]) for i in intensities], rtol=1e-9)
    assert 0 < q.atomic_percent_sigma[0, 0] < 1
    assert np.isnan(q.atomic_percent[1]).all()


class TestParseKfactors:
    def test_strings_dicts_and_comma_lists(self):
        expected = {"Fe_Ka": 1.450226, "Pt_La": 5.075602}
        assert parse_kfactors(["Fe_Ka=1.450226", " Pt_La = 5.075602 "]) == expected
        assert parse_kfactors("Fe_Ka=1.450226,Pt_La=5.075602") == expected
        assert parse_kfactors({"Fe_Ka": "1.450226", "Pt_La": 5.075602}) == expected
        assert parse_kfactors(None) == {} and parse_kfactors([]) == {} and parse_kfactors({}) == {}
        assert parse_kfactors(["Fe_Ka=1.5", "Fe_Ka=1.5"]) == {"Fe_Ka": 1.5}

    @pytest.mark.parametrize("value, match", [
        (["Fe_Kz=1.2"], r"Fe_Kz.*not an X-ray line of Fe.*Fe_Ka"),
        ({"Fe_Kz": 1.2}, r"Fe_Kz.*Fe has"),
        (["Xy_Ka=1"], "not a chemical element symbol"),
        (["fe_Ka=1"], "case-sensitive"),
        (["FeKa=1"], "ELEMENT_LINE"),
        (["Fe_Ka"], "LINE=VALUE"),
        (["Fe_Ka=0"], "positive"),
        (["Fe_Ka=-1.4"], "positive"),
        ({"Fe_Ka": float("nan")}, "positive finite"),
        (["Fe_Ka=abc"], "must be a number"),
        (["Fe_Ka=1.4", "Fe_Ka=1.5"], "given twice"),
    ])
    def test_errors_say_how_to_fix(self, value, match):
        with pytest.raises(KFactorError, match=match):
            parse_kfactors(value)

    def test_error_is_a_value_error_for_pydantic(self):
        assert issubclass(KFactorError, ValueError)

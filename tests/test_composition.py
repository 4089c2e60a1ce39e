"""Compositions of synthetic clusters of known composition and k-factors: the model fit, the
uncertainties, weighting, entropy, absorption, k-factor sources. Naive references throughout."""

from __future__ import annotations

import numpy as np
import pytest

from edx_adapters.synthetic import phase_spectrum
from edx_live.quantify import (ClusterQuantifier, Geometry, KFactorError, QuantifyOptions, Setup, quantify_clusters,
                               read_kfactor_table)
from edx_live.quantify.cliff_lorimer import weight_fractions
from edx_live.quantify.entropy import configurational_entropy, sublattice
from edx_live.quantify.model import LineModel, ModelKey

#: Known, deliberately unequal k-factors the synthetic spectra are built with.
K = {"Ag_La": 2.95, "Cd_La": 3.10, "Fe_Ka": 1.45, "Mn_Ka": 1.40, "Cr_Ka": 1.32, "Ni_Ka": 1.55, "Al_Ka": 1.0,
     "O_Ka": 2.1}
#: Clusters with overlapping lines: Ag La/Lb1 on Cd La; Mn Kb on Fe Ka and Cr Kb on Mn Ka.
CLUSTERS = {"Ag-Cd": {"Ag": 65.0, "Cd": 35.0}, "Fe-Mn-Cr": {"Fe": 72.0, "Mn": 18.0, "Cr": 10.0}}
LINES = {"Ag-Cd": ("Ag_La", "Cd_La"), "Fe-Mn-Cr": ("Cr_Ka", "Fe_Ka", "Mn_Ka")}
#: Counts in a cluster's spectrum: ~2000 pixels at ~150 counts, a mid-sized cluster of a 256 x 256 scan.
COUNTS = 3e5
GEOMETRY = Geometry(200.0, 35.0, 0.0, 130.0)


def setup_for(lines, kfactors=K, **kw) -> Setup:
    return Setup(0.0, 0.01, 2048, GEOMETRY, tuple(sorted(lines)), {line: kfactors[line] for line in lines}, **kw)


def truth(composition: dict, lines) -> np.ndarray:
    total = sum(composition.values())
    return np.array([100 * composition[line.partition("_")[0]] / total for line in sorted(lines)])


def pixels_of(composition, lines, n_pixels, counts, rng):
    """``n_pixels`` Poisson pixels whose expected spectra sum to ``counts`` counts."""
    mean = phase_spectrum(composition, lines, counts / n_pixels, kfactors=K)
    return rng.poisson(mean, size=(n_pixels, mean.size)).astype(np.uint32)


@pytest.fixture(scope="module")
def ag_cd_model():
    key = ModelKey(0.0, 0.01, 2048, 200.0, ("Ag", "Cd"), ("Ag_La", "Cd_La"), (0.2, 5.0), 6, 35.0, 0.0)
    return LineModel(key, 130.0)


def test_projection_is_hyperspy_multifit(ag_cd_model):
    from edx_live.quantify.signal import axis, eds_signal

    rng = np.random.default_rng(0)
    spectra = rng.poisson(phase_spectrum(CLUSTERS["Ag-Cd"], LINES["Ag-Cd"], COUNTS, kfactors=K),
                          size=(3, 2048)).astype(float)
    ours = ag_cd_model.intensities(spectra)
    ch = ag_cd_model.channels
    s = eds_signal(spectra[:, ch], ch.start * 0.01, 0.01, 200.0, navigation_axes=[axis("cluster", 3)],
                   elevation_deg=35.0, azimuth_deg=0.0, energy_resolution_ev=130.0)
    s.set_elements(["Ag", "Cd"])
    m = s.create_model(auto_background=False, auto_add_lines=False)
    m.add_family_lines("from_elements")
    m.add_polynomial_background(order=6)
    m.multifit(optimizer="lstsq")
    theirs = np.stack([i.data for i in m.get_lines_intensity(xray_lines=["Ag_La", "Cd_La"])], axis=-1)
    np.testing.assert_allclose(ours, theirs, rtol=1e-7)


@pytest.mark.parametrize("name", list(CLUSTERS))
def test_overlapping_lines_recovered_within_one_atomic_percent(name):
    comp, lines = CLUSTERS[name], LINES[name]
    rng = np.random.default_rng(1)
    model = ClusterQuantifier(QuantifyOptions(calibrate=(), bootstrap=0, replicas=16))
    windows = ClusterQuantifier(QuantifyOptions(intensities="windows", bootstrap=0, replicas=16))
    expected = truth(comp, lines)
    worst_window = 0.0
    for seed in range(5):
        spectrum = rng.poisson(phase_spectrum(comp, lines, COUNTS, kfactors=K))[None].astype(float)
        m = model(spectrum, np.zeros(1, int), 1, setup_for(lines), random_state=seed)
        w = windows(spectrum, np.zeros(1, int), 1, setup_for(lines), random_state=seed)
        assert np.all(np.abs(m.atomic_percent[0] - expected) < 1.0), (m.atomic_percent[0], expected)
        worst_window = max(worst_window, np.abs(w.atomic_percent[0] - expected).max())
    # The windows add the overlapping lines into each other: the reason for the model.
    assert worst_window > 1.0


def test_uncertainty_is_calibrated_over_repetitions():
    """The truth lies within +-2 sigma in at least 90 % of (cluster, element, repetition) cases."""
    rng = np.random.default_rng(2)
    quantifier = ClusterQuantifier(QuantifyOptions(calibrate=(), replicas=48, bootstrap=48))
    lines = ("Ag_La", "Cd_La", "Cr_Ka", "Fe_Ka", "Mn_Ka")
    inside, cases = 0, 0
    for rep in range(25):
        cube = np.concatenate([pixels_of(CLUSTERS[n], LINES[n], 300, 1e5, rng) for n in CLUSTERS])
        labels = np.repeat([0, 1], 300)
        q = quantifier(cube, labels, 2, setup_for(lines), random_state=rep)
        for k, name in enumerate(CLUSTERS):
            expected = {e: v / sum(CLUSTERS[name].values()) * 100 for e, v in CLUSTERS[name].items()}
            for j, element in enumerate(q.elements):
                value = expected.get(element, 0.0)
                inside += abs(q.atomic_percent[k, j] - value) <= 2 * q.atomic_percent_sigma[k, j]
                cases += 1
    assert inside / cases >= 0.9, inside / cases


def test_spread_inside_a_cluster_adds_to_counting():
    rng = np.random.default_rng(3)
    quantifier = ClusterQuantifier(QuantifyOptions(calibrate=(), replicas=64, bootstrap=64))
    lines = ("Ag_La", "Cd_La")
    same = pixels_of({"Ag": 65, "Cd": 35}, lines, 400, 2e5, rng)
    mixed = np.concatenate([pixels_of({"Ag": 55, "Cd": 45}, lines, 200, 1e5, rng),
                            pixels_of({"Ag": 75, "Cd": 25}, lines, 200, 1e5, rng)])
    q = quantifier(np.concatenate([same, mixed]), np.repeat([0, 1], 400), 2, setup_for(lines), random_state=0)
    a = q.atomic
    # Homogeneous: the bootstrap sees only counting noise; two populations: a real spread, much larger.
    assert np.all(a.sigma_spread[0] < a.sigma_counting[0])
    assert np.all(a.sigma_spread[1] > 2 * a.sigma_counting[1])
    np.testing.assert_allclose(a.sigma ** 2, a.sigma_counting ** 2 + a.sigma_spread ** 2 + a.sigma_bias ** 2)
    # Sampling 400 pixels from two populations 20 at% apart: the sd of the mean is ~10/sqrt(400) = 0.5 at%.
    assert 0.3 < a.sigma[1, 0] < 0.8


def test_membership_weighting_discounts_mixed_pixels():
    rng = np.random.default_rng(4)
    quantifier = {w: ClusterQuantifier(QuantifyOptions(calibrate=(), replicas=8, bootstrap=8, weighting=w))
                  for w in ("hard", "membership")}
    lines = ("Ag_La", "Cd_La")
    core = pixels_of({"Ag": 65, "Cd": 35}, lines, 300, 1.5e5, rng)
    rim = pixels_of({"Ag": 20, "Cd": 80}, lines, 100, 5e4, rng)  # mixed boundary pixels, low posterior
    cube, labels = np.concatenate([core, rim]), np.zeros(400, int)
    confidence = np.r_[np.full(300, 0.98), np.full(100, 0.05)]
    hard = quantifier["hard"](cube, labels, 1, setup_for(lines), weights=confidence, random_state=0)
    soft = quantifier["membership"](cube, labels, 1, setup_for(lines), weights=confidence, random_state=0)
    assert hard.weighting == "hard" and soft.weighting == "membership"
    assert abs(soft.atomic_percent[0, 0] - 65) < 1.5 < abs(hard.atomic_percent[0, 0] - 65)


def test_entropy_over_the_sublattice():
    elements = ["Fe", "Cr", "Ni", "O"]
    assert sublattice(elements) == ["Fe", "Cr", "Ni"]
    assert sublattice(elements, species=["Fe", "Ni", "Co"]) == ["Fe", "Ni"]
    x = np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.3, 0.3, -0.01, 0.41]])
    s = configurational_entropy(x, elements, ["Fe", "Cr", "Ni"])
    np.testing.assert_allclose(s[:2], [np.log(3), 0.0])
    np.testing.assert_allclose(s[2], np.log(2))  # the slightly negative Ni counts as absent


def test_entropy_and_weight_percent_of_a_quantified_cluster():
    from exspy.material import atomic_to_weight

    comp, lines = CLUSTERS["Fe-Mn-Cr"], LINES["Fe-Mn-Cr"]
    spectrum = np.random.default_rng(5).poisson(phase_spectrum(comp, lines, 1e6, kfactors=K))[None].astype(float)
    q = ClusterQuantifier(QuantifyOptions(calibrate=(), bootstrap=0))(spectrum, np.zeros(1, int), 1,
                                                                       setup_for(lines), random_state=0)
    x = truth(comp, lines) / 100
    assert abs(q.entropy.value[0] - float(-(x * np.log(x)).sum())) < 0.01
    assert 0 < q.entropy.sigma[0] < 0.01
    np.testing.assert_allclose(q.weight.value[0], atomic_to_weight(q.atomic_percent[0], list(q.elements)),
                               rtol=1e-9)
    doc = q.clusters[0]
    assert doc.entropy_r == pytest.approx(q.entropy.value[0])
    assert doc.elements["Fe"].weight_percent == pytest.approx(q.weight.value[0, 1])


def test_closed_form_cliff_lorimer_is_exspys():
    intensities = np.array([[2.0e4, 5.0e3, 1.2e4], [300.0, 8.0e3, 50.0]])
    lines, k = ["Cr_Ka", "Fe_Ka", "Mn_Ka"], [1.32, 1.45, 1.40]
    ours = weight_fractions(intensities, lines, k, GEOMETRY)
    s = GEOMETRY.signal(np.zeros(2), 0.0, 1.0)
    from hyperspy.signals import BaseSignal

    images = []
    for j, line in enumerate(lines):
        image = BaseSignal(intensities[:, j].copy()).T
        image.metadata.set_item("Sample.xray_lines", [line])
        images.append(image)
    theirs = s.quantification(images, "CL", factors=k, composition_units="weight", navigation_mask=None,
                              show_progressbar=False)
    np.testing.assert_allclose(ours * 100, np.stack([t.data for t in theirs], axis=-1), rtol=1e-12)


def test_absorption_correction_is_exspys_and_raises_soft_lines():
    comp, lines = {"Al": 40.0, "O": 60.0}, ("Al_Ka", "O_Ka")
    spectrum = phase_spectrum(comp, lines, 1e6, kfactors=K)[None]
    plain = ClusterQuantifier(QuantifyOptions(calibrate=(), bootstrap=0, replicas=0))
    thick = ClusterQuantifier(QuantifyOptions(calibrate=(), bootstrap=0, replicas=0, thickness_nm=100.0))
    a = plain(spectrum, np.zeros(1, int), 1, setup_for(lines))
    b = thick(spectrum, np.zeros(1, int), 1, setup_for(lines))
    assert "absorption correction for a 100 nm film" in b.method and b.thickness_nm == 100.0
    # O Ka (0.52 keV) is absorbed more than Al Ka (1.49 keV): correcting raises oxygen.
    o = b.elements.index("O")
    assert b.atomic_percent[0, o] > a.atomic_percent[0, o] + 0.5
    s = GEOMETRY.signal(np.zeros(2), 0.0, 1.0)
    from hyperspy.signals import BaseSignal

    images = []
    for j, line in enumerate(b.xray_lines):
        image = BaseSignal(b.intensities[:, j].copy()).T
        image.metadata.set_item("Sample.xray_lines", [line])
        image.metadata.set_item("Sample.elements", [line.partition("_")[0]])
        images.append(image)
    theirs, _ = s.quantification(images, "CL", factors=[K[x] for x in b.xray_lines], absorption_correction=True,
                                 thickness=100.0, show_progressbar=False)
    np.testing.assert_allclose(b.atomic_percent[0], [float(t.data[0]) for t in theirs], rtol=1e-6)


def test_model_is_reused_and_recalibrated_only_as_counts_grow():
    comp, lines = CLUSTERS["Ag-Cd"], LINES["Ag-Cd"]
    quantifier = ClusterQuantifier(QuantifyOptions(replicas=4, bootstrap=0, recalibrate_growth=2.0))
    spectrum = phase_spectrum(comp, lines, 1e5, kfactors=K)[None]
    quantifier(spectrum, np.zeros(1, int), 1, setup_for(lines))
    model, counts = quantifier.model_, quantifier.calibrated_counts_
    assert abs(quantifier.calibration_["resolution_ev"] - 130.0) < 3  # the spectra are built at 130 eV
    quantifier(spectrum * 1.5, np.zeros(1, int), 1, setup_for(lines))
    assert quantifier.model_ is model and quantifier.calibrated_counts_ == counts
    quantifier(spectrum * 3, np.zeros(1, int), 1, setup_for(lines))
    assert quantifier.model_ is model and quantifier.calibrated_counts_ == pytest.approx(3 * counts)
    quantifier(spectrum, np.zeros(1, int), 1, setup_for(lines, fit_only=("Cu",)))
    assert quantifier.model_ is not model and "Cu" in quantifier.model_.key.elements


def test_absent_element_is_not_detected_with_a_real_limit():
    lines = ("Cr_Ka", "Fe_Ka", "Mn_Ka")
    spectrum = np.random.default_rng(6).poisson(phase_spectrum({"Fe": 80, "Cr": 20, "Mn": 0.0}, lines, 3e5,
                                                               kfactors=K))[None].astype(float)
    q = ClusterQuantifier(QuantifyOptions(calibrate=(), bootstrap=0))(spectrum, np.zeros(1, int), 1,
                                                                       setup_for(lines), random_state=0)
    mn = q.elements.index("Mn")
    assert not q.detected[0, mn]
    assert q.intensity.sigma_counting[0, mn] > 0  # the noise under its line is real...
    assert 0.02 < q.detection_limit[0, mn] < 2.0  # ... and gives a limit, published instead of a number
    published = q.clusters[0].elements["Mn"]
    assert published.detected is False and published.atomic_percent is None
    assert published.detection_limit_atomic_percent == pytest.approx(q.detection_limit[0, mn])


def test_theoretical_kfactors_when_none_are_given():
    comp, lines = CLUSTERS["Fe-Mn-Cr"], LINES["Fe-Mn-Cr"]
    q = quantify_clusters(phase_spectrum(comp, lines, 1e5)[None], offset_kev=0.0, scale_kev=0.01,
                          beam_energy_kev=200.0, xray_lines=lines, replicas=4, calibrate=())
    assert q.kfactors_theoretical and "theoretical" in q.kfactor_source
    assert set(q.kfactors) == set(lines) and all(v > 0 for v in q.kfactors.values())


class TestKFactorTable:
    def test_formats(self, tmp_path):
        path = tmp_path / "k.csv"
        path.write_text("# measured on standards\nline;kfactor;reference\nFe_Ka;1.450226;std A\n\n"
                        "Pt_La\t5.075602\n\"Cu_Ka\",1.6\n")
        assert read_kfactor_table(path) == {"Fe_Ka": 1.450226, "Pt_La": 5.075602, "Cu_Ka": 1.6}

    @pytest.mark.parametrize("text, match", [
        ("Fe_Ka,1.45\nFe_Kz,2\n", r"k\.csv:2: .*Fe_Kz"),
        ("Fe_Ka,1.45\nPt_La\n", r"k\.csv:2: expected LINE,VALUE"),
        ("Fe_Ka,1.45\nFe_Ka,1.5\n", "given twice"),
        ("Fe_Ka,-1\n", "positive"),
        ("# nothing\n", "no rows"),
    ])
    def test_errors_name_file_row_and_fix(self, tmp_path, text, match):
        path = tmp_path / "k.csv"
        path.write_text(text)
        with pytest.raises(KFactorError, match=match):
            read_kfactor_table(path)

    def test_missing_file(self, tmp_path):
        with pytest.raises(KFactorError, match="cannot read the k-factor table .*LINE,VALUE"):
            read_kfactor_table(tmp_path / "nope.csv")

    def test_config_reads_it_at_start_up_and_single_values_win(self, tmp_path):
        from edx_live.config import ConfigError, load_settings

        path = tmp_path / "k.csv"
        path.write_text("Fe_Ka,1.0\nPt_La,5.0\n")
        s = load_settings(overrides={"quantify": {"kfactor_table": str(path), "kfactors": ["Fe_Ka=1.45"]}})
        assert s.quantify.user_kfactors() == {"Fe_Ka": 1.45, "Pt_La": 5.0}
        with pytest.raises(ConfigError, match="cannot read the k-factor table"):
            load_settings(overrides={"quantify": {"kfactor_table": str(tmp_path / "missing.csv")}})


def test_resolution_search_keeps_carbon_ka_real():
    """exspy's width law has no real width at C Ka below 118.6 eV at Mn Ka; the search must not go there.

    Found on the JEOL .pts file, whose proposed elements include C: the refit's quantification failed
    with a math domain error whenever the search probed a narrower detector.
    """
    key = ModelKey(0.0, 0.01, 2048, 200.0, ("C", "Fe", "O"), ("C_Ka", "Fe_Ka", "O_Ka"), (0.2, 8.0), 6, 35.0, 0.0)
    model = LineModel(key, 130.0)
    spectrum = np.random.default_rng(0).poisson(
        phase_spectrum({"C": 40.0, "Fe": 30.0, "O": 30.0}, ("C_Ka", "Fe_Ka", "O_Ka"), 2e5,
                       resolution_ev=119.0)).astype(float)
    low, _ = model._resolution_bounds()
    assert 118.6 < low < 125.0
    calibration = model.calibrate(spectrum, ("resolution",))  # used to raise ValueError: math domain error
    assert low <= calibration["resolution_ev"] <= 140.0

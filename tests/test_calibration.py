"""The energy axis calibrated on the peaks of the total spectrum (edx_live.quantify.calibration).

Spectra are drawn on a true axis and declared on another, as a miscalibrated file is; the
calibration must recover the true offset and gain, refuse what the peaks do not support,
and let elements whose peaks a shifted axis hides (O Ka, C Ka) be proposed.
"""

from __future__ import annotations

import numpy as np
import pytest
from edx_adapters.synthetic import phase_spectrum

from edx_live.quantify.calibration import calibrate_axis
from edx_live.quantify.propose import propose_elements

COMPOSITION = {"Fe": 45.0, "Cu": 15.0, "O": 30.0, "Si": 10.0}
LINES = ("Fe_Ka", "Cu_Ka", "O_Ka", "Si_Ka")


def _measured(offset_error_kev: float, gain_error: float, counts: float = 2e6, seed: int = 0) -> np.ndarray:
    """Counts on a true axis offset_error + i * 0.01 * (1 + gain_error), to be declared as i * 0.01."""
    spectrum = phase_spectrum(COMPOSITION, LINES, counts=counts, offset_kev=offset_error_kev,
                              scale_kev=0.01 * (1 + gain_error))
    return np.random.default_rng(seed).poisson(spectrum).astype(float)


@pytest.mark.parametrize("offset_error_kev, gain_error", [(0.04, -0.003), (-0.03, 0.002), (0.05, 0.0),
                                                          (0.0, 0.004)])
def test_known_offset_and_gain_are_recovered(offset_error_kev, gain_error):
    calibration = calibrate_axis(_measured(offset_error_kev, gain_error), 0.0, 0.01, 200.0)
    assert calibration.applied, calibration.reason
    assert calibration.offset_kev == pytest.approx(offset_error_kev, abs=0.002)
    assert calibration.gain == pytest.approx(1 + gain_error, abs=3e-4)
    # The correction at Cu Ka is within 2 eV of the truth.
    true_cu = offset_error_kev + (8.0478 / 0.01) * 0.01 * (1 + gain_error)
    assert calibration.energy(8.0478) == pytest.approx(true_cu, abs=0.002)
    assert {"Fe_Ka", "Si_Ka", "Cu_Ka"} == set(calibration.lines)  # K-alpha lines above 1 keV calibrate
    assert calibration.residual_ev < 2.0


def test_a_calibrated_axis_is_left_as_it_is():
    calibration = calibrate_axis(_measured(0.0, 0.0), 0.0, 0.01, 200.0)
    assert abs(calibration.offset_kev) < 0.001 and abs(calibration.gain - 1) < 2e-4


def test_oxygen_hidden_by_the_shift_is_proposed_on_the_calibrated_axis():
    measured = _measured(0.05, 0.0, counts=5e5)
    assert "O" not in propose_elements(measured, 0.0, 0.01, 200.0).elements  # the reported fault
    calibration = calibrate_axis(measured, 0.0, 0.01, 200.0)
    assert "O" in propose_elements(measured, calibration.offset_kev, calibration.scale_kev, 200.0).elements
    assert calibration.offset_kev == pytest.approx(0.05, abs=0.002)


def test_a_sulfide_with_overlapping_and_soft_lines_is_calibrated_on_its_k_lines():
    """S Ka under Pb Ma, Fe L and C K from a resin: only the clear K-alpha lines may move the axis."""
    from edx_adapters.synthetic import RESIN, SULFIDE_PHASES, make_phantom

    for error in ((0.0, 0.0), (0.04, -0.003)):
        phantom = make_phantom((64, 64), seed=0, phases=SULFIDE_PHASES, embedding=RESIN,
                               thickness_range=(0.4, 1.6), miscalibration=error)
        total = phantom.binned_counts(200, 2, seed=3).reshape(-1, 2048).sum(axis=0).astype(float)
        calibration = calibrate_axis(total, 0.0, 0.01, 200.0, elements=phantom.elements)
        assert calibration.offset_kev == pytest.approx(phantom.true_offset_kev, abs=0.002)
        assert calibration.scale_kev == pytest.approx(phantom.true_scale_kev, rel=3e-4)


def test_a_lone_peak_does_not_calibrate():
    """One line could be another element's: the nominal axis is kept and the reason given."""
    spectrum = phase_spectrum({"Fe": 100.0}, ("Fe_Ka",), counts=1e6, offset_kev=0.03)
    calibration = calibrate_axis(np.random.default_rng(1).poisson(spectrum), 0.0, 0.01, 200.0)
    assert not calibration.applied
    assert (calibration.offset_kev, calibration.scale_kev) == (0.0, 0.01)
    assert "needed" in calibration.reason


def test_a_misidentified_line_is_dropped():
    """A line 40 eV off the others' fit (a wrong element's line) does not pull the axis."""
    from edx_live.quantify.calibration import _fit_axis

    located = [("Si_Ka", 1.7397, 0.0, 1.0), ("Fe_Ka", 6.4039, 0.0, 1.0), ("Cu_Ka", 8.0478, 0.0, 1.0),
               ("Zn_Ka", 8.6389, 0.04, 1.0)]
    a, b, residual = _fit_axis(located)
    assert [row[0] for row in located] == ["Si_Ka", "Fe_Ka", "Cu_Ka"]
    assert abs(a) < 1e-9 and b == pytest.approx(1.0) and residual < 1e-9


def test_too_few_counts_keep_the_nominal_axis():
    calibration = calibrate_axis(_measured(0.04, 0.0, counts=300), 0.0, 0.01, 200.0)
    assert not calibration.applied and calibration.offset_kev == 0.0


def test_silica_file_gets_oxygen_and_carbon(data_dir):
    """The real film's axis is 30-50 eV off: Si Ka peaks at 1.77 keV instead of 1.74."""
    import hyperspy.api as hs

    s = hs.load(data_dir / "SiO2 EDS Spectrum Image.hspy")
    axis = s.axes_manager[-1]
    total = s.data.reshape(-1, s.data.shape[-1]).sum(axis=0).astype(float)
    assert "O" not in propose_elements(total, axis.offset, axis.scale, 200.0).elements
    calibration = calibrate_axis(total, axis.offset, axis.scale, 200.0)
    assert calibration.applied
    assert abs(calibration.energy(1.77) - 1.7397) < 0.01
    assert {"O", "Si", "C", "Cu"} <= set(propose_elements(total, calibration.offset_kev, calibration.scale_kev,
                                                          200.0).elements)
    assert set(calibration.published()) >= {"axis_offset_kev", "axis_scale_kev", "axis_calibration_lines"}

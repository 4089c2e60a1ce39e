"""Elements proposed from the peaks of a total spectrum (edx_live.quantify.propose).

The synthetic spectra take every line energy, relative weight and width from exspy (its
database and its Fiori-Newbury FWHM model), so no physics is typed here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from edx_adapters.synthetic import make_phantom

from edx_live.quantify.propose import ProposedElements, fwhm_kev, propose_elements

CORE_SHELL = Path(__file__).resolve().parents[1] / "edx_live" / "data" / "core_shell.hspy"
#: A 2048-channel axis, 10 eV per channel, as the phantom's.
SCALE_KEV = 0.01
CHANNELS = 2048
RESOLUTION_EV = 130.0


def _continuum(energy: np.ndarray, beam_kev: float = 200.0) -> np.ndarray:
    """A smooth bremsstrahlung shape: Kramers' (E0 - E) / E with a low-energy absorption roll-off."""
    positive = np.clip(energy, 1e-3, None)
    shape = np.where(energy > 0, np.clip(beam_kev - energy, 0, None) / positive, 0.0)
    return shape * np.exp(-(0.8 / positive) ** 3)


def _lines(energy: np.ndarray, counts: dict[str, float]) -> np.ndarray:
    """Gaussian lines of whole K families, ``counts`` per principal line (e.g. ``{"Fe_Ka": 1e5}``),
    at exspy's energies and relative weights and with exspy's FWHM."""
    from exspy.material import elements

    out = np.zeros_like(energy)
    for principal, total in counts.items():
        element, _, name = principal.partition("_")
        table = elements[element]["Atomic_properties"]["Xray_lines"].as_dictionary()
        for line, props in table.items():
            if line[0] != name[0]:
                continue
            centre, weight = float(props["energy (keV)"]), float(props["weight"])
            sigma = fwhm_kev(RESOLUTION_EV, centre) / (2 * np.sqrt(2 * np.log(2)))
            shape = np.exp(-0.5 * ((energy - centre) / sigma) ** 2) * SCALE_KEV / (sigma * np.sqrt(2 * np.pi))
            out += total * weight * shape
    return out


def _energy(offset_kev: float = 0.0) -> np.ndarray:
    return offset_kev + SCALE_KEV * np.arange(CHANNELS)


def _propose(spectrum, offset_kev: float = 0.0, **kwargs) -> ProposedElements:
    return propose_elements(spectrum, offset_kev, SCALE_KEV, 200.0, energy_resolution_ev=RESOLUTION_EV, **kwargs)


# -- 1. the phantom -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def phantom():
    return make_phantom((64, 64), seed=0, scale_kev=SCALE_KEV)


@pytest.mark.parametrize("dose", [30.0, 200.0, 1000.0])
def test_phantom_total_spectrum_proposes_exactly_its_elements(phantom, dose):
    spectrum = np.random.default_rng(0).poisson(phantom.expected_sum(dose))
    axis = phantom.energy_axis
    result = propose_elements(spectrum, axis.offset_kev, axis.scale_kev, phantom.beam_energy_kev,
                              energy_resolution_ev=phantom.resolution_ev)

    truth = {element for composition in phantom.compositions for element in composition}
    assert set(result.elements) == truth
    assert result.elements == tuple(sorted(result.elements))
    assert result.unidentified_kev == ()
    # The main line of each element is the one the phantom quantifies (exspy's choice), among
    # them Cd_La under Ag_Lb1 (17 eV apart), which a fit of Ag alone would swallow.
    assert {e["main_line"] for e in result.evidence.values()} == set(phantom.xray_lines)
    assert all(e["significance"] >= 5 and e["main_line"] in e["lines_confirmed"] for e in result.evidence.values())
    json.dumps(result.evidence)  # goes into published documents as is


# -- 2. real data: FePt core/shell particles on a carbon film, Cu grid, 200 kV ------------------

@pytest.fixture(scope="module")
def core_shell():
    hs = pytest.importorskip("hyperspy.api")
    signal = hs.load(CORE_SHELL)
    total = signal.sum(signal.axes_manager.navigation_axes).data
    axis = signal.axes_manager.signal_axes[0]
    beam = float(signal.metadata.Acquisition_instrument.TEM.beam_energy)
    return total, float(axis.offset), float(axis.scale), beam


def test_core_shell_proposes_fe_pt_and_what_the_spectrum_shows(core_shell):
    result = propose_elements(*core_shell)

    assert {"Fe", "Pt"} <= set(result.elements)
    # The other strong peaks are real: C_Ka is the strongest peak of the spectrum (carbon support
    # film), Cu shows Ka, Kb and La (the Cu grid), O_Ka at 0.52 keV (oxide, film) and Si_Ka at
    # 1.74 keV (Si contamination or the detector's internal fluorescence): each stands more than
    # 50 sigma above the background.
    real = {"C", "Cu", "Fe", "O", "Pt", "Si"}
    assert real <= set(result.elements)
    assert all(result.evidence[e]["significance"] > 50 for e in real)
    assert {"Cu_La", "Cu_Ka", "Cu_Kb"} <= set(result.evidence["Cu"]["lines_confirmed"])
    assert {"Fe_Ka", "Fe_Kb"} <= set(result.evidence["Fe"]["lines_confirmed"])
    assert {"Pt_Ma", "Pt_La", "Pt_Lb1", "Pt_Lg1"} <= set(result.evidence["Pt"]["lines_confirmed"])
    # Every other significant peak is a line of these, except a weak one at 15.7 keV (Zr_Ka, about
    # 12 sigma, origin unknown, allowed) and one at 12.58 keV (Pt L-gamma5, missing from exspy's
    # database), which must not become Kr_Ka.
    assert set(result.elements) <= real | {"Zr"}
    assert "Kr" not in result.elements
    assert result.description.startswith("proposed from the peaks of the total spectrum (884,071 counts)")


# -- 3. no peaks ----------------------------------------------------------------------------------

@pytest.mark.parametrize("total", [1e4, 1e6, 1e8])
def test_pure_continuum_proposes_nothing(total):
    # A smooth continuum with the detector's zero-energy noise peak, from -0.1 keV.
    energy = _energy(-0.1)
    continuum = _continuum(energy)
    noise = np.exp(-0.5 * (energy / 0.03) ** 2)
    expected = total * (continuum / continuum.sum() + 0.2 * noise / noise.sum())
    for seed in range(3):
        result = _propose(np.random.default_rng(seed).poisson(expected), offset_kev=-0.1)
        assert result.elements == ()
        assert result.unidentified_kev == ()
        assert "no element" in result.description


# -- 4. Mn_Kb under Fe_Ka -------------------------------------------------------------------------

def test_mn_kb_lies_under_fe_ka():
    """The premise of the next test: exspy finds Mn_Kb within a FWHM of Fe_Ka."""
    from exspy.material import elements
    from exspy.utils.eds import get_xray_lines_near_energy

    fe_ka = float(elements["Fe"]["Atomic_properties"]["Xray_lines"]["Ka"]["energy (keV)"])
    assert "Mn_Kb" in get_xray_lines_near_energy(fe_ka, width=2 * fwhm_kev(RESOLUTION_EV, fe_ka))


@pytest.mark.parametrize("line_counts", [1e5, 1e6, 1e7])
def test_fe_alone_does_not_propose_mn_and_fe_with_mn_proposes_both(line_counts):
    energy = _energy()
    continuum = _continuum(energy)
    background = 0.2 * line_counts * continuum / continuum.sum()
    rng = np.random.default_rng(0)

    fe = _propose(rng.poisson(background + _lines(energy, {"Fe_Ka": line_counts})))
    assert fe.elements == ("Fe",)

    fe_mn = _propose(rng.poisson(background + _lines(energy, {"Fe_Ka": line_counts, "Mn_Ka": 0.2 * line_counts})))
    assert fe_mn.elements == ("Fe", "Mn")
    assert fe_mn.evidence["Mn"]["main_line"] == "Mn_Ka"


# -- 5. exclusion ---------------------------------------------------------------------------------

def test_exclude_removes_cu_and_leaves_its_peaks_unidentified(core_shell):
    full = propose_elements(*core_shell)
    without = propose_elements(*core_shell, exclude=("Cu",))

    assert "Cu" in full.elements
    assert set(without.elements) == set(full.elements) - {"Cu"}
    assert any(abs(e - 8.05) < 0.05 for e in without.unidentified_kev)  # Cu_Ka, now unexplained
    assert "never proposed: Cu" in without.description


def test_exclude_rejects_unknown_symbols():
    with pytest.raises(ValueError, match="'cu'"):
        _propose(np.ones(CHANNELS), exclude=("cu",))


@pytest.mark.parametrize("spectrum", [np.ones((4, 4)), -np.ones(CHANNELS), np.full(CHANNELS, np.nan)])
def test_rejects_spectra_that_are_not_counts(spectrum):
    with pytest.raises(ValueError):
        _propose(spectrum)

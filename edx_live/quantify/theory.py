"""Theoretical Cliff-Lorimer k-factors for thin-film STEM-EDX (60-300 kV) from xraylib atomic data.

In exspy's convention, weight fraction ``C_i = k_i I_i / sum_j k_j I_j``, so the
k-factor of a line is inversely proportional to the counts per unit mass of its
element, ``A_i`` being the atomic weight (Williams & Carter, *Transmission
Electron Microscopy*, 2nd ed., ch. 35):

    k_i ∝ A_i / (Q_i ω_i a_i ε_i)

- ``Q``: electron-impact cross-section for a vacancy in the line's initial
  subshell. Each subshell uses Bethe's cross-section (Bethe 1930) in the
  relativistic form used for TEM k-factors (Zaluzec 1984, *Analytical
  Electron Microscopy*, 279-284)

      Q = 6.51e-20 n b / (E_c T) [ln(c T / E_c) - ln(1 - β²) - β²]   (cm², keV)

  with ``T = m₀c²β²/2``, ``n`` the subshell occupancy (``xraylib.ElectronConfig``),
  ``E_c`` its edge (``xraylib.EdgeEnergy``) and Powell's K-shell constants
  ``b = 0.9, c = 0.65`` (Powell 1976, *Rev. Mod. Phys.* 48, 33), applied per
  electron to L and M subshells too. Vacancies moved into the subshell by
  Coster-Kronig transitions from the lower subshells of the same shell
  (L1→L2→L3, M1→…→M5; ``xraylib.CosKronTransProb``) are added.
- ``ω``: fluorescence yield of that subshell (``xraylib.FluorYield``).
- ``a``: fraction of its radiative decays in the counted line(s)
  (``xraylib.RadRate`` summed over the transitions exspy's line holds).
- ``ε``: detector efficiency at exspy's line energy (:class:`EfficiencyModel`).

Not included: vacancies transferred between shells (e.g. K → L3, L → M5, a few
per cent at 200 kV), absorption and fluorescence in the specimen (thin film),
and the detector's support grid and incomplete charge collection.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import xraylib

from .lines import line_energy, validate_line

#: Electron rest energy (keV).
ELECTRON_REST_KEV = 510.99895
#: π e⁴ in keV² cm², the prefactor of the Bethe cross-section.
_PI_E4 = 6.51e-20
#: Powell's (1976) Bethe constants b_s, c_s.
BETHE_B, BETHE_C = 0.9, 0.65
CROSS_SECTION_MODEL = (f"relativistic Bethe ionisation cross-sections (Zaluzec 1984; Powell 1976 b = {BETHE_B}, "
                       f"c = {BETHE_C})")

_SUBSHELLS = {"K": ("K",), "L": ("L1", "L2", "L3"), "M": ("M1", "M2", "M3", "M4", "M5")}

#: exspy line name -> (initial vacancy subshell, xraylib transitions the counted line holds).
LINE_TRANSITIONS = {
    "Ka": ("K", ("KL2", "KL3")),            # Kα1,2
    "Kb": ("K", ("KM2", "KM3")),            # Kβ1,3
    "La": ("L3", ("L3M4", "L3M5")),         # Lα1,2
    "Lb1": ("L2", ("L2M4",)),
    "Lb2": ("L3", ("L3N4", "L3N5")),        # Lβ2,15
    "Lb3": ("L1", ("L1M3",)),
    "Lb4": ("L1", ("L1M2",)),
    "Lg1": ("L2", ("L2N4",)),
    "Lg3": ("L1", ("L1N3",)),
    "Ll": ("L3", ("L3M1",)),
    "Ln": ("L2", ("L2M1",)),
    "Ma": ("M5", ("M5N6", "M5N7")),         # Mα1,2
    "Mb": ("M4", ("M4N6",)),
    "Mg": ("M3", ("M3N5",)),
    "Mz": ("M5", ("M5N3",)),                # Mζ1
    "M2N4": ("M2", ("M2N4",)),
    "M3O4": ("M3", ("M3O4",)),
    "M3O5": ("M3", ("M3O5",)),
}

#: Window materials: xraylib compound formula and density (g/cm³).
WINDOWS = {"none": None, "polymer": ("C22H10N2O5", 1.42), "Be": ("Be", xraylib.ElementDensity(4))}


@dataclass(frozen=True)
class EfficiencyModel:
    """An energy-dispersive silicon detector, for its efficiency ε(E).

    ``ε(E) = T_window(E) · T_Al(E) · T_dead(E) · (1 - exp(-μ_photo ρ t_Si))``:
    transmission (``xraylib.CS_Total``) through the window, its aluminium coat
    and the Si dead layer, times the photo-absorption (``xraylib.CS_Photo``;
    photons Compton-scattered out of a thin crystal do not reach the peak) in
    the active Si. The defaults describe a windowless silicon drift detector
    like those of a Super-X.

    Attributes
    ----------
    si_thickness_mm : float
        Active Si thickness, 0.45 mm.
    dead_layer_um : float
        Si dead layer on the entrance side, 0.01 µm.
    window : str
        ``"none"`` (windowless), ``"polymer"`` (polyimide, C22H10N2O5,
        1.42 g/cm³) or ``"Be"``.
    window_um : float
        Window thickness (µm); must be positive when ``window`` is not ``"none"``.
    al_coat_um : float
        Aluminium light-blocking coat (µm), 0 for none.
    """

    si_thickness_mm: float = 0.45
    dead_layer_um: float = 0.01
    window: str = "none"
    window_um: float = 0.0
    al_coat_um: float = 0.0

    def __post_init__(self):
        if self.window not in WINDOWS:
            raise ValueError(f"detector window {self.window!r} is unknown; use one of {', '.join(WINDOWS)}")
        if (self.window == "none") != (self.window_um == 0):
            raise ValueError("give window_um > 0 for a polymer or Be window, and window_um = 0 for "
                             f"window='none' (got window={self.window!r}, window_um={self.window_um})")
        for name in ("si_thickness_mm", "dead_layer_um", "window_um", "al_coat_um"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"detector {name} must be >= 0, got {getattr(self, name)!r}")
        if self.si_thickness_mm == 0:
            raise ValueError("detector si_thickness_mm must be > 0")

    def describe(self) -> str:
        """Short description, e.g. ``"windowless Si detector (0.45 mm Si, 0.01 µm dead layer)"``."""
        layers = [f"{self.si_thickness_mm:g} mm Si", f"{self.dead_layer_um:g} µm dead layer"]
        if self.al_coat_um:
            layers.append(f"{self.al_coat_um:g} µm Al coat")
        kind = "windowless" if self.window == "none" else f"{self.window_um:g} µm {self.window}-window"
        return f"{kind} Si detector ({', '.join(layers)})"


@dataclass(frozen=True)
class TheoreticalKFactors:
    """Theoretical k-factors of a set of lines, with the terms they are made of.

    Attributes
    ----------
    kfactors : dict of str to float
        k-factor per line, ``kfactors[reference] == 1``.
    reference : str
    beam_energy_kev : float
    detector : EfficiencyModel
    description : str
        One sentence naming the method, the xraylib version, the cross-section
        model and the detector; the provenance of these values in documents.
    terms : dict of str to dict of str to float
        Per line: ``cross_section`` (cm², vacancies in the initial subshell),
        ``fluorescence_yield``, ``line_fraction``, ``efficiency``,
        ``atomic_weight`` (g/mol) and ``energy_kev``.
    """

    kfactors: dict[str, float]
    reference: str
    beam_energy_kev: float
    detector: EfficiencyModel
    description: str
    terms: dict[str, dict[str, float]]


def bethe_cross_section(edge_kev: float, electrons: float, beam_energy_kev: float) -> float:
    """Relativistic Bethe ionisation cross-section (cm²) of one subshell.

    Parameters
    ----------
    edge_kev : float
        Ionisation (edge) energy of the subshell.
    electrons : float
        Occupancy of the subshell.
    beam_energy_kev : float

    Returns
    -------
    float
        0 at or below the edge, and where the Bethe logarithm is negative
        (overvoltage below about 1.5, where the model is not valid).
    """
    if edge_kev <= 0 or electrons <= 0 or beam_energy_kev <= edge_kev:
        return 0.0
    gamma = 1.0 + beam_energy_kev / ELECTRON_REST_KEV
    beta2 = 1.0 - 1.0 / gamma**2
    kinetic = ELECTRON_REST_KEV * beta2 / 2  # m0 v² / 2, the Bethe theory's energy variable
    log_term = math.log(BETHE_C * kinetic / edge_kev) - math.log(1.0 - beta2) - beta2
    return max(0.0, _PI_E4 * electrons * BETHE_B / (edge_kev * kinetic) * log_term)


def _shell(name: str) -> int:
    return getattr(xraylib, f"{name}_SHELL")


def subshell_cross_section(z: int, subshell: str, beam_energy_kev: float) -> float:
    """Direct ionisation cross-section (cm²) of subshell ``"K"``, ``"L1"`` … ``"M5"`` of element ``z``."""
    try:
        electrons = xraylib.ElectronConfig(z, _shell(subshell))
        edge = xraylib.EdgeEnergy(z, _shell(subshell))
    except ValueError:  # xraylib: empty or unknown subshell
        return 0.0
    return bethe_cross_section(edge, electrons, beam_energy_kev)


def _coster_kronig(z: int, family: str, source: int, target: int) -> float:
    try:
        return xraylib.CosKronTransProb(z, getattr(xraylib, f"F{family}{source}{target}_TRANS"))
    except ValueError:
        return 0.0


def vacancy_cross_section(z: int, subshell: str, beam_energy_kev: float) -> float:
    """Cross-section (cm²) for a vacancy in ``subshell``: direct ionisation plus Coster-Kronig transfers.

    Vacancies cascade down the shell: ``n_i = Q_i + sum_{j<i} n_j f_ji``, which
    for L3 gives ``Q3 + f23 Q2 + (f13 + f12 f23) Q1``.
    """
    family = subshell[0]
    chain = _SUBSHELLS[family][: _SUBSHELLS[family].index(subshell) + 1]
    vacancies: list[float] = []
    for i, name in enumerate(chain):
        transferred = sum(n * _coster_kronig(z, family, j + 1, i + 1) for j, n in enumerate(vacancies))
        vacancies.append(subshell_cross_section(z, name, beam_energy_kev) + transferred)
    return vacancies[-1]


def line_fraction(z: int, transitions: Iterable[str]) -> float:
    """Fraction of the initial subshell's radiative decays that go into ``transitions`` (xraylib.RadRate)."""
    total = 0.0
    for transition in transitions:
        try:
            total += xraylib.RadRate(z, getattr(xraylib, f"{transition}_LINE"))
        except ValueError:  # xraylib has no rate for this transition of this element
            pass
    return total


def _attenuation(material: str, energy_kev: float, photo: bool = False) -> float:
    """Mass attenuation (or photo-absorption) coefficient (cm²/g) of a formula such as ``"Si"``."""
    return xraylib.CS_Photo_CP(material, energy_kev) if photo else xraylib.CS_Total_CP(material, energy_kev)


def detector_efficiency(energy_kev: float, detector: EfficiencyModel = EfficiencyModel()) -> float:
    """Efficiency ε(E) of ``detector`` for X-rays of ``energy_kev``; see :class:`EfficiencyModel`."""
    rho_si = xraylib.ElementDensity(14)
    # Areal densities (g/cm²) of the absorbing layers in front of the active Si.
    layers = [("Si", rho_si * detector.dead_layer_um * 1e-4),
              ("Al", xraylib.ElementDensity(13) * detector.al_coat_um * 1e-4)]
    if WINDOWS[detector.window] is not None:
        material, density = WINDOWS[detector.window]
        layers.append((material, density * detector.window_um * 1e-4))
    transmission = math.exp(-sum(_attenuation(m, energy_kev) * mass for m, mass in layers if mass > 0))
    absorbed = 1.0 - math.exp(-_attenuation("Si", energy_kev, photo=True) * rho_si
                              * detector.si_thickness_mm * 0.1)
    return transmission * absorbed


def line_terms(line: str, beam_energy_kev: float, detector: EfficiencyModel = EfficiencyModel()) -> dict[str, float]:
    """The factors of the k-factor of one exspy line, e.g. ``"Pt_La"``; see the module docstring.

    Raises
    ------
    ValueError
        Unknown line, a line xraylib has no data for, or a shell the beam cannot ionise.
    """
    line = validate_line(line)
    element, _, family = line.partition("_")
    if family not in LINE_TRANSITIONS:
        raise ValueError(f"{line}: theoretical k-factors are not available for {family} lines; "
                         f"use one of {', '.join(element + '_' + f for f in LINE_TRANSITIONS)}")
    subshell, transitions = LINE_TRANSITIONS[family]
    z = xraylib.SymbolToAtomicNumber(element)
    _check_ionisable(line, z, subshell, beam_energy_kev)
    try:
        yield_ = xraylib.FluorYield(z, _shell(subshell))
    except ValueError:
        yield_ = 0.0
    fraction = line_fraction(z, transitions)
    if yield_ <= 0 or fraction <= 0:
        raise ValueError(f"{line}: xraylib {xraylib.__version__} has no fluorescence yield or radiative "
                         f"rate for the {subshell} shell of {element}; use another line of {element} "
                         "or give its k-factor explicitly")
    energy = line_energy(line)
    return {"cross_section": vacancy_cross_section(z, subshell, beam_energy_kev),
            "fluorescence_yield": yield_, "line_fraction": fraction,
            "efficiency": detector_efficiency(energy, detector),
            "atomic_weight": xraylib.AtomicWeight(z), "energy_kev": energy}


def _check_ionisable(line: str, z: int, subshell: str, beam_energy_kev: float) -> None:
    edge = xraylib.EdgeEnergy(z, _shell(subshell))
    if edge >= beam_energy_kev:
        raise ValueError(f"{line}: the {subshell} edge ({edge:.3f} keV) is above the beam energy "
                         f"({beam_energy_kev:g} keV), so the beam cannot excite this line; use a "
                         "lower-energy line of the element (e.g. L instead of K) or a higher beam energy")
    if subshell_cross_section(z, subshell, beam_energy_kev) <= 0:
        raise ValueError(f"{line}: the beam energy ({beam_energy_kev:g} keV) is too close to the "
                         f"{subshell} edge ({edge:.3f} keV) for the Bethe cross-section; use a "
                         "lower-energy line of the element or give its k-factor explicitly")


def theoretical_kfactors(lines: Iterable[str], beam_energy_kev: float, detector: EfficiencyModel = EfficiencyModel(),
                         reference: str | None = None) -> TheoreticalKFactors:
    """Theoretical Cliff-Lorimer k-factors of exspy X-ray lines, relative to ``reference``.

    Parameters
    ----------
    lines : iterable of str
        exspy line names, e.g. ``["Fe_Ka", "Pt_La"]``.
    beam_energy_kev : float
        Beam energy (keV), e.g. 200 for 200 kV.
    detector : EfficiencyModel
        Defaults to a windowless 0.45 mm silicon drift detector.
    reference : str, optional
        Line given k = 1 (must be one of ``lines``; TEM tables use ``"Si_Ka"``).
        Defaults to the first line.

    Returns
    -------
    TheoreticalKFactors

    Raises
    ------
    ValueError
        No lines, a reference not among them, or a line that cannot be computed
        (see :func:`line_terms`).
    """
    lines = list(dict.fromkeys(validate_line(line) for line in lines))
    if not lines:
        raise ValueError("give at least one X-ray line, e.g. ['Fe_Ka', 'Pt_La']")
    if not beam_energy_kev > 0:
        raise ValueError(f"beam energy must be a positive number of keV, got {beam_energy_kev!r}")
    reference = lines[0] if reference is None else validate_line(reference)
    if reference not in lines:
        raise ValueError(f"reference line {reference} is not among the lines {lines}; add it to the lines")
    terms = {line: line_terms(line, beam_energy_kev, detector) for line in lines}
    raw = {line: _inverse_sensitivity(t) for line, t in terms.items()}
    kfactors = {line: raw[line] / raw[reference] for line in lines}
    return TheoreticalKFactors(kfactors=kfactors, reference=reference, beam_energy_kev=float(beam_energy_kev),
                               detector=detector, description=describe(beam_energy_kev, detector, reference),
                               terms=terms)


def _inverse_sensitivity(t: dict[str, float]) -> float:
    return t["atomic_weight"] / (t["cross_section"] * t["fluorescence_yield"] * t["line_fraction"]
                                 * t["efficiency"])


def describe(beam_energy_kev: float, detector: EfficiencyModel, reference: str) -> str:
    """The provenance sentence of :class:`TheoreticalKFactors`."""
    return (f"Standardless theoretical Cliff-Lorimer k-factors at {beam_energy_kev:g} kV, relative to "
            f"{reference}, from xraylib {xraylib.__version__} fluorescence yields, radiative rates and "
            f"Coster-Kronig yields, {CROSS_SECTION_MODEL} and the efficiency of a {detector.describe()}.")

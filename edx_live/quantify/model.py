"""exspy's EDS model of a spectrum, used as a linear projection from counts to line intensities.

exspy builds the model: one Gaussian per X-ray line at the database energy,
with the detector's width at that energy, the lines of a family (K, L, M)
tied to the family's main line by their database weights, and a polynomial
background. With the energies and widths fixed, every free parameter
(the main lines' areas and the polynomial's coefficients) enters linearly,
so the least-squares fit of any spectrum is one matrix product with the
model's pseudo-inverse. :class:`LineModel` builds that matrix once and
applies it to every cluster spectrum, replica and bootstrap sample of every
refit; the result is exactly HyperSpy's ``multifit(optimizer="lstsq")``,
which the tests check.

Only the non-linear part (the detector resolution and the energy offset)
is refitted, on the total spectrum, by a one-dimensional search each, and only
when the counts have grown enough since the last time (``ClusterQuantifier``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .signal import eds_signal

#: Range searched for the detector resolution (eV at Mn Ka).
RESOLUTION_BOUNDS_EV = (110.0, 300.0)
#: Narrowest line the search may make (eV): exspy's width law (Fiori and Newbury) gives
#: FWHM(E)**2 = FWHM(Mn Ka)**2 + 2.5 (E - E(Mn Ka)) eV**2/eV, which turns negative at C Ka
#: (0.277 keV) below 118.6 eV at Mn Ka; a square root of it is a math domain error.
MIN_LINE_FWHM_EV = 30.0
#: Largest energy-offset correction (keV) searched.
MAX_OFFSET_SHIFT_KEV = 0.05


@dataclass(frozen=True)
class ModelKey:
    """What a :class:`LineModel` depends on; a model is reused while its key is unchanged."""

    offset_kev: float
    scale_kev: float
    channels: int
    beam_energy_kev: float
    elements: tuple[str, ...]
    xray_lines: tuple[str, ...]
    fit_range_kev: tuple[float, float]
    background_order: int
    elevation_deg: float | None = None
    azimuth_deg: float | None = None


class LineModel:
    """exspy's EDS model on one energy axis, as a linear map from spectra to fitted line areas.

    Parameters
    ----------
    key : ModelKey
        Energy axis, elements modelled (every family of each whose main line lies in
        the fit range), the lines quantified, the fit range and the polynomial order.
    resolution_ev : float
        Detector FWHM at Mn Ka, the starting value of the calibration.

    Attributes
    ----------
    resolution_ev, offset_kev : float
        Current (calibrated) detector resolution and energy offset.
    channels : slice
        The channels of the full axis inside the fit range.
    families : list of str
        Main line of every family in the model.
    """

    def __init__(self, key: ModelKey, resolution_ev: float):
        self.key = key
        lo, hi = key.fit_range_kev
        first = max(0, int(np.ceil((lo - key.offset_kev) / key.scale_kev)))
        last = min(key.channels, int(np.floor((hi - key.offset_kev) / key.scale_kev)) + 1)
        if last - first < 2 * (key.background_order + 1):
            raise ValueError(f"fit range {lo:.2f}..{hi:.2f} keV holds {max(last - first, 0)} channels of the "
                             "spectrum; widen [quantify] fit_range_kev or the accumulated energy range")
        self.channels = slice(first, last)
        signal = eds_signal(np.zeros(last - first), key.offset_kev + first * key.scale_kev, key.scale_kev,
                            key.beam_energy_kev, elevation_deg=key.elevation_deg, azimuth_deg=key.azimuth_deg,
                            energy_resolution_ev=resolution_ev, title="fit")
        signal.set_elements(list(key.elements))
        self._model = signal.create_model(auto_background=False, auto_add_lines=False)
        self._model.add_family_lines("from_elements")
        self._model.add_polynomial_background(order=key.background_order)
        self.families = [c.name for c in self._model.xray_lines]
        missing = [line for line in key.xray_lines if line not in self.families]
        if missing:
            raise ValueError(f"lines {missing} are not in the fitted range {lo:.2f}..{hi:.2f} keV; "
                             "widen [quantify] fit_range_kev")
        self._free = [p for c in self._model.active_components for p in c.parameters if p.free]
        self._build_projection()

    @property
    def resolution_ev(self) -> float:
        return float(self._model.signal.metadata.Acquisition_instrument.TEM.Detector.EDS.energy_resolution_MnKa)

    @property
    def offset_kev(self) -> float:
        """Energy of channel 0 of the full axis, after calibration."""
        return float(self._model.signal.axes_manager[-1].offset - self.channels.start * self.key.scale_kev)

    def _design(self) -> np.ndarray:
        """(channels, parameters): the model with each free parameter at 1 and the others at 0."""
        saved = [p.value for p in self._free]
        columns = []
        try:
            for p in self._free:
                p.value = 0.0
            for p in self._free:
                p.value = 1.0
                # HyperSpy's own evaluation of the model (binned: counts per channel), as its fit uses.
                columns.append(np.array(self._model._get_current_data(onlyactive=True,
                                                                       ignore_channel_switches=True),
                                        dtype=np.float64))
                p.value = 0.0
        finally:
            for p, value in zip(self._free, saved):
                p.value = value
        return np.stack(columns, axis=1)

    def _build_projection(self) -> None:
        design = self._design()
        # Equilibrate the columns: the polynomial's x**6 and a line's area differ by 10 orders of magnitude.
        norms = np.linalg.norm(design, axis=0)
        norms[norms == 0] = 1.0
        pinv = np.linalg.pinv(design / norms) / norms[:, None]
        index = {p.component.name: i for i, p in enumerate(self._free) if p.name == "A"}
        self.design_ = design
        self.projection_ = pinv
        self.line_projection_ = pinv[[index[line] for line in self.key.xray_lines]]

    def parameters(self, spectra: np.ndarray) -> np.ndarray:
        """Least-squares free parameters (..., n_parameters) of spectra (..., full channels)."""
        return np.asarray(spectra, dtype=np.float64)[..., self.channels] @ self.projection_.T

    def intensities(self, spectra: np.ndarray) -> np.ndarray:
        """Fitted areas (counts) of the quantified lines, (..., n_lines) in ``key.xray_lines`` order."""
        return np.asarray(spectra[..., self.channels], dtype=np.float64) @ self.line_projection_.T

    def reduced_chi2(self, spectra: np.ndarray) -> np.ndarray:
        """Chi-square per channel of the fit of each spectrum under each quantified line, (..., n_lines).

        For each line of ``key.xray_lines``, the channels within one FWHM of any line of its
        family count. Poisson variance is taken as the fitted counts (at least 1). Above 1, the
        model does not describe that line within counting noise (line shapes, the background
        under it, an unmodelled peak nearby).
        """
        y = np.asarray(spectra, dtype=np.float64)[..., self.channels]
        fit = (y @ self.projection_.T) @ self.design_.T
        terms = (y - fit) ** 2 / np.maximum(fit, 1.0)
        masks = self._under_lines()
        return np.stack([np.mean(terms[..., m], axis=-1) for m in masks], axis=-1)

    def _under_lines(self) -> list[np.ndarray]:
        """Per quantified line: channels of the fit range within one FWHM of a line of its family."""
        m = self._model
        energy = m.signal.axes_manager[-1].axis
        out = []
        for line in self.key.xray_lines:
            element, _, name = line.partition("_")
            under = np.zeros(energy.size, dtype=bool)
            for component in [*m.xray_lines, *m.family_lines]:
                other, _, other_name = component.name.partition("_")
                if other == element and other_name[0] == name[0]:
                    under |= np.abs(energy - component.centre.value) <= component.fwhm
            out.append(under if under.any() else np.ones(energy.size, dtype=bool))
        return out

    def fitted(self, spectrum: np.ndarray) -> np.ndarray:
        """The fitted model of one spectrum over the fit range."""
        return self.design_ @ self.parameters(spectrum)

    def calibrate(self, total: np.ndarray, what: Sequence[str] = ("resolution",)) -> dict:
        """Refine the detector resolution and/or the energy offset on ``total``; rebuild the projection.

        exspy's ``calibrate_energy_axis`` refits every line with a general non-linear
        optimiser (about 8 s for a few elements). Both quantities are single numbers, so
        each is found here by a bounded one-dimensional search over its plausible range,
        minimising the residual sum of squares of the linear fit; the widths and positions
        follow exspy's own rules (``_get_line_energy``). A search that ends on a bound is
        undone: the spectrum does not constrain the value.

        Returns
        -------
        dict
            ``resolution_ev``, ``offset_kev`` and ``rejected`` (searches that ended on a bound).
        """
        from scipy.optimize import minimize_scalar

        y = np.asarray(total, dtype=np.float64)[self.channels]
        rejected = []
        for kind in what:
            if kind == "resolution":
                now, (low, high), set_, tol = self.resolution_ev, self._resolution_bounds(), self._set_resolution, 0.2
            elif kind == "offset":
                now, set_ = self._axis_offset(), self._set_offset
                low, high, tol = now - MAX_OFFSET_SHIFT_KEV, now + MAX_OFFSET_SHIFT_KEV, 2e-4
            else:
                raise ValueError(f"cannot calibrate {kind!r}: choose 'resolution' or 'offset'")

            def chi2(value, set_=set_):
                set_(value)
                residual = y - self.fitted(total)
                return float(residual @ residual)

            best = minimize_scalar(chi2, bounds=(low, high), method="bounded", options={"xatol": tol})
            value = float(best.x)
            if min(value - low, high - value) < 2 * tol:  # no minimum inside the plausible range
                rejected.append(f"{kind}: best value {value:.4g} on the search bound {low:.4g}..{high:.4g}")
                value = now
            set_(value)
        return {"resolution_ev": self.resolution_ev, "offset_kev": self.offset_kev, "rejected": rejected}

    def follow(self, other: "LineModel") -> None:
        """Take ``other``'s calibrated resolution and energy offset (same axis and lines, another background)."""
        self._model.signal.metadata.set_item("Acquisition_instrument.TEM.Detector.EDS.energy_resolution_MnKa",
                                             other.resolution_ev)
        self._set_offset(other._axis_offset())

    def _resolution_bounds(self) -> tuple[float, float]:
        """RESOLUTION_BOUNDS_EV, raised so that the lowest line of the model keeps a real width."""
        from .lines import line_energy

        m = self._model
        lowest = min(line_energy(c.name) for c in [*m.xray_lines, *m.family_lines])
        mn_ka = line_energy("Mn_Ka")
        floor = np.sqrt(max(0.0, 2500.0 * (mn_ka - lowest)) + MIN_LINE_FWHM_EV**2)
        low, high = RESOLUTION_BOUNDS_EV
        return max(low, float(floor)), high

    def _axis_offset(self) -> float:
        return float(self._model.signal.axes_manager[-1].offset)

    def _set_resolution(self, resolution_ev: float) -> None:
        m = self._model
        m.signal.metadata.set_item("Acquisition_instrument.TEM.Detector.EDS.energy_resolution_MnKa",
                                   float(resolution_ev))
        self._place_lines()

    def _set_offset(self, offset_kev: float) -> None:
        self._model.signal.axes_manager[-1].offset = float(offset_kev)
        self._place_lines()

    def _place_lines(self) -> None:
        """Every line at exspy's energy with exspy's width for the current resolution; then the projection."""
        m = self._model
        for component in [*m.xray_lines, *m.family_lines]:
            component.centre.value, component.fwhm = m.signal._get_line_energy(component.name, FWHM_MnKa="auto")
        self._build_projection()

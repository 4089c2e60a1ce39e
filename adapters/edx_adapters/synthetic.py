"""A synthetic STEM-EDX acquisition whose answer is known, to score any run.

>>> phantom = make_phantom((128, 128), seed=0)              # doctest: +SKIP
>>> replay = synthetic_replay(phantom, dose=200, frames=10)  # doctest: +SKIP
>>> phantom.labels, phantom.compositions                     # the truth   # doctest: +SKIP

A phantom is a few phases with known compositions (atomic %) laid out as
grains of different sizes in a matrix. Boundaries mix neighbouring phases
over a few pixels and the thickness varies smoothly, so the counts per pixel
vary too. Opt-in, what real samples also have (:func:`make_phantom`): an
embedding band of resin or near-vacuum along one edge that gives only a few
counts per pixel, a steeper thickness wedge, and an energy axis whose declared
calibration is off (the spectra sit on the true axis, the start message
declares the nominal one). :data:`SULFIDE_PHASES` and :data:`RESIN` are such a
sample: a sulfide ore with small grains and an overlap (Pb M on S K).

Each pure phase has an expected spectrum: X-ray lines at the energies and
relative weights of exspy's database, with the detector's energy-dependent
width, on a Kramers continuum that rolls off at low energy.
:meth:`Phantom.frames` draws Poisson events sweep by sweep; the sweeps are
independent, so their sum is a Poisson draw of the full dose.

The acquisition has a simultaneous annular dark-field image too
(:meth:`Phantom.adf_image`, sent after each sweep): mass-thickness and Z
contrast, the thickness times the phase's mean atomic number to the power 1.7,
plus detector noise.

Intensity model (what a quantification should undo): the principal line of
each element has an intensity proportional to its weight fraction divided by
its k-factor (:attr:`Phantom.kfactors`, 1 for every line), so Cliff-Lorimer
with these k-factors returns the true composition. The low-energy roll-off
applies to the continuum only; the lines' k-factors already hold the
detector efficiency.

exspy (and with it HyperSpy) is imported only when a phantom is built, never
when this module is imported: producers must stay light.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from edx_protocol import Detector, EnergyAxis, EventsFrame, Start

from .formats.common import DEFAULT_AZIMUTH_DEG, DEFAULT_ELEVATION_DEG, Chunk, Source, SweepImages
from .formats.jeol import split_by_pixel
from .replay import Replay, _check_int, default_acquisition_id

#: Detector resolution at Mn Ka (eV), typical of a silicon drift detector.
DEFAULT_RESOLUTION_EV = 130.0
#: Continuum counts per characteristic count for a phase of mean Z 26 (Kramers: proportional to Z).
CONTINUUM_PER_LINE_AT_FE = 0.15
#: Energy (keV) of the continuum's low-energy absorption roll-off, exp(-(E_abs/E)^3).
ABSORPTION_KEV = 0.8
#: Annular dark-field signal ~ thickness x Z^ADF_Z_EXPONENT (Rutherford-like Z contrast).
ADF_Z_EXPONENT = 1.7
#: Mean of the expected ADF image, in detector units, and its noise per sweep (relative standard deviation).
ADF_MEAN = 1000.0
ADF_NOISE = 0.02


@dataclass(frozen=True)
class Phase:
    """One phase of a phantom: what it is made of and how its grains look.

    Attributes
    ----------
    name : str
    composition : mapping of str to float
        Atomic percent per element (normalised to 100 when the phantom is built).
    xray_lines : tuple of str
        The line quantified for each element, HyperSpy style (``"Fe_Ka"``); the
        spectrum holds every line of that family (K, L or M).
    brightness : float
        Counts per unit thickness relative to the other phases (a light oxide
        emits fewer X-rays than a metal).
    grains : int
        Number of grains; 0 for the matrix, which fills what the grains leave.
    radius : (float, float)
        Range of grain radii as a fraction of the scan's shorter side, so a
        512 x 512 phantom is the 128 x 128 one sampled four times finer.
    """

    name: str
    composition: Mapping[str, float]
    xray_lines: tuple[str, ...]
    brightness: float = 1.0
    grains: int = 0
    radius: tuple[float, float] = (0.0, 0.0)


#: Matrix (first, fills the rest), then medium grains, one large inclusion and
#: small particles 4-8 pixels across at 128 x 128. Ag La/Lb and Cd La overlap.
DEFAULT_PHASES = (
    Phase("Fe-Cr-Ni alloy matrix", {"Fe": 70.0, "Cr": 19.0, "Ni": 11.0}, ("Fe_Ka", "Cr_Ka", "Ni_Ka")),
    Phase("Cu-rich grains", {"Cu": 88.0, "Ni": 7.0, "Fe": 5.0}, ("Cu_Ka", "Ni_Ka", "Fe_Ka"),
          brightness=1.1, grains=4, radius=(0.06, 0.09)),
    Phase("Al2O3 inclusion", {"Al": 40.0, "O": 60.0}, ("Al_Ka", "O_Ka"),
          brightness=0.6, grains=1, radius=(0.13, 0.15)),
    Phase("Ag-Cd particles", {"Ag": 65.0, "Cd": 35.0}, ("Ag_La", "Cd_La"),
          brightness=1.3, grains=6, radius=(0.016, 0.031)),
)


#: A sulfide ore: sphalerite matrix with some Fe, then chalcopyrite grains 6-10 pixels across,
#: galena grains 4-8 pixels across (Pb Ma at 2.346 keV overlaps S Ka at 2.307 keV) and Ag-rich
#: acanthite grains 3-6 pixels across, at 128 x 128 (radii as a fraction of the shorter side:
#: d pixels across is d / 256). Use with ``embedding=RESIN``; at% are stoichiometric.
SULFIDE_PHASES = (
    Phase("sphalerite (Zn,Fe)S matrix", {"Zn": 44.0, "Fe": 6.0, "S": 50.0}, ("Zn_Ka", "Fe_Ka", "S_Ka")),
    Phase("chalcopyrite CuFeS2 grains", {"Cu": 25.0, "Fe": 25.0, "S": 50.0}, ("Cu_Ka", "Fe_Ka", "S_Ka"),
          brightness=1.0, grains=6, radius=(6 / 256, 10 / 256)),
    Phase("galena PbS grains", {"Pb": 50.0, "S": 50.0}, ("Pb_Ma", "S_Ka"),
          brightness=1.2, grains=8, radius=(4 / 256, 8 / 256)),
    Phase("acanthite Ag2S grains", {"Ag": 200 / 3, "S": 100 / 3}, ("Ag_La", "S_Ka"),
          brightness=1.3, grains=10, radius=(3 / 256, 6 / 256)),
)

#: Epoxy embedding resin (bisphenol-A diglycidyl ether C21H24O4 without its H, which EDX does
#: not see): so dim that at 200 counts per sample pixel its pixels hold about 5 counts.
RESIN = Phase("epoxy resin embedding", {"C": 84.0, "O": 16.0}, ("C_Ka", "O_Ka"), brightness=0.025)


@lru_cache(maxsize=None)
def _family(line: str) -> tuple[tuple[float, float], ...]:
    """(energy keV, relative weight) of every line of ``line``'s family, from exspy's database."""
    from exspy.material import elements  # lazy: pulls in HyperSpy

    element, _, name = line.partition("_")
    table = elements[element]["Atomic_properties"]["Xray_lines"]
    if name not in table:
        raise ValueError(f"{line!r}: {element} has no line {name!r} in exspy's database")
    return tuple((float(p["energy (keV)"]), float(p["weight"]))
                 for key, p in table.as_dictionary().items() if key[0] == name[0])


@lru_cache(maxsize=None)
def _atomic_number(element: str) -> int:
    from exspy.material import elements

    return int(elements[element]["General_properties"]["Z"])


def fwhm_kev(resolution_mnka_ev: float, energy_kev):
    """Detector FWHM (keV) at ``energy_kev``, exspy's Fiori-Newbury rule."""
    try:
        from exspy._misc.eds.utils import get_FWHM_at_Energy
    except ImportError:  # private in exspy 0.3; same formula
        return np.sqrt(resolution_mnka_ev ** 2 + 2.5 * (np.asarray(energy_kev) - 5.9) * 1000) / 1000
    return get_FWHM_at_Energy(resolution_mnka_ev, energy_kev)


@dataclass(frozen=True)
class Phantom:
    """A synthetic specimen with its true answer.

    Attributes
    ----------
    phases : tuple of Phase
    labels : numpy.ndarray of int, shape (rows, columns)
        The phase that dominates each pixel (index into ``phases``).
    fractions : numpy.ndarray of float32, shape (n_phases, rows, columns)
        Mixing weight of each phase per pixel; they sum to 1.
    thickness : numpy.ndarray of float32, shape (rows, columns)
        Relative thickness (mean about 1).
    spectra : numpy.ndarray of float64, shape (n_phases, channels)
        Expected counts per unit thickness of each pure phase; each sums to its brightness.
    compositions : tuple of dict
        True atomic percent of each phase.
    energy_axis : edx_protocol.EnergyAxis
    beam_energy_kev, resolution_ev : float
    kfactors : dict of str to float
        The k-factor of every line, as used to build the spectra.
    true_offset_kev, true_scale_kev : float
        The axis the spectra were generated on; ``energy_axis`` (what the start message
        declares) differs from it when the phantom was built with a miscalibration.
    embedding_label : int or None
        Index of the embedding phase (the last one), None without an embedding.
    grains : tuple of (int, float, float, float)
        Every grain placed: (phase index, centre row, centre column, radius in pixels).
    """

    phases: tuple[Phase, ...]
    labels: np.ndarray
    fractions: np.ndarray
    thickness: np.ndarray
    spectra: np.ndarray
    compositions: tuple[dict[str, float], ...]
    energy_axis: EnergyAxis
    beam_energy_kev: float
    resolution_ev: float
    kfactors: dict[str, float]
    _rate: np.ndarray = field(repr=False)   # (n_pixels,) expected counts per unit dose
    _mix: np.ndarray = field(repr=False)    # (n_pixels, n_phases) cumulative P(phase | X-ray)
    true_offset_kev: float | None = None
    true_scale_kev: float | None = None
    embedding_label: int | None = None
    grains: tuple[tuple[int, float, float, float], ...] = field(default=(), repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.labels.shape

    @property
    def elements(self) -> list[str]:
        return sorted({e for c in self.compositions for e in c})

    @property
    def xray_lines(self) -> list[str]:
        return sorted({line for p in self.phases for line in p.xray_lines})

    def expected_total(self, dose: float) -> np.ndarray:
        """Expected counts per pixel (rows, columns); their mean is ``dose``."""
        return (self._rate * dose).reshape(self.shape)

    def expected_sum(self, dose: float, mask: np.ndarray | None = None) -> np.ndarray:
        """Expected spectrum (channels,) summed over the pixels of ``mask`` (all by default).

        Cheap at any scan size, unlike :meth:`expected`.
        """
        weight = self.fractions * self.thickness * self._scale
        if mask is not None:
            weight = weight[:, np.asarray(mask, dtype=bool)]
        return dose * weight.reshape(len(self.phases), -1).sum(axis=1, dtype=np.float64) @ self.spectra

    def expected(self, dose: float) -> np.ndarray:
        """Expected counts cube (rows, columns, channels) as float32.

        Dense: 2 GB at 512 x 512 x 2048; use :meth:`expected_sum` for large scans.
        """
        weight = (self.fractions * (self.thickness * self._scale * dose)).reshape(len(self.phases), -1)
        return (weight.T @ self.spectra.astype(np.float32)).reshape(*self.shape, -1)

    @property
    def _scale(self) -> float:
        # Thickness and brightness are relative: scale so the mean counts per pixel equal the dose.
        per_pixel = self.thickness.ravel() * (self.fractions.reshape(len(self.phases), -1).T
                                              @ self.spectra.sum(axis=1))
        return float(1.0 / per_pixel.mean())

    def frames(self, dose: float, n_frames: int, seed=None) -> Iterator[dict[str, np.ndarray]]:
        """Poisson X-ray events sweep by sweep: ``{"pixel": <u4, "channel": <u2}``, sorted by pixel.

        Each sweep gets ``dose / n_frames`` counts per pixel on average; the
        sum of the sweeps is a Poisson draw of :meth:`expected` at ``dose``.
        The same seed gives the same events.
        """
        _check_int("n_frames", n_frames, allow_none=False)
        rng = np.random.default_rng(seed)
        lam = self._rate * (dose / n_frames)
        # One searchsorted over every phase's CDF: phase k's CDF is shifted up by k.
        cdf = np.cumsum(self.spectra, axis=1)
        cdf /= cdf[:, -1:]
        stacked = (cdf + np.arange(len(cdf))[:, None]).ravel()
        channels = self.spectra.shape[1]
        for _ in range(n_frames):
            pixel = np.repeat(np.arange(lam.size, dtype=np.uint32), rng.poisson(lam))
            phase = self._draw_phase(pixel, rng)
            index = np.searchsorted(stacked, rng.random(pixel.size) + phase, side="right")
            channel = np.minimum(index - phase * channels, channels - 1)
            yield {"pixel": pixel, "channel": channel.astype(np.uint16)}

    def _draw_phase(self, pixel: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        u = rng.random(pixel.size, dtype=np.float32)
        cum = self._mix[pixel]
        return (u[:, None] >= cum[:, :-1]).sum(axis=1, dtype=np.int64)

    def binned_labels(self, factor: int) -> np.ndarray:
        """True label of each ``factor`` x ``factor`` block: the phase with the largest summed fraction.

        The scan is padded with the matrix phase up to a multiple of ``factor``,
        as the service pads an odd scan.
        """
        return np.argmax(_block_sum(self.fractions, factor, fill=(1.0, 0.0)), axis=0)

    def binned_counts(self, dose: float, factor: int, seed=None, block_rows: int = 16) -> np.ndarray:
        """A Poisson draw of the counts summed over ``factor`` x ``factor`` pixels, uint32 (r, c, channels).

        The same in distribution as accumulating :meth:`frames` and binning, since a sum of
        independent Poisson counts is Poisson; cheap at 512 x 512 x 2048, drawn ``block_rows``
        binned rows at a time.
        """
        rng = np.random.default_rng(seed)
        weight = _block_sum(self.fractions * (self.thickness * self._scale * dose), factor, fill=(0.0, 0.0))
        spectra = self.spectra.astype(np.float32)
        out = np.empty((*weight.shape[1:], spectra.shape[1]), dtype=np.uint32)
        for r0 in range(0, out.shape[0], block_rows):
            lam = np.einsum("krc,ke->rce", weight[:, r0:r0 + block_rows], spectra)
            out[r0:r0 + block_rows] = rng.poisson(lam)
        return out

    def adf_expected(self) -> np.ndarray:
        """Expected annular dark-field image (rows, columns), float32, with mean :data:`ADF_MEAN`.

        Each pixel is its thickness times the sum over phases of the phase's
        fraction times its mean atomic number (over atoms) to the power
        :data:`ADF_Z_EXPONENT`: heavy phases and thick areas are bright.
        """
        z = np.array([sum(a * _atomic_number(e) for e, a in c.items()) / sum(c.values())
                      for c in self.compositions]) ** ADF_Z_EXPONENT
        signal = self.thickness * np.tensordot(z, self.fractions, axes=1)
        return (signal * (ADF_MEAN / signal.mean())).astype(np.float32)

    def adf_image(self, frame_index: int, seed=None) -> np.ndarray:
        """Sweep ``frame_index``'s ADF image: :meth:`adf_expected` plus Gaussian noise, float32.

        The noise's standard deviation is :data:`ADF_NOISE` of the mean; the same
        seed and sweep give the same image.
        """
        expected = self.adf_expected()
        rng = np.random.default_rng(None if seed is None else (int(seed), int(frame_index)))
        noise = rng.normal(0.0, ADF_NOISE * ADF_MEAN, expected.shape)
        return (expected + noise).astype(np.float32)

    def start_fields(self, frames: int | None = None, dose: float | None = None) -> dict:
        """Keyword arguments for :class:`edx_protocol.Start` except the id and seq."""
        rows, columns = self.shape
        title = f"synthetic {len(self.phases)}-phase phantom {rows}x{columns}"
        return {
            "scan_shape": self.shape, "energy_axis": self.energy_axis, "beam_energy_kev": self.beam_energy_kev,
            "detectors": [Detector(name="synthetic", elevation_deg=DEFAULT_ELEVATION_DEG,
                                   azimuth_deg=DEFAULT_AZIMUTH_DEG, energy_resolution_mnka_ev=self.resolution_ev)],
            "expected_frames": frames, "elements": self.elements, "xray_lines": self.xray_lines,
            "instrument": "edx_adapters.synthetic",
            "title": title if dose is None else f"{title} at {dose:g} counts/pixel",
        }


def make_phantom(shape: tuple[int, int] = (128, 128), phases: Sequence[Phase] = DEFAULT_PHASES,
                 channels: int = 2048, offset_kev: float = 0.0, scale_kev: float = 0.01,
                 beam_energy_kev: float = 200.0, resolution_ev: float = DEFAULT_RESOLUTION_EV,
                 boundary_px: float | None = None, seed=0, *, embedding: Phase | None = None,
                 embedding_fraction: float = 0.2, thickness_range: tuple[float, float] = (0.8, 1.2),
                 miscalibration: tuple[float, float] = (0.0, 0.0)) -> Phantom:
    """Build a phantom: grains laid out with ``seed``, spectra from exspy's line database.

    Parameters
    ----------
    shape : (int, int)
        Scan (rows, columns).
    phases : sequence of Phase
        The first is the matrix; the others are placed as grains, largest first, without overlap.
    channels, offset_kev, scale_kev : int, float, float
        Energy axis: E(channel i) = offset + i * scale.
    beam_energy_kev : float
        Lines above it are not excited.
    resolution_ev : float
        Detector FWHM at Mn Ka.
    boundary_px : float, optional
        Width over which phases mix at a boundary (default 2 pixels at 128, scaled with the scan).
    seed : None, int or numpy.random.Generator
    embedding : Phase, optional
        A band of this phase (resin, or near-vacuum: a very low ``brightness``) along the
        top edge, its own phase of the truth (the last label), with a wavy boundary mixed over
        ``boundary_px``; no grain is placed in it. Its ``grains`` and ``radius`` are ignored.
        :data:`RESIN` gives about 5 counts per pixel where the sample gives 200.
    embedding_fraction : float
        Mean share of the rows the band covers (0 to 0.6).
    thickness_range : (float, float)
        Relative thickness at the first and last column of the wedge (default 0.8 to 1.2;
        e.g. 0.4 to 1.6 for a steep one); seeded bumps of at most +-0.15 come on top.
    miscalibration : (float, float)
        (offset error in keV, relative gain error): the spectra are generated on the true axis
        E(i) = offset + offset_error + i * scale * (1 + gain_error) while :attr:`Phantom.energy_axis`
        and the start message declare offset + i * scale, as a file whose calibration is off.
        A line at E then peaks at offset + (E - offset - offset_error) / (1 + gain_error) on the
        declared axis.

    Raises
    ------
    ValueError
        Unknown element or line, grains that do not fit in the scan, or an impossible
        embedding, thickness range or miscalibration.
    """
    rng = np.random.default_rng(seed)
    rows, columns = (int(n) for n in shape)
    axis = EnergyAxis(offset_kev=offset_kev, scale_kev=scale_kev, channels=channels)
    width = boundary_px if boundary_px is not None else 2.0 * min(rows, columns) / 128
    lo, hi = (float(t) for t in thickness_range)
    if not 0.15 < lo <= hi:
        raise ValueError(f"thickness_range must be (low, high) with 0.15 < low <= high (the bumps reach "
                         f"+-0.15), got {thickness_range!r}")
    offset_error, gain_error = (float(v) for v in miscalibration)
    if not (np.isfinite(offset_error) and -0.5 < gain_error < 0.5):
        raise ValueError(f"miscalibration must be (offset error keV, gain error within +-0.5), got {miscalibration!r}")
    phases = tuple(phases)
    band = None
    if embedding is not None:
        if not 0 < embedding_fraction <= 0.6:
            raise ValueError(f"embedding_fraction must be in (0, 0.6], got {embedding_fraction!r}")
        band = _band((rows, columns), embedding_fraction, width, rng)
    placed: list[tuple[int, float, float, float]] = []
    fractions = _layout(phases, (rows, columns), width, rng, band=band, placed=placed)
    if band is not None:
        phases = phases + (embedding,)
    thickness = _thickness((rows, columns), rng, (lo, hi))
    compositions = tuple({e: 100.0 * v / sum(p.composition.values()) for e, v in p.composition.items()}
                         for p in phases)
    kfactors = {line: 1.0 for p in phases for line in p.xray_lines}
    true_offset, true_scale = offset_kev + offset_error, scale_kev * (1 + gain_error)
    energy = true_offset + true_scale * np.arange(channels)
    spectra = np.stack([_spectrum(p, c, energy, beam_energy_kev, resolution_ev, kfactors)
                        for p, c in zip(phases, compositions)])
    # P(phase | an X-ray from this pixel) follows fraction times brightness.
    emit = fractions.reshape(len(phases), -1).T * spectra.sum(axis=1)
    rate = emit.sum(axis=1) * thickness.ravel()
    rate /= rate.mean()
    mix = np.cumsum(emit / emit.sum(axis=1, keepdims=True), axis=1, dtype=np.float32)
    labels = np.argmax(fractions, axis=0)
    return Phantom(tuple(phases), labels, fractions, thickness, spectra, compositions, axis,
                   float(beam_energy_kev), float(resolution_ev), kfactors, rate, mix,
                   true_offset_kev=float(true_offset), true_scale_kev=float(true_scale),
                   embedding_label=len(phases) - 1 if band is not None else None, grains=tuple(placed))


def phase_spectrum(composition: Mapping[str, float], xray_lines: Sequence[str], counts: float = 1.0, *,
                   kfactors: Mapping[str, float] | None = None, channels: int = 2048, scale_kev: float = 0.01,
                   offset_kev: float = 0.0, beam_energy_kev: float = 200.0,
                   resolution_ev: float = DEFAULT_RESOLUTION_EV) -> np.ndarray:
    """Expected spectrum of one phase, ``counts`` counts in all, with known k-factors.

    The phantom's intensity model: each element's principal line (``xray_lines``) has an
    intensity proportional to its weight fraction divided by its k-factor (1 when not
    given), every line of its family follows with exspy's weights and the detector's
    width, on a Kramers continuum. Cliff-Lorimer with ``kfactors`` returns ``composition``
    (atomic percent). Draw a measurement with ``numpy.random.Generator.poisson``.
    """
    total = sum(composition.values())
    atomic = {e: 100.0 * v / total for e, v in composition.items()}
    factors = {line: 1.0 for line in xray_lines} | dict(kfactors or {})
    energy = offset_kev + scale_kev * np.arange(channels)
    phase = Phase("phase", atomic, tuple(xray_lines))
    return counts * _spectrum(phase, atomic, energy, beam_energy_kev, resolution_ev, factors)


def _spectrum(phase: Phase, atomic: Mapping[str, float], energy: np.ndarray, beam_kev: float,
              resolution_ev: float, kfactors: Mapping[str, float]) -> np.ndarray:
    """Expected spectrum of a pure phase, summing to its brightness."""
    from exspy.material import atomic_to_weight

    elements = [line.partition("_")[0] for line in phase.xray_lines]
    if sorted(elements) != sorted(atomic):
        raise ValueError(f"phase {phase.name!r}: give one X-ray line per element of its composition")
    weight = np.asarray(atomic_to_weight([atomic[e] for e in elements], elements), dtype=float)
    weight /= weight.sum()
    scale = energy[1] - energy[0] if energy.size > 1 else 1.0
    lines = np.zeros_like(energy)
    for line, w in zip(phase.xray_lines, weight):
        for e_line, rel in _family(line):
            if e_line >= beam_kev:
                continue
            sigma = fwhm_kev(resolution_ev, e_line) / (2 * np.sqrt(2 * np.log(2)))
            peak = np.exp(-0.5 * ((energy - e_line) / sigma) ** 2) * scale / (sigma * np.sqrt(2 * np.pi))
            lines += w / kfactors[line] * rel * peak
    z_mean = float(np.dot(weight, [_atomic_number(e) for e in elements]))
    positive = np.clip(energy, 1e-6, None)
    kramers = np.where(energy > 0, np.clip(beam_kev - energy, 0, None) / positive, 0.0)
    kramers *= np.exp(-(ABSORPTION_KEV / positive) ** 3)
    kramers *= CONTINUUM_PER_LINE_AT_FE * z_mean / 26 * lines.sum() / kramers.sum()
    total = lines + kramers
    return phase.brightness * total / total.sum()


def _layout(phases: Sequence[Phase], shape: tuple[int, int], width: float,
            rng: np.random.Generator, band: tuple[np.ndarray, float] | None = None,
            placed: list | None = None) -> np.ndarray:
    """Fractions (n_phases, rows, columns): grains with soft, slightly wavy edges in the matrix.

    With ``band`` (the embedding's fraction and the lowest row it reaches, from :func:`_band`),
    the fractions get one more layer, the embedding's, and grains stay below it. Each grain
    placed is appended to ``placed`` as (phase, centre row, centre column, radius).
    """
    rows, columns = shape
    side = min(shape)
    grains = sorted(((rng.uniform(*p.radius) * side, k) for k, p in enumerate(phases) for _ in range(p.grains)),
                    reverse=True)
    fractions = np.zeros((len(phases) + (band is not None), rows, columns), dtype=np.float32)
    if band is not None:
        fractions[-1] = band[0]
    top = 0.0 if band is None else band[1] + width / 2
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    placed = [] if placed is None else placed
    for radius, k in grains:
        cy, cx = _place(radius, [g[1:] for g in placed], shape, width, rng, top)
        placed.append((k, cy, cx, float(radius)))
        angle = np.arctan2(y - cy, x - cx)
        wobble = 1 + 0.08 * np.cos(2 * angle + rng.uniform(0, 2 * np.pi)) \
            + 0.05 * np.cos(3 * angle + rng.uniform(0, 2 * np.pi))
        inside = radius * wobble - np.hypot(y - cy, x - cx)
        fractions[k] += np.clip(0.5 + inside / width, 0, 1)
    fractions[0] = 1 - fractions[1:].sum(axis=0)
    if band is not None:
        np.clip(fractions[0], 0, None, out=fractions[0])  # rounding only: grains stay clear of the band
    return fractions


def _band(shape: tuple[int, int], fraction: float, width: float,
          rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """The embedding along the top edge: (its fraction per pixel, the lowest row its boundary reaches).

    The boundary wanders around ``fraction`` of the rows by two seeded waves and mixes
    the embedding with the sample over ``width`` pixels, as a grain's edge does.
    """
    rows, columns = shape
    x = np.arange(columns, dtype=np.float32) / columns
    amplitude = 0.04 * rows
    edge = fraction * rows + amplitude * (0.6 * np.sin(2 * np.pi * (1.5 * x + rng.uniform(0, 1)))
                                          + 0.4 * np.sin(2 * np.pi * (3.5 * x + rng.uniform(0, 1))))
    y = np.arange(rows, dtype=np.float32)[:, None]
    share = np.clip(0.5 + (edge[None, :] - y) / width, 0, 1).astype(np.float32)
    return share, float(edge.max()) + width / 2


def _place(radius: float, placed, shape, width: float, rng: np.random.Generator,
           top: float = 0.0) -> tuple[float, float]:
    """A centre for a grain that keeps it inside the scan, below row ``top`` and clear of the grains placed."""
    margin = 1.15 * radius + width
    for _ in range(2000):
        cy, cx = (rng.uniform(start + margin, n - margin) if n - start > 2 * margin else np.nan
                  for n, start in zip(shape, (top, 0.0)))
        if np.isnan(cy) or np.isnan(cx):
            break
        if all(np.hypot(cy - py, cx - px) > 1.15 * (radius + pr) + 2 * width for py, px, pr in placed):
            return float(cy), float(cx)
    raise ValueError(f"cannot place a grain of radius {radius:.1f} px in a {shape} scan; "
                     "use fewer or smaller grains, or a larger scan")


def _thickness(shape: tuple[int, int], rng: np.random.Generator,
               wedge: tuple[float, float] = (0.8, 1.2)) -> np.ndarray:
    """A wedge (``wedge[0]`` to ``wedge[1]`` across the columns) with gentle seeded bumps (at most +-0.15)."""
    y, x = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    y, x = y / shape[0], x / shape[1]
    bumps = sum(0.05 * np.sin(2 * np.pi * (f * x + g * y) + rng.uniform(0, 2 * np.pi))
                for f, g in rng.integers(1, 4, size=(3, 2)))
    low, high = wedge
    return (low + (high - low) * x + bumps).astype(np.float32)


def synthetic_replay(phantom: Phantom, dose: float = 200.0, frames: int = 10, seed=0,
                     chunk_pixels: int | None = None, acquisition_id: str | None = None) -> Replay:
    """The phantom's acquisition as a :class:`~edx_adapters.replay.Replay` of events frames.

    Each sweep's events are followed by its ADF image (:meth:`Phantom.adf_image`,
    detector ``"HAADF"``).

    Parameters
    ----------
    phantom : Phantom
    dose : float
        Mean counts per pixel over the whole acquisition.
    frames : int
        Sweeps; each carries ``dose / frames`` counts per pixel on average.
    seed : None or int
        Seed of the Poisson draws; :meth:`Replay.messages` yields the same
        events at every call and for any ``chunk_pixels``.
    chunk_pixels : int, optional
        Pixels per message (default one scan row).
    acquisition_id : str, optional
        Default ``synthetic-`` plus a random suffix.
    """
    _check_int("frames", frames, allow_none=False)
    _check_int("chunk_pixels", chunk_pixels)
    if not dose > 0:
        raise ValueError(f"dose must be positive (mean counts per pixel), got {dose!r}")
    n_pixels = phantom.labels.size

    def chunks(block: int) -> Iterator[Chunk]:
        for index, events in enumerate(phantom.frames(dose, frames, seed)):
            ranges = list(split_by_pixel(events["pixel"], n_pixels, block)) or [(0, 0)]
            for lo, hi in ranges:  # an empty sweep still sends one message, as for .pts files
                yield Chunk(index, EventsFrame, {}, {name: a[lo:hi] for name, a in events.items()})

    fields = phantom.start_fields(frames, dose)
    start = Start(acquisition_id=acquisition_id or default_acquisition_id("synthetic"), seq=0, **fields)
    chunk = int(chunk_pixels) if chunk_pixels is not None else phantom.shape[1]
    images = SweepImages("HAADF", lambda index: phantom.adf_image(index, seed))
    return Replay(start=start, frames=frames, chunk_pixels=chunk, path=Path("synthetic"),
                  _source=Source(fields, frames, chunks, images))


def _block_sum(stack: np.ndarray, factor: int, fill: tuple[float, float]) -> np.ndarray:
    """Sum (n, rows, columns) over ``factor`` x ``factor`` blocks.

    The scan is first padded up to multiples of ``factor``: layer 0 with ``fill[0]``,
    the rest with ``fill[1]``.
    """
    _check_int("factor", factor, allow_none=False)
    n, rows, columns = stack.shape
    pr, pc = -rows % factor, -columns % factor
    if pr or pc:
        padded = np.full((n, rows + pr, columns + pc), fill[1], dtype=stack.dtype)
        padded[0] = fill[0]
        padded[:, :rows, :columns] = stack
        stack, rows, columns = padded, rows + pr, columns + pc
    return stack.reshape(n, rows // factor, factor, columns // factor, factor).sum(axis=(2, 4))

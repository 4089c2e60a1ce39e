"""X-ray line names checked against exspy's element database, and lines chosen the exspy way."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .signal import eds_signal


class LineError(ValueError):
    """An X-ray line or element that exspy does not know, or that the spectrum cannot hold."""


def _database():
    # Imported lazily: exspy pulls in HyperSpy (~1.5 s), which the
    # configuration should not pay just to be imported.
    from exspy.material import elements

    return elements


def validate_line(line: str) -> str:
    """Return ``line`` (e.g. ``"Fe_Ka"``) if exspy's database has it, else raise :class:`LineError`.

    The message names the lines the element does have.
    """
    db = _database()
    element, sep, family = str(line).strip().partition("_")
    if not sep or not element or not family:
        raise LineError(f"{line!r} is not an X-ray line name: write ELEMENT_LINE, e.g. 'Fe_Ka' or 'Pt_La'")
    if element not in db:
        raise LineError(f"{line!r}: {element!r} is not a chemical element symbol known to exspy "
                        "(symbols are case-sensitive, e.g. 'Fe', 'Pt')")
    known = list(db[element]["Atomic_properties"]["Xray_lines"].keys())
    if family not in known:
        raise LineError(f"{line!r} is not an X-ray line of {element} in exspy's database; "
                        f"{element} has {', '.join(f'{element}_{k}' for k in known)}")
    return f"{element}_{family}"


def line_energy(line: str) -> float:
    """Energy (keV) of an X-ray line from exspy's database."""
    element, _, family = validate_line(line).partition("_")
    return float(_database()[element]["Atomic_properties"]["Xray_lines"][family]["energy (keV)"])


def main_lines(element: str, low_kev: float, high_kev: float, min_weight: float = 0.5) -> list[tuple[str, float]]:
    """(line, energy in keV) of ``element``'s lines of at least ``min_weight`` between the two energies (exspy's database)."""
    lines = _database()[element]["Atomic_properties"]["Xray_lines"]
    found = [(f"{element}_{family}", float(lines[family]["energy (keV)"])) for family in lines.keys()
             if float(lines[family]["weight"]) >= min_weight]
    return [(name, energy) for name, energy in found if low_kev < energy < high_kev]


def marked_lines(xray_lines: Iterable[str], fit_only: Iterable[str], low_kev: float,
                 high_kev: float) -> dict[str, list]:
    """The lines a spectrum plot marks: the quantified ones, and the main lines of elements only fitted.

    Returned as entries of a composition's ``fit``: ``marked_lines`` (names) and ``marked_lines_kev``.
    """
    marked = [(line, line_energy(line)) for line in xray_lines]
    for element in fit_only:
        marked += main_lines(element, low_kev, high_kev)
    marked.sort(key=lambda item: item[1])
    return {"marked_lines": [name for name, _ in marked], "marked_lines_kev": [round(e, 4) for _, e in marked]}


def highest_line_kev(elements: Iterable[str], below_kev: float, min_weight: float = 0.01) -> float | None:
    """Energy (keV) of the highest line of ``elements`` below ``below_kev``, from exspy's database.

    Lines weaker than ``min_weight`` (relative to the strongest of their family) are
    ignored. None when no element has a line below ``below_kev``.
    """
    db = _database()
    energies = []
    for element in elements:
        element = str(element).strip()
        if element not in db:
            raise LineError(f"{element!r} is not a chemical element symbol known to exspy")
        lines = db[element]["Atomic_properties"]["Xray_lines"]
        for family in lines.keys():
            line = lines[family]
            energy = float(line["energy (keV)"])
            if energy < below_kev and float(line["weight"]) >= min_weight:
                energies.append(energy)
    return max(energies) if energies else None


def check_in_range(lines: Iterable[str], low_kev: float, high_kev: float, beam_energy_kev: float) -> None:
    """Raise :class:`LineError` for lines outside the spectrum or above the beam energy.

    exspy's ``get_lines_intensity`` silently drops such lines, which would
    misalign intensities and k-factors; we refuse them instead, with the
    same rule exspy uses (``low < E < min(high, beam energy)``).
    """
    top = min(high_kev, beam_energy_kev)
    outside = [f"{line} ({line_energy(line):.3f} keV)" for line in lines
               if not low_kev < line_energy(line) < top]
    if outside:
        raise LineError(f"X-ray lines outside the spectrum {low_kev:.3f}..{top:.3f} keV: "
                        f"{', '.join(outside)}; choose another line of the element (e.g. an L line "
                        "instead of K) or widen the accumulated energy range")


def set_lines(signal, beam_energy_kev: float, xray_lines: Iterable[str] = (),
              elements: Iterable[str] = ()) -> list[str]:
    """Put lines on an exspy EDS signal the exspy way and return them (sorted, as exspy keeps them).

    Explicit ``xray_lines`` are used as given; each element without one gets
    the line exspy's ``add_lines`` picks for the beam energy and the
    spectrum's range (``set_elements`` + ``set_lines``). Raises
    :class:`LineError` for an element left without a line: quantifying
    without it would silently renormalise the others.
    """
    xray_lines = [validate_line(line) for line in xray_lines]
    ax = signal.axes_manager.signal_axes[0]
    check_in_range(xray_lines, ax.low_value, ax.high_value, beam_energy_kev)
    elements = list(elements)
    try:
        signal.set_elements(elements)
    except ValueError as exc:
        raise LineError(f"{exc} Elements must be symbols such as 'Fe', 'Pt'.") from None
    signal.set_lines(xray_lines)
    lines = [str(line) for line in signal.metadata.Sample.xray_lines]
    _one_line_per_element(lines, elements)
    return lines


def _one_line_per_element(lines: list[str], requested: list[str]) -> None:
    elements = [line.partition("_")[0] for line in lines]
    lineless = sorted(set(requested) - set(elements))
    if lineless:
        raise LineError(f"no X-ray line of {', '.join(lineless)} lies in the spectrum's energy range "
                        "below the beam energy; remove the element or widen the energy range")
    doubled = sorted({e for e in elements if elements.count(e) > 1})
    if doubled:
        raise LineError(f"give one X-ray line per element for Cliff-Lorimer; {', '.join(doubled)} "
                        f"has several in {lines}")


def resolve_lines(xray_lines: Iterable[str], elements: Iterable[str], beam_energy_kev: float, *,
                  offset_kev: float | None = None, scale_kev: float | None = None,
                  channels: int | None = None) -> list[str]:
    """The X-ray lines exspy would quantify for these lines and elements.

    Parameters
    ----------
    xray_lines : iterable of str
        Lines to use as given, e.g. ``["Fe_Ka"]``.
    elements : iterable of str
        Elements; those without a line in ``xray_lines`` get exspy's choice.
    beam_energy_kev : float
    offset_kev, scale_kev, channels : float, float, int, optional
        Energy axis of the spectra. exspy only picks lines inside it, so pass
        it: without it the range is 0 .. beam energy, and a 200 keV beam then
        picks e.g. Pt_Ka where a 20 keV spectrum needs Pt_La.

    Returns
    -------
    list of str
        Sorted line names; empty when neither lines nor elements are given.
    """
    if offset_kev is None or scale_kev is None or channels is None:
        offset_kev, scale_kev, channels = 0.0, 0.01, int(np.ceil(beam_energy_kev / 0.01)) + 1
    s = eds_signal(np.zeros(int(channels), dtype=np.float32), offset_kev, scale_kev, beam_energy_kev)
    return set_lines(s, beam_energy_kev, xray_lines, elements)

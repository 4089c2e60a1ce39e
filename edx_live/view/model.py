"""What the page shows, computed from result documents: pure functions, no Bokeh, no sockets.

Everything here takes decoded documents (``edx_protocol`` headers and their arrays)
and returns plain numbers, strings and arrays, so it is tested without a browser.
"""

from __future__ import annotations

import html
from collections.abc import Mapping

import numpy as np

from edx_live.colours import NOISE_COLOUR, NOISE_LABEL, cluster_colour


def _rgba(hex_colour: str, alpha: int = 255) -> int:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return int(np.uint32(r | g << 8 | b << 16 | alpha << 24))


def label_rgba(labels: np.ndarray) -> np.ndarray:
    """A label map as packed RGBA (uint32, little-endian R first: Bokeh's ``image_rgba``)."""
    labels = np.asarray(labels)
    out = np.empty(labels.shape, dtype=np.uint32)
    for value in np.unique(labels):
        out[labels == value] = _rgba(cluster_colour(int(value)))
    return out


def short_label(elements: Mapping, top: int = 4) -> str:
    """A cluster's composition in a few characters, e.g. ``"Fe56 Pt44"`` (detected elements, largest first)."""
    values = [(sym, e.atomic_percent) for sym, e in elements.items()
              if e.detected and e.atomic_percent is not None and np.isfinite(e.atomic_percent)]
    values.sort(key=lambda kv: -kv[1])
    return " ".join(f"{sym}{value:.0f}" for sym, value in values[:top]) or "-"


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def element_cell(e) -> str:
    """One element of one cluster as table HTML: ``56.1 ± 0.4`` with the sigma's parts on hover."""
    if not e.detected:
        limit = e.detection_limit_atomic_percent
        tip = "below the detection threshold" + (f": would be seen above {limit:.2f} at%" if limit is not None else "")
        return f'<span style="color:#888;font-style:italic" title="{html.escape(tip)}">n.d. (&lt; {_fmt(limit, 2)})</span>'
    parts = [("counting", e.atomic_percent_sigma_counting), ("spread", e.atomic_percent_sigma_spread),
             ("bias", e.atomic_percent_sigma_bias)]
    tip = "1σ parts: " + ", ".join(f"{name} {_fmt(v, 2)}" for name, v in parts)
    if e.detection_limit_atomic_percent is not None:
        tip += f"; detection limit {e.detection_limit_atomic_percent:.2f} at%"
    return f'<span title="{html.escape(tip)}">{_fmt(e.atomic_percent)} ± {_fmt(e.atomic_percent_sigma)}</span>'


def time_to_target_text(t) -> str:
    """``reached``, ``not by counting``, or the sweeps and seconds still needed to reach the target sigma."""
    if t is None:
        return "-"
    if t.reached:
        return f"σ ≤ {t.target_sigma_atomic_percent:g}: reached"
    if not t.reachable:
        return f"σ ≤ {t.target_sigma_atomic_percent:g}: not by counting longer"
    when = [f"{t.sweeps:.0f} sweeps" if t.sweeps is not None else None,
            f"{t.seconds:.0f} s" if t.seconds is not None else None]
    when = ", ".join(w for w in when if w) or f"x{t.counts_factor:.1f} counts"
    return f"σ ≤ {t.target_sigma_atomic_percent:g}: {when} more ({t.limiting_element})"


def composition_table(composition) -> tuple[list[str], dict[str, list]]:
    """Columns of one workflow's composition table: its elements, and the rows by column name.

    Every row is one cluster: ``cluster`` (id), ``colour``, ``pixels``, one HTML cell per element,
    ``entropy`` (``S/R ± sigma``) and ``target`` (time to the target uncertainty).
    """
    elements = sorted({sym for c in composition.clusters for sym in c.elements})
    rows: dict[str, list] = {k: [] for k in ("cluster", "colour", "pixels", "entropy", "target", *elements)}
    for c in composition.clusters:
        rows["cluster"].append(int(c.label))
        rows["colour"].append(cluster_colour(c.label))
        core = f" ({c.core_pixels} {c.pixel_level})" if c.core_pixels is not None and c.pixel_level != "all" else ""
        rows["pixels"].append(f"{c.pixels}{core}")
        rows["entropy"].append(f"{_fmt(c.entropy_r, 3)} ± {_fmt(c.entropy_r_sigma, 3)}")
        rows["target"].append(time_to_target_text(c.time_to_target))
        for sym in elements:
            rows[sym].append(element_cell(c.elements[sym]) if sym in c.elements else "")
    return elements, rows


def kfactor_note(composition) -> str:
    """Where the k-factors came from, with theoretical ones marked as such (HTML)."""
    source = html.escape(composition.kfactor_source)
    if composition.kfactors_theoretical:
        return (f'<b style="color:#b00">THEORETICAL k-factors</b> ({source}): computed, not measured; '
                "treat the compositions as such")
    return f"k-factors: {source}"


def legend(clusters, composition=None) -> dict[str, list]:
    """Legend rows of one workflow's map: id, colour, pixels and a short composition label."""
    labels = {}
    if composition is not None and composition.refit == clusters.refit:
        labels = {c.label: short_label(c.elements) for c in composition.clusters}
    rows = {"cluster": [], "colour": [], "pixels": [], "label": []}
    for info in clusters.clusters:
        rows["cluster"].append(int(info.label))
        rows["colour"].append(cluster_colour(info.label))
        rows["pixels"].append(int(info.pixels))
        rows["label"].append(labels.get(info.label, "…"))
    if clusters.noise_pixels:
        rows["cluster"].append("noise")
        rows["colour"].append(NOISE_COLOUR)
        rows["pixels"].append(int(clusters.noise_pixels))
        rows["label"].append("unassigned")
    return rows


def confidence_map(labels: np.ndarray, confidence: np.ndarray | None) -> np.ndarray:
    """Confidence per binned pixel (float32), NaN where the pixel is noise: drawn in a colour of its own."""
    conf = (np.ones(labels.shape, np.float32) if confidence is None
            else np.asarray(confidence, dtype=np.float32).copy())
    conf[np.asarray(labels) == NOISE_LABEL] = np.nan
    return conf


def energies(header, channels: int) -> np.ndarray:
    """Channel energies (keV) of a clusters document's spectra."""
    return header.energy_offset_kev + header.energy_scale_kev * np.arange(channels)


def marked_lines(composition) -> list[tuple[str, float, str]]:
    """(line, energy in keV, ``quantified`` or ``fit only``) for every line the composition names with an energy."""
    if composition is None:
        return []
    fit = composition.fit or {}
    names, kev = fit.get("marked_lines") or [], fit.get("marked_lines_kev") or []
    quantified = {line.split("_")[0] for line in composition.xray_lines}
    return [(str(n), float(e), "quantified" if str(n).split("_")[0] in quantified else "fit only")
            for n, e in zip(names, kev)]


def progress_rows(status, clusters: Mapping[str, object], count_rate: float | None, advice=None,
                  targets=None) -> list[tuple[str, str]]:
    """(what, value) lines of the acquisition's progress, the stop advice and the best target."""
    if status is None:
        return []
    frames = f"{status.frames}" + (f" of {status.expected_frames}" if status.expected_frames else "")
    rejected = sum(status.rejected.values())
    rows = [("state", status.state), ("sweeps", frames), ("counts", f"{status.counts:,}"),
            ("count rate", "-" if count_rate is None else f"{count_rate:,.0f} /s"),
            ("refits", f"{status.refits}" + (f" (last {status.last_refit_s:.2f} s)" if status.last_refit_s else "")),
            ("rejected", f"{rejected}" + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(status.rejected.items()))
                                          + ")" if rejected else "")),
            ("gaps", f"{status.gaps.count}"), ("refit errors", f"{status.refit_errors}")]
    for workflow, header in sorted(clusters.items()):
        agreement = "" if header.agreement is None else f", agreement {header.agreement:.3f}"
        rows.append((f"{workflow}", ("converged" if header.converged else "not converged")
                     + f" (refit {header.refit}{agreement}; criterion: {header.convergence_criterion or '-'})"))
    if advice is not None:
        rows.append(("stop advice", ("STOP: " if advice.stop else "") + advice.message))
    if targets is not None:
        rows.append(("targets", f"{len(targets.targets)} regions" + (f"; best: {target_text(targets.targets[0])}"
                                                                     if targets.targets else "")))
    return rows


def target_text(target) -> str:
    """A target in a few words: its box and why."""
    r0, c0, r1, c1 = target.box_px
    return f"rows {r0}-{r1 - 1}, columns {c0}-{c1 - 1} ({', '.join(target.reasons)})"


def target_boxes(targets, workflow: str) -> dict[str, list]:
    """The targets ``workflow`` supports, as quads in scan pixels (row 0 on top) with their rank, for its map."""
    boxes = [t for t in targets.targets if workflow in t.workflows] if targets is not None else []
    return {"left": [t.box_px[1] for t in boxes], "right": [t.box_px[3] for t in boxes],
            "top": [t.box_px[0] for t in boxes], "bottom": [t.box_px[2] for t in boxes],
            "rank": [str(t.rank) for t in boxes], "why": [", ".join(t.reasons) for t in boxes]}

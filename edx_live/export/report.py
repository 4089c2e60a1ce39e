"""``report.png``: one A4 landscape page of an acquisition's results, for a lab notebook.

Left, the ADF image (or the total counts) and the facts: acquisition, main settings,
software versions. Then one row per workflow: its cluster map over the image, the
cluster-sum spectra with the quantified lines marked (energies from exspy's element
database), and the composition of every cluster in at% with its 1-sigma.

Drawn with matplotlib's Agg canvas on a figure of its own (no pyplot), so the
service can write it from any thread.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import numpy as np
from edx_protocol import Start

from edx_live.colours import CLUSTER_COLOURS, cluster_colour  # noqa: F401 (the report's colours)
from edx_live.quantify.lines import LineError, line_energy
from edx_live.segment.tracking import cluster_ids

#: A4 landscape, in inches, and the resolution it is written at.
PAGE_INCHES = (11.69, 8.27)
DPI = 150
#: Opacity of the cluster colours over the image.
OVERLAY_ALPHA = 0.55
#: Spectra are drawn up to the highest marked line plus this (keV).
SPECTRUM_MARGIN_KEV = 1.5
THEORETICAL_MARK = "†"
FONT = 8


def write_report(path: str | Path, start: Start, total_counts: np.ndarray, latest: Mapping, **kwargs) -> Path:
    """Draw the report page (:func:`draw_report`, same parameters) and save it as a PNG at ``path``."""
    path = Path(path)
    draw_report(start, total_counts, latest, **kwargs).savefig(path, dpi=DPI, format="png")
    return path


def draw_report(start: Start, total_counts: np.ndarray, latest: Mapping, *, image: np.ndarray | None = None,
                image_detector: str | None = None, facts: Mapping | None = None,
                settings: Mapping | None = None, versions: Mapping | None = None):
    """The report page as a matplotlib ``Figure`` on an Agg canvas.

    Parameters
    ----------
    start : edx_protocol.Start
    total_counts : numpy.ndarray, shape (rows, columns)
        Counts per scan pixel: the background of the maps when there is no image.
    latest : mapping of str to edx_live.pipeline.refit.WorkflowOutput
        One row of panels per workflow, in the mapping's order.
    image : numpy.ndarray, shape (rows, columns), optional
        The ADF/HAADF image, drawn under the cluster maps.
    image_detector : str, optional
    facts, settings, versions : mapping, optional
        Acquisition facts, main settings and software versions, printed as given.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=PAGE_INCHES, dpi=DPI)
    FigureCanvasAgg(fig)
    background = (np.asarray(image, dtype=np.float64), f"{image_detector or 'ADF'} image") if image is not None \
        else (np.asarray(total_counts, dtype=np.float64), "total counts per pixel")
    rows = max(1, len(latest))
    outer = fig.add_gridspec(1, 2, width_ratios=(1.0, 3.7), left=0.03, right=0.985, top=0.93, bottom=0.04,
                             wspace=0.06)
    left = outer[0].subgridspec(2, 1, height_ratios=(1.0, 1.55), hspace=0.12)
    right = outer[1].subgridspec(rows, 3, width_ratios=_column_ratios(latest), hspace=0.42, wspace=0.2)
    _header(fig, start)
    _background_panel(fig.add_subplot(left[0]), start, *background)
    _facts_panel(fig.add_subplot(left[1]), start, facts or {}, settings or {}, versions or {})
    if not latest:
        ax = fig.add_subplot(right[0, :])
        ax.axis("off")
        ax.text(0.5, 0.5, "No segmentation yet: too few counts for a refit.", ha="center", va="center",
                fontsize=12)
    for row, (workflow, output) in enumerate(latest.items()):
        _map_panel(fig.add_subplot(right[row, 0]), start, background[0], workflow, output)
        _spectra_panel(fig.add_subplot(right[row, 1]), workflow, output)
        _table_panel(fig.add_subplot(right[row, 2]), workflow, output)
    return fig


def _column_ratios(latest: Mapping) -> tuple[float, float, float]:
    """Widths of map, spectra and table: the table widens with its element columns."""
    lines = max((len(out.quantification.xray_lines) for out in latest.values() if out.quantification is not None),
                default=2)
    return 1.0, 1.15, min(2.6, 1.75 + 0.1 * max(0, lines - 2))


def _header(fig, start: Start) -> None:
    title = start.title or start.acquisition_id
    fig.text(0.03, 0.965, title, fontsize=14, weight="bold", va="center")
    written = f"{datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
    fig.text(0.985, 0.965, f"{start.acquisition_id}   ·   edx_live report written {written}", fontsize=FONT,
             ha="right", va="center", color="0.3")


def _extent(start: Start, shape: tuple[int, int], bin_factor: int = 1) -> tuple[float, float, float, float]:
    """imshow extent of a (binned) map in scan units: pixel edges, rows downwards."""
    size = start.pixel_size or 1.0
    rows, columns = shape
    return (-0.5 * size, (columns * bin_factor - 0.5) * size, (rows * bin_factor - 0.5) * size, -0.5 * size)


def _scan_axes(ax, start: Start) -> None:
    rows, columns = start.scan_shape
    left, right, bottom, top = _extent(start, (rows, columns))
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    unit = start.pixel_unit if start.pixel_size else "px"
    ax.set_xlabel(unit, fontsize=FONT - 1, labelpad=1)
    ax.tick_params(labelsize=FONT - 1, length=2, pad=1)


def _grey(ax, start: Start, data: np.ndarray) -> None:
    """``data`` in grey levels over the scan; a uniform map is mid-grey, not black."""
    low, high = float(np.nanmin(data)), float(np.nanmax(data))
    if high <= low:
        low, high = low - 1.0, high + 1.0
    ax.imshow(data, cmap="gray", vmin=low, vmax=high, extent=_extent(start, data.shape), interpolation="nearest")


def _background_panel(ax, start: Start, data: np.ndarray, name: str) -> None:
    _grey(ax, start, data)
    _scan_axes(ax, start)
    ax.set_title(name, fontsize=FONT + 1)


def _map_panel(ax, start: Start, background: np.ndarray, workflow: str, output) -> None:
    from matplotlib.patches import Patch

    result, snap = output.result, output.snapshot
    ax.set_anchor("N")  # the map at the top of its cell, its legend in the room below
    _grey(ax, start, background)
    ids = cluster_ids(result)
    rgba = np.zeros((*result.labels.shape, 4))
    for cluster_id in ids:  # tracked results label pixels with cluster ids, not rows
        rgba[result.labels == cluster_id] = (*_rgb(cluster_colour(cluster_id)), OVERLAY_ALPHA)
    ax.imshow(rgba, extent=_extent(start, result.labels.shape, snap.bin_factor), interpolation="nearest")
    _scan_axes(ax, start)
    ax.set_title(f"{workflow}: {result.n_clusters} clusters", fontsize=FONT + 1, weight="bold")
    handles = [Patch(color=cluster_colour(i), label=f"{i}: {int(n)} px") for i, n in zip(ids, result.pixels)]
    if result.noise_pixels:
        handles.append(Patch(facecolor="none", edgecolor="0.5", label=f"noise: {result.noise_pixels} px"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2 if len(handles) <= 10 else 3,
              fontsize=FONT - 1,
              frameon=False, handlelength=1.0, columnspacing=0.8, handletextpad=0.4, borderaxespad=0.0)


def _ink_on(colour: str) -> str:
    """Black on light colours, white on dark ones (relative luminance)."""
    r, g, b = _rgb(colour)
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.55 else "white"


def _rgb(colour: str) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return to_rgb(colour)


def marked_lines(output) -> list[tuple[str, float]]:
    """The quantified lines and their energies from exspy's database (the start's lines before a quantification)."""
    quant = output.quantification
    lines = list(quant.xray_lines) if quant is not None else list(output.snapshot.start.xray_lines)
    marked = []
    for line in lines:
        try:
            marked.append((line, line_energy(line)))
        except LineError:  # a line exspy does not know has nowhere to be drawn
            continue
    return marked


def _spectra_panel(ax, workflow: str, output) -> None:
    result, snap = output.result, output.snapshot
    if not result.n_clusters:
        ax.axis("off")
        ax.text(0.5, 0.5, f"{workflow}: no cluster", ha="center", va="center", fontsize=FONT + 1)
        return
    energy = snap.offset_kev + snap.scale_kev * np.arange(result.spectra.shape[1])
    for cluster_id, spectrum in zip(cluster_ids(result), result.spectra):
        ax.plot(energy, np.where(spectrum > 0, spectrum, np.nan), color=cluster_colour(cluster_id), lw=0.7)
    ax.set_yscale("log")
    lines = sorted(marked_lines(output), key=lambda pair: pair[1])
    high = max((e for _, e in lines), default=energy[-1] - SPECTRUM_MARGIN_KEV) + SPECTRUM_MARGIN_KEV
    ax.set_xlim(max(energy[0], 0.0), min(energy[-1], high))
    for k, (line, e) in enumerate(lines):
        ax.axvline(e, color="0.25", ls=":", lw=0.8)
        ax.annotate(line.replace("_", " "), (e, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -2 - 9 * (k % 3)),
                    textcoords="offset points", fontsize=FONT - 1, va="top", ha="left", color="0.15")
    ax.set_xlabel("energy (keV)", fontsize=FONT - 1, labelpad=1)
    ax.set_ylabel("counts / channel", fontsize=FONT - 1, labelpad=1)
    ax.tick_params(labelsize=FONT - 1, length=2, pad=1)
    ax.set_title("cluster-sum spectra", fontsize=FONT + 1)


def _table_panel(ax, workflow: str, output) -> None:
    ax.axis("off")
    quant, result = output.quantification, output.result
    snap = output.snapshot
    final = " (final)" if snap.final else ""
    ax.set_title(f"{workflow}: at% ± 1σ, refit {snap.refit}{final}", fontsize=FONT + 1)
    if quant is None:
        ax.text(0.5, 0.5, "not quantified (see the service log)" if result.n_clusters else "no cluster",
                ha="center", va="center", fontsize=FONT + 1)
        return
    header, cells, colours = composition_table(quant, cluster_ids(result))
    table = ax.table(cellText=cells, colLabels=header, loc="upper left", cellLoc="center")
    for (r, c), cell in table.get_celld().items():
        cell.set_linewidth(0.4)
        cell.PAD = 0.07  # of the column width, each side of the text
        if r == 0:
            cell.set_text_props(weight="bold")
        elif c == 0:
            cell.set_facecolor(colours[r - 1])
            cell.set_text_props(color=_ink_on(colours[r - 1]), weight="bold")
        elif cell.get_text().get_text().startswith("n.d."):
            cell.set_text_props(color="0.45", style="italic")
    bottom = _fit_table(ax, table, len(header))
    note = ax.text(0.0, bottom - 0.04, _table_note(quant), transform=ax.transAxes, va="top", ha="left",
                   fontsize=FONT - 1, color="0.25")
    if quant.kfactors_theoretical:
        ax.annotate(f"{THEORETICAL_MARK} theoretical k-factors (computed, not measured):\n"
                    "compositions are semi-quantitative.",
                    xy=(0, 0), xycoords=note, xytext=(0, -3), textcoords="offset points", va="top", ha="left",
                    fontsize=FONT - 1, color="#b00000", weight="bold")


def _fit_table(ax, table, columns: int) -> float:
    """Size the columns to their text, shrinking the font until the table fits the panel; return its bottom.

    The bottom is in axes fraction, where the note under the table starts.
    """
    renderer = ax.figure.canvas.get_renderer()
    table.auto_set_font_size(False)
    table.auto_set_column_width(list(range(columns)))
    table.scale(1.0, 1.35)  # taller rows than matplotlib's, easier to read
    for size in (FONT, FONT - 0.5, FONT - 1, FONT - 1.5, FONT - 2):
        table.set_fontsize(size)
        box = table.get_window_extent(renderer).transformed(ax.transAxes.inverted())
        if box.width <= 1.0:
            break
    return box.y0


def composition_table(quant, ids) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, one row of cells per cluster (id, pixels, each element, entropy) and each row's colour."""
    mark = THEORETICAL_MARK if quant.kfactors_theoretical else ""
    header = ["id", "px"] + [f"{line.replace('_', ' ')}{mark}" for line in quant.xray_lines] + ["S/R"]
    a, s = quant.atomic, quant.entropy
    detected = np.ones(a.value.shape, bool) if quant.detected is None else quant.detected
    limit = np.full(a.value.shape, np.nan) if quant.detection_limit is None else quant.detection_limit
    rows = []
    for i in range(len(quant.pixels)):
        cells = [_at(a.value[i, j], a.sigma[i, j]) if detected[i, j] else _not_detected(limit[i, j])
                 for j in range(len(quant.xray_lines))]
        rows.append([str(int(ids[i])), str(int(quant.pixels[i])), *cells, _pm(s.value[i], s.sigma[i], 2)])
    return header, rows, [cluster_colour(i) for i in ids]


def _at(value: float, sigma: float) -> str:
    return _pm(value, sigma, 1)


def _pm(value: float, sigma: float, digits: int) -> str:
    if not np.isfinite(value):
        return "–"
    return f"{value:.{digits}f}±{sigma:.{digits}f}" if np.isfinite(sigma) else f"{value:.{digits}f}"


def _not_detected(limit: float) -> str:
    return f"n.d. (< {limit:.1f})" if np.isfinite(limit) else "n.d."


def _table_note(quant) -> str:
    kfactors = ", ".join(f"{line.replace('_', ' ')} {k:.3g}" for line, k in quant.kfactors.items())
    source = textwrap.shorten(quant.kfactor_source, 64, placeholder=" ...")
    note = [f"k-factors: {kfactors}", f"source: {source}",
            "n.d.: not detected (< detection limit, at%). S/R: configurational entropy."]
    return "\n".join(textwrap.fill(n, 60) for n in note)


def _facts_panel(ax, start: Start, facts: Mapping, settings: Mapping, versions: Mapping) -> None:
    ax.axis("off")
    lines = ["ACQUISITION", *_pairs(_acquisition_pairs(start, facts)), "", "SETTINGS"]
    lines += _pairs(list(settings.items())) or ["  (not given)"]
    lines += ["", "SOFTWARE", *textwrap.wrap(", ".join(f"{k} {v}" for k, v in versions.items()), FACTS_WIDTH,
                                               initial_indent="  ", subsequent_indent="  ")]
    ax.text(0.0, 1.0, "\n".join(lines), transform=ax.transAxes, va="top", ha="left", family="monospace",
            fontsize=FONT - 1.5, linespacing=1.3)


#: Characters per line of the facts column.
FACTS_WIDTH = 43


def _acquisition_pairs(start: Start, facts: Mapping) -> list[tuple[str, object]]:
    rows, columns = start.scan_shape
    scan = f"{rows} x {columns} px"
    if start.pixel_size:
        scan += f", {start.pixel_size:.4g} {start.pixel_unit}/px"
    pairs = [("id", start.acquisition_id), ("title", start.title), ("instrument", start.instrument),
             ("scan", scan), ("beam", f"{start.beam_energy_kev:g} keV"),
             ("elements", ", ".join(start.elements) or None), ("frames", facts.get("frames")),
             ("counts", _thousands(facts.get("counts"))), ("acquired", _seconds(facts.get("elapsed_s"))),
             ("stop", facts.get("stop_reason")), ("missing msgs", facts.get("missing_messages") or None),
             ("source", _short(facts.get("source")))]
    known = {"frames", "counts", "elapsed_s", "stop_reason", "missing_messages", "source", "messages"}
    pairs += [(k, v) for k, v in facts.items() if k not in known]
    return [(k, v) for k, v in pairs if v is not None]


def _pairs(pairs: list[tuple[str, object]]) -> list[str]:
    """``key  value`` lines, values aligned and wrapped within the column."""
    indent = 2 + max((len(str(k)) for k, _ in pairs), default=0) + 2
    out = []
    for key, value in pairs:
        text = textwrap.wrap(str(value), FACTS_WIDTH - indent) or [""]
        out += [f"  {str(key):<{indent - 4}}  {text[0]}", *(" " * indent + t for t in text[1:])]
    return out


def _thousands(value) -> str | None:
    return None if value is None else f"{int(value):,}"


def _seconds(value) -> str | None:
    return None if value is None else f"{float(value):.1f} s"


def _short(value) -> str | None:
    return None if value is None else Path(str(value)).name or str(value)

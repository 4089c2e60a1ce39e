"""The Bokeh document of one browser tab: maps, confidence, ADF image, spectra, compositions, progress.

Each tab polls the shared :class:`~edx_live.view.feed.Feed` a few times a second and sends
only what changed since it last looked (Bokeh ships the arrays as binary buffers).
"""

from __future__ import annotations

import html
import time

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import (
    ColumnDataSource, CustomJSHover, Div, HoverTool, LabelSet, LinearColorMapper, MultiChoice, RadioButtonGroup, Range1d,
    Slider, Span,
)
from bokeh.palettes import Greys256, Viridis256
from bokeh.plotting import figure

from edx_live.logs import get_logger

from . import model

log = get_logger("view")

WORKFLOWS = ("pca-gmm", "umap-hdbscan")
#: Page refresh period, ms: the page changes at most this often.
UPDATE_MS = 250
#: Without any document for this long, the page says that no service is reachable.
STALE_S = 5.0
MAP_PX = 360
#: Side of the plotting area of a map, in screen pixels (the longer side of the scan).
FRAME_PX = 280
#: Inline styles: each Bokeh widget renders in a shadow root of its own, so a shared stylesheet does not reach it.
BANNER_BAD = "background:#fde2e1;color:#8a1c16;padding:6px 10px;border-radius:4px;font-weight:bold"
BANNER_OK = "background:#e3f4e1;color:#205a1c;padding:6px 10px;border-radius:4px"
CELL = "padding:1px 10px 1px 0"


def _empty_image() -> dict:
    """Nothing to draw (a zero-size image)."""
    blank = np.zeros((1, 1), np.uint32)
    return {"image": [blank], "labels": [np.full((1, 1), model.NOISE_LABEL, np.int32)],
            "confidence": [np.full((1, 1), np.nan, np.float32)], "x": [0], "y": [0], "dw": [0], "dh": [0]}


def _empty_float() -> dict:
    return {"image": [np.zeros((1, 1), np.float32)], "x": [0], "y": [0], "dw": [0], "dh": [0]}


def _map_figure(title: str, hover: list, pixel: ColumnDataSource, name: str) -> figure:
    fig = figure(title=title, frame_width=FRAME_PX, frame_height=FRAME_PX, tools="pan,wheel_zoom,reset,save",
                 x_range=Range1d(0, 1), y_range=Range1d(1, 0), toolbar_location="above", css_classes=[name])
    fig.xaxis.axis_label = fig.yaxis.axis_label = "scan pixels"
    physical = CustomJSHover(args={"meta": pixel}, code=(
        "const s = meta.data.size[0]; return s ? (value * s).toFixed(2) + ' ' + meta.data.unit[0] : '-';"))
    fig.add_tools(HoverTool(tooltips=hover + [("scan x, y", "$x{0}, $y{0}"), ("physical x", "$x{custom}"),
                                              ("physical y", "$y{custom}")],
                            formatters={"$x": physical, "$y": physical}))
    return fig


def _legend_html(workflow: str, rows: dict | None) -> str:
    """A workflow's legend: colour, id, pixels and a short composition per cluster."""
    th = "text-align:left;border-bottom:1px solid #ccc;font-weight:normal;" + CELL
    head = (f"<table style='border-collapse:collapse;margin-bottom:8px;min-width:300px'><tr><th style='{th}'>"
            f"{html.escape(workflow)}</th><th style='{th}'>pixels</th><th style='{th}'>composition</th></tr>")
    if not rows:
        return head + "<tr><td colspan='3'><i>no clusters yet</i></td></tr></table>"
    body = "".join(
        f"<tr><td style='{CELL}'><span style='color:{c};font-size:16px'>&#9632;</span> {html.escape(str(k))}</td>"
        f"<td style='{CELL}'>{n}</td><td style='{CELL}'>{html.escape(label)}</td></tr>"
        for k, c, n, label in zip(rows["cluster"], rows["colour"], rows["pixels"], rows["label"]))
    return head + body + "</table>"


def _composition_html(elements: list[str], rows: dict) -> str:
    """One workflow's composition table (cells carry their sigma parts as hover titles)."""
    th = "text-align:left;border-bottom:1px solid #ccc;font-weight:normal;padding:2px 14px 2px 0"
    td = "padding:2px 14px 2px 0;border-bottom:1px solid #eee"
    titles = ["cluster", "pixels", *elements, "S conf / R", "time to target"]
    head = "".join(f"<th style='{th}'>{html.escape(name)}</th>" for name in titles)
    body = []
    for i, label in enumerate(rows["cluster"]):
        cells = [f"<span style='color:{rows['colour'][i]};font-size:16px'>&#9632;</span> {label}",
                 html.escape(rows["pixels"][i]), *(rows[el][i] for el in elements),
                 html.escape(rows["entropy"][i]), html.escape(rows["target"][i])]
        body.append("<tr>" + "".join(f"<td style='{td}'>{c}</td>" for c in cells) + "</tr>")
    return f"<table style='border-collapse:collapse'><tr>{head}</tr>{''.join(body)}</table>"


class Page:
    """The widgets of one tab and how a :class:`~edx_live.view.feed.State` fills them."""

    def __init__(self, feed, doc):
        self.feed, self.doc = feed, doc
        self._seen: dict[str, object] = {}
        self._failed: set[str] = set()
        self.pixel = ColumnDataSource({"size": [0.0], "unit": [""]})
        # fixed sizes: a Div whose text changes every second does not make the browser lay out the page again
        self.banner = Div(text="", width=3 * MAP_PX + 40, height=36)
        self.progress = Div(text="", width=MAP_PX, height=330)
        self.opacity = Slider(title="cluster map opacity over the ADF image", start=0, end=1, step=0.05, value=0.6,
                              width=MAP_PX)
        self.maps, self.map_sources, self.legends, self.conf_figs, self.tables, self.kfactors = {}, {}, {}, {}, {}, {}
        self.targets = {wf: ColumnDataSource(model.target_boxes(None, wf)) for wf in WORKFLOWS}  # on each map
        self.adf_sources = {}
        map_figs, conf_figs, legend_tables = [], [], []
        conf_mapper = LinearColorMapper(palette=Viridis256, low=0, high=1, nan_color="#ff00ff")
        for wf in WORKFLOWS:
            fig = _map_figure(f"{wf}: clusters", [("cluster", "@labels"), ("confidence", "@confidence{0.00}")],
                              self.pixel, f"edx-map-{wf}")
            adf = ColumnDataSource(_empty_float())
            fig.image("image", source=adf, x="x", y="y", dw="dw", dh="dh", palette=Greys256)
            src = ColumnDataSource(_empty_image())
            glyph = fig.image_rgba("image", source=src, x="x", y="y", dw="dw", dh="dh", global_alpha=self.opacity.value)
            self.opacity.js_link("value", glyph.glyph, "global_alpha")
            fig.tools[-1].renderers = [glyph]
            fig.quad(left="left", right="right", top="top", bottom="bottom", source=self.targets[wf], fill_alpha=0,
                     line_color="white", line_width=1.5, line_dash="dashed")
            fig.add_layout(LabelSet(x="left", y="top", text="rank", source=self.targets[wf], text_color="white",
                                    text_font_size="10px", x_offset=1, y_offset=-12))
            self.maps[wf], self.map_sources[wf], self.adf_sources[wf] = fig, src, adf
            conf = _map_figure(f"{wf}: confidence (magenta: unassigned)", [("confidence", "@confidence{0.00}")],
                               self.pixel, f"edx-confidence-{wf}")
            conf.image("confidence", source=src, x="x", y="y", dw="dw", dh="dh", color_mapper=conf_mapper)
            self.conf_figs[wf] = conf
            self.legends[wf] = Div(text=_legend_html(wf, None), width=MAP_PX, css_classes=[f"edx-legend-{wf}"])
            legend_tables.append(self.legends[wf])
            map_figs.append(fig)
            conf_figs.append(conf)
            self.kfactors[wf] = Div(text="", width=3 * MAP_PX)
            self.tables[wf] = Div(text="", width=3 * MAP_PX + 40, css_classes=[f"edx-composition-{wf}"])
        self.adf_fig = _map_figure("ADF image", [("ADF", "@image{0.0}")], self.pixel, "edx-adf")
        self.adf_source = ColumnDataSource(_empty_float())
        self.adf_fig.image("image", source=self.adf_source, x="x", y="y", dw="dw", dh="dh", palette=Greys256)
        self.spectra = ColumnDataSource({"xs": [], "ys": [], "colour": [], "name": []})
        self.lines = ColumnDataSource({"x": [], "name": [], "role": [], "colour": []})
        self.spectrum_figs = {}
        for scale in ("log", "linear"):
            fig = figure(title="cluster spectra", width=3 * MAP_PX + 40, height=300, y_axis_type=scale,
                         tools="pan,xwheel_zoom,box_zoom,reset,save", x_range=(0, 10), visible=scale == "log",
                         css_classes=[f"edx-spectra-{scale}"])
            fig.xaxis.axis_label, fig.yaxis.axis_label = "energy (keV)", "counts per pixel"
            fig.multi_line("xs", "ys", source=self.spectra, line_color="colour", line_width=1.5, legend_field="name")
            fig.add_layout(LabelSet(x="x", y=4, y_units="screen", text="name", angle=np.pi / 2, source=self.lines,
                                    text_font_size="8pt", text_color="colour", x_offset=-2))
            fig.legend.location, fig.legend.label_text_font_size = "top_right", "9pt"
            fig.add_tools(HoverTool(tooltips=[("", "@name"), ("E", "$x{0.000} keV")]))
            self.spectrum_figs[scale] = fig
        self.line_spans: list[Span] = []
        self.scale = RadioButtonGroup(labels=["log", "linear"], active=0)
        self.scale.on_change("active", lambda attr, old, new: self._set_scale())
        self.chosen = MultiChoice(title="clusters shown (all when empty)", options=[], value=[], width=3 * MAP_PX)
        self.chosen.on_change("value", lambda attr, old, new: self._fill_spectra(self.feed.snapshot(), force=True))
        doc.title = "edx_live"
        doc.add_root(column(
            Div(text="<h2 style='margin:4px 0'>edx_live: live STEM-EDX phases</h2>"), self.banner,
            row(*map_figs, self.adf_fig), self.opacity, row(*conf_figs, column(*legend_tables, self.progress)),
            row(self.scale, self.chosen), *self.spectrum_figs.values(),
            *[c for wf in WORKFLOWS for c in (Div(text=f"<h3 style='margin:6px 0 0 0'>{wf} composition (at%)</h3>"),
                                              self.kfactors[wf], self.tables[wf])]))
        doc.add_periodic_callback(self.update, UPDATE_MS)
        self.update()

    # ------------------------------------------------------------------ refresh

    def update(self) -> None:
        """Show the feed's newest state (the page's periodic callback)."""
        s = self.feed.snapshot()
        self._guarded("banner", self._fill_banner, s)
        if self._seen.get("version") == s.version:
            return
        self._seen["version"] = s.version
        self._guarded("progress", self._fill_progress, s)
        self._guarded("targets", self._fill_targets, s)
        if s.status is not None and getattr(s.status, "pixel_size", None):
            self.pixel.data = {"size": [float(s.status.pixel_size)], "unit": [s.status.pixel_unit]}
        self._guarded("image", self._fill_image, s)
        for wf in WORKFLOWS:
            self._guarded(wf, self._fill_workflow, s, wf)
        self._guarded("spectra", self._fill_spectra, s)

    def _guarded(self, part: str, fill, *args) -> None:
        """One part of the page; a document it cannot show is logged (once per part) and the rest go on."""
        try:
            fill(*args)
        except Exception:
            self._seen.pop(part, None)  # tried again with the next document
            if part not in self._failed:
                self._failed.add(part)
                log.exception("view_update_failed", part=part)

    def _fill_banner(self, s) -> None:
        now = time.monotonic()
        endpoint = html.escape(self.feed.endpoint)
        if s.last_message_s is None:
            text = f'<div style="{BANNER_BAD}">No service reachable at {endpoint}: nothing received yet.</div>'
        elif now - s.last_message_s > STALE_S:
            text = (f'<div style="{BANNER_BAD}">No service reachable at {endpoint}: no update for '
                    f"{now - s.last_message_s:.0f} s (showing the last acquisition received).</div>")
        else:
            st = s.status
            title = getattr(st, "title", None) if st is not None else None
            state = st.state if st is not None else "?"
            text = (f'<div style="{BANNER_OK}">Service at {endpoint}: <b>{state}</b>, acquisition '
                    f"<b>{html.escape(str(s.acquisition_id))}</b>"
                    + (f" ({html.escape(title)})" if title else "") + "</div>")
        if self._seen.get("banner") != text:
            self._seen["banner"] = text
            self.banner.text = text

    def _fill_progress(self, s) -> None:
        rows = model.progress_rows(s.status, {wf: h for wf, (h, _) in s.clusters.items()}, s.count_rate, s.advice,
                                   s.targets)
        self.progress.text = ("<b>acquisition</b><table>"
                              + "".join(f"<tr><td style='{CELL}'>{html.escape(k)}</td><td style='{CELL}'>"
                                        f"{html.escape(v)}</td></tr>" for k, v in rows)
                              + "</table>")

    def _fill_targets(self, s) -> None:
        if self._seen.get("targets") is not s.targets:
            self._seen["targets"] = s.targets
            for wf, source in self.targets.items():
                source.data = model.target_boxes(s.targets, wf)

    def _extent(self, rows: int, cols: int) -> None:
        """Show ``rows`` x ``cols`` scan pixels, row 0 on top, square pixels."""
        width, height = (FRAME_PX, max(40, round(FRAME_PX * rows / cols))) if cols >= rows else (
            max(40, round(FRAME_PX * cols / rows)), FRAME_PX)
        for fig in [*self.maps.values(), *self.conf_figs.values(), self.adf_fig]:
            if fig.x_range.end != cols or fig.y_range.start != rows:
                fig.x_range.start, fig.x_range.end = 0, cols
                fig.y_range.start, fig.y_range.end = rows, 0
                fig.frame_width, fig.frame_height = width, height

    def _fill_image(self, s) -> None:
        key = None if s.image is None else (s.acquisition_id, s.image[0].seq)
        if self._seen.get("image") == key:
            return
        self._seen["image"] = key
        if s.image is None:
            data = _empty_float()
        else:
            img = np.asarray(s.image[1]["image"], dtype=np.float32)
            rows, cols = img.shape
            data = {"image": [img], "x": [0], "y": [0], "dw": [cols], "dh": [rows]}
            self._extent(rows, cols)
        self.adf_source.data = data
        for src in self.adf_sources.values():
            src.data = dict(data)

    def _fill_workflow(self, s, wf: str) -> None:
        entry = s.clusters.get(wf)
        comp = s.composition.get(wf)
        maps = (s.acquisition_id, None if entry is None else entry[0].seq)
        key = (maps, None if comp is None else comp.seq)
        if self._seen.get(wf) == key:
            return
        self._seen[wf] = key
        if entry is None:
            self.map_sources[wf].data = _empty_image()
            self.legends[wf].text = _legend_html(wf, None)
        else:
            header, arrays = entry
            if self._seen.get(f"{wf} maps") != maps:  # the arrays go to the browser only when the map changed
                self._seen[f"{wf} maps"] = maps
                labels = np.asarray(arrays["labels"])
                rows, cols = labels.shape
                b = header.bin_factor
                if s.image is None:
                    self._extent(rows * b, cols * b)
                self.map_sources[wf].data = {"image": [model.label_rgba(labels)], "labels": [labels],
                                             "confidence": [model.confidence_map(labels, arrays.get("confidence"))],
                                             "x": [0], "y": [0], "dw": [cols * b], "dh": [rows * b]}
            self.legends[wf].text = _legend_html(wf, model.legend(header, comp))
            self.maps[wf].title.text = (f"{wf}: {len(header.clusters)} clusters, refit {header.refit}"
                                        + (" (final)" if header.final else "")
                                        + (", converged" if header.converged else ""))
        if comp is None:
            self.tables[wf].text = ""
            self.kfactors[wf].text = "<i>no composition yet</i>"
            return
        self.tables[wf].text = _composition_html(*model.composition_table(comp))
        self.kfactors[wf].text = (model.kfactor_note(comp) + f"; refit {comp.refit}" + (" (final)" if comp.final else "")
                                  + f", {comp.intensity_method} intensities, {comp.weighting} weighting")

    def _set_scale(self) -> None:
        active = self.scale.labels[self.scale.active]
        for name, fig in self.spectrum_figs.items():
            fig.visible = name == active

    def _fill_spectra(self, s, force: bool = False) -> None:
        """The cluster spectra when a map changed (or the choice of clusters), the marked lines when they did."""
        key = (s.acquisition_id, tuple((wf, h.seq) for wf, (h, _) in sorted(s.clusters.items())))
        if force or self._seen.get("spectra") != key:
            self._seen["spectra"] = key
            self._draw_spectra(s)
        lines = {}
        for comp in s.composition.values():
            for line, energy, role in model.marked_lines(comp):
                lines[line] = (energy, role)
        items = sorted(lines.items(), key=lambda kv: kv[1][0])
        if self._seen.get("lines") == items:
            return
        self._seen["lines"] = items
        self.lines.data = {"x": [e for _, (e, _) in items],
                           "name": [n if r == "quantified" else f"{n} (fit only)" for n, (_, r) in items],
                           "role": [r for _, (_, r) in items],
                           "colour": ["#222222" if r == "quantified" else "#999999" for _, (_, r) in items]}
        for fig in self.spectrum_figs.values():
            for span in [r for r in fig.center if isinstance(r, Span)]:
                fig.center.remove(span)
            for _, (energy, role) in items:
                fig.add_layout(Span(location=energy, dimension="height", line_dash="dashed" if role != "quantified"
                                    else "solid", line_color="#444444" if role == "quantified" else "#aaaaaa",
                                    line_width=1))

    def _draw_spectra(self, s) -> None:
        names, xs, ys, colours, options = [], [], [], [], []
        top = 0.0
        for wf, (header, arrays) in sorted(s.clusters.items()):
            spectra = np.asarray(arrays["spectra"], dtype=np.float32)
            e = model.energies(header, spectra.shape[1]).astype(np.float32)
            for info, spectrum in zip(header.clusters, spectra):
                name = f"{wf} {info.label}"
                options.append(name)
                if self.chosen.value and name not in self.chosen.value:
                    continue
                per_pixel = spectrum / max(info.pixels, 1)
                names.append(name)
                xs.append(e)
                ys.append(np.where(per_pixel > 0, per_pixel, np.nan).astype(np.float32))
                colours.append(model.cluster_colour(info.label))
                top = max(top, float(e[-1]))
        if self.chosen.options != options:
            self.chosen.options = options
        self.spectra.data = {"xs": xs, "ys": ys, "colour": colours, "name": names}
        end = min(top, 20.0)
        for fig in self.spectrum_figs.values():
            if top and fig.x_range.end != end:
                fig.x_range.start, fig.x_range.end = 0, end

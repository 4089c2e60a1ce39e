"""The answer on every real spectrum-image file, through the live path, with the error where it is known.

Each file of ``../shared/data`` (or ``$EDX_LIVE_DATA``) is replayed over loopback ZeroMQ into the
real service (PULL socket, ingest, refit thread, Analyzer). Each time a block of ``--every`` sweeps
(default 2) is complete, the producer is held until the service has refitted it, so no refit is
skipped however slow the machine; the final refit after the stop has all the counts. The dense files
(.hspy, .bcf) are split into ``--sweeps`` sweeps (default 10); the .pts (14) and .emd (2, so a refit
after each) replay their recorded sweeps.

Printed per file and workflow: the clusters of the final refit (binned pixels, noise), each
cluster's composition (at%, 1 sigma; "n.d. < limit" when the service says an element was not
detected), the k-factor source, the energy calibration and model fit of the composition document,
the refit at which the clusters document first says ``converged``, and the agreement (ARI with
the previous refit) of every refit. Where the answer is known, its error:

* core_shell.hspy: the FePt-core cluster against HyperSpy's own model fit of the same pixels
  (the cluster's core, the pixels it was measured on), with the dataset's k-factors
  Fe_Ka 1.450226, Pt_La 5.075602 (bench/quantify.py's code);
* SiO2 EDS Spectrum Image.hspy: the O/Si atomic ratio of the SiO2 cluster (the cluster with the
  most Si K counts per pixel), 2 for stoichiometric SiO2; the file names no elements;
* test_TEM.bcf: the O/Ti atomic ratio of the cluster holding most of the TiO2 region (the file's
  own smoothed Ti Ka map above the midpoint of its 5th and 95th percentiles), 2 for TiO2. The
  whole scan is TiO2 of varying thickness on a Si/N support (Si K is the largest peak; the file
  names only Cu, O, Pd, Ti); scan columns 21 and 46 hold only zero-peak counts.

    .venv/bin/python bench/realfiles.py                       # every file, both workflows, 5-10 min
    .venv/bin/python bench/realfiles.py --markdown table.md   # also write the table to a file
    .venv/bin/python bench/realfiles.py --files core_shell.hspy --sweeps 5
    .venv/bin/python bench/realfiles.py --files "SiO2 EDS Spectrum Image.hspy" --set quantify.absorption_thickness_nm=300
    python3 make.py bench realfiles
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

DATA_DIR = Path(os.environ.get("EDX_LIVE_DATA", ROOT.parent / "shared" / "data"))
WORKFLOWS = ("pca-gmm", "umap-hdbscan")
NOISE = 65535


@dataclass(frozen=True)
class Case:
    """One file: how it is binned, its k-factors and what is known about its answer."""

    name: str
    spatial_bin: int
    known: str | None = None  # "core_shell", "sio2", "tio2"
    kfactors: dict = field(default_factory=dict)
    load: dict = field(default_factory=dict)  # hs.load keyword arguments
    note: str = ""


def _cases() -> list[Case]:
    from quantify import CORE_SHELL_K  # bench/quantify.py: the dataset's k-factors

    return [
        Case("core_shell.hspy", 2, "core_shell", dict(CORE_SHELL_K), note="FePt core/shell particles"),
        # 3 keeps the map under 4096 binned pixels (UMAP's exact neighbours; see tests/test_live_consistency.py).
        Case("SiO2 EDS Spectrum Image.hspy", 3, "sio2", note="SiO2 particles on a C film, Cu grid; no elements in the file"),
        Case("test_TEM.bcf", 2, "tio2", load={"select_type": "spectrum_image"}, note="TiO2 (names Cu, O, Pd, Ti)"),
        Case("View000_0000006.pts", 16, None, note="14 real sweeps, ~1.2 counts per pixel"),
        Case("Test SI 16x16 215 kx.emd", 1, None, load={"select_type": "spectrum_image"},
             note="2 real sweeps, >96% noise-peak events"),
    ]


# --------------------------------------------------------------------------------------- live run
@dataclass
class LiveRun:
    name: str
    sweeps: int
    every: int
    documents: list = field(default_factory=list)  # (header, arrays)
    errors: list[str] = field(default_factory=list)
    late: list[int] = field(default_factory=list)
    seconds: float = 0.0
    refit_errors: int = 0
    counts: int = 0

    def of(self, kind: str, workflow: str) -> list:
        docs = [(h, a) for h, a in self.documents if h.kind == kind and getattr(h, "workflow", None) == workflow]
        return sorted(docs, key=lambda d: (d[0].refit, d[0].final))


def first_sweeps_counts(replay, sweeps: int) -> int:
    """X-rays of the first ``sweeps`` sweeps."""
    from edx_adapters.replay import xray_count

    counts = 0
    for header, arrays in replay.messages():
        if header.kind != "frame" or header.frame_index >= sweeps:
            break
        counts += xray_count(header, arrays)
    return counts


def refit_every(args, sweeps: int) -> int:
    """Sweeps per refit: ``--every``, but at least two refits (one live, the final)."""
    return max(1, min(args.every, sweeps // 2))


def parse_set(items: list[str]) -> dict:
    """``["quantify.absorption_thickness_nm=200"]`` -> ``{"quantify": {"absorption_thickness_nm": 200}}``."""
    import json

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set needs SECTION.KEY=VALUE, got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = parsed
    return out


def merged(base: dict, extra: dict) -> dict:
    """``base`` with ``extra`` merged in, section by section."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def settings_for(case: Case, min_counts: int, every: int, args):
    from edx_live.config import load_settings

    quantify = {"replicas": args.replicas, "bootstrap": args.bootstrap}
    if case.kfactors:
        quantify["kfactors"] = case.kfactors
    return load_settings(overrides=merged({
        "log_level": "warning",
        "output": {"address": "tcp://127.0.0.1:*", "status_interval_s": 0.25},
        "accumulate": {"spatial_bin": case.spatial_bin},
        "refit": {"every_frames": every, "interval_s": 3600.0, "min_counts": min_counts,
                  "workflows": list(args.workflows)},
        "quantify": quantify,
    }, parse_set(args.set)))


def run_live(case: Case, path: Path, args, context) -> LiveRun:
    """Replay ``path`` into a real service over loopback TCP: a refit every K sweeps, then the final one.

    The service refits when sweep j K begins (``refit.every_frames = K``); ``refit.min_counts`` just
    above the counts of the first K sweeps keeps the first refit from starting before. The producer
    sends the first message of sweep j K that carries X-rays, then waits until refit j - 1 is done,
    so refit j - 1 holds exactly sweeps 0 .. j K - 1 plus that one message (one scan row), however
    slow the machine, and no refit is skipped.
    """
    import zmq
    from edx_adapters.replay import open_replay, xray_count
    from edx_protocol import encode

    from edx_live.shell.publish import Collector
    from edx_live.shell.app import App, on_free_ports

    dense = path.suffix.lower() in (".hspy", ".bcf")
    replay = open_replay(path, frames=args.sweeps if dense else None)
    every = refit_every(args, replay.frames)
    settings = settings_for(case, first_sweeps_counts(replay, every) + 1, every, args)
    run = LiveRun(case.name, replay.frames, every)
    collector = Collector()
    app = App(on_free_ports(settings), publish=False, control=False, subscribers=[collector])
    service = app.service
    stop = threading.Event()
    failures: dict[str, BaseException] = {}

    def serve():
        try:
            service.run(stop_after=1)
        except BaseException as exc:  # reported below
            failures["service"] = exc

    def wait_for_refits(n: int, sweep: int) -> None:
        deadline = time.monotonic() + args.refit_timeout
        while service.refits < n and not stop.is_set():
            if time.monotonic() > deadline or "service" in failures:
                run.late.append(sweep)
                return
            time.sleep(0.01)

    def produce():
        push = context.socket(zmq.PUSH)
        push.connect(app.input_endpoint)
        try:
            push.send_multipart(encode(replay.start), copy=False)
            sweep, awaited = None, None
            for header, arrays in replay.messages():
                push.send_multipart(encode(header, arrays), copy=False)
                if header.kind == "frame" and header.frame_index != sweep:
                    sweep = header.frame_index
                    if sweep > 0 and sweep % every == 0:
                        awaited = sweep // every  # refits done once this block's refit is
                if awaited is not None and xray_count(header, arrays) > 0:  # this message starts the refit
                    wait_for_refits(awaited, sweep)
                    awaited = None
                if stop.is_set():
                    break
        except BaseException as exc:
            failures["producer"] = exc
        finally:
            push.close(linger=5000)

    t0 = time.perf_counter()
    server = threading.Thread(target=serve, name="realfiles-service", daemon=True)
    producer = threading.Thread(target=produce, name="realfiles-producer", daemon=True)
    server.start()
    producer.start()
    producer.join(args.run_timeout)
    server.join(max(1.0, args.run_timeout - (time.perf_counter() - t0)))
    if server.is_alive():
        run.errors.append(f"no final refit within {args.run_timeout:g} s")
        stop.set()
        service.stop()
        server.join(30)
    app.close()
    run.seconds = time.perf_counter() - t0
    for name, exc in failures.items():
        run.errors.append(f"{name} raised {type(exc).__name__}: {exc}")
    run.documents = list(collector.documents)
    run.refit_errors = getattr(service.analyze, "errors", 0) + service.state.refit_failures
    statuses = [h for h, _ in run.documents if h.kind == "status"]
    run.counts = max((h.counts for h in statuses), default=0)
    return run


# --------------------------------------------------------------------------------------- reading documents
def _f(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def element_text(symbol: str, r, lod: bool = True) -> str:
    """``Fe 48.2 ± 1.1`` or ``O n.d. (< 0.8)``, from whatever fields the element result has."""
    detected = getattr(r, "detected", None)
    limit = getattr(r, "detection_limit_atomic_percent", None)
    if detected is False:
        return f"{symbol} n.d." + (f" (< {limit:.2g})" if limit is not None else "") + (
            f" [{_f(r.atomic_percent)}]" if r.atomic_percent is not None else "")
    text = f"{symbol} {_f(r.atomic_percent)}"
    if r.atomic_percent_sigma is not None:
        text += f" ± {r.atomic_percent_sigma:.1f}"
    if limit is not None and lod:
        text += f" (LOD {limit:.2g})"
    return text


def composition_text(cluster, lod: bool = True) -> str:
    """Every element of a cluster; ``lod`` adds the detection limit of detected elements too."""
    return ", ".join(element_text(el, r, lod) for el, r in cluster.elements.items())


def kfactor_text(h) -> str:
    """``theoretical (O_Ka 0.40, Ti_Ka 0.67 rel. Cu_Ka)`` or ``user: ... (Fe_Ka 1.45, Pt_La 5.08)``."""
    values = ", ".join(f"{line} {k:.3g}" for line, k in h.kfactors.items())
    if h.kfactors_theoretical:
        return f"theoretical ({values})"
    return f"{h.kfactor_source.partition(' (')[0]} ({values})"


def elements_text(h) -> str:
    """Where the elements came from, short: ``proposed from peaks: C, Cu, O, Si`` or ``acquisition start``."""
    source = h.elements_source or "?"
    if source.startswith("propos"):
        symbols = sorted({line.partition("_")[0] for line in h.xray_lines})
        unidentified = source.partition("unidentified peaks at ")[2].rstrip(". ")
        return ("proposed from peaks: " + ", ".join(symbols)
                + (f" (unidentified peaks at {unidentified})" if unidentified else ""))
    return source


def calibration_text(fit: dict, short: bool = False) -> str:
    """The energy calibration and resolution the composition's ``fit`` publishes, if any."""
    if not fit:
        return "no fit published"
    parts = []
    if "axis_offset_kev" in fit or "axis_calibrated" in fit:
        off, noff = fit.get("axis_offset_kev"), fit.get("axis_nominal_offset_kev")
        sc, nsc = fit.get("axis_scale_kev"), fit.get("axis_nominal_scale_kev")
        applied = fit.get("axis_calibrated", "?")
        text = "axis calibrated" if applied == "yes" else f"axis calibrated: {applied}"
        if applied != "no" and off is not None and noff is not None:
            text += f", offset {1000 * (off - noff):+.1f} eV"
        if applied != "no" and sc is not None and nsc:
            text += f", gain {sc / nsc:.4f}"
        lines = fit.get("axis_calibration_lines") or []
        if lines:
            names = list(dict.fromkeys(line.partition("_")[0] for line in lines)) if short else lines
            text += " from " + "/".join(names)
            shifts = fit.get("axis_calibration_shifts_ev")
            if shifts and not short:
                text += f" (shifts {', '.join(f'{s:+.0f}' for s in shifts)} eV)"
        if isinstance(fit.get("axis_residual_ev"), float) and not short:
            text += f", residual {fit['axis_residual_ev']:.1f} eV"
        if applied == "no" and isinstance(fit.get("axis_calibration"), str):
            text += f" ({fit['axis_calibration'][:100 if short else 300]})"
        parts.append(text)
    else:  # calibration keys of another version
        other = {k: v for k, v in fit.items() if "calib" in k or k.startswith(("energy_", "gain"))}
        if other:
            parts.append(", ".join(f"{k}={v}" for k, v in other.items()))
    if isinstance(fit.get("resolution_ev"), float):
        parts.append(f"FWHM {fit['resolution_ev']:.0f} eV at Mn Ka")
    if fit.get("range"):
        parts.append(f"fit {fit['range']}")
    if fit.get("elements") and not short:
        parts.append(f"model elements {'/'.join(fit['elements'])}")
    return "; ".join(parts) or "none published"


def fit_range(fit: dict, default=(0.2, 20.0)) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in str(fit["range"]).split()[0].split(".."))
        return low, high
    except (KeyError, ValueError, IndexError):
        return default


#: Fields every version has; anything else in a final document is new and gets printed.
KNOWN_CLUSTERS_FIELDS = {"protocol", "acquisition_id", "seq", "frames", "counts", "final", "arrays", "kind",
                         "workflow", "refit", "refit_s", "bin_factor", "energy_offset_kev", "energy_scale_kev",
                         "clusters", "noise_pixels", "appeared", "vanished", "agreement", "spectrum_change",
                         "converged", "convergence_criterion", "choices"}
KNOWN_COMPOSITION_FIELDS = {"protocol", "acquisition_id", "seq", "frames", "counts", "final", "arrays", "kind",
                            "workflow", "refit", "quantify_s", "method", "kfactor_source", "kfactors", "xray_lines",
                            "clusters", "intensity_method", "kfactors_theoretical", "weighting", "elements_source",
                            "entropy_species", "absorption_thickness_nm", "fit"}


def new_fields(header, known: set) -> dict:
    return {k: v for k, v in header.model_dump().items() if k not in known}


# --------------------------------------------------------------------------------------- known answers
@dataclass
class Verdict:
    """What the known-answer check found for one workflow."""

    label: int | None = None  # the cluster judged
    text: str = ""  # the long form, printed
    short: str = ""  # the table cell
    error: float | None = None


def window_counts(spectrum: np.ndarray, offset: float, scale: float, low: float, high: float) -> float:
    e = offset + scale * np.arange(spectrum.shape[-1])
    return float(spectrum[..., (e >= low) & (e <= high)].sum(axis=-1))


def binned_like_labels(data: np.ndarray, labels_shape, factor: int) -> np.ndarray:
    """Sum ``data`` (rows, cols[, ch]) in ``factor`` x ``factor`` blocks, zero-padded to the label map's shape."""
    rows, cols = labels_shape
    pad = [(0, rows * factor - data.shape[0]), (0, cols * factor - data.shape[1])] + [(0, 0)] * (data.ndim - 2)
    padded = np.pad(data, pad)
    return padded.reshape(rows, factor, cols, factor, *data.shape[2:]).sum(axis=(1, 3))


def ratio(num, den) -> tuple[float | None, float | None]:
    """num/den of two element results, with the 1-sigma from their sigmas (correlation ignored)."""
    if num is None or den is None or not num.atomic_percent or not den.atomic_percent:
        return None, None
    r = num.atomic_percent / den.atomic_percent
    rel = [(x.atomic_percent_sigma or 0.0) / x.atomic_percent for x in (num, den)]
    return r, abs(r) * float(np.hypot(*rel))


class Known:
    """Loads a file once with HyperSpy and judges each workflow's final answer against what is known."""

    def __init__(self, case: Case, path: Path):
        import hyperspy.api as hs

        self.case, self.path = case, path
        s = hs.load(path, **case.load)
        if isinstance(s, list):
            s = [x for x in s if x.axes_manager.signal_dimension == 1][0]
        self.signal = s
        ax = s.axes_manager.signal_axes[0]
        self.offset, self.scale = float(ax.offset), float(ax.scale)

    def __call__(self, clusters_doc, composition_doc) -> Verdict:
        """The verdict on one workflow's final documents."""
        header, arrays = clusters_doc
        comp = composition_doc[0] if composition_doc else None
        if comp is None:
            return Verdict(text="no composition published", short="no composition published")
        return getattr(self, self.case.known)(header, arrays, comp)

    def core_shell(self, header, arrays, comp) -> Verdict:
        """The FePt-core cluster (most Pt) against HyperSpy's own quantification of the same pixels."""
        import hyperspy.api as hs
        import quantify as bq  # bench/quantify.py

        with_pt = [c for c in comp.clusters if "Pt" in c.elements and c.elements["Pt"].atomic_percent is not None]
        if not with_pt:
            return Verdict(text="no cluster with Pt quantified", short="no Pt")
        core = max(with_pt, key=lambda c: c.elements["Pt"].atomic_percent)
        from edx_live.quantify.cores import cores

        labels = arrays["labels"]
        binned = binned_like_labels(np.asarray(self.signal.data, dtype=np.float64), labels.shape, header.bin_factor)
        # The pixels the composition was measured on: the cluster's core (or interior), from its label map.
        ids = [c.label for c in comp.clusters]
        rows = np.full(labels.shape, -1)
        for row, label in enumerate(ids):
            rows[labels == label] = row
        measured = cores(rows, len(ids)).measured == ids.index(core.label)
        spectrum = bq._like(self.signal, hs.signals.Signal1D(binned[measured].sum(axis=0)))
        low, high = fit_range(comp.fit)
        model = bq._hyperspy_model(spectrum, list(comp.fit.get("elements", ["Fe", "Pt"])), low, high)
        windows = bq._hyperspy_windows(spectrum)
        fe = core.elements["Fe"]
        err = fe.atomic_percent - model[0]
        text = (f"core #{core.label}: Fe {_f(fe.atomic_percent)} ± {_f(fe.atomic_percent_sigma)} at% (membership "
                f"weighted) vs HyperSpy's model fit of the same {int(measured.sum())} {core.pixel_level or 'all'} "
                f"binned px over {low:.2f}..{high:.2f} keV Fe {model[0]:.1f} (HyperSpy windows Fe {windows[0]:.1f}): "
                f"error {err:+.1f} at% Fe")
        short = (f"core #{core.label}: Fe {_f(fe.atomic_percent)} ± {_f(fe.atomic_percent_sigma)} vs HyperSpy "
                 f"{model[0]:.1f} (windows {windows[0]:.1f}): **{err:+.1f} at%**")
        return Verdict(core.label, text, short, err)

    def sio2(self, header, arrays, comp) -> Verdict:
        """O/Si of the cluster with the most Si K counts per pixel."""
        spectra = arrays["spectra"].astype(float)
        per_px = [window_counts(spectra[i], header.energy_offset_kev, header.energy_scale_kev, 1.68, 1.80)
                  / max(c.pixels, 1) for i, c in enumerate(header.clusters)]
        film = header.clusters[int(np.argmax(per_px))].label
        cluster = next((c for c in comp.clusters if c.label == film), None)
        source = f"elements {elements_text(comp)}"
        if cluster is None:
            return Verdict(film, f"SiO2 cluster #{film} not quantified; {source}", f"#{film} not quantified")
        o, si = cluster.elements.get("O"), cluster.elements.get("Si")
        missing = " and ".join(e for e, x in (("O", o), ("Si", si)) if x is None)
        if missing:
            return Verdict(film, f"SiO2 cluster #{film}: {missing} not quantified; {source}",
                           f"#{film}: {missing} not quantified")
        r, sr = ratio(o, si)
        if r is None:
            return Verdict(film, f"SiO2 cluster #{film}: O/Si undetermined; {source}", f"#{film}: O/Si undetermined")
        return Verdict(film, f"SiO2 cluster #{film} (most Si K counts per px): O/Si {r:.2f} ± {sr:.2f} (SiO2: 2): "
                             f"error {r - 2:+.2f}; {source}",
                       f"#{film}: O/Si {r:.2f} ± {sr:.2f} (SiO2 2): **{r - 2:+.2f}**", r - 2)

    def tio2(self, header, arrays, comp) -> Verdict:
        """O/Ti of the cluster holding most of the TiO2 region (the file's smoothed Ti Ka map, upper half)."""
        from scipy.ndimage import gaussian_filter

        ti = self.signal.isig[4.40:4.62].sum(-1).data.astype(float)
        smooth = gaussian_filter(ti, 3.0)
        lo, hi = np.percentile(smooth, [5, 95])
        region = smooth > (lo + hi) / 2
        labels = arrays["labels"]
        f = header.bin_factor
        region_b = binned_like_labels(region.astype(float), labels.shape, f) > f * f / 2
        inside = {c.label: int(((labels == c.label) & region_b).sum()) for c in header.clusters}
        best = max(inside, key=inside.get)
        size = int((labels == best).sum())
        where = (f"TiO2 region (smoothed Ti Ka map above the midpoint of its 5th-95th percentiles): {int(region.sum())} "
                 f"of {region.size} px; cluster #{best} holds {100 * inside[best] / max(region_b.sum(), 1):.0f}% of it, "
                 f"{100 * inside[best] / max(size, 1):.0f}% of the cluster is in it")
        where += self._stripes(labels, f)
        cluster = next((c for c in comp.clusters if c.label == best), None)
        if cluster is None:
            return Verdict(best, f"{where}; not quantified", f"#{best} not quantified")
        r, sr = ratio(cluster.elements.get("O"), cluster.elements.get("Ti"))
        if r is None:
            return Verdict(best, f"{where}; O/Ti undetermined", f"#{best}: O/Ti undetermined")
        return Verdict(best, f"{where}: O/Ti {r:.2f} ± {sr:.2f} (TiO2: 2): error {r - 2:+.2f}",
                       f"#{best} ({100 * inside[best] / max(region_b.sum(), 1):.0f}% of the Ti-rich region): "
                       f"O/Ti {r:.2f} ± {sr:.2f} (TiO2 2): **{r - 2:+.2f}**", r - 2)

    def _stripes(self, labels, factor: int) -> str:
        """Scan columns whose counts are almost all below 0.1 keV (the detector's zero peak): which clusters hold them."""
        data = np.asarray(self.signal.data)
        low = np.asarray(self.signal.isig[:0.1].data).sum(axis=(0, 2), dtype=np.int64)
        total = data.sum(axis=(0, 2), dtype=np.int64)
        cols = np.flatnonzero(low > 0.2 * np.maximum(total, 1))
        if not cols.size:
            return ""
        held = labels[:, sorted({int(c) // factor for c in cols})]
        values, counts = np.unique(held, return_counts=True)
        share = ", ".join(f"{'noise' if v == NOISE else '#' + str(v)} {n}" for v, n in zip(values, counts))
        return (f"; zero-peak stripes at scan columns {cols.tolist()} ({int(low[cols].sum())} counts below 0.1 keV): "
                f"their binned pixels are in {share}")


# --------------------------------------------------------------------------------------- report
@dataclass
class Row:
    file: str
    workflow: str
    cluster: str
    pixels: str
    composition: str
    kfactors: str = ""
    calibration: str = ""
    converged: str = ""
    agreement: str = ""
    known: str = ""

    def markdown(self) -> str:
        cells = [self.file, self.workflow, self.cluster, self.pixels, self.composition, self.kfactors,
                 self.calibration, self.converged, self.agreement, self.known]
        return "| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |"


HEADER = ("| file | workflow | cluster | binned px | composition, at% ± 1σ (final refit) | k-factors; elements | "
          "energy axis / model fit | refits until converged | ARI with the previous refit | known answer: error |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def convergence_text(clusters: list) -> str:
    """``3 of 6 (refit 2, 1,234 counts = 50%)`` or ``not converged in 6 refits``."""
    n = len(clusters)
    first = next((i for i, (h, _) in enumerate(clusters) if h.converged), None)
    if first is None:
        return f"not converged in {n} refits"
    h = clusters[first][0]
    stayed = all(c.converged for c, _ in clusters[first:])
    share = 100 * h.counts / max(clusters[-1][0].counts, 1)
    return (f"{first + 1} of {n} (at {share:.0f}% of the counts)"
            + ("" if stayed else "; not converged at every later refit"))


def report(case: Case, run: LiveRun, known: Known | None, workflows, out: list[str], rows: list[Row]) -> None:
    p = out.append
    p(f"\n### {case.name} ({case.note})")
    p(f"{run.sweeps} sweeps, a refit every {run.every}, {run.counts:,} counts, spatial bin {case.spatial_bin}, "
      f"live run {run.seconds:.1f} s" + (f", {run.refit_errors} failed workflow refits" if run.refit_errors else ""))
    for e in run.errors:
        p(f"  ERROR: {e}")
    if run.late:
        p(f"  refits late (producer released after --refit-timeout) at sweeps {run.late}")
    for workflow in workflows:
        clusters = run.of("clusters", workflow)
        comps = run.of("composition", workflow)
        if not clusters:
            p(f"\n[{workflow}] no clusters document")
            rows.append(Row(case.name, workflow, "", "", "no clusters document (see the log)"))
            continue
        header, arrays = clusters[-1]
        comp = next((d for d in reversed(comps) if d[0].refit == header.refit), None)
        p(f"\n[{workflow}] final refit {header.refit}{' (final)' if header.final else ' (NOT final)'}: "
          f"{header.frames} sweeps, {header.counts:,} counts, bin {header.bin_factor}, "
          f"{len(header.clusters)} clusters, noise {header.noise_pixels} px, segmentation {header.refit_s:.2f} s")
        chosen = {k: v for k, v in header.choices.items() if not isinstance(v, list)}
        p(f"  choices: {chosen}")
        extra = new_fields(header, KNOWN_CLUSTERS_FIELDS)
        if extra:
            p(f"  new clusters fields: {extra}")
        comp_by_label = {c.label: c for c in comp[0].clusters} if comp else {}
        for c in header.clusters:
            q = comp_by_label.get(c.label)
            p(f"  cluster #{c.label}: {c.pixels} px, {c.counts:,} counts: " + (composition_text(q) if q else "not quantified"))
        if comp:
            h = comp[0]
            p(f"  k-factors: {h.kfactor_source} {h.kfactors} (theoretical: {h.kfactors_theoretical})")
            p(f"  elements: {h.elements_source}")
            p(f"  lines {h.xray_lines}; intensities {h.intensity_method}, weighting {h.weighting}, "
              f"quantify {h.quantify_s:.2f} s")
            p(f"  energy axis / fit: {calibration_text(h.fit)}")
            extra = new_fields(h, KNOWN_COMPOSITION_FIELDS)
            if extra:
                p(f"  new composition fields: {extra}")
        else:
            p("  no composition for this refit")
        if any(d[0].elements_source.startswith("propos") for d in comps):
            p("  elements proposed per refit: " + " | ".join(
                f"r{d[0].refit}: {','.join(sorted({x.partition('_')[0] for x in d[0].xray_lines}))}" for d in comps))
        quantified = {d[0].refit for d in comps}
        missing = [h.refit for h, _ in clusters if h.refit not in quantified]
        if missing:
            p(f"  no composition document for refits {missing} (quantification failed or nothing to quantify; "
              f"see the service log on stderr)")
        conv = convergence_text(clusters)
        p(f"  refits: {len(clusters)}; converged: {conv}; criterion: {clusters[-1][0].convergence_criterion}")
        p("  per refit (refit, % of the counts: clusters, noise px, ARI, largest spectrum change[, converged], "
          "segmentation s):")
        p("    " + "; ".join(
            f"r{h.refit} {100 * h.counts / max(header.counts, 1):.0f}%: {len(h.clusters)}, {h.noise_pixels}, "
            f"{_f(h.agreement, 2)}, {_f(h.spectrum_change, 3)}{', C' if h.converged else ''}, {h.refit_s:.1f}"
            for h, _ in clusters))
        verdict = Verdict()
        if known is not None:
            try:
                verdict = known((header, arrays), comp)
            except Exception as exc:  # the analysis changes under us: report, don't stop
                verdict = Verdict(text=f"known-answer check failed: {type(exc).__name__}: {exc}",
                                  short=f"check failed: {type(exc).__name__}")
            p(f"  KNOWN ANSWER: {verdict.text}")
        for c in header.clusters:
            q = comp_by_label.get(c.label)
            rows.append(Row(case.name, workflow, f"#{c.label}" + (" ◀" if c.label == verdict.label else ""),
                            str(c.pixels), composition_text(q, lod=False) if q else "not quantified"))
        kf = f"{kfactor_text(comp[0])}; elements: {elements_text(comp[0])}" if comp else ""
        cal = calibration_text(comp[0].fit, short=True) if comp else ""
        aris = " ".join("–" if h.agreement is None else f"{h.agreement:.2f}" for h, _ in clusters)
        rows.append(Row(f"**{case.name}**", workflow, f"**{len(header.clusters)} cluster{'' if len(header.clusters) == 1 else 's'}**",
                        f"noise {header.noise_pixels}", f"{header.counts:,} counts, {run.sweeps} sweeps, "
                        f"{len(clusters)} refits", kf, cal, conv, aris, verdict.short or "(not known)"))


def git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA_DIR, help="folder of the real files (default %(default)s)")
    parser.add_argument("--files", nargs="+", help="file names to run (default: all five)")
    parser.add_argument("--workflows", nargs="+", choices=WORKFLOWS, default=list(WORKFLOWS))
    parser.add_argument("--sweeps", type=int, default=10, help="sweeps the dense files are split into")
    parser.add_argument("--every", type=int, default=2, help="sweeps per refit (at least 2 refits per file)")
    parser.add_argument("--replicas", type=int, default=16, help="Poisson replicas of the uncertainty")
    parser.add_argument("--bootstrap", type=int, default=16, help="pixel-bootstrap samples of the uncertainty")
    parser.add_argument("--refit-timeout", type=float, default=120.0, help="longest wait for one refit (s)")
    parser.add_argument("--run-timeout", type=float, default=600.0, help="longest run of one file (s)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="another setting for every file, e.g. quantify.absorption_thickness_nm=200 (repeatable)")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown table (and the commands) here")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore")
    logging.getLogger("hyperspy").setLevel(logging.ERROR)
    logging.getLogger("exspy").setLevel(logging.ERROR)
    import zmq
    from _common import machine, progress

    from edx_live.core.kernels import warm_up as warm_up_kernels
    from edx_live.logs import configure
    from edx_live.segment import warm_up

    configure(level="warning")
    cases = _cases()
    if args.files:
        unknown = set(args.files) - {c.name for c in cases}
        if unknown:
            parser.error(f"unknown files {sorted(unknown)}; choose from {[c.name for c in cases]}")
        cases = [c for c in cases if c.name in args.files]

    t_all = time.perf_counter()
    print(f"# Real files through the live path ({time.strftime('%Y-%m-%d %H:%M')})")
    print(f"machine: {machine()}")
    print(f"code: git {git_state()}; data: {args.data}")
    print(f"settings: dense files split into {args.sweeps} sweeps (.pts/.emd: their own); a refit every "
          f"{args.every} sweeps (every sweep when a file has fewer than {2 * args.every}) and a final one; "
          f"quantify replicas {args.replicas}, bootstrap {args.bootstrap}"
          + (f"; {', '.join(args.set)}" if args.set else "") + "; everything else default")
    t0 = time.perf_counter()
    warm_up_kernels()
    warm_up(approximate_neighbors=False)  # every map here has fewer than 4096 binned pixels
    print(f"warm-up (numba kernels, UMAP/HDBSCAN): {time.perf_counter() - t0:.1f} s")

    out: list[str] = []
    rows: list[Row] = []
    context = zmq.Context()
    try:
        for case in progress(cases, desc="realfiles", unit="file"):
            path = args.data / case.name
            t_file = time.perf_counter()
            if not path.is_file():
                out.append(f"\n### {case.name}: missing from {args.data}")
                rows.append(Row(case.name, "", "", "", "file missing"))
                continue
            try:
                run = run_live(case, path, args, context)
                known = Known(case, path) if case.known else None
                report(case, run, known, args.workflows, out, rows)
            except Exception as exc:
                out.append(f"\n### {case.name}: FAILED {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
                rows.append(Row(case.name, "", "", "", f"failed: {type(exc).__name__}: {exc}"))
            out.append(f"({case.name}: {time.perf_counter() - t_file:.1f} s with the known-answer check)")
            print("\n".join(out), flush=True)
            out.clear()
    finally:
        context.destroy(linger=0)

    total = time.perf_counter() - t_all
    python = os.path.relpath(sys.executable, Path.cwd()) if sys.executable.startswith(str(ROOT)) else sys.executable
    script = os.path.relpath(__file__, Path.cwd())
    common = []
    if args.sweeps != 10:
        common += ["--sweeps", str(args.sweeps)]
    if args.every != 2:
        common += ["--every", str(args.every)]
    if (args.replicas, args.bootstrap) != (16, 16):
        common += ["--replicas", str(args.replicas), "--bootstrap", str(args.bootstrap)]
    for item in args.set:
        common += ["--set", item]
    if tuple(args.workflows) != WORKFLOWS:
        common += ["--workflows", *args.workflows]
    commands = [shlex.join([python, script, *common, *(["--data", str(args.data)] if args.data != DATA_DIR else []),
                            *(["--files", *args.files] if args.files else []), "--markdown", "realfiles.md"])]
    commands += [shlex.join([python, script, *common, "--files", c.name]) for c in cases]
    commands.append("python3 make.py bench realfiles")
    table = "\n".join([HEADER, *(r.markdown() for r in rows)])
    text = (f"\n## Table\n\n{table}\n\nTotal run time {total:.0f} s (warm-up included), "
            f"git {git_state()}.\n\n## Reproduce\n\n" + "\n".join(f"    {c}" for c in commands))
    print(text)
    if args.markdown:
        args.markdown.write_text(text.lstrip() + "\n")
        print(f"\n(table written to {args.markdown})")
    return 0


if __name__ == "__main__":
    main()

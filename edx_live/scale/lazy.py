"""Scans larger than memory, offline: read, binned, segmented and quantified a band of scan rows at a time.

:func:`process_out_of_core` makes three passes over the file, each holding one band of rows
(about ``chunk_mb`` MiB of raw counts) at a time:

1. the total spectrum (which fixes the energy window, the features kept and the Poisson
   scaling, :func:`~edx_live.segment.preprocess.feature_stats`), the counts of each scan
   pixel (for the report), and a fixed sample of binned pixels, drawn by pixel index
   (:func:`~edx_live.segment.umap_hdbscan.fit_sample`): their features, and their spectra
   in the phase rule's bins;
2. each workflow fitted on the sample: PCA and the Gaussian mixture
   (:meth:`~edx_live.segment.PcaGmm.fit_sample`); PCA, UMAP, HDBSCAN and its refinements
   (:meth:`~edx_live.segment.UmapHdbscan.fit_sample`); then every pixel assigned, for all
   workflows in the same pass (:meth:`~edx_live.segment.PcaGmm.assign`: label and
   posterior; :meth:`~edx_live.segment.UmapHdbscan.assign`: the sample's pixels their
   fitted label, the others the vote of their nearest sample pixels in PCA space);
3. with the label map whole, each cluster's core (:func:`~edx_live.quantify.cores.cores`)
   and bootstrap groups are fixed; the integer cluster sums and the weighted group sums
   quantification needs grow band by band (:mod:`.sums`), then exspy's model fit and
   Cliff-Lorimer run on them as in a live refit; one pass per workflow.

Held whole: per workflow the label map (int64) and the confidence map (float32), and for
umap-hdbscan the outlier scores (float32); the pixel counts map (float64 per scan pixel),
the sample and the group sums; never a spectrum per pixel.
The session folder is the one ``edx-live process`` writes, without ``spectrum_image.hspy``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edx_live.logs import get_logger

from .chunked import LazyScan, bands, check_chunk_mb, open_lazy, row_bands
from .session import WORKFLOWS, snapshot_of, write_out_of_core_session

log = get_logger("segment")

#: Binned pixels the workflows are fitted on.
SAMPLE_PIXELS = 16384
#: Bytes the bootstrap group sums of all clusters may take (a fixed amount, so that the answer
#: does not depend on the band size).
GROUP_SUMS_BYTES = 64 << 20


@dataclass(frozen=True)
class Geometry:
    """The binned scan: shape, pixels, and the bands it is read in."""

    rows: int
    columns: int
    bands: list

    @property
    def pixels(self) -> int:
        return self.rows * self.columns


def _start(scan: LazyScan, path: Path):
    from edx_adapters.formats.common import hyperspy_fields
    from edx_adapters.replay import default_acquisition_id
    from edx_protocol import Start

    if path.suffix.lower() == ".emd":  # Velox: the beam and detectors are in the original metadata
        from edx_adapters.formats.velox import _fields

        fields = _fields({"original_metadata": scan.original_metadata or {}, "axes": scan.axes,
                          "metadata": scan.metadata, "data": scan.data}, [], None)
        fields["detectors"] = fields["detectors"] or hyperspy_fields(
            {"Acquisition_instrument": {"TEM": {"beam_energy": fields["beam_energy_kev"]}}}, scan.axes)["detectors"]
    else:
        fields = hyperspy_fields(scan.metadata, scan.axes)
    return Start(acquisition_id=default_acquisition_id(path), seq=0, **fields)


def _check_out_dir(out_dir) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"the session folder {out} is a file; give a folder")
    return out


def first_pass(scan, geometry: Geometry, selection, factor: int, reducers: dict, rule, sample: np.ndarray | None):
    """Total spectrum (int64), counts per scan pixel, the sample's reduced counts and its phase-rule bins.

    ``reducers`` maps a workflow to its :class:`~edx_live.segment.preprocess.FeatureStats`
    window and rebin; the reduced counts come back the same way, one array per workflow.
    """
    from edx_live.segment.phases import binned_spectra

    total = np.zeros(selection.channels, dtype=np.int64)
    counts_map = np.zeros(scan.shape[:2], dtype=np.float64)
    chosen = np.arange(geometry.pixels) if sample is None else sample
    reduced, phase = {}, None
    for brow, flat in bands(scan, geometry.bands, selection, factor, counts_map):
        total += flat.sum(axis=0)
        p0 = brow * geometry.columns
        lo, hi = np.searchsorted(chosen, [p0, p0 + flat.shape[0]])
        rows = flat[chosen[lo:hi] - p0]
        bins = binned_spectra(rows, rule, selection.offset_kev, selection.scale_kev)
        if phase is None:
            phase = np.zeros((chosen.size, bins.shape[1]), dtype=np.float32)
        phase[lo:hi] = bins
        for workflow, reducer in reducers.items():
            part = reducer.reduce(rows)
            if workflow not in reduced:
                reduced[workflow] = np.zeros((chosen.size, part.shape[1]), dtype=np.int64)
            reduced[workflow][lo:hi] = part
    return total, counts_map, reduced, phase


@dataclass
class Segmented:
    """One workflow's answer for every pixel: labels and confidence (rows, columns), what was chosen."""

    labels: np.ndarray
    confidence: np.ndarray
    outlier: np.ndarray | None
    choices: dict
    fit_seconds: float


def segment_out_of_core(scan, geometry: Geometry, selection, factor: int, estimators: dict, sample, reduced: dict,
                        phase, total: np.ndarray, rule) -> dict:
    """Fit each estimator (PcaGmm, UmapHdbscan) on the sample, assign every pixel band by band, settle the phases.

    One pass over the file assigns the pixels of every workflow. Returns {workflow: :class:`Segmented`}.
    """
    n_sample = geometry.pixels if sample is None else sample.size
    # Judged on the sample: its pixels stand for all, so the smallest phase shrinks with it.
    sample_rule = replace(rule, min_pixels=max(1, math.ceil(rule.min_pixels * n_sample / geometry.pixels)))
    seconds = {}
    for workflow, estimator in estimators.items():
        t0 = time.perf_counter()
        stats = estimator._feature_stats(total, geometry.pixels, selection.channels, sample=reduced[workflow])
        if workflow == "umap-hdbscan":
            estimator.fit_sample(reduced[workflow], stats, phase, sample_rule, sample)
        else:
            estimator.fit_sample(reduced[workflow], stats)
        seconds[workflow] = time.perf_counter() - t0
    labels = {w: np.empty(geometry.pixels, dtype=np.int64) for w in estimators}
    confidence = {w: np.empty(geometry.pixels, dtype=np.float32) for w in estimators}
    outlier = {w: np.empty(geometry.pixels, dtype=np.float32) for w in estimators if w == "umap-hdbscan"}
    for brow, flat in bands(scan, geometry.bands, selection, factor):
        p0 = brow * geometry.columns
        rows = slice(p0, p0 + flat.shape[0])
        for workflow, estimator in estimators.items():
            if workflow == "umap-hdbscan":
                labels[workflow][rows], confidence[workflow][rows], outlier[workflow][rows] = estimator.assign(
                    flat, np.arange(rows.start, rows.stop))
            else:
                labels[workflow][rows], confidence[workflow][rows] = estimator.assign(flat)
    shape = (geometry.rows, geometry.columns)
    out = {}
    for workflow, estimator in estimators.items():
        choices = dict(estimator.choices_)
        choices.update(fit_samples_drawn=int(n_sample), assigned_pixels=int(geometry.pixels))
        if workflow == "umap-hdbscan":
            flat_labels = _in_size_order(labels[workflow], choices)
        else:
            flat_labels = _settled(labels[workflow], phase, sample, estimator, rule, sample_rule, choices)
        choices["label_order"] = "decreasing pixels"
        scores = outlier.get(workflow)
        out[workflow] = Segmented(flat_labels.reshape(shape), np.clip(confidence[workflow], 0, 1).reshape(shape),
                                  None if scores is None else np.clip(scores, 0, 1).reshape(shape), choices,
                                  seconds[workflow])
    return out


def _settled(labels: np.ndarray, phase, sample, estimator, rule, sample_rule, choices: dict) -> np.ndarray:
    """Labels in decreasing size, with the phase rule applied on the sample (updates ``choices``)."""
    from edx_live.segment.phases import phase_choices, settle_phases
    from edx_live.segment.run import _apply, order_by_size

    flat_labels, n_clusters = order_by_size(labels)
    if rule is not None and estimator.n_clusters is None and n_clusters > 0:
        on_sample = flat_labels if sample is None else flat_labels[sample]
        settled = settle_phases(phase, on_sample, sample_rule)
        pixels = np.bincount(flat_labels[flat_labels >= 0], minlength=n_clusters)
        flat_labels, _, pixels, into = _apply(settled.mapping, flat_labels, np.zeros((n_clusters, 1)), pixels)
        choices.update(n_clusters=int(pixels.size), **phase_choices(rule, settled.actions, into),
                       phase_rule_on="the fit sample (min_pixels scaled to it)")
    return flat_labels


def _in_size_order(labels: np.ndarray, choices: dict) -> np.ndarray:
    """Labels in decreasing size; the clusters the estimator's phase rule merged into, in that order too."""
    from edx_live.segment.result import INTO_KEY, NOISE
    from edx_live.segment.run import order_by_size

    flat_labels, n_clusters = order_by_size(labels)
    if INTO_KEY in choices:  # as segment.run.segment: the estimator's labels, in the order above
        new = np.full(int(labels.max()) + 1 if labels.size else 0, NOISE, dtype=np.int64)
        new[labels[labels >= 0]] = flat_labels[labels >= 0]
        choices[INTO_KEY] = [float(new[int(label)]) if 0 <= label < new.size else float(NOISE)
                             for label in choices[INTO_KEY]]
        choices["phase_rule_on"] = "the fit sample (min_pixels scaled to it)"
    choices["n_clusters"] = int(n_clusters)
    return flat_labels


def _setup(settings, start, selection, total: np.ndarray):
    """The quantification set-up, as a refit works it out from the total spectrum."""
    from edx_live.quantify.kfactors import USER_KFACTORS
    from edx_live.quantify.setup import acquisition_setup, with_peaks_of

    q = settings.quantify
    source = USER_KFACTORS + (f" and table {q.kfactor_table}" if q.kfactor_table else "")
    setup = acquisition_setup(start=start, options=q.setup_options(), offset_kev=selection.offset_kev,
                              scale_kev=selection.scale_kev, channels=selection.channels, total=total,
                              user_kfactors=q.user_kfactors(), user_source=source)
    return with_peaks_of(setup, total) if q.fit_only_elements == "auto" else setup


def quantify_out_of_core(scan, geometry: Geometry, selection, factor: int, labels, confidence, n_clusters: int,
                         quantifier, setup, total: np.ndarray, budget_bytes: int):
    """Integer cluster sums and the composition of every cluster, from sums grown band by band.

    Returns (spectra int64 (n_clusters, channels), pixels, Quantification or None, blocks used).
    """
    from edx_live.quantify.cores import cores
    from edx_live.quantify.kfactors import require_kfactors

    from .sums import GroupSums, HardSums

    hard = HardSums(labels, n_clusters, selection.channels)
    if setup is None or not n_clusters:
        for brow, flat in bands(scan, geometry.bands, selection, factor):
            hard.add(brow * geometry.columns, flat)
        return hard.spectra, hard.pixels, None, 0
    o = quantifier.options
    factors = require_kfactors(setup.xray_lines, setup.kfactors)
    if len(setup.xray_lines) < 2:
        raise ValueError(f"Cliff-Lorimer needs at least two X-ray lines, got {list(setup.xray_lines)}; "
                         "name more elements")
    model = quantifier.model(setup, total.astype(np.float64)) if o.intensities == "model" else None
    channels = model.channels if model is not None else slice(None)
    use = confidence.astype(np.float64) if o.weighting == "membership" else None
    chosen = cores(labels, n_clusters, use) if o.cluster_pixels == "core" else None
    width = len(range(*channels.indices(selection.channels)))
    sets = 1 if chosen is None else 2
    blocks = int(max(16, min(o.blocks, budget_bytes // max(1, sets * n_clusters * width * 16))))
    rng = np.random.default_rng(0)
    measured = GroupSums(labels if chosen is None else chosen.measured, n_clusters, use, blocks, channels,
                         selection.channels, rng)
    reference = None if chosen is None else GroupSums(chosen.reference, n_clusters, use, blocks, channels,
                                                      selection.channels, rng)
    for brow, flat in bands(scan, geometry.bands, selection, factor):
        p0 = brow * geometry.columns
        hard.add(p0, flat)
        for sums in (measured, reference):
            if sums is not None:
                sums.add(p0, flat)
    samples = measured.samples(o.replicas, o.bootstrap, rng)
    ref = None if reference is None else reference.samples(o.replicas, o.bootstrap, rng)
    quant = quantifier._quantify(samples, setup, factors, model, hard.pixels, chosen, ref, 0, None)
    return hard.spectra, hard.pixels, quant, blocks


def process_out_of_core(path, out_dir, settings, chunk_mb: int | None = None) -> dict:
    """Segment and quantify a spectrum image larger than memory; write its session folder.

    Parameters
    ----------
    path : str or Path
        ``.hspy``, ``.zspy``, ``.emd`` or ``.bcf``, read lazily (rosettasciio).
    out_dir : str or Path
        The session folder: ``labels_``, ``confidence_``, ``cluster_spectra_<workflow>.hspy``,
        ``composition_<workflow>.json``/``.csv``, ``report.png`` and ``summary.json``; no
        ``spectrum_image.hspy``.
    settings : edx_live.config.Settings
        ``accumulate`` (energy selection, ``spatial_bin``), ``refit.workflows`` (which run),
        ``pca_gmm``, ``umap_hdbscan``, ``quantify``.
    chunk_mb : int, optional
        Raw counts read at a time, MiB (default :data:`~.chunked.DEFAULT_CHUNK_MB`); a band is
        never less than ``spatial_bin`` scan rows.

    Returns
    -------
    dict
        The summary, as written to ``summary.json``.
    """
    return _process(path, out_dir, settings, chunk_mb)


def _process(path, out_dir, settings, chunk_mb, sample_pixels: int = SAMPLE_PIXELS) -> dict:
    from edx_live.core.accumulator import EnergySelection
    from edx_live.pipeline.refit import Analyzer, WorkflowOutput
    from edx_live.quantify import ClusterQuantifier
    from edx_live.segment.run import DEFAULT_PHASE_RULE
    from edx_live.segment.result import SegmentationResult
    from edx_live.segment.umap_hdbscan import fit_sample


    t0 = time.perf_counter()
    chunk_mb = check_chunk_mb(chunk_mb)
    path = Path(path)
    out = _check_out_dir(out_dir)
    scan = open_lazy(path)
    start = _start(scan, path)
    acc, axis = settings.accumulate, start.energy_axis
    selection = EnergySelection.from_range(axis.offset_kev, axis.scale_kev, scan.shape[2], acc.energy_min_kev,
                                           acc.energy_max_kev, acc.energy_rebin)
    factor = int(acc.spatial_bin)
    rows, columns = -(-scan.shape[0] // factor), -(-scan.shape[1] // factor)
    geometry = Geometry(rows, columns, row_bands(scan, chunk_mb, factor))
    analyzer = Analyzer(settings)
    end = selection.offset_kev + selection.scale_kev * selection.channels
    estimators = {}
    for workflow in [w for w in settings.refit.workflows if w in WORKFLOWS]:
        estimators[workflow] = analyzer.estimator(workflow, start, end)
        estimators[workflow].set_params(energy_offset_kev=float(selection.offset_kev),
                                        energy_scale_kev=float(selection.scale_kev))
    reducers = {workflow: _reducer(e, selection.channels) for workflow, e in estimators.items()}
    sample = fit_sample(geometry.pixels, sample_pixels)
    rule = DEFAULT_PHASE_RULE
    total, counts_map, reduced, phase = first_pass(scan, geometry, selection, factor, reducers, rule, sample)
    t1 = time.perf_counter()
    segmented = segment_out_of_core(scan, geometry, selection, factor, estimators, sample, reduced, phase, total,
                                    rule)
    del reduced, phase
    t2 = time.perf_counter()
    try:
        setup, reason = _setup(settings, start, selection, total.astype(np.float64)), None
    except ValueError as exc:  # SetupError, LineError, KFactorError
        setup, reason = None, str(exc)
    quantifier = ClusterQuantifier(settings.quantify.options())
    snapshot = snapshot_of(start, factor, selection, int(total.sum()))
    outputs, blocks, quantify_s = {}, {}, {}
    for workflow, seg in segmented.items():
        t = time.perf_counter()
        labels = seg.labels
        n_clusters = int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0
        spectra, pixels, quant, blocks[workflow] = quantify_out_of_core(
            scan, geometry, selection, factor, labels, seg.confidence, n_clusters, quantifier, setup, total,
            GROUP_SUMS_BYTES)
        result = SegmentationResult(workflow=workflow, labels=labels, spectra=spectra.astype(np.float64),
                                    pixels=pixels, confidence=seg.confidence.astype(np.float64),
                                    choices=seg.choices, fit_seconds=seg.fit_seconds,
                                    outlier=None if seg.outlier is None else seg.outlier.astype(np.float64))
        quantify_s[workflow] = time.perf_counter() - t
        outputs[workflow] = WorkflowOutput(snapshot, result, quant, quantify_s[workflow])
    t3 = time.perf_counter()
    facts = {"bands": len(geometry.bands), "band_rows": geometry.bands[0][1] - geometry.bands[0][0],
             "chunk_mb": chunk_mb, "sample_pixels": int(geometry.pixels if sample is None else sample.size),
             "bootstrap_blocks": blocks, "not_quantified": reason,
             "timings_s": {"first_pass": round(t1 - t0, 3), "segment": round(t2 - t1, 3),
                           "fit": {w: round(seg.fit_seconds, 3) for w, seg in segmented.items()},
                           "quantify": round(t3 - t2, 3)}}
    summary = write_out_of_core_session(out, path, start, selection, counts_map, outputs, total,
                                        facts, settings, time.perf_counter() - t0)
    log.info("out_of_core_done", source=str(path), out=str(out), bands=len(geometry.bands),
             clusters={w: o.result.n_clusters for w, o in outputs.items()},
             seconds=round(time.perf_counter() - t0, 3))
    return summary


def _reducer(estimator, channels: int):
    """The window and rebin of ``estimator``'s preprocessing (which need no counts)."""
    from edx_live.segment.preprocess import FeatureStats, energy_window

    window = energy_window(channels, estimator.energy_offset_kev, estimator.energy_scale_kev,
                           estimator.energy_min_kev, estimator.energy_max_kev)
    rebin = max(1, int(estimator.energy_rebin))
    return FeatureStats(window, rebin, np.ones(0, dtype=bool), np.zeros(0, dtype=np.int64), {}, 0.0)


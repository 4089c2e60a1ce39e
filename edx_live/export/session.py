"""A session folder: everything one acquisition produced, written at its stop and by ``edx-live process``.

======================================  ==============================================================
``spectrum_image.hspy``                 the accumulated counts (EDS_TEM or EDS_SEM), calibrated
``image.hspy``                          the ADF/HAADF image, when one was acquired (Signal2D)
``labels_<workflow>.hspy``              cluster id of each binned pixel, -1 = noise (Signal2D)
``confidence_<workflow>.hspy``          each binned pixel's confidence in its label, 0 to 1 (Signal2D)
``cluster_spectra_<workflow>.hspy``     cluster-sum spectra navigated by cluster (EDS signal)
``composition_<workflow>.json``         the published ``Composition`` document
``composition_<workflow>.csv``          one row per cluster and element
``report.png``                          one page: maps, spectra, compositions, facts
``summary.json``                        the run's summary; ``files`` lists the others
======================================  ==============================================================
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from edx_protocol import Start

from edx_live.pipeline.documents import composition_document
from edx_live.logs import get_logger
from edx_live.segment.tracking import cluster_ids

from .facts import software_versions
from .signals import cluster_spectra_signal, confidence_signal, image_signal, labels_signal, spectrum_image_signal
from .tables import attach_quantification, write_composition_csv, write_composition_json

log = get_logger("export")

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.png"


def _save(signal, path: Path) -> Path:
    signal.save(path, overwrite=True)
    return path


def write_session(out_dir: str | Path, start: Start, cube: np.ndarray, energy_offset_kev: float,
                  energy_scale_kev: float, latest: Mapping | None = None, *, image: np.ndarray | None = None,
                  image_detector: str | None = None, settings: Mapping | None = None,
                  facts: Mapping | None = None, summary: Mapping | None = None) -> list[Path]:
    """Write one acquisition's session folder: HyperSpy files, compositions, ``report.png``, ``summary.json``.

    Parameters
    ----------
    out_dir : str or Path
        Created if missing; files already there are overwritten.
    start : edx_protocol.Start
        The acquisition's start (scan calibration, beam, detectors, elements, title).
    cube : numpy.ndarray, shape (rows, columns, channels)
        The accumulated spectrum image, unbinned.
    energy_offset_kev, energy_scale_kev : float
        Calibration of the cube's channels (after any energy crop or rebin).
    latest : mapping of str to edx_live.pipeline.refit.WorkflowOutput, optional
        Per workflow, its last answer (``snapshot``, ``result``, ``quantification``,
        ``quantify_seconds``, ``convergence``). Answers of another acquisition are left out.
    image : numpy.ndarray of float, shape (rows, columns), optional
        The ADF/HAADF image acquired with the spectrum image; the report draws the cluster
        maps over it (over the total counts without it).
    image_detector : str, optional
        The image's detector, e.g. ``"HAADF"``.
    settings : mapping, optional
        The main settings as short text (:func:`edx_live.export.main_settings`).
    facts : mapping, optional
        Acquisition facts (:func:`edx_live.export.acquisition_facts`): frames, counts, elapsed_s, ...
    summary : mapping, optional
        The run's summary (:func:`edx_live.export.summary.build_summary`), written as ``summary.json``
        with ``files`` replaced by the session's files; without it, a summary of the facts.

    Returns
    -------
    list of Path
        Every file written, ``summary.json`` last.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = _of_acquisition(start, latest or {})
    paths = [_save(spectrum_image_signal(cube, start, energy_offset_kev, energy_scale_kev),
                   out_dir / "spectrum_image.hspy")]
    image = _image(start, image, image_detector, out_dir, paths)
    for workflow, output in outputs.items():
        paths.extend(_write_workflow(out_dir, workflow, output))
    versions = software_versions()
    report = _report(out_dir / REPORT_FILE, start, cube, outputs, image, image_detector, facts, settings, versions)
    paths.extend(report)
    paths.append(_write_summary(out_dir, start, paths, summary, facts, settings, versions))
    log.info("session_written", acquisition_id=start.acquisition_id, out=str(out_dir), files=len(paths),
             workflows=list(outputs))
    return paths


def write_outputs(out_dir: str | Path, acquisition=None, latest: Mapping | None = None) -> list[Path]:
    """Save the spectrum image and each workflow's HyperSpy files and compositions (no report, no summary).

    Parameters
    ----------
    out_dir : str or Path
        Created if missing; existing files are overwritten.
    acquisition : edx_live.core.ingest.Acquisition, optional
        Its ``start`` and ``accumulator`` (``cube``, ``selection.offset_kev``/``scale_kev``)
        give ``spectrum_image.hspy``.
    latest : mapping of str to edx_live.pipeline.refit.WorkflowOutput, optional
        Per workflow: ``labels_``, ``confidence_`` and ``cluster_spectra_<workflow>.hspy``, and
        ``composition_<workflow>.csv``/``.json`` when quantified.

    Returns
    -------
    list of Path
        The files written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    if acquisition is not None:
        acc = acquisition.accumulator
        paths.append(_save(spectrum_image_signal(acc.cube, acquisition.start, acc.selection.offset_kev,
                                                 acc.selection.scale_kev), out_dir / "spectrum_image.hspy"))
    for workflow, output in (latest or {}).items():
        paths.extend(_write_workflow(out_dir, workflow, output))
    return paths


def _of_acquisition(start: Start, latest: Mapping) -> dict:
    """The workflow answers that belong to ``start``'s acquisition (the analyzer keeps the last of any)."""
    kept = {}
    for workflow, output in latest.items():
        other = output.snapshot.start.acquisition_id
        if other == start.acquisition_id:
            kept[workflow] = output
        else:
            log.warning("session_skips_workflow", acquisition_id=start.acquisition_id, workflow=workflow,
                        answer_of=other)
    return kept


def _image(start: Start, image, detector: str | None, out_dir: Path, paths: list) -> np.ndarray | None:
    """Save the image beside the spectrum image; one that does not fit the scan is logged and left out."""
    if image is None:
        return None
    try:
        signal = image_signal(image, start, detector)
    except ValueError as exc:
        log.warning("image_not_written", acquisition_id=start.acquisition_id, reason=str(exc))
        return None
    paths.append(_save(signal, out_dir / "image.hspy"))
    return signal.data


def _write_workflow(out_dir: Path, workflow: str, output) -> list[Path]:
    snap, result = output.snapshot, output.result
    paths = [_save(labels_signal(result, snap.start, snap.bin_factor), out_dir / f"labels_{workflow}.hspy")]
    if result.confidence is not None:
        paths.append(_save(confidence_signal(result, snap.start, snap.bin_factor),
                           out_dir / f"confidence_{workflow}.hspy"))
    if not result.n_clusters:
        return paths
    s = cluster_spectra_signal(result, snap.start, snap.offset_kev, snap.scale_kev)
    quant = getattr(output, "quantification", None)
    if quant is not None:
        attach_quantification(s, quant)
        paths.append(write_composition_csv(quant, cluster_ids(result), out_dir / f"composition_{workflow}.csv"))
        document, _ = composition_document(snap, result, quant, getattr(output, "quantify_seconds", 0.0))
        paths.append(write_composition_json(document, out_dir / f"composition_{workflow}.json"))
    paths.append(_save(s, out_dir / f"cluster_spectra_{workflow}.hspy"))
    return paths


def _report(path: Path, start: Start, cube: np.ndarray, outputs: dict, image, image_detector, facts, settings,
            versions) -> list[Path]:
    """The report page; a failure to draw it is logged and leaves the other files in place."""
    from .report import write_report

    total = cube.sum(axis=-1, dtype=np.float64)
    facts = {"counts": int(total.sum()), **(facts or {})}
    try:
        return [write_report(path, start, total, outputs, image=image, image_detector=image_detector,
                             facts=facts, settings=settings, versions=versions)]
    except Exception:  # the data files are what matters; the page is a convenience
        log.exception("report_failed", acquisition_id=start.acquisition_id, out=str(path))
        return []


def _write_summary(out_dir: Path, start: Start, paths: list[Path], summary: Mapping | None, facts, settings,
                   versions) -> Path:
    if summary is None:
        summary = {"acquisition_id": start.acquisition_id, "title": start.title, "facts": dict(facts or {}),
                   "settings": dict(settings or {}), "software": versions}
    path = out_dir / SUMMARY_FILE
    path.write_text(json.dumps({**summary, "files": [p.name for p in paths]}, indent=2, default=_plain))
    return path


def _plain(value):
    """numpy scalars and arrays in a summary as JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")

"""The index of a many-input run: every input, its status, and every phase found, from the session folders.

Pure apart from reading the session folders and writing the two index files; no Dask.

``index.json``::

    {"index_version": 1, "root": "<DIR>", "inputs": [
        {"input": "/abs/path/a.hspy", "session": "a", "status": "done", "seconds": 21.3, "error": null,
         "phases": [{"workflow": "pca-gmm", "cluster": 2, "pixels": 112, "pixel_fraction": 0.109,
                     "pixel_level": "core",
                     "elements": {"Fe": {"atomic_percent": 46.4, "atomic_percent_sigma": 1.8,
                                         "detected": true, "detection_limit_atomic_percent": 2.0}, ...}},
                    ...]},
        ...]}

``index.csv`` is the same in long format, one row per (input, workflow, cluster, element), with the
columns of :data:`CSV_COLUMNS`:

=================================  =====================================================================
``input``                          the input file, absolute path
``session``                        its session folder, relative to DIR
``status``                         ``done`` (processed by this run), ``skipped`` (done by an earlier run),
                                   ``failed``
``seconds``                        processing time of this run (0 when skipped; empty when never started)
``error``                          why it failed (empty otherwise)
``workflow``                       ``pca-gmm`` or ``umap-hdbscan``
``cluster``                        the cluster id (``label`` of ``composition_<workflow>.json``)
``pixels``                         the cluster's binned pixels
``pixel_fraction``                 pixels / binned pixels of the scan (clusters + unassigned)
``pixel_level``                    the pixels the composition was measured on: core, interior or all
``element``                        the element
``atomic_percent``                 its composition, at% (empty: not detected)
``atomic_percent_sigma``           its 1-sigma uncertainty, at%
``detected``                       whether its line was detected (``true``/``false``)
``detection_limit_atomic_percent`` its detection limit, at%
=================================  =====================================================================

An input without phases (failed, or no cluster) has one row with the phase columns empty.
The values are copied from ``composition_<workflow>.json``, unrounded.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

INDEX_JSON = "index.json"
INDEX_CSV = "index.csv"
INDEX_VERSION = 1

INPUT_COLUMNS = ("input", "session", "status", "seconds", "error")
PHASE_COLUMNS = ("workflow", "cluster", "pixels", "pixel_fraction", "pixel_level")
ELEMENT_COLUMNS = ("element", "atomic_percent", "atomic_percent_sigma", "detected",
                   "detection_limit_atomic_percent")
CSV_COLUMNS = INPUT_COLUMNS + PHASE_COLUMNS + ELEMENT_COLUMNS


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _binned_pixels(workflow: Mapping) -> int:
    """Binned pixels of the scan as the workflow saw them: its clusters' pixels plus the unassigned ones."""
    return sum(int(c.get("pixels", 0)) for c in workflow.get("clusters", [])) + int(workflow.get("noise_pixels", 0))


def session_phases(folder: str | Path) -> list[dict]:
    """Every cluster of every workflow in a session folder, with its composition (empty if none).

    The workflows are those of ``summary.json``; the compositions those of ``composition_<workflow>.json``.
    """
    folder = Path(folder)
    summary = _read_json(folder / "summary.json") or {}
    phases = []
    for workflow, info in (summary.get("workflows") or {}).items():
        total = _binned_pixels(info)
        document = _read_json(folder / f"composition_{workflow}.json") or {}
        for cluster in document.get("clusters", []):
            elements = {name: {key: values.get(key) for key in ELEMENT_COLUMNS[1:]}
                        for name, values in (cluster.get("elements") or {}).items()}
            pixels = cluster.get("pixels")
            phases.append({"workflow": workflow, "cluster": cluster.get("label"), "pixels": pixels,
                           "pixel_fraction": pixels / total if total and pixels is not None else None,
                           "pixel_level": cluster.get("pixel_level"), "elements": elements})
    return phases


def build_index(root: str | Path, results: Iterable[Mapping]) -> dict:
    """The index document of a run under ``root`` from its per-input results.

    Parameters
    ----------
    root : str or Path
        The run's DIR; each result's ``session`` is relative to it.
    results : iterable of mapping
        Per input: ``input``, ``session``, ``status``, ``seconds``, ``error``.
    """
    root = Path(root)
    inputs = []
    for r in results:
        entry = {key: r.get(key) for key in INPUT_COLUMNS}
        ok = entry["status"] in ("done", "skipped") and entry["session"]
        entry["phases"] = session_phases(root / entry["session"]) if ok else []
        inputs.append(entry)
    return {"index_version": INDEX_VERSION, "root": str(root), "inputs": inputs}


def index_rows(index: Mapping) -> list[dict]:
    """The long-format rows of ``index.csv``: one per (input, workflow, cluster, element)."""
    rows = []
    for entry in index["inputs"]:
        base = {key: entry.get(key) for key in INPUT_COLUMNS}
        if not entry.get("phases"):
            rows.append(base)
        for phase in entry.get("phases", []):
            head = {**base, **{key: phase.get(key) for key in PHASE_COLUMNS}}
            if not phase["elements"]:
                rows.append(head)
            for element, values in phase["elements"].items():
                rows.append({**head, "element": element, **values})
    return rows


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_index(root: str | Path, results: Iterable[Mapping]) -> dict:
    """Build the index of ``results`` and write ``root/index.json`` and ``root/index.csv``; return the index."""
    root = Path(root)
    index = build_index(root, results)
    _replace(root / INDEX_JSON, json.dumps(index, indent=2))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in index_rows(index):
        writer.writerow([_cell(row.get(column)) for column in CSV_COLUMNS])
    _replace(root / INDEX_CSV, out.getvalue())
    return index

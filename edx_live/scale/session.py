"""The session folder of an out-of-core run: the files ``edx-live process`` writes, without the spectrum image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: Workflows that run out of core.
WORKFLOWS = ("pca-gmm", "umap-hdbscan")
#: Why the session folder has no spectrum image.
NO_SPECTRUM_IMAGE = ("not written: processed out of core, the spectrum image is larger than the memory "
                     "this run may use; the input file is the spectrum image")
#: What the compositions' uncertainties carry out of core (``summary.json``, ``out_of_core.uncertainty``).
UNCERTAINTY = ("as a live refit: counting replicas from each cluster's summed spectrum and its sum of squared "
               "weights, the pixel bootstrap over at most `bootstrap_blocks` (by workflow) random groups of each "
               "cluster's pixels (group sums accumulated band by band), the boundary bias from core vs. wider pixels, "
               "the fit's misfit and background-order terms")


def snapshot_of(start, factor: int, selection, counts: int):
    """A description of the binned scan, as the documents and files of a refit read it."""
    from edx_live.core.snapshot import Snapshot

    return Snapshot(start, None, factor, selection.offset_kev, selection.scale_kev, 1, counts, 0, True)


def write_out_of_core_session(out: Path, source: Path, start, selection, counts_map: np.ndarray, outputs: dict,
                              total: np.ndarray, facts: dict, settings, elapsed_s: float) -> dict:
    """Write the workflows' files, ``report.png`` and ``summary.json``; return the summary."""
    from edx_protocol import PROTOCOL_VERSION

    import edx_live
    from edx_live.export import session as files
    from edx_live.export.facts import software_versions
    from edx_live.export.summary import SUMMARY_VERSION, _workflow

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for workflow, output in outputs.items():
        paths.extend(files._write_workflow(out, workflow, output))
    versions = software_versions()
    report_facts = {"counts": int(total.sum()), "source": str(source), "processing": "out of core"}
    paths.extend(files._report(out / files.REPORT_FILE, start, counts_map[..., None], outputs, None, None,
                               report_facts, None, versions))
    skipped = [w for w in settings.refit.workflows if w not in WORKFLOWS]
    summary = {
        "summary_version": SUMMARY_VERSION,
        "protocol": PROTOCOL_VERSION,
        "edx_live_version": edx_live.__version__,
        "source": str(source),
        "acquisition": {
            "acquisition_id": start.acquisition_id, "title": start.title, "scan_shape": list(start.scan_shape),
            "frames": None, "counts": int(total.sum()), "events": None,
            "energy_offset_kev": selection.offset_kev, "energy_scale_kev": selection.scale_kev,
            "channels": selection.channels, "beam_energy_kev": start.beam_energy_kev,
            "elements": list(start.elements), "xray_lines": list(start.xray_lines),
        },
        "workflows": {name: _workflow(output) for name, output in outputs.items()},
        "timings": {"total_s": round(elapsed_s, 3), "refits": 1},
        "out_of_core": {**facts, "spectrum_image": NO_SPECTRUM_IMAGE, "workflows_run": list(outputs),
                        "workflows_not_run": skipped, "uncertainty": UNCERTAINTY},
    }
    path = files._write_summary(out, start, paths, summary, None, None, versions)
    return json.loads(path.read_text())

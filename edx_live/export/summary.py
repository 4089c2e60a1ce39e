"""``summary.json``: the final answer of an offline run, documented in protocol/SUMMARY.md."""

from __future__ import annotations

from pathlib import Path

from edx_protocol import PROTOCOL_VERSION

import edx_live
from edx_live.segment.tracking import cluster_ids, workflow_choices

SUMMARY_VERSION = 1


def _cluster(quant, label: int) -> dict:
    """The cluster's composition (per element) and entropy; None values when not quantified."""
    if quant is not None:
        for cluster in quant.clusters:
            if cluster.label == label:
                target = cluster.time_to_target
                return {"composition": {el: r.model_dump() for el, r in cluster.elements.items()},
                        "entropy_r": cluster.entropy_r, "entropy_r_sigma": cluster.entropy_r_sigma,
                        "core_pixels": cluster.core_pixels, "pixel_level": cluster.pixel_level,
                        "time_to_target": None if target is None else target.model_dump()}
    return {"composition": None, "entropy_r": None, "entropy_r_sigma": None, "core_pixels": None,
            "pixel_level": None, "time_to_target": None}


def _workflow(output) -> dict:
    result, quant = output.result, output.quantification
    ids = cluster_ids(result)
    clusters = [{"label": int(ids[i]), "pixels": int(result.pixels[i]),
                 "counts": int(round(result.spectra[i].sum())), **_cluster(quant, i)}
                for i in range(result.n_clusters)]
    state = output.convergence
    return {
        "n_clusters": result.n_clusters,
        "noise_pixels": result.noise_pixels,
        "bin_factor": output.snapshot.bin_factor,
        "choices": workflow_choices(result),
        "segment_s": round(result.fit_seconds, 4),
        "quantify_s": round(output.quantify_seconds, 4),
        "method": getattr(quant, "method", None),
        "kfactor_source": getattr(quant, "kfactor_source", None),
        "kfactors": getattr(quant, "kfactors", None),
        "xray_lines": list(getattr(quant, "xray_lines", []) or []),
        "kfactors_theoretical": getattr(quant, "kfactors_theoretical", None),
        "intensity_method": getattr(quant, "intensity_method", None),
        "weighting": getattr(quant, "weighting", None),
        "elements_source": getattr(quant, "elements_source", None),
        "entropy_species": list(getattr(quant, "entropy_species", []) or []),
        "fit": getattr(quant, "fit", None),
        "converged": None if state is None else state.converged,
        "agreement_with_previous_refit": None if state is None or state.ari != state.ari else state.ari,
        "clusters": clusters,
    }


def build_summary(source, acq, latest: dict, refits: int, elapsed_s: float, files: list) -> dict:
    """Assemble the summary of one processed acquisition."""
    start, acc = acq.start, acq.accumulator
    return {
        "summary_version": SUMMARY_VERSION,
        "protocol": PROTOCOL_VERSION,
        "edx_live_version": edx_live.__version__,
        "source": str(source),
        "acquisition": {
            "acquisition_id": start.acquisition_id,
            "title": start.title,
            "scan_shape": list(start.scan_shape),
            "frames": acq.frames,
            "counts": acc.counts,
            "events": acc.events,
            "energy_offset_kev": acc.selection.offset_kev,
            "energy_scale_kev": acc.selection.scale_kev,
            "channels": acc.selection.channels,
            "beam_energy_kev": start.beam_energy_kev,
            "elements": list(start.elements),
            "xray_lines": list(start.xray_lines),
            "messages": acq.messages,
            "rejected": dict(acq.rejected),
            "missing_messages": acq.missing,
            "stop_reason": acq.stop_reason,
        },
        "workflows": {name: _workflow(out) for name, out in latest.items()},
        "timings": {"total_s": round(elapsed_s, 3), "refits": refits},
        "files": [Path(p).name for p in files],
    }

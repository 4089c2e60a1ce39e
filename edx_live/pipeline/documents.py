"""Build the published documents from a refit's results. Pure: protocol models in, protocol models out."""

from __future__ import annotations

import numpy as np
from edx_protocol import NOISE_LABEL, ClusterInfo, Clusters, Composition, MeanImage, describe

from edx_live.core.ingest import Acquisition
from edx_live.core.snapshot import Snapshot
from edx_live.segment.result import SegmentationResult
from edx_live.segment.tracking import cluster_ids, workflow_choices


def _finite(value) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _common(snapshot: Snapshot) -> dict:
    return dict(acquisition_id=snapshot.start.acquisition_id, seq=0, frames=snapshot.frames,
                counts=snapshot.counts, refit=snapshot.refit, final=snapshot.final)


def _jsonable(value):
    """A choice as the protocol carries it: a Python int, float or string, or a list of floats."""
    if isinstance(value, (bool, np.bool_, np.integer)):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, (np.ndarray, list, tuple)):
        return [float(v) for v in np.ravel(value)]
    return value


def _all_finite(value) -> bool:
    """False when ``value`` is, or holds at any depth, a NaN or an infinite float."""
    if isinstance(value, (list, tuple)):
        return all(_all_finite(v) for v in value)
    return not isinstance(value, float) or bool(np.isfinite(value))


def _finite_items(mapping: dict, convert=lambda v: v) -> dict:
    """``mapping`` (its values converted) without the entries that are None, or are or hold a NaN or an infinity.

    JSON has no NaN, and the protocol's maps do not take null: such an entry is left out.
    """
    converted = {key: convert(value) for key, value in mapping.items()}
    return {key: value for key, value in converted.items() if value is not None and _all_finite(value)}


def clusters_document(snapshot: Snapshot, result: SegmentationResult, matching=None,
                      convergence=None) -> tuple[Clusters, dict]:
    """The ``clusters/<workflow>`` document: label map, cluster-sum spectra, what was chosen.

    ``matching`` (tracking.Matching) and ``convergence`` (tracking.ConvergenceState) add the
    stable ids, what appeared or vanished, and whether the answer has settled.
    """
    labels = np.where(result.labels < 0, NOISE_LABEL, result.labels).astype(np.uint16)
    arrays = {"labels": labels, "spectra": np.rint(result.spectra).astype(np.uint64)}
    if result.confidence is not None:
        arrays["confidence"] = np.asarray(result.confidence, dtype=np.float32)
    if result.outlier is not None:
        arrays["outlier"] = np.asarray(result.outlier, dtype=np.float32)
    ids = cluster_ids(result)
    clusters = [ClusterInfo(label=int(ids[i]), pixels=int(result.pixels[i]),
                            counts=int(round(result.spectra[i].sum()))) for i in range(result.n_clusters)]
    tracking = {} if matching is None else {"appeared": matching.appeared, "vanished": matching.vanished}
    if convergence is not None:
        tracking.update(agreement=_finite(convergence.ari), spectrum_change=_finite(convergence.spectrum_change),
                        converged=convergence.converged, convergence_criterion=convergence.criterion)
    choices = _finite_items(workflow_choices(result), _jsonable)
    header = Clusters(**_common(snapshot), workflow=result.workflow, refit_s=result.fit_seconds,
                      bin_factor=snapshot.bin_factor, energy_offset_kev=snapshot.offset_kev,
                      energy_scale_kev=snapshot.scale_kev, clusters=clusters,
                      noise_pixels=result.noise_pixels, choices=choices, arrays=describe(arrays), **tracking)
    return header, arrays


def composition_document(snapshot: Snapshot, result: SegmentationResult, quant,
                         seconds: float) -> tuple[Composition, dict]:
    """The ``composition/<workflow>`` document; clusters carry the segmentation's ids."""
    ids = cluster_ids(result)
    clusters = [c.model_copy(update={"label": int(ids[c.label])}) for c in quant.clusters]
    header = Composition(**_common(snapshot), workflow=result.workflow, quantify_s=seconds, method=quant.method,
                         kfactor_source=quant.kfactor_source, kfactors=quant.kfactors,
                         xray_lines=list(quant.xray_lines), clusters=clusters,
                         intensity_method=quant.intensity_method, kfactors_theoretical=quant.kfactors_theoretical,
                         weighting=quant.weighting, elements_source=quant.elements_source,
                         entropy_species=list(quant.entropy_species), absorption_thickness_nm=quant.thickness_nm,
                         fit=_finite_items(quant.fit))
    return header, {}


def image_document(acq: Acquisition, final: bool = False) -> tuple[MeanImage, dict]:
    """The ``image`` document: the acquisition's mean simultaneous image, with the scan's pixel size.

    ``final`` marks the one sent when the acquisition stopped. The acquisition must hold an image.
    """
    arrays = {"image": acq.image}
    start = acq.start
    header = MeanImage(acquisition_id=acq.acquisition_id, seq=0, frames=acq.frames, counts=acq.accumulator.counts,
                       final=final, detector=acq.image_detector, sweeps=acq.images.sweeps,
                       pixel_size=start.pixel_size, pixel_unit=start.pixel_unit, arrays=describe(arrays))
    return header, arrays

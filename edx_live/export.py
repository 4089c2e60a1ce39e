"""Results as HyperSpy signals: the user opens them with ``hs.load``.

- the accumulated spectrum image (``EDSTEMSpectrum``, or ``EDSSEMSpectrum`` up to 40 kV);
- each workflow's label map (``Signal2D``, -1 = noise) on the same spatial calibration;
- each workflow's cluster-sum spectra (an EDS signal navigated by cluster index).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from edx_protocol import Start

from edx_live.quantify.signal import axis, eds_signal, microscope_for
from edx_live.segment.result import NOISE, SegmentationResult
from edx_live.segment.tracking import cluster_ids


def _spatial_axes(start: Start, shape: tuple[int, int], bin_factor: int = 1) -> list[dict]:
    """y, x axes of a (possibly binned) scan; a bin's coordinate is the centre of its pixels."""
    size = start.pixel_size or 1.0
    units = start.pixel_unit if start.pixel_size else None
    offset = (bin_factor - 1) / 2 * size
    return [axis(name, n, bin_factor * size, offset, units) for name, n in zip(("y", "x"), shape)]


def _eds(data: np.ndarray, start: Start, offset_kev: float, scale_kev: float, navigation_axes: list[dict],
         title: str):
    det = start.detectors[0]
    s = eds_signal(data, offset_kev, scale_kev, start.beam_energy_kev, navigation_axes=navigation_axes,
                   elevation_deg=det.elevation_deg, azimuth_deg=det.azimuth_deg,
                   energy_resolution_ev=det.energy_resolution_mnka_ev,
                   microscope=microscope_for(start.beam_energy_kev), title=title)
    # Written as the producer announced them, not re-derived: the file should
    # say what the acquisition said.
    if start.elements:
        s.metadata.set_item("Sample.elements", sorted(start.elements))
    if start.xray_lines:
        s.metadata.set_item("Sample.xray_lines", sorted(start.xray_lines))
    if start.instrument:
        s.metadata.set_item(f"Acquisition_instrument.{microscope_for(start.beam_energy_kev)}.microscope",
                            start.instrument)
    s.original_metadata.set_item("edx_live.acquisition_id", start.acquisition_id)
    return s


def _title(start: Start, what: str) -> str:
    return f"{start.title or start.acquisition_id}: {what}"


def spectrum_image_signal(cube: np.ndarray, start: Start, energy_offset_kev: float, energy_scale_kev: float):
    """The spectrum image as an EDS signal with calibrated axes and the acquisition's metadata.

    Parameters
    ----------
    cube : numpy.ndarray, shape (rows, columns, channels)
        Counts; the dtype is kept, so the file holds exactly these values.
    start : edx_protocol.Start
        Pixel size and unit, beam energy, first detector's angles, elements, lines, title.
    energy_offset_kev, energy_scale_kev : float
        Calibration of the cube's channels (after any energy crop or rebin).

    Returns
    -------
    exspy.signals.EDSTEMSpectrum or exspy.signals.EDSSEMSpectrum
        SEM when the beam energy is at most 40 keV.
    """
    if cube.ndim != 3:
        raise ValueError(f"cube must be (rows, columns, channels), got shape {cube.shape}")
    return _eds(cube, start, energy_offset_kev, energy_scale_kev, _spatial_axes(start, cube.shape[:2]),
                _title(start, "spectrum image"))


def labels_signal(result: SegmentationResult, start: Start, bin_factor: int):
    """A workflow's cluster map as a ``Signal2D`` (int32, -1 = noise) on the binned scan's calibration.

    The axes scale is ``bin_factor * pixel_size`` and the offset puts each bin
    at the centre of the pixels it sums, so the map overlays the spectrum image.
    """
    import hyperspy.api as hs

    labels = np.asarray(result.labels, dtype=np.int32)
    ids = cluster_ids(result)
    s = hs.signals.Signal2D(labels, axes=[{**ax, "navigate": False}
                                          for ax in _spatial_axes(start, labels.shape, bin_factor)])
    s.metadata.General.title = _title(start, f"{result.workflow} clusters ({NOISE} = noise)")
    s.original_metadata.set_item("edx_live", {"acquisition_id": start.acquisition_id,
                                              "workflow": result.workflow, "bin_factor": int(bin_factor),
                                              "noise_label": NOISE, "cluster_ids": ids,
                                              "pixels": np.asarray(result.pixels, dtype=np.int64)})
    return s


def cluster_spectra_signal(result: SegmentationResult, start: Start, energy_offset_kev: float,
                           energy_scale_kev: float):
    """A workflow's cluster-sum spectra as an EDS signal navigated by cluster row.

    Row ``i`` is the cluster whose label is ``original_metadata.edx_live.cluster_ids[i]``
    (ids are stable across refits and may have gaps).

    Raises
    ------
    ValueError
        If the segmentation found no cluster (HyperSpy cannot hold an empty axis).
    """
    if result.n_clusters == 0:
        raise ValueError(f"{result.workflow} found no cluster: there are no cluster spectra to export")
    s = _eds(np.asarray(result.spectra, dtype=np.float64), start, energy_offset_kev, energy_scale_kev,
             [axis("cluster", result.n_clusters)], _title(start, f"{result.workflow} cluster-sum spectra"))
    s.original_metadata.set_item("edx_live.workflow", result.workflow)
    s.original_metadata.set_item("edx_live.cluster_ids", cluster_ids(result))
    s.original_metadata.set_item("edx_live.pixels", np.asarray(result.pixels, dtype=np.int64))
    return s


def _save(signal, path: Path) -> Path:
    signal.save(path, overwrite=True)
    return path


def write_outputs(out_dir: str | Path, acquisition=None, latest: Mapping | None = None) -> list[Path]:
    """Save the spectrum image and each workflow's labels and cluster spectra as ``.hspy``.

    Parameters
    ----------
    out_dir : str or Path
        Created if missing; existing files are overwritten.
    acquisition : edx_live.core.ingest.Acquisition, optional
        Its ``start`` and ``accumulator`` (``cube``, ``selection.offset_kev``/``scale_kev``)
        give ``spectrum_image.hspy``.
    latest : mapping of str to edx_live.analysis.WorkflowOutput, optional
        Per workflow, ``snapshot`` (``start``, ``bin_factor``, ``offset_kev``, ``scale_kev``)
        and ``result`` give ``labels_<workflow>.hspy`` and ``cluster_spectra_<workflow>.hspy``.

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


def _write_workflow(out_dir: Path, workflow: str, output) -> list[Path]:
    snap, result = output.snapshot, output.result
    paths = [_save(labels_signal(result, snap.start, snap.bin_factor), out_dir / f"labels_{workflow}.hspy")]
    if result.n_clusters:
        s = cluster_spectra_signal(result, snap.start, snap.offset_kev, snap.scale_kev)
        quant = getattr(output, "quantification", None)
        if quant is not None:
            _attach_quantification(s, quant)
            paths.append(write_composition_csv(quant, cluster_ids(result), out_dir / f"composition_{workflow}.csv"))
        paths.append(_save(s, out_dir / f"cluster_spectra_{workflow}.hspy"))
    return paths


def _attach_quantification(s, quant) -> None:
    """Keep the compositions beside the spectra they came from (``original_metadata.edx_live.quantification``)."""
    s.metadata.set_item("Sample.xray_lines", list(quant.xray_lines))
    s.metadata.set_item("Sample.elements", sorted(quant.elements))
    s.original_metadata.set_item("edx_live.quantification", {
        "xray_lines": list(quant.xray_lines), "kfactors": dict(quant.kfactors),
        "atomic_percent": np.asarray(quant.atomic_percent), "intensities": np.asarray(quant.intensities),
        "atomic_percent_sigma": np.asarray(quant.atomic_percent_sigma),
        "atomic_percent_sigma_counting": np.asarray(quant.atomic.sigma_counting),
        "atomic_percent_sigma_spread": np.asarray(quant.atomic.sigma_spread),
        "atomic_percent_sigma_bias": _bias(quant), "detected": np.asarray(_detected(quant)),
        "detection_limit_atomic_percent": _limit(quant), "core_pixels": _core_pixels(quant),
        "pixel_level": list(quant.pixel_level) or ["all"] * len(quant.pixels),
        "weight_percent": np.asarray(quant.weight.value), "weight_percent_sigma": np.asarray(quant.weight.sigma),
        "entropy_r": np.asarray(quant.entropy.value), "entropy_r_sigma": np.asarray(quant.entropy.sigma),
        "entropy_species": list(quant.entropy_species), "kfactors_theoretical": quant.kfactors_theoretical,
        "intensity_method": quant.intensity_method, "weighting": quant.weighting,
        "method": quant.method, "kfactor_source": quant.kfactor_source})


CSV_COLUMNS = ("label", "pixels", "element", "xray_line", "atomic_percent", "atomic_percent_sigma",
               "atomic_percent_sigma_counting", "atomic_percent_sigma_spread", "weight_percent",
               "weight_percent_sigma", "intensity", "intensity_sigma", "entropy_r", "entropy_r_sigma",
               "atomic_percent_sigma_bias", "detected", "detection_limit_atomic_percent", "pixel_level",
               "core_pixels")


def _bias(quant) -> np.ndarray:
    b = quant.atomic.sigma_bias
    return np.zeros_like(quant.atomic.value) if b is None else np.asarray(b)


def _detected(quant) -> np.ndarray:
    return np.ones(quant.atomic.value.shape, dtype=bool) if quant.detected is None else quant.detected


def _limit(quant) -> np.ndarray:
    return np.full(quant.atomic.value.shape, np.nan) if quant.detection_limit is None else quant.detection_limit


def _core_pixels(quant) -> np.ndarray:
    return np.asarray(quant.pixels if quant.core_pixels is None else quant.core_pixels)


def write_composition_csv(quant, ids, path: Path) -> Path:
    """One row per cluster and element, values with their 1-sigma; provenance in ``#`` header lines."""
    import csv

    with open(path, "w", newline="") as fh:
        fh.write(f"# method: {quant.method}\n# kfactor_source: {quant.kfactor_source}\n"
                 f"# kfactors: {quant.kfactors}\n# weighting: {quant.weighting}\n")
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        a, w, n, s = quant.atomic, quant.weight, quant.intensity, quant.entropy
        bias, detected, limit, core = _bias(quant), _detected(quant), _limit(quant), _core_pixels(quant)
        levels = list(quant.pixel_level) or ["all"] * len(quant.pixels)
        for i in range(len(quant.pixels)):
            for j, (element, line) in enumerate(zip(quant.elements, quant.xray_lines)):
                writer.writerow([int(ids[i]), int(quant.pixels[i]), element, line] + [
                    f"{v:.6g}" for v in (a.value[i, j], a.sigma[i, j], a.sigma_counting[i, j], a.sigma_spread[i, j],
                                         w.value[i, j], w.sigma[i, j], n.value[i, j], n.sigma_counting[i, j],
                                         s.value[i], s.sigma[i], bias[i, j])]
                    + [str(bool(detected[i, j])).lower(), f"{limit[i, j]:.6g}", levels[i], int(core[i])])
    return path

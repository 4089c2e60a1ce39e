"""A workflow's compositions as files: the published document as JSON, a flat CSV, and HyperSpy metadata.

The JSON file is the ``composition/<workflow>`` document the service publishes
(:func:`edx_live.pipeline.documents.composition_document`), so a file and a subscriber
read the same numbers under the same names; ``edx_protocol.Composition``
validates it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

CSV_COLUMNS = ("label", "pixels", "element", "xray_line", "atomic_percent", "atomic_percent_sigma",
               "atomic_percent_sigma_counting", "atomic_percent_sigma_spread", "weight_percent",
               "weight_percent_sigma", "intensity", "intensity_sigma", "entropy_r", "entropy_r_sigma",
               "atomic_percent_sigma_bias", "detected", "detection_limit_atomic_percent", "pixel_level",
               "core_pixels", "kfactor")


def _bias(quant) -> np.ndarray:
    b = quant.atomic.sigma_bias
    return np.zeros_like(quant.atomic.value) if b is None else np.asarray(b)


def _detected(quant) -> np.ndarray:
    return np.ones(quant.atomic.value.shape, dtype=bool) if quant.detected is None else quant.detected


def _limit(quant) -> np.ndarray:
    return np.full(quant.atomic.value.shape, np.nan) if quant.detection_limit is None else quant.detection_limit


def _core_pixels(quant) -> np.ndarray:
    return np.asarray(quant.pixels if quant.core_pixels is None else quant.core_pixels)


def write_composition_json(document, path: Path) -> Path:
    """Write a ``Composition`` document (``edx_protocol.Composition``) as indented JSON."""
    path.write_text(document.model_dump_json(indent=2))
    return path


def write_composition_csv(quant, ids, path: Path) -> Path:
    """One row per cluster and element, values with their 1-sigma; provenance in ``#`` header lines.

    Parameters
    ----------
    quant : edx_live.quantify.composition.Quantification
    ids : sequence of int
        The cluster id of each row of ``quant`` (the segmentation's tracked labels).
    path : Path
    """
    with open(path, "w", newline="") as fh:
        fh.write(f"# method: {quant.method}\n# kfactor_source: {quant.kfactor_source}\n"
                 f"# kfactors: {quant.kfactors}\n# kfactors_theoretical: {str(quant.kfactors_theoretical).lower()}\n"
                 f"# weighting: {quant.weighting}\n")
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
                    + [str(bool(detected[i, j])).lower(), f"{limit[i, j]:.6g}", levels[i], int(core[i]),
                       f"{quant.kfactors.get(line, np.nan):.6g}"])
    return path


def attach_quantification(s, quant) -> None:
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

"""Results as HyperSpy signals: the user opens them with ``hs.load``.

- the accumulated spectrum image (``EDSTEMSpectrum``, or ``EDSSEMSpectrum`` up to 40 kV);
- the ADF/HAADF image acquired with it (``Signal2D``) on the same spatial calibration;
- each workflow's label map (``Signal2D``, -1 = noise) and per-pixel confidence
  (``Signal2D``, 0 to 1) on the binned scan's calibration;
- each workflow's cluster-sum spectra (an EDS signal navigated by cluster index).
"""

from __future__ import annotations

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


def _map_signal(data: np.ndarray, start: Start, bin_factor: int, title: str):
    """A ``Signal2D`` on the (binned) scan's calibration."""
    import hyperspy.api as hs

    s = hs.signals.Signal2D(data, axes=[{**ax, "navigate": False}
                                        for ax in _spatial_axes(start, data.shape, bin_factor)])
    s.metadata.General.title = _title(start, title)
    return s


def labels_signal(result: SegmentationResult, start: Start, bin_factor: int):
    """A workflow's cluster map as a ``Signal2D`` (int32, -1 = noise) on the binned scan's calibration.

    The axes scale is ``bin_factor * pixel_size`` and the offset puts each bin
    at the centre of the pixels it sums, so the map overlays the spectrum image.
    """
    labels = np.asarray(result.labels, dtype=np.int32)
    ids = cluster_ids(result)
    s = _map_signal(labels, start, bin_factor, f"{result.workflow} clusters ({NOISE} = noise)")
    s.original_metadata.set_item("edx_live", {"acquisition_id": start.acquisition_id,
                                              "workflow": result.workflow, "bin_factor": int(bin_factor),
                                              "noise_label": NOISE, "cluster_ids": ids,
                                              "pixels": np.asarray(result.pixels, dtype=np.int64)})
    return s


def confidence_signal(result: SegmentationResult, start: Start, bin_factor: int):
    """A workflow's per-pixel confidence in its label, 0 to 1, as a float32 ``Signal2D`` beside the label map.

    pca-gmm: the mixture posterior of the chosen cluster; umap-hdbscan: HDBSCAN's membership
    strength (a noise pixel's is 0 unless it was re-assigned).

    Raises
    ------
    ValueError
        If the result carries no confidence.
    """
    if result.confidence is None:
        raise ValueError(f"{result.workflow} gave no per-pixel confidence")
    confidence = np.asarray(result.confidence, dtype=np.float32)
    if confidence.shape != np.shape(result.labels):
        raise ValueError(f"confidence of shape {confidence.shape} does not match the labels' "
                         f"{np.shape(result.labels)}")
    s = _map_signal(confidence, start, bin_factor, f"{result.workflow} confidence (0 to 1)")
    s.metadata.Signal.quantity = "Confidence"
    s.original_metadata.set_item("edx_live", {"acquisition_id": start.acquisition_id,
                                              "workflow": result.workflow, "bin_factor": int(bin_factor)})
    return s


def image_signal(image: np.ndarray, start: Start, detector: str | None = None):
    """The image acquired with the spectrum image (ADF, HAADF, ...) as a float32 ``Signal2D``.

    Parameters
    ----------
    image : numpy.ndarray, shape (rows, columns)
        One value per scan pixel, as the spectrum image's.
    start : edx_protocol.Start
    detector : str, optional
        The image detector's name (e.g. ``"HAADF"``); the title names it.

    Raises
    ------
    ValueError
        If the image is not the scan's shape.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.shape != tuple(start.scan_shape):
        raise ValueError(f"image of shape {image.shape} does not match the scan {tuple(start.scan_shape)}")
    name = detector or "ADF"
    s = _map_signal(image, start, 1, f"{name} image")
    s.metadata.Signal.quantity = f"{name} intensity"
    s.original_metadata.set_item("edx_live", {"acquisition_id": start.acquisition_id, "detector": name})
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

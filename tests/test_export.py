"""Exported files open with ``hs.load`` with the right shape, calibration, signal type and metadata."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from edx_protocol import Detector, EnergyAxis, Start

from edx_live.export import cluster_spectra_signal, labels_signal, spectrum_image_signal, write_outputs
from edx_live.quantify import quantify_clusters
from edx_live.segment.result import SegmentationResult

hs = pytest.importorskip("hyperspy.api")

OFFSET, SCALE = 0.14, 0.02  # an energy-cropped, 2x rebinned axis, not the detector's


def make_start(beam_energy_kev: float = 200.0, **changes) -> Start:
    fields = dict(acquisition_id="exp-1", seq=0, scan_shape=(4, 6),
                  energy_axis=EnergyAxis(offset_kev=0.13, scale_kev=0.01, channels=200),
                  beam_energy_kev=beam_energy_kev,
                  detectors=[Detector(elevation_deg=18.0, azimuth_deg=45.0, energy_resolution_mnka_ev=128.0),
                             Detector(elevation_deg=18.0, azimuth_deg=135.0)],
                  pixel_size=0.5, pixel_unit="nm", elements=["Pt", "Fe"], xray_lines=["Fe_Ka", "Pt_La"],
                  title="FePt particles", instrument="Talos F200X")
    return Start(**{**fields, **changes})


def make_result(workflow: str = "pca-gmm") -> SegmentationResult:
    labels = np.array([[0, 0, 1], [2, -1, 1]])
    spectra = np.random.default_rng(0).poisson(50.0, size=(3, 100)).astype(np.float64)
    return SegmentationResult(workflow=workflow, labels=labels, spectra=spectra, pixels=np.array([2, 2, 1]))


def roundtrip(signal, tmp_path, name="s.hspy"):
    signal.save(tmp_path / name, overwrite=True)
    return hs.load(tmp_path / name)


def assert_energy_axis(s, channels):
    ax = s.axes_manager.signal_axes[0]
    assert (ax.size, ax.units) == (channels, "keV")
    assert ax.offset == pytest.approx(OFFSET) and ax.scale == pytest.approx(SCALE)


def test_spectrum_image_roundtrip_is_exact(tmp_path):
    cube = np.random.default_rng(1).poisson(3.0, size=(4, 6, 100)).astype(np.uint32)
    s = roundtrip(spectrum_image_signal(cube, make_start(), OFFSET, SCALE), tmp_path)
    assert type(s).__name__ == "EDSTEMSpectrum" and s.metadata.Signal.signal_type == "EDS_TEM"
    assert s.data.dtype == cube.dtype
    np.testing.assert_array_equal(s.data, cube)
    assert s.axes_manager.navigation_shape == (6, 4)
    for ax in s.axes_manager.navigation_axes:
        assert (ax.scale, ax.offset, ax.units) == (0.5, 0.0, "nm")
    assert_energy_axis(s, 100)
    tem = s.metadata.Acquisition_instrument.TEM
    assert tem.beam_energy == 200.0 and tem.microscope == "Talos F200X"
    assert (tem.Detector.EDS.elevation_angle, tem.Detector.EDS.azimuth_angle) == (18.0, 45.0)
    assert tem.Detector.EDS.energy_resolution_MnKa == 128.0
    assert list(s.metadata.Sample.elements) == ["Fe", "Pt"]
    assert list(s.metadata.Sample.xray_lines) == ["Fe_Ka", "Pt_La"]
    assert "FePt particles" in s.metadata.General.title


def test_low_beam_energy_gives_an_sem_spectrum(tmp_path):
    cube = np.ones((4, 6, 50), dtype=np.uint16)
    s = roundtrip(spectrum_image_signal(cube, make_start(beam_energy_kev=20.0), OFFSET, SCALE), tmp_path)
    assert type(s).__name__ == "EDSSEMSpectrum" and s.metadata.Signal.signal_type == "EDS_SEM"
    assert s.metadata.Acquisition_instrument.SEM.beam_energy == 20.0
    assert s.metadata.Acquisition_instrument.SEM.Detector.EDS.elevation_angle == 18.0


def test_uncalibrated_scan_keeps_pixel_units(tmp_path):
    start = make_start(pixel_size=None, elements=[], xray_lines=[], title=None, instrument=None)
    s = roundtrip(spectrum_image_signal(np.zeros((4, 6, 10), np.uint8), start, OFFSET, SCALE), tmp_path)
    assert all(ax.scale == 1.0 for ax in s.axes_manager.navigation_axes)
    assert "Sample" not in s.metadata and "exp-1" in s.metadata.General.title


def test_labels_overlay_the_scan_at_the_binned_scale(tmp_path):
    result = make_result()
    s = roundtrip(labels_signal(result, make_start(), bin_factor=2), tmp_path)
    assert type(s).__name__ == "Signal2D" and s.axes_manager.signal_shape == (3, 2)
    np.testing.assert_array_equal(s.data, result.labels)
    for ax in s.axes_manager.signal_axes:
        assert (ax.scale, ax.offset, ax.units) == (1.0, 0.25, "nm")
    assert s.original_metadata.edx_live.noise_label == -1


def test_cluster_spectra_are_navigated_by_cluster(tmp_path):
    result = make_result()
    s = roundtrip(cluster_spectra_signal(result, make_start(), OFFSET, SCALE), tmp_path)
    assert type(s).__name__ == "EDSTEMSpectrum"
    assert s.axes_manager.navigation_shape == (3,) and s.axes_manager.navigation_axes[0].name == "cluster"
    assert_energy_axis(s, 100)
    np.testing.assert_array_equal(s.data, result.spectra)
    np.testing.assert_array_equal(s.original_metadata.edx_live.pixels, [2, 2, 1])
    assert s.metadata.Acquisition_instrument.TEM.beam_energy == 200.0


def test_no_cluster_cannot_be_exported():
    result = SegmentationResult("umap-hdbscan", np.full((2, 3), -1), np.zeros((0, 100)), np.zeros(0, int))
    with pytest.raises(ValueError, match="no cluster"):
        cluster_spectra_signal(result, make_start(), OFFSET, SCALE)


def test_write_outputs(tmp_path):
    start = make_start()
    cube = np.random.default_rng(2).poisson(2.0, size=(4, 6, 100)).astype(np.uint32)
    selection = SimpleNamespace(offset_kev=OFFSET, scale_kev=SCALE)
    acquisition = SimpleNamespace(start=start, accumulator=SimpleNamespace(cube=cube, selection=selection))
    snapshot = SimpleNamespace(start=start, bin_factor=2, offset_kev=OFFSET, scale_kev=SCALE)
    empty = SegmentationResult("umap-hdbscan", np.full((2, 3), -1), np.zeros((0, 100)), np.zeros(0, int))
    latest = {"pca-gmm": SimpleNamespace(snapshot=snapshot, result=make_result(), quantification=None),
              "umap-hdbscan": SimpleNamespace(snapshot=snapshot, result=empty, quantification=None)}
    paths = write_outputs(tmp_path / "out", acquisition, latest)
    assert [p.name for p in paths] == ["spectrum_image.hspy", "labels_pca-gmm.hspy",
                                       "cluster_spectra_pca-gmm.hspy", "labels_umap-hdbscan.hspy"]
    np.testing.assert_array_equal(hs.load(paths[0]).data, cube)
    assert write_outputs(tmp_path / "out", acquisition, latest) == paths  # overwrites


def test_core_shell_exports_exactly_and_quantifies_the_same(data_dir, tmp_path):
    src = hs.load(data_dir / "core_shell.hspy")
    ax = src.axes_manager.signal_axes[0]
    start = make_start(scan_shape=src.data.shape[:2], detectors=[Detector(elevation_deg=35.0, azimuth_deg=0.0)],
                       elements=["Fe", "Pt"], xray_lines=[])
    s = roundtrip(spectrum_image_signal(src.data, start, ax.offset, ax.scale), tmp_path)
    np.testing.assert_array_equal(s.data, src.data)
    assert s.data.dtype == src.data.dtype and s.axes_manager.signal_axes[0].scale == ax.scale

    kfactors = {"Fe_Ka": 1.450226, "Pt_La": 5.075602}
    loaded = s.sum()
    loaded.add_lines()
    ours = quantify_clusters(src.data.sum(axis=(0, 1))[None].astype(float), offset_kev=ax.offset,
                             scale_kev=ax.scale, beam_energy_kev=200.0, elements=["Fe", "Pt"],
                             kfactors=kfactors, replicas=0, intensities="windows")
    theirs = loaded.quantification(loaded.get_lines_intensity(background_windows=loaded.estimate_background_windows()),
                                   "CL", factors=list(kfactors.values()))
    np.testing.assert_allclose(ours.atomic_percent[0], [float(t.data[0]) for t in theirs], atol=1e-9)


def test_write_outputs_keeps_the_composition(tmp_path):
    start = make_start()
    result = make_result()
    energy = OFFSET + SCALE * np.arange(100)
    spectra = 20 + 5e3 * (np.exp(-((energy - 1.74) / 0.03) ** 2 / 2) * [[1], [2], [3]]
                          + np.exp(-((energy - 0.525) / 0.03) ** 2 / 2))
    result = SegmentationResult("pca-gmm", result.labels, spectra, result.pixels)
    quant = quantify_clusters(spectra, offset_kev=OFFSET, scale_kev=SCALE, beam_energy_kev=200.0,
                              elements=["O", "Si"], kfactors={"O_Ka": 2.0, "Si_Ka": 1.0}, replicas=4,
                              intensities="windows")
    snapshot = SimpleNamespace(start=start, bin_factor=2, offset_kev=OFFSET, scale_kev=SCALE)
    paths = write_outputs(tmp_path, None, {"pca-gmm": SimpleNamespace(snapshot=snapshot, result=result,
                                                                      quantification=quant)})
    s = hs.load(paths[-1])
    assert list(s.metadata.Sample.xray_lines) == ["O_Ka", "Si_Ka"]
    np.testing.assert_allclose(s.original_metadata.edx_live.quantification.atomic_percent, quant.atomic_percent)

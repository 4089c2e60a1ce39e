"""Exported files open with ``hs.load`` with the right shape, calibration, signal type and metadata;
a session folder holds every file, and its compositions are the published document's."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
from edx_protocol import Composition, Detector, EnergyAxis, Start

from edx_live.pipeline.refit import WorkflowOutput
from edx_live.core.snapshot import Snapshot
from edx_live.pipeline.documents import composition_document
from edx_live.export import (CSV_COLUMNS, cluster_spectra_signal, confidence_signal, image_signal, labels_signal,
                             spectrum_image_signal, write_outputs, write_session)
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
    confidence = np.array([[0.9, 1.0, 0.55], [0.7, 0.0, 0.25]])
    return SegmentationResult(workflow=workflow, labels=labels, spectra=spectra, pixels=np.array([2, 2, 1]),
                              confidence=confidence)


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
    assert [p.name for p in paths] == ["spectrum_image.hspy", "labels_pca-gmm.hspy", "confidence_pca-gmm.hspy",
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


def quantified(start: Start, ids=(0, 1, 2)):
    """A tracked pca-gmm answer (cluster ids ``ids``) whose O and Si lines are measured and Al's is absent."""
    base = make_result()
    energy = OFFSET + SCALE * np.arange(100)
    peak = lambda kev: np.exp(-((energy - kev) / 0.03) ** 2 / 2)  # noqa: E731
    spectra = 20 + 5e3 * (peak(1.74) * np.array([[1], [2], [3]]) + peak(0.525))
    labels = np.select([base.labels == row for row in range(3)], list(ids), -1)
    result = SegmentationResult("pca-gmm", labels, spectra, base.pixels, confidence=base.confidence,
                                choices={"cluster_ids": list(ids), "n_clusters": 3})
    quant = quantify_clusters(spectra, offset_kev=OFFSET, scale_kev=SCALE, beam_energy_kev=200.0,
                              elements=["O", "Si", "Al"], kfactors={"O_Ka": 2.0, "Si_Ka": 1.0, "Al_Ka": 1.1},
                              replicas=4, intensities="windows", pixels=base.pixels, random_state=0)
    snapshot = Snapshot(start, None, 2, OFFSET, SCALE, frames=7, counts=int(spectra.sum()), refit=3, final=True,
                        elapsed_s=12.5)
    return WorkflowOutput(snapshot, result, quant, 0.25)


def test_write_outputs_keeps_the_composition(tmp_path):
    output = quantified(make_start())
    paths = write_outputs(tmp_path, None, {"pca-gmm": output})
    s = hs.load(paths[-1])
    assert list(s.metadata.Sample.xray_lines) == ["Al_Ka", "O_Ka", "Si_Ka"]
    np.testing.assert_allclose(s.original_metadata.edx_live.quantification.atomic_percent,
                               output.quantification.atomic_percent)


def test_confidence_map_lies_on_the_labels_grid(tmp_path):
    result = make_result()
    s = roundtrip(confidence_signal(result, make_start(), bin_factor=2), tmp_path)
    labels = labels_signal(result, make_start(), bin_factor=2)
    assert type(s).__name__ == "Signal2D" and s.data.dtype == np.float32
    np.testing.assert_allclose(s.data, result.confidence, rtol=1e-6)
    assert s.data.shape == labels.data.shape
    for ours, theirs in zip(s.axes_manager.signal_axes, labels.axes_manager.signal_axes):
        assert (ours.name, ours.scale, ours.offset, ours.units) == (theirs.name, theirs.scale, theirs.offset,
                                                                    theirs.units)
    assert "confidence" in s.metadata.General.title


def test_confidence_must_match_the_labels():
    result = make_result()
    with pytest.raises(ValueError, match="does not match"):
        confidence_signal(SegmentationResult("pca-gmm", result.labels, result.spectra, result.pixels,
                                             confidence=np.ones((3, 2))), make_start(), 2)
    with pytest.raises(ValueError, match="no per-pixel confidence"):
        confidence_signal(SegmentationResult("pca-gmm", result.labels, result.spectra, result.pixels),
                          make_start(), 2)


def test_image_has_the_scan_calibration_and_names_its_detector(tmp_path):
    image = np.random.default_rng(3).random((4, 6)).astype(np.float32)
    s = roundtrip(image_signal(image, make_start(), "HAADF"), tmp_path)
    assert type(s).__name__ == "Signal2D" and s.axes_manager.signal_shape == (6, 4)
    np.testing.assert_array_equal(s.data, image)
    assert [ax.name for ax in s.axes_manager.signal_axes] == ["x", "y"]
    for ax in s.axes_manager.signal_axes:
        assert (ax.scale, ax.offset, ax.units) == (0.5, 0.0, "nm")
    assert "HAADF" in s.metadata.General.title and "FePt particles" in s.metadata.General.title
    with pytest.raises(ValueError, match="does not match the scan"):
        image_signal(np.zeros((6, 4)), make_start())


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A session folder with an image, one quantified workflow (ids 2, 5, 9) and one that found nothing."""
    out = tmp_path_factory.mktemp("session")
    start = make_start()
    cube = np.random.default_rng(4).poisson(2.0, size=(4, 6, 100)).astype(np.uint32)
    image = np.linspace(0, 1, 24, dtype=np.float32).reshape(4, 6)
    empty = SegmentationResult("umap-hdbscan", np.full((2, 3), -1), np.zeros((0, 100)), np.zeros(0, int),
                               confidence=np.zeros((2, 3)))
    latest = {"pca-gmm": quantified(start, ids=(2, 5, 9)),
              "umap-hdbscan": WorkflowOutput(quantified(start).snapshot, empty, None, 0.0)}
    paths = write_session(out, start, cube, OFFSET, SCALE, latest, image=image, image_detector="HAADF",
                          settings={"spatial bin": "2 x 2"}, facts={"frames": 7, "counts": int(cube.sum())})
    return out, paths, start, cube, latest


def test_session_holds_every_file(session):
    out, paths, _, cube, _ = session
    assert [p.name for p in paths] == [
        "spectrum_image.hspy", "image.hspy", "labels_pca-gmm.hspy", "confidence_pca-gmm.hspy",
        "composition_pca-gmm.csv", "composition_pca-gmm.json", "cluster_spectra_pca-gmm.hspy",
        "labels_umap-hdbscan.hspy", "confidence_umap-hdbscan.hspy", "report.png", "summary.json"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"] == [p.name for p in paths[:-1]]
    assert summary["facts"] == {"frames": 7, "counts": int(cube.sum())}
    assert summary["settings"] == {"spatial bin": "2 x 2"} and summary["software"]["exspy"]


def test_session_files_load_with_their_signal_types(session):
    out, _, start, cube, latest = session
    si = hs.load(out / "spectrum_image.hspy")
    assert type(si).__name__ == "EDSTEMSpectrum"
    np.testing.assert_array_equal(si.data, cube)
    assert_energy_axis(si, 100)
    assert si.metadata.Acquisition_instrument.TEM.beam_energy == 200.0
    assert list(si.metadata.Sample.elements) == ["Fe", "Pt"] and "FePt particles" in si.metadata.General.title
    image = hs.load(out / "image.hspy")
    assert type(image).__name__ == "Signal2D" and "HAADF image" in image.metadata.General.title
    assert [ax.scale for ax in image.axes_manager.signal_axes] == [0.5, 0.5]
    for workflow, output in latest.items():
        labels, confidence = hs.load(out / f"labels_{workflow}.hspy"), hs.load(out / f"confidence_{workflow}.hspy")
        assert type(labels).__name__ == type(confidence).__name__ == "Signal2D"
        np.testing.assert_array_equal(labels.data, output.result.labels)
        assert confidence.data.shape == labels.data.shape
        assert ((confidence.data >= 0) & (confidence.data <= 1)).all()
        assert [(ax.name, ax.scale, ax.offset, ax.units) for ax in confidence.axes_manager.signal_axes] == \
            [(ax.name, ax.scale, ax.offset, ax.units) for ax in labels.axes_manager.signal_axes] == \
            [("x", 1.0, 0.25, "nm"), ("y", 1.0, 0.25, "nm")]
    spectra = hs.load(out / "cluster_spectra_pca-gmm.hspy")
    assert type(spectra).__name__ == "EDSTEMSpectrum" and spectra.axes_manager.navigation_shape == (3,)
    assert list(spectra.original_metadata.edx_live.cluster_ids) == [2, 5, 9]
    assert list(spectra.metadata.Sample.elements) == ["Al", "O", "Si"]
    assert spectra.metadata.Acquisition_instrument.TEM.beam_energy == 200.0


def test_session_composition_is_the_published_document(session):
    out, _, _, _, latest = session
    output = latest["pca-gmm"]
    published, _ = composition_document(output.snapshot, output.result, output.quantification,
                                        output.quantify_seconds)
    written = Composition.model_validate_json((out / "composition_pca-gmm.json").read_text())
    assert written == published
    raw = json.loads((out / "composition_pca-gmm.json").read_text())
    assert [c["label"] for c in raw["clusters"]] == [2, 5, 9]
    quant = output.quantification
    for row, cluster in enumerate(raw["clusters"]):
        assert cluster["pixels"] == int(quant.pixels[row])
        assert cluster["entropy_r"] == pytest.approx(quant.entropy.value[row])
        assert cluster["time_to_target"] is not None
        for j, element in enumerate(quant.elements):
            result = cluster["elements"][element]
            assert result["detected"] == bool(quant.detected[row, j])
            if result["detected"]:
                assert result["atomic_percent"] == pytest.approx(quant.atomic.value[row, j])
                assert result["atomic_percent_sigma"] == pytest.approx(quant.atomic.sigma[row, j])
                assert result["atomic_percent_sigma_counting"] == pytest.approx(quant.atomic.sigma_counting[row, j])
            else:
                assert result["atomic_percent"] is None
                assert result["detection_limit_atomic_percent"] == pytest.approx(quant.detection_limit[row, j])
    assert not raw["clusters"][0]["elements"]["Al"]["detected"]  # no Al line in the spectra
    assert raw["kfactors"] == {"Al_Ka": 1.1, "O_Ka": 2.0, "Si_Ka": 1.0} and raw["kfactors_theoretical"] is False
    assert raw["kfactor_source"] and (raw["frames"], raw["refit"], raw["final"]) == (7, 3, True)


def test_session_csv_rows_carry_ids_and_kfactors(session):
    out, _, _, _, latest = session
    quant = latest["pca-gmm"].quantification
    with open(out / "composition_pca-gmm.csv") as fh:
        header = [next(fh) for _ in range(5)]
        rows = list(csv.DictReader(fh))
    assert "# kfactors_theoretical: false\n" in header
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["label"], r["element"]) for r in rows[:3]] == [("2", "Al"), ("2", "O"), ("2", "Si")]
    assert [float(r["kfactor"]) for r in rows[:3]] == [1.1, 2.0, 1.0]
    assert float(rows[4]["atomic_percent"]) == pytest.approx(quant.atomic.value[1, 1], rel=1e-5)


def test_session_leaves_out_an_image_that_does_not_fit_and_other_acquisitions(tmp_path):
    start = make_start()
    other = quantified(make_start(acquisition_id="exp-0"))
    paths = write_session(tmp_path, start, np.ones((4, 6, 100), np.uint32), OFFSET, SCALE, {"pca-gmm": other},
                          image=np.zeros((8, 12), np.float32))
    assert [p.name for p in paths] == ["spectrum_image.hspy", "report.png", "summary.json"]
    assert json.loads((tmp_path / "summary.json").read_text())["facts"] == {}

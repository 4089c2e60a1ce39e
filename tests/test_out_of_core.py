"""Out-of-core processing: bands of rows give the one-band answer; known phases are found; the folder loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edx_live.config import Settings
from edx_live.scale.chunked import binned_band, open_lazy, row_bands
from edx_live.scale.lazy import process_out_of_core

CORE_SHELL = Path(__file__).resolve().parents[1] / "edx_live" / "data" / "core_shell.hspy"
WORKFLOW = "pca-gmm"
WORKFLOWS = ("pca-gmm", "umap-hdbscan")


def _settings(workflows=WORKFLOWS, **quantify) -> Settings:
    return Settings(refit={"workflows": list(workflows)}, quantify=quantify)


def _load(out: Path, workflow: str = WORKFLOW):
    import hyperspy.api as hs

    labels = hs.load(out / f"labels_{workflow}.hspy").data
    spectra = hs.load(out / f"cluster_spectra_{workflow}.hspy").data
    confidence = hs.load(out / f"confidence_{workflow}.hspy").data
    composition = json.loads((out / f"composition_{workflow}.json").read_text())
    return labels, spectra, confidence, composition


def _atomic(summary: dict, workflow: str = WORKFLOW) -> dict:
    return {(c["label"], el): (r["atomic_percent"], r["atomic_percent_sigma"])
            for c in summary["workflows"][workflow]["clusters"] for el, r in (c["composition"] or {}).items()}


def _assert_close(a: dict, b: dict) -> None:
    """Same clusters and elements; at% and sigma equal to float rounding (None where not detected)."""
    assert a.keys() == b.keys() and a
    for key in a:
        for x, y in zip(a[key], b[key]):
            assert (x is None and y is None) or x == pytest.approx(y, rel=1e-9, abs=1e-9), key


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory):
    from edx_adapters.synthetic import make_phantom

    from edx_live.scale.phantom import write_phantom

    phantom = make_phantom((96, 96), channels=1024, seed=0)
    path = write_phantom(tmp_path_factory.mktemp("phantom") / "phantom.hspy", phantom, dose=200, rows_per_chunk=8)
    return path, phantom


@pytest.fixture(scope="module")
def core_shell_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("core_shell")
    many = process_out_of_core(CORE_SHELL, root / "many", _settings(), chunk_mb=1)
    one = process_out_of_core(CORE_SHELL, root / "one", _settings(), chunk_mb=1024)
    return root, many, one


def test_bands_put_together_are_the_binned_cube():
    scan = open_lazy(CORE_SHELL)
    cube = np.asarray(scan.data)
    from edx_live.core.accumulator import EnergySelection

    selection = EnergySelection.from_range(0.0, 0.01, cube.shape[2], None, None, 3)
    bands = [binned_band(cube[r0:r1], selection, 3) for r0, r1 in row_bands(scan, 1, 3)]
    assert len(bands) >= 4
    whole = binned_band(cube, selection, 3)
    assert np.array_equal(np.concatenate(bands), whole)
    naive = np.zeros_like(whole)
    kept = cube[:, :, :selection.channels * 3].reshape(*cube.shape[:2], -1, 3).sum(axis=3, dtype=np.int64)
    for r in range(cube.shape[0]):
        for c in range(cube.shape[1]):
            naive[r // 3, c // 3] += kept[r, c]
    assert np.array_equal(whole, naive)


@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_core_shell_many_bands_equal_one(core_shell_runs, workflow):
    root, many, one = core_shell_runs
    assert many["out_of_core"]["bands"] >= 4 and one["out_of_core"]["bands"] == 1
    assert many["out_of_core"]["workflows_run"] == list(WORKFLOWS) and not many["out_of_core"]["workflows_not_run"]
    labels_a, spectra_a, conf_a, comp_a = _load(root / "many", workflow)
    labels_b, spectra_b, conf_b, comp_b = _load(root / "one", workflow)
    assert labels_a.max() >= 1  # more than one cluster
    assert np.array_equal(labels_a, labels_b)
    assert np.array_equal(spectra_a, spectra_b)
    assert np.array_equal(spectra_a, np.round(spectra_a))  # integer sums
    assert np.allclose(conf_a, conf_b, rtol=0, atol=1e-6)
    _assert_close(_atomic(many, workflow), _atomic(one, workflow))


@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_core_shell_cluster_sums_are_the_cube_sums(core_shell_runs, workflow):
    root, many, _ = core_shell_runs
    labels, spectra, _, _ = _load(root / "many", workflow)
    scan = open_lazy(CORE_SHELL)
    from edx_live.core.accumulator import EnergySelection

    cube = binned_band(np.asarray(scan.data), EnergySelection.from_range(0.0, 0.01, scan.shape[2]), 2)
    expected = np.array([cube[labels == k].sum(axis=0) for k in range(spectra.shape[0])])
    assert np.array_equal(spectra, expected)
    assert many["workflows"][workflow]["clusters"][0]["counts"] == int(expected[0].sum())


def test_session_folder_loads(core_shell_runs):
    import hyperspy.api as hs

    root, many, _ = core_shell_runs
    out = root / "many"
    assert "spectrum_image.hspy" not in many["files"]
    assert "not written" in many["out_of_core"]["spectrum_image"]
    for name in many["files"]:
        assert (out / name).is_file(), name
        if name.endswith(".hspy"):
            assert hs.load(out / name).data.size
    assert json.loads((out / "summary.json").read_text()) == many


def test_known_phases_recovered(phantom_file, tmp_path):
    from sklearn.metrics import adjusted_rand_score

    path, phantom = phantom_file
    # Window intensities: the exspy model is the core/shell tests' (and costs seconds per run); pca-gmm only,
    # umap-hdbscan's bands-vs-one answer is the core/shell test's.
    settings = _settings(["pca-gmm"], intensities="windows")
    many = process_out_of_core(path, tmp_path / "many", settings, chunk_mb=1)
    one = process_out_of_core(path, tmp_path / "one", settings, chunk_mb=64)
    assert many["out_of_core"]["workflows_not_run"] == []
    assert many["out_of_core"]["bands"] >= 4
    labels, spectra, _, _ = _load(tmp_path / "many")
    labels_one, spectra_one, _, _ = _load(tmp_path / "one")
    assert np.array_equal(labels, labels_one) and np.array_equal(spectra, spectra_one)
    _assert_close(_atomic(many), _atomic(one))
    truth = phantom.binned_labels(2)
    assert adjusted_rand_score(truth.ravel(), labels.ravel()) >= 0.9


def test_umap_hdbscan_sample_keeps_its_labels_the_rest_placed():
    """Fitted on 512 of 1024 pixels: the sample's pixels get their fitted labels, any split of the rest the same."""
    from edx_live.core.accumulator import EnergySelection
    from edx_live.segment import UmapHdbscan
    from edx_live.segment.phases import PhaseRule, binned_spectra
    from edx_live.segment.umap_hdbscan import fit_sample

    scan = open_lazy(CORE_SHELL)
    selection = EnergySelection.from_range(0.0, 0.02, scan.shape[2])
    X = binned_band(np.asarray(scan.data), selection, 2).reshape(-1, selection.channels)
    sample = fit_sample(X.shape[0], 512)
    model = UmapHdbscan(random_state=0, energy_offset_kev=0.0, energy_scale_kev=0.02)
    stats = model._feature_stats(X.sum(axis=0), X.shape[0], X.shape[1])
    model.fit_sample(stats.reduce(X[sample]), stats, binned_spectra(X[sample], PhaseRule(), 0.0, 0.02),
                     pixels=sample)
    assert model.n_clusters_ >= 2
    labels, strength, outlier = model.assign(X, np.arange(X.shape[0]))
    assert np.array_equal(labels[sample], model.labels_)
    assert np.array_equal(strength[sample], model.probabilities_)
    assert np.array_equal(outlier[sample], model.outlier_scores_)
    halves = [model.assign(X[r], np.arange(X.shape[0])[r]) for r in (slice(0, 300), slice(300, None))]
    for whole, parts in zip((labels, strength, outlier), zip(*halves)):
        assert np.array_equal(whole, np.concatenate(parts))
    rest = np.setdiff1d(np.arange(X.shape[0]), sample)
    assert np.mean(labels[rest] >= 0) > 0.9 and np.all((strength >= 0) & (strength <= 1))


@pytest.mark.parametrize("chunk_mb, error", [(0, ValueError), (-5, ValueError), (1.5, TypeError),
                                             ("64", TypeError), (True, TypeError)])
def test_bad_chunk_size(chunk_mb, error, tmp_path):
    with pytest.raises(error, match="chunk_mb"):
        process_out_of_core(CORE_SHELL, tmp_path / "out", _settings(), chunk_mb=chunk_mb)


def test_bad_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        process_out_of_core(tmp_path / "missing.hspy", tmp_path / "out", _settings())
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="extension"):
        process_out_of_core(tmp_path / "notes.txt", tmp_path / "out", _settings())
    with pytest.raises(ValueError, match="is a file"):
        process_out_of_core(CORE_SHELL, tmp_path / "notes.txt", _settings())


@pytest.mark.slow
def test_scan_larger_than_allowed_memory(tmp_path):
    """A 512 x 512 x 1024 scan (512 MiB) processed with the address space capped well below base + scan."""
    bench = Path(__file__).resolve().parents[1] / "bench" / "out_of_core.py"
    run = subprocess.run([sys.executable, str(bench), "--sizes", "512", "--workdir", str(tmp_path), "--no-compare"],
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "limit" in run.stdout

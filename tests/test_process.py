"""``edx-live process`` on the real FePt core/shell data: the answer and the files a user opens."""

import json

import numpy as np
import pytest

from edx_live.cli import main
from edx_live.quantify.cores import cores

KFACTORS = ["--kfactor", "Fe_Ka=1.450226", "--kfactor", "Pt_La=5.075602"]


@pytest.fixture(scope="module")
def processed(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("core_shell")
    assert main(["process", str(data_dir / "core_shell.hspy"), "--out", str(out), "--frames", "5",
                 "--chunk-pixels", "129", "--log-level", "warning", *KFACTORS]) == 0
    return out, json.loads((out / "summary.json").read_text())


def _per_pixel(cluster, element):
    """Line counts per pixel of the pixels the cluster was measured on (its core)."""
    return cluster["composition"][element]["intensity"] / cluster["core_pixels"]


@pytest.mark.parametrize("workflow", ["pca-gmm", "umap-hdbscan"])
def test_cores_shell_and_support_are_distinct_clusters(processed, workflow):
    _, summary = processed
    clusters = summary["workflows"][workflow]["clusters"]
    assert all(c["composition"] is not None for c in clusters)
    def pt(c):  # a Pt line below its detection limit counts as none
        return c["composition"]["Pt"]["atomic_percent"] if c["composition"]["Pt"]["detected"] else 0.0

    core = max(clusters, key=pt)
    rest = [c for c in clusters if c is not core]
    fe_rich = [c for c in rest if pt(c) < 12.0]  # not the core/shell interface
    shell = max(fe_rich, key=lambda c: _per_pixel(c, "Fe"))
    support = min(fe_rich, key=lambda c: _per_pixel(c, "Fe"))
    # the cores: an FePt alloy, Pt well above any other cluster
    assert 25.0 < core["composition"]["Pt"]["atomic_percent"] < 60.0
    assert all(pt(core) > pt(c) + 15 for c in rest)
    assert core["composition"]["Pt"]["atomic_percent_sigma"] < 2.0
    assert core["pixels"] >= 40
    # the shell: Fe-rich, and far more Fe per pixel than the carbon support
    assert shell is not support
    assert shell["composition"]["Fe"]["atomic_percent"] > 85.0
    assert _per_pixel(support, "Fe") < 0.3 * _per_pixel(shell, "Fe")
    assert support["pixels"] > shell["pixels"] > 0


def test_summary_accounts_for_every_count(processed):
    _, summary = processed
    acq = summary["acquisition"]
    assert (acq["counts"], acq["frames"], acq["rejected"], acq["missing_messages"]) == (884071, 5, {}, 0)
    for wf in summary["workflows"].values():
        assert sum(c["pixels"] for c in wf["clusters"]) + wf["noise_pixels"] == 32 * 32
        assert wf["kfactors"] == {"Fe_Ka": 1.450226, "Pt_La": 5.075602}
        assert wf["kfactor_source"] and wf["method"]


def test_outputs_open_with_hyperspy(processed, data_dir):
    import hyperspy.api as hs

    out, summary = processed
    original = hs.load(data_dir / "core_shell.hspy")
    si = hs.load(out / "spectrum_image.hspy")
    np.testing.assert_array_equal(si.data, original.data)
    assert si.metadata.Signal.signal_type == "EDS_TEM"
    assert si.axes_manager.signal_axes[0].scale == pytest.approx(0.02)
    assert si.axes_manager.signal_axes[0].offset == pytest.approx(0.16)
    for workflow, wf in summary["workflows"].items():
        labels = hs.load(out / f"labels_{workflow}.hspy")
        assert labels.data.shape == (32, 32)
        ids = [c["label"] for c in wf["clusters"]]
        assert [(labels.data == i).sum() for i in ids] == [c["pixels"] for c in wf["clusters"]]
        assert ((labels.data == -1) | np.isin(labels.data, ids)).all()
        assert list(labels.original_metadata.edx_live.cluster_ids) == ids
        spectra = hs.load(out / f"cluster_spectra_{workflow}.hspy")
        assert list(spectra.original_metadata.edx_live.cluster_ids) == ids
        assert spectra.data.shape == (wf["n_clusters"], 992)
        assert spectra.data.sum(axis=1).round().tolist() == [c["counts"] for c in wf["clusters"]]
    assert sorted(p.name for p in out.iterdir()) == sorted(summary["files"] + ["summary.json"])


@pytest.mark.parametrize("workflow", ["pca-gmm", "umap-hdbscan"])
def test_core_agrees_with_hyperspys_own_model_quantification_of_the_same_pixels(processed, data_dir, workflow):
    """HyperSpy's documented route on the core's pixels and our fit range: create_model, fit, calibrate, fit."""
    import hyperspy.api as hs

    out, summary = processed
    wf = summary["workflows"][workflow]
    assert wf["intensity_method"] == "model" and wf["weighting"] == "membership"
    assert wf["kfactors_theoretical"] is False
    core = max(wf["clusters"], key=lambda c: c["composition"]["Pt"]["atomic_percent"] or 0.0)
    labels = hs.load(out / f"labels_{workflow}.hspy").data
    # The pixels the composition was measured on: the cluster's core, from its label map.
    ids = [c["label"] for c in wf["clusters"]]
    rows = np.full(labels.shape, -1)
    for row, label in enumerate(ids):
        rows[labels == label] = row
    measured = cores(rows, len(ids)).measured == ids.index(core["label"])
    assert measured.sum() == core["core_pixels"] and core["pixel_level"] in ("core", "interior")
    original = hs.load(data_dir / "core_shell.hspy")
    s = original.sum()
    s.data = original.rebin(scale=(2, 2, 1)).data[measured].sum(axis=0).astype(float)
    if "Sample.xray_lines" in s.metadata:
        del s.metadata.Sample.xray_lines  # so that create_model adds every element's families
    s.set_elements(wf["fit"]["elements"])
    low, high = (float(v) for v in wf["fit"]["range"].split()[0].split(".."))
    m = s.isig[low:high].create_model()
    m.fit()
    m.calibrate_energy_axis("resolution")
    m.fit()
    reference = s.quantification(m.get_lines_intensity(xray_lines=["Fe_Ka", "Pt_La"]), "CL",
                                 factors=[1.450226, 5.075602])
    fe = core["composition"]["Fe"]
    assert abs(fe["atomic_percent"] - float(np.ravel(reference[0].data)[0])) < max(2.0, 2 * fe["atomic_percent_sigma"])
    assert 0 < fe["atomic_percent_sigma_counting"] <= fe["atomic_percent_sigma"]
    assert core["entropy_r"] == pytest.approx(0.69, abs=0.05)  # Fe:Pt near 1:1, ln 2 = 0.693

"""``edx-live process`` on the real FePt core/shell data: the answer and the session folder a user opens."""

import io
import json

import numpy as np
import pytest
from edx_protocol import Composition

from edx_live.cli import main
from edx_live.quantify.cores import cores
from edx_live.shell import publish
from edx_live.shell.offline import _Feeder, _progress_bar
from edx_live.shell.transport import MemoryConnection

KFACTORS = ["--kfactor", "Fe_Ka=1.450226", "--kfactor", "Pt_La=5.075602"]
WORKFLOWS = ("pca-gmm", "umap-hdbscan")


class _Published(publish.Collector):
    """Stands in for the command's console printer: keeps the documents ``process`` publishes."""

    documents_seen: list = []

    def __init__(self, *args, **kwargs):
        super().__init__()
        _Published.documents_seen = self.documents


@pytest.fixture(scope="module")
def processed(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("core_shell")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(publish, "ConsolePrinter", _Published)
        assert main(["process", str(data_dir / "core_shell.hspy"), "--out", str(out), "--frames", "5",
                     "--chunk-pixels", "129", "--log-level", "warning", *KFACTORS]) == 0
    return out, json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def published(processed):
    """The last composition document published per workflow: the final refit's."""
    last = {}
    for header, _ in _Published.documents_seen:
        if header.kind == "composition":
            last[header.workflow] = header
    return last


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


def test_process_writes_the_whole_session_folder(processed):
    out, summary = processed
    per_workflow = ("labels_{}.hspy", "confidence_{}.hspy", "cluster_spectra_{}.hspy", "composition_{}.json",
                    "composition_{}.csv")
    expected = {"spectrum_image.hspy", "report.png"} | {f.format(w) for f in per_workflow for w in WORKFLOWS}
    assert set(summary["files"]) == expected
    assert sorted(p.name for p in out.iterdir()) == sorted(expected | {"summary.json"})


def test_session_maps_and_spectra_load_with_their_calibration(processed):
    import hyperspy.api as hs

    out, summary = processed
    si = hs.load(out / "spectrum_image.hspy")
    assert type(si).__name__ == "EDSTEMSpectrum"
    assert [(ax.name, ax.scale, ax.units) for ax in si.axes_manager.navigation_axes] == [("x", 0.5, "nm"),
                                                                                          ("y", 0.5, "nm")]
    assert si.metadata.Acquisition_instrument.TEM.beam_energy == 200.0
    assert sorted(si.metadata.Sample.elements) == ["Fe", "Pt"] and si.metadata.General.title
    for workflow in WORKFLOWS:
        labels = hs.load(out / f"labels_{workflow}.hspy")
        confidence = hs.load(out / f"confidence_{workflow}.hspy")
        assert type(confidence).__name__ == "Signal2D" and confidence.data.shape == labels.data.shape == (32, 32)
        assert np.isfinite(confidence.data).all()
        assert confidence.data.min() >= 0 and confidence.data.max() <= 1 and confidence.data.max() > 0.5
        assert [(ax.name, ax.scale, ax.offset, ax.units) for ax in confidence.axes_manager.signal_axes] == \
            [(ax.name, ax.scale, ax.offset, ax.units) for ax in labels.axes_manager.signal_axes] == \
            [("x", 1.0, 0.25, "nm"), ("y", 1.0, 0.25, "nm")]
        spectra = hs.load(out / f"cluster_spectra_{workflow}.hspy")
        assert type(spectra).__name__ == "EDSTEMSpectrum"
        assert spectra.axes_manager.navigation_axes[0].name == "cluster"
        assert spectra.axes_manager.signal_axes[0].units == "keV"


@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_session_composition_is_the_one_published(processed, published, workflow):
    out, summary = processed
    document = published[workflow]
    assert document.final
    written = Composition.model_validate_json((out / f"composition_{workflow}.json").read_text())
    assert written.model_dump(exclude={"seq"}) == document.model_dump(exclude={"seq"})
    clusters = summary["workflows"][workflow]["clusters"]
    assert [c.label for c in written.clusters] == [c["label"] for c in clusters]


def test_session_report_is_an_a4_page_with_the_cluster_colours(processed):
    from PIL import Image

    from edx_live.export.report import CLUSTER_COLOURS

    out, summary = processed
    image = Image.open(out / "report.png")
    assert image.size == (1753, 1240)
    rgb = np.asarray(image.convert("RGB")).astype(int)
    assert rgb.std() > 20 and len(np.unique(rgb.reshape(-1, 3), axis=0)) > 1000
    for wf in summary["workflows"].values():
        for cluster in wf["clusters"]:
            target = np.round(np.array(Image.new("RGB", (1, 1), CLUSTER_COLOURS[cluster["label"]]).getpixel((0, 0))))
            assert (np.abs(rgb - target).max(axis=-1) <= 1).any(), cluster["label"]


def _replay(data_dir, frames=3):
    from edx_adapters.replay import open_replay

    return open_replay(data_dir / "core_shell.hspy", frames=frames)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bar_over_sweeps_only_on_a_terminal(data_dir, monkeypatch, terminal):
    stderr = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    replay = _replay(data_dir)
    with _progress_bar(replay, None) as bar:
        feeder = _Feeder(replay, MemoryConnection(), on_error=lambda: None, progress=bar)
        feeder.run()
        assert feeder.error is None and bar.disable is not terminal
        assert bar.n == (3 if terminal else 0)  # a disabled bar counts nothing
    text = stderr.getvalue()
    if terminal:
        assert "0/3 [" in text and "3/3 [" in text and "sweep" in text and "core_shell.hspy" in text
    else:
        assert text == ""

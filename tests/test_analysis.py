"""The analyzer keeps cluster ids across refits of one acquisition and says when the answer settles."""

from __future__ import annotations

import numpy as np
import pytest
from edx_adapters.synthetic import make_phantom
from edx_protocol import NOISE_LABEL, Start

from edx_live.pipeline.refit import Analyzer
from edx_live.config import load_settings
from edx_live.core.snapshot import Snapshot


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((64, 64), channels=512, scale_kev=0.04, seed=3)


def _snapshot(phantom, cube, acquisition_id, refit):
    start = Start(acquisition_id=acquisition_id, seq=0, **phantom.start_fields())
    binned = cube.reshape(32, 2, 32, 2, -1).sum(axis=(1, 3), dtype=np.uint64)
    ax = phantom.energy_axis
    return Snapshot(start, binned, 2, ax.offset_kev, ax.scale_kev, frames=refit + 1,
                    counts=int(cube.sum()), refit=refit, final=False)


def _clusters(documents):
    return [(h, a) for h, a in documents if h.kind == "clusters"]


def test_ids_are_kept_and_convergence_is_reported(phantom):
    rng = np.random.default_rng(0)
    cube = rng.poisson(phantom.expected(400.0)).astype(np.uint32)
    settings = load_settings(overrides={"refit": {"workflows": ["pca-gmm"]}})
    analyzer = Analyzer(settings)
    runs = [_clusters(analyzer(_snapshot(phantom, cube, "a", i)))[0] for i in range(3)]

    first, second, third = (h for h, _ in runs)
    assert first.agreement is None and first.converged is False
    assert first.appeared == [c.label for c in first.clusters] and first.vanished == []
    # The same data refitted: same ids, same map, nothing appears; converged after the patience.
    for header, arrays in runs[1:]:
        assert [c.label for c in header.clusters] == [c.label for c in first.clusters]
        np.testing.assert_array_equal(arrays["labels"], runs[0][1]["labels"])
        assert header.appeared == [] and header.vanished == []
        assert header.agreement == pytest.approx(1.0) and header.spectrum_change == pytest.approx(0.0, abs=1e-6)
    assert second.converged is False and third.converged is True
    assert "consecutive refits" in third.convergence_criterion

    # A new acquisition starts its own numbering and its own convergence count.
    header, _ = _clusters(analyzer(_snapshot(phantom, cube, "b", 0)))[0]
    assert header.agreement is None and header.converged is False


def test_more_dose_keeps_the_ids_of_matching_clusters(phantom):
    """A refit on more counts renumbers nothing: each cluster keeps the id of the one it overlaps most."""
    rng = np.random.default_rng(1)
    low = rng.poisson(phantom.expected(100.0)).astype(np.uint32)
    high = low + rng.poisson(phantom.expected(300.0)).astype(np.uint32)
    analyzer = Analyzer(load_settings(overrides={"refit": {"workflows": ["pca-gmm"]}}))
    (h1, a1), = _clusters(analyzer(_snapshot(phantom, low, "a", 0)))
    (h2, a2), = _clusters(analyzer(_snapshot(phantom, high, "a", 1)))
    for header, arrays in ((h1, a1), (h2, a2)):
        labels = arrays["labels"]
        assert [(labels == c.label).sum() for c in header.clusters] == [c.pixels for c in header.clusters]
    # Each id present in both refits labels mostly the same pixels.
    shared = {c.label for c in h1.clusters} & {c.label for c in h2.clusters}
    assert shared
    for label in shared:
        m1, m2 = a1["labels"] == label, a2["labels"] == label
        assert (m1 & m2).sum() / (m1 | m2).sum() > 0.5
    assert set(h2.appeared) == {c.label for c in h2.clusters} - shared
    assert NOISE_LABEL not in {c.label for c in h2.clusters}


def test_a_failure_in_one_workflow_leaves_the_other_and_is_counted(phantom, monkeypatch):
    """Tracking, document building and quantification are contained per workflow, like segmentation."""
    import edx_live.pipeline.refit as analysis

    rng = np.random.default_rng(0)
    cube = rng.poisson(phantom.expected(200.0)).astype(np.uint32)
    real = analysis.clusters_document

    def broken_for_pca(snapshot, result, *args):
        if result.workflow == "pca-gmm":
            raise IndexError("a defect in document building")
        return real(snapshot, result, *args)

    monkeypatch.setattr(analysis, "clusters_document", broken_for_pca)
    analyzer = Analyzer(load_settings(overrides={"quantify": {"replicas": 4, "bootstrap": 4}}))
    docs = list(analyzer(_snapshot(phantom, cube, "a", 0)))
    assert [(h.kind, getattr(h, "workflow", None)) for h, _ in docs] == [
        ("clusters", "umap-hdbscan"), ("composition", "umap-hdbscan"), ("targets", None), ("advice", None)]
    assert docs[2][0].targets and all(t.workflows == ["umap-hdbscan"] for t in docs[2][0].targets)
    assert analyzer.errors == 1 and "pca-gmm" not in analyzer.latest

    def broken_setup(*args, **kwargs):
        raise RuntimeError("a defect in the quantification set-up")

    monkeypatch.setattr(analysis, "clusters_document", real)
    monkeypatch.setattr(analysis, "acquisition_setup", broken_setup)
    docs = list(analyzer(_snapshot(phantom, cube, "b", 0)))
    assert [(h.kind, getattr(h, "workflow", None)) for h, _ in docs] == [
        ("clusters", "pca-gmm"), ("clusters", "umap-hdbscan"), ("targets", None), ("advice", None)]
    assert analyzer.errors == 3


def test_a_refit_that_raises_does_not_stop_the_service():
    from edx_protocol import encode

    from edx_live.shell.publish import Collector
    from edx_live.shell.service import Service
    from edx_live.shell.transport import MemoryConnection
    from test_ingest import events, start, stop

    calls = []

    def analyze(snapshot, record):
        calls.append(snapshot.final)
        raise ValueError("a refit that fails on odd data")

    conn, collector = MemoryConnection(), Collector()
    service = Service(load_settings(overrides={"refit": {"min_counts": 1, "every_frames": 1}}), conn, [collector],
                      analyze)
    conn.put(encode(start()))
    conn.put(events(1, np.arange(24), np.full(24, 3)))
    conn.put(events(2, np.arange(24), np.full(24, 4), frame_index=1))
    conn.put(stop(3, frames=2))
    service.run(stop_after=1)
    assert calls[-1] is True and len(calls) >= 2  # live refits failed, the final one still ran
    final = collector.latest("status")[0]
    assert final.final and final.counts == 48 and final.refit_errors == len(calls)

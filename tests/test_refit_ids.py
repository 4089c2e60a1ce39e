"""Live refits: compositions sit on the clusters they describe, whatever ids tracking gave them.

On a fresh acquisition's first refit the ids are 0..n-1 and rows and ids coincide; these
tests make the ids differ from the rows (as they do from the second live refit on) and
check each composition against the phantom's truth for the pixels its cluster covers.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from edx_adapters.synthetic import make_phantom
from edx_protocol import Start
from edx_protocol.check import DocumentChecker

from edx_live.pipeline.refit import Analyzer
from edx_live.config import load_settings
from edx_live.core.snapshot import Snapshot
from edx_live.segment import PcaGmm, UmapHdbscan, segment
from edx_live.segment.tracking import _relabel, cluster_ids, row_labels

BIN = 2


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((64, 64), channels=1024, scale_kev=0.02, seed=5)


@pytest.fixture(scope="module")
def cube(phantom):
    return np.random.default_rng(2).poisson(phantom.expected(600.0)).astype(np.uint32)


def _snapshot(phantom, cube, acquisition_id="a", refit=0, **start):
    fields = {**phantom.start_fields(), **start}
    rows, cols = cube.shape[:2]
    binned = cube.reshape(rows // BIN, BIN, cols // BIN, BIN, -1).sum(axis=(1, 3), dtype=np.uint64)
    ax = phantom.energy_axis
    return Snapshot(Start(acquisition_id=acquisition_id, seq=0, **fields), binned, BIN, ax.offset_kev,
                    ax.scale_kev, frames=refit + 1, counts=int(cube.sum()), refit=refit, final=False)


def _settings(phantom, workflows):
    return load_settings(overrides={"refit": {"workflows": workflows},
                                    "quantify": {"kfactors": phantom.kfactors, "replicas": 8, "bootstrap": 8}})


def _scramble_ids(analyzer: Analyzer, workflow: str) -> dict[int, int]:
    """Give the last result ids that are neither contiguous nor in row order, as several live refits do."""
    latest = analyzer.latest[workflow]
    n = latest.result.n_clusters
    new_ids = np.array([7 + 5 * (n - 1 - i) for i in range(n)])  # decreasing in row order, with gaps
    relabelled = _relabel(latest.result, new_ids, int(new_ids.max()) + 1)
    analyzer.latest[workflow] = dataclasses.replace(latest, result=relabelled)
    return dict(zip(cluster_ids(latest.result).tolist(), new_ids.tolist()))


@pytest.mark.parametrize("workflow", ["pca-gmm", "umap-hdbscan"])
def test_each_composition_describes_the_cluster_of_its_label(phantom, cube, workflow):
    analyzer = Analyzer(_settings(phantom, [workflow]))
    list(analyzer(_snapshot(phantom, cube, refit=0)))
    _scramble_ids(analyzer, workflow)
    docs = list(analyzer(_snapshot(phantom, cube, refit=1)))
    checker = DocumentChecker()  # the documents of this refit agree with each other
    for header, arrays in docs:
        checker(header, arrays)
    checker.assert_consistent()
    assert [h.kind for h, _ in docs] == ["clusters", "composition", "targets", "advice"]
    (clusters, arrays), (composition, _) = docs[:2]
    # the targets name the clusters by the same ids as the map
    named = {i for t in docs[2][0].targets for i in t.clusters.get(clusters.workflow, [])}
    assert named and named <= {c.label for c in clusters.clusters}
    assert min(c.label for c in clusters.clusters) >= 7  # the ids really differ from the rows
    assert [c.label for c in composition.clusters] == [c.label for c in clusters.clusters]

    truth = phantom.binned_labels(BIN)
    checked = 0
    for info, comp in zip(clusters.clusters, composition.clusters):
        mask = arrays["labels"] == info.label
        assert comp.pixels == info.pixels == int(mask.sum())
        phases, votes = np.unique(truth[mask], return_counts=True)
        if votes.max() < 0.8 * mask.sum() or info.pixels < 20:
            continue  # a boundary or mixed cluster: its truth is not one phase
        measured = {el: r.atomic_percent if r.detected else 0.0 for el, r in comp.elements.items()}
        # The composition is nearest the truth of the phase its pixels belong to, by far.
        distance = [sum(abs(measured[el] - truth_c.get(el, 0.0)) for el in measured)
                    for truth_c in phantom.compositions]
        assert int(np.argmin(distance)) == int(phases[np.argmax(votes)]), (info.label, measured)
        assert min(distance) < 40.0
        checked += 1
    assert checked >= 2


def test_the_quantifier_gets_row_numbers_of_a_tracked_result(phantom, cube):
    analyzer = Analyzer(_settings(phantom, ["pca-gmm"]))
    list(analyzer(_snapshot(phantom, cube)))
    mapping = _scramble_ids(analyzer, "pca-gmm")
    result = analyzer.latest["pca-gmm"].result
    rows = row_labels(result)
    ids = cluster_ids(result)
    assert set(np.unique(rows)) <= set(range(result.n_clusters)) | {-1}
    np.testing.assert_array_equal(np.where(rows >= 0, ids[np.maximum(rows, 0)], -1), result.labels)
    assert sorted(mapping.values()) == ids.tolist()


def test_pca_gmm_confidence_is_the_posterior_of_the_assigned_cluster(phantom, cube):
    snap = _snapshot(phantom, cube)
    result = segment(snap.cube, PcaGmm(random_state=0), "pca-gmm", offset_kev=snap.offset_kev,
                     scale_kev=snap.scale_kev)
    conf = result.confidence
    assert conf.shape == snap.cube.shape[:2]
    assert np.all(conf >= 1.0 / result.n_clusters - 1e-9) and np.all(conf <= 1.0 + 1e-9)  # an argmax posterior
    assert np.median(conf) > 0.95  # most pixels sit well inside a phase


def test_umap_warm_start_continues_from_the_previous_embedding(phantom, cube):
    snap = _snapshot(phantom, cube)
    binned = snap.cube.reshape(-1, snap.cube.shape[-1])
    first = UmapHdbscan(random_state=0).fit(binned)
    embedding = first.warm_start_["embedding"]
    warm = UmapHdbscan(random_state=1, init=embedding, warm_epochs=5).fit(binned)
    # The same layout with its rows shuffled: an estimator that ignored ``init`` could not tell them apart.
    shuffled = embedding[np.random.default_rng(0).permutation(len(embedding))]
    other = UmapHdbscan(random_state=1, init=shuffled, warm_epochs=5).fit(binned)
    assert warm.choices_["umap_warm_start"] == 1 and other.choices_["umap_warm_start"] == 1

    def distance(e):
        # UMAP rescales an initial layout to [0, 10] per axis: compare the layouts on that scale.
        def scaled(x):
            return 10 * (x - x.min(axis=0)) / (x.max(axis=0) - x.min(axis=0))

        return float(np.mean(np.linalg.norm(scaled(e) - scaled(embedding), axis=1)))

    assert distance(warm.warm_start_["embedding"]) < 0.5 * distance(other.warm_start_["embedding"])


def test_the_analyzer_passes_the_embedding_on_to_the_next_refit(phantom, cube):
    analyzer = Analyzer(_settings(phantom, ["umap-hdbscan"]))
    list(analyzer(_snapshot(phantom, cube, refit=0)))
    assert analyzer.latest["umap-hdbscan"].result.choices["umap_warm_start"] == 0
    list(analyzer(_snapshot(phantom, cube, refit=1)))
    assert analyzer.latest["umap-hdbscan"].result.choices["umap_warm_start"] == 1
    list(analyzer(_snapshot(phantom, cube, "b", refit=0)))  # a new acquisition starts cold
    assert analyzer.latest["umap-hdbscan"].result.choices["umap_warm_start"] == 0


def test_acquisitions_in_a_row_each_get_their_own_quantification_setup(phantom, cube):
    """The setup is worked out once per acquisition: the next one's elements are its own."""
    analyzer = Analyzer(_settings(phantom, ["pca-gmm"]))
    docs_a = list(analyzer(_snapshot(phantom, cube, "a")))
    only = ["Fe_Ka", "Cu_Ka", "Ni_Ka", "Cr_Ka"]
    docs_b = list(analyzer(_snapshot(phantom, cube, "b", elements=["Fe", "Cu", "Ni", "Cr"], xray_lines=only)))
    lines_a = next(h for h, _ in docs_a if h.kind == "composition").xray_lines
    lines_b = next(h for h, _ in docs_b if h.kind == "composition").xray_lines
    assert set(lines_a) == set(phantom.xray_lines)
    assert set(lines_b) == set(only)

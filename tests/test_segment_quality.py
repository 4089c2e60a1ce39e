"""Automatic choices on data with a known answer, mixed-pixel merging, sampling and confidence maps."""

from __future__ import annotations

import numpy as np
import pytest
from edx_adapters.synthetic import make_phantom
from sklearn.metrics import adjusted_rand_score

from edx_live.segment import PcaGmm, UmapHdbscan, segment, warm_up
from edx_live.segment.mixing import merge_mixed_clusters, mixed_components
from edx_live.segment.umap_hdbscan import fit_sample, place


@pytest.fixture(scope="module", autouse=True)
def _jit():
    warm_up(random_state=0, approximate_neighbors=False)


@pytest.fixture(scope="module")
def phantom():
    """The default four phases (matrix, Cu grains, Al2O3 inclusion, small Ag-Cd particles) at 128 x 128."""
    return make_phantom((128, 128))


@pytest.fixture(scope="module")
def acquired(phantom):
    return phantom.binned_counts(200.0, 2, seed=5), phantom.binned_labels(2)


def _segment(cube, phantom, estimator):
    ax = phantom.energy_axis
    return segment(cube, estimator, "test", offset_kev=ax.offset_kev, scale_kev=ax.scale_kev)


def test_pca_gmm_finds_the_four_phases(phantom, acquired):
    cube, truth = acquired
    result = _segment(cube, phantom, PcaGmm(random_state=0))
    assert result.n_clusters == 4
    assert adjusted_rand_score(truth.ravel(), result.labels.ravel()) > 0.95
    c = result.choices
    # What was chosen, and why, is all there: the scree, the ICL per candidate, the merges.
    assert c["n_components"] == int(np.argmax(c["scree_distance"])) + 1
    assert c["n_clusters_by_icl"] == c["cluster_candidates"][int(np.argmin(c["icl"]))]
    assert c["n_clusters_by_icl"] - len(c["merged_component"]) == 4
    assert np.all((result.confidence >= 0) & (result.confidence <= 1))


def test_umap_hdbscan_finds_the_phases(phantom, acquired):
    cube, truth = acquired
    result = _segment(cube, phantom, UmapHdbscan(random_state=0))
    assert adjusted_rand_score(truth.ravel(), result.labels.ravel()) > 0.8
    for name in ("confidence", "outlier"):
        values = getattr(result, name)
        assert values.shape == truth.shape and np.all((values >= 0) & (values <= 1))
    # Noise has no membership; members of a cluster have some.
    assert np.all(result.confidence[result.labels < 0] == 0)
    assert result.confidence[result.labels >= 0].mean() > 0.3


def test_user_counts_are_kept_without_merging(phantom, acquired):
    cube, _ = acquired
    result = _segment(cube, phantom, PcaGmm(n_clusters=6, random_state=0))
    assert result.n_clusters == 6 and result.choices["merged_component"] == []


def test_a_boundary_mix_and_a_thinner_part_are_found_a_phase_is_not():
    a, b, c = np.array([10.0, 0, 0]), np.array([0, 10.0, 0]), np.array([0, 0, 10.0])
    means = np.array([a, b, c, 0.5 * a + 0.5 * b + [0, 0, 0.2], 0.6 * c])
    mixes = mixed_components(means, np.eye(3), empty=np.zeros(3))
    found = {m.component: m for m in mixes}
    assert set(found) == {3, 4}
    assert {found[3].a, found[3].b} == {0, 1} and found[3].t == pytest.approx(0.5, abs=0.05)
    assert found[4].a == 2 and found[4].b is None and found[4].t == pytest.approx(0.6, abs=0.01)
    # Without the empty point a thinner part is a phase of its own.
    assert {m.component for m in mixed_components(means, np.eye(3))} == {3}


def test_merged_pixels_go_to_the_nearest_kept_cluster():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [20.0, 0.0], [10.0, 0.0]])  # the third is the midpoint: a mix
    labels = np.repeat([0, 1, 2], 200)
    data = centres[labels] + rng.normal(size=(600, 2))
    data[400:450, 0] -= 3.0  # mix pixels nearer the first phase
    data[450:, 0] += 3.0
    out, strength, mixes = merge_mixed_clusters(data, labels, np.ones(600))
    assert [m.component for m in mixes] == [2]
    assert out.max() == 1 and np.array_equal(out[:400], labels[:400])
    assert np.all(out[400:450] == 0) and np.all(out[450:] == 1)
    assert np.all((strength >= 0.5) & (strength <= 1))


def test_sampling_is_stable_and_placement_follows_neighbours():
    assert fit_sample(100, 200) is None
    s1, s2 = fit_sample(10_000, 1000), fit_sample(10_000, 1000)
    assert np.array_equal(s1, s2) and s1.size == 1000 and np.all(np.diff(s1) > 0)
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 10_000)
    data = truth[:, None] * 10.0 + rng.normal(size=(10_000, 3))
    labels = truth[s1].copy()
    labels[:5] = -1  # a few noise votes change nothing
    out, strength, outlier = place(data, s1, labels, np.full(1000, 0.8), np.full(1000, 0.25), 15)
    rest = np.setdiff1d(np.arange(10_000), s1)
    assert np.array_equal(out[s1], labels) and np.array_equal(out[rest], truth[rest])
    # strength = voters' share x their strength: 0.8 unless a noise pixel was among the voters
    assert np.all(strength[rest] <= 0.8 + 1e-12) and strength[rest].mean() > 0.78
    assert np.allclose(outlier[rest], 0.25)


def test_large_scans_fit_a_sample_and_warm_start(phantom, acquired):
    cube, truth = acquired
    full = _segment(cube, phantom, UmapHdbscan(random_state=0))
    sampled = _segment(cube, phantom, UmapHdbscan(random_state=0, max_fit_samples=2048))
    assert sampled.choices["fit_samples"] == 2048 and sampled.choices["placed_samples"] == truth.size - 2048
    assert adjusted_rand_score(full.labels.ravel(), sampled.labels.ravel()) > 0.8
    warm = _segment(cube, phantom, UmapHdbscan(random_state=0, init=full.warm_start["embedding"]))
    assert warm.choices["umap_warm_start"] == 1 and full.choices["umap_warm_start"] == 0
    assert adjusted_rand_score(full.labels.ravel(), warm.labels.ravel()) > 0.8
    # An embedding of the wrong shape (scan changed) is ignored, not an error.
    cold = _segment(cube, phantom, UmapHdbscan(random_state=0, init=np.zeros((3, 4))))
    assert cold.choices["umap_warm_start"] == 0

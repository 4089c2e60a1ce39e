"""Segmentations give phases: no speck, no split of a dim region, a count that settles, a live answer that settles."""

from __future__ import annotations

import numpy as np
import pytest
from edx_adapters.synthetic import DEFAULT_PHASES, Phase, make_phantom
from sklearn.metrics import adjusted_rand_score

from edx_live.segment import NOISE, PcaGmm, UmapHdbscan, segment, warm_up
from edx_live.segment.tracking import match_clusters

# The rule's names are imported in the tests that use them, so that the tests of behaviour
# run (and fail) on code without the rule.

CHANNELS = 256


@pytest.fixture(scope="module", autouse=True)
def _jit():
    warm_up(random_state=0, approximate_neighbors=False)


def _peak(centre: float) -> np.ndarray:
    return np.exp(-0.5 * ((np.arange(CHANNELS) - centre) / 3.0) ** 2)


def three_phases(seed: int = 0):
    """32 x 32 pixels, three phases with distinct peaks on a flat background (as tests/test_segment.py)."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((32, 32), dtype=np.int64)
    truth[16:, :20] = 1
    truth[16:, 20:] = 2
    means = np.full((3, CHANNELS), 0.4) + np.stack([6 * _peak(40) + 2 * _peak(150), 5 * _peak(100) + 2 * _peak(150),
                                                      3 * _peak(40) + 6 * _peak(200)])
    return rng.poisson(means[truth]).astype(np.uint32), truth


# -- the rule ---------------------------------------------------------------------------------


def test_the_g_test_tells_shapes_apart_only_with_the_counts_to_do_so():
    from edx_live.segment.phases import g_test

    rng = np.random.default_rng(0)
    shape = np.full(64, 1.0) + 20 * _peak(20)[:64]
    other = np.full(64, 1.0) + 20 * _peak(24)[:64]
    same = g_test(rng.poisson(shape * 50), rng.poisson(shape * 500))
    assert same.p_value > 1e-3 and same.dof > 10
    assert g_test(rng.poisson(other * 50), rng.poisson(shape * 500)).p_value < 1e-6
    # A handful of counts cannot tell anything apart: the bins are pooled and the test does not reject.
    assert g_test(rng.poisson(other * 0.05), rng.poisson(shape * 500)).p_value > 1e-3


def test_a_cluster_its_counts_cannot_tell_from_its_neighbour_is_merged_a_distinct_speck_is_unassigned():
    from edx_live.segment.phases import PhaseRule, settle_phases

    cube, truth = three_phases()
    labels = truth.copy()
    labels[20:24, 2:6] = 3      # 16 pixels of phase 1 cut off: the same spectrum
    labels[28:32, 22:32] = 4    # 40 pixels of phase 2 cut off: the same spectrum, more than a speck
    cube[5, 5] = 0
    cube[5, 5, 77] = 5000       # a hot pixel, its own cluster
    labels[5, 5] = 5
    settled = settle_phases(cube, labels, PhaseRule(), None, None)
    assert settled.mapping.tolist() == [0, 1, 2, 1, 2, NOISE]
    actions = {a["cluster"]: a for a in settled.actions}
    assert actions[3]["into"] == 1 and actions[3]["p_value"] >= 1e-3
    assert actions[4]["into"] == 2
    assert actions[5]["into"] == NOISE and actions[5]["pixels"] == 1 and actions[5]["p_value"] < 1e-3
    # Real phases are never merged, however few pixels they have above the minimum.
    assert {a["cluster"] for a in settled.actions} == {3, 4, 5}


def test_the_counts_found_once_settle_every_labelling_as_the_cube_does():
    """umap-hdbscan settles two candidate labellings of the same counts from one ``phase_counts``."""
    from edx_live.segment.phases import PhaseRule, phase_counts, settle_phases

    cube, truth = three_phases()
    rule = PhaseRule()
    found = phase_counts(cube, rule, 0.0, 0.01)
    assert found.totals.tolist() == cube.reshape(-1, cube.shape[-1]).sum(axis=1).tolist()
    rng = np.random.default_rng(0)
    for labels in (truth, np.where(rng.random(truth.shape) < 0.1, 3, truth), rng.integers(-1, 4, truth.shape)):
        once, again = settle_phases(found, labels, rule, 0.0, 0.01), settle_phases(cube, labels, rule, 0.0, 0.01)
        assert once.mapping.tolist() == again.mapping.tolist() and once.actions == again.actions


def test_a_lone_hot_pixel_is_not_a_phase():
    smallest = 20  # edx_live.segment.phases.MIN_CLUSTER_PIXELS: one FePt core of the demo
    cube, truth = three_phases(1)
    cube[8, 8] = 0
    cube[8, 8, 120] = 20000
    for estimator in (PcaGmm(random_state=0), UmapHdbscan(random_state=0)):
        result = segment(cube, estimator, "test")
        label = result.labels[8, 8]
        assert label == NOISE or result.pixels[label] >= smallest
        assert result.n_clusters == 3 and np.all(result.pixels >= smallest)
        keep = result.labels.ravel() >= 0
        assert adjusted_rand_score(truth.ravel()[keep], result.labels.ravel()[keep]) > 0.9
        c = result.choices
        assert "G-test" in c.get("phase_rule", "") and "pooled standard deviations" in c["phase_rule"]
        assert len(c["not_phase_pixels"]) == len(c["not_phase_into"]) == len(c["not_phase_separation"])


def test_the_published_into_label_follows_the_tracked_ids():
    cube, truth = three_phases(2)
    cube[3, 3] = 0
    cube[3, 3, 60] = 20000
    first = segment(cube, PcaGmm(random_state=0), "pca-gmm")
    tracked = match_clusters(None, first, next_id=10).result
    into = first.choices["not_phase_into"]
    ids = tracked.choices["cluster_ids"]
    assert tracked.choices["not_phase_into"] == [float(ids[int(i)]) if i >= 0 else -1.0 for i in into]


def test_dim_pixels_are_amplified_at_most_by_the_limit():
    from edx_live.segment.preprocess import poisson_scale

    X = np.array([[100.0, 100.0], [40.0, 20.0], [1.0, 1.0], [4.0, 0.0]])
    mean = X.sum(axis=1).mean()
    capped = poisson_scale(X.copy(), max_pixel_gain=2.0)
    free = poisson_scale(X.copy())
    # Pixels down to a quarter of the mean counts are scaled as Keenan-Kotula do; dimmer ones by 2 at most.
    assert np.allclose(capped[:2], free[:2])
    assert np.allclose(free[2] / capped[2], np.sqrt(mean / 2.0) / 2.0)


# -- a dim region among bright grains -----------------------------------------------------------


def resin_phantom(seed: int):
    """Resin (C, O; a few counts per scan pixel at 200 counts/pixel on average) holding the default grains."""
    resin = Phase("epoxy resin", {"C": 85.0, "O": 15.0}, ("C_Ka", "O_Ka"), brightness=0.003)
    return make_phantom((128, 128), phases=(resin,) + DEFAULT_PHASES[1:], seed=seed)


def _clusters_per_phase(truth: np.ndarray, labels: np.ndarray, n_phases: int) -> np.ndarray:
    """How many clusters have each true phase as their majority."""
    majority = [np.bincount(truth[labels == k], minlength=n_phases).argmax() for k in range(labels.max() + 1)]
    return np.bincount(majority, minlength=n_phases)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_low_count_region_stays_one_cluster_and_the_count_stops_at_the_phases(seed):
    phantom = resin_phantom(seed)
    truth = phantom.binned_labels(2)
    ax = phantom.energy_axis
    counts = []
    for dose in (100.0, 200.0):
        cube = phantom.binned_counts(dose, 2, seed=seed * 1000 + int(dose))
        assert np.median(cube.sum(axis=2)[truth == 0]) < 4 * 6  # a few counts per scan pixel in the resin
        result = segment(cube, PcaGmm(random_state=0), "pca-gmm", offset_kev=ax.offset_kev, scale_kev=ax.scale_kev)
        per_phase = _clusters_per_phase(truth.ravel(), result.labels.ravel(), len(phantom.phases))
        assert per_phase.tolist() == [1, 1, 1, 1], (dose, result.pixels)
        assert adjusted_rand_score(truth.ravel(), result.labels.ravel()) > 0.85
        counts.append(result.n_clusters)
    assert counts[1] <= counts[0] == len(phantom.phases)


def test_the_cluster_count_does_not_rise_from_half_to_full_dose_once_the_phases_are_found():
    for phantom in (resin_phantom(2), resin_phantom(3), make_phantom((128, 128), seed=3)):
        ax = phantom.energy_axis
        found = [segment(phantom.binned_counts(dose, 2, seed=int(dose)), PcaGmm(random_state=0), "pca-gmm",
                         offset_kev=ax.offset_kev, scale_kev=ax.scale_kev).n_clusters for dose in (100.0, 200.0)]
        assert found == [len(phantom.phases)] * 2, (phantom.phases[0].name, found)


# -- the live answer on the bundled demo settles ------------------------------------------------


def test_umap_hdbscan_converges_on_core_shell_replayed_sweep_by_sweep_with_stable_ids():
    from edx_adapters.replay import open_replay

    from edx_live.pipeline.refit import Analyzer
    from edx_live.config import load_settings
    from edx_live.core.snapshot import Snapshot
    from edx_live.shell.demo import DEMO_KFACTORS, bundled_dataset

    replay = open_replay(bundled_dataset(), frames=20, chunk_pixels=64 * 64, seed=0)
    rows, columns = replay.start.scan_shape
    ax = replay.start.energy_axis
    analyzer = Analyzer(load_settings(overrides={"refit": {"workflows": ["umap-hdbscan"]},
                                                 "quantify": {"kfactors": DEMO_KFACTORS, "replicas": 8,
                                                              "bootstrap": 8}}))
    cube, refits, frame = None, [], 0
    for header, arrays in replay.messages():
        if "counts" not in arrays:
            continue
        counts = arrays["counts"].reshape(rows, columns, -1).astype(np.uint64)
        cube = counts if cube is None else cube + counts
        frame += 1
        if frame % 4:
            continue
        binned = cube.reshape(rows // 2, 2, columns // 2, 2, -1).sum(axis=(1, 3))
        snapshot = Snapshot(replay.start, binned, 2, ax.offset_kev, ax.scale_kev, frame, int(cube.sum()),
                            len(refits), frame == 20)
        clusters = next(h for h, _ in analyzer(snapshot) if h.kind == "clusters")
        refits.append((clusters.converged, [c.label for c in clusters.clusters], clusters.agreement))
    assert len(refits) == 5
    converged = [i for i, (flag, _, _) in enumerate(refits) if flag]
    assert converged and converged[0] < len(refits) - 1, refits
    first = converged[0]
    assert all(flag for flag, _, _ in refits[first:]), refits
    assert len({tuple(ids) for _, ids, _ in refits[first - 2:]}) == 1, refits  # ids stay put


# -- a phase cut along its noise ------------------------------------------------------------------


def test_a_phase_cut_along_its_noise_is_one_phase_though_the_g_test_tells_the_halves_apart():
    from edx_live.segment.phases import PhaseRule, g_test, separation, settle_phases

    rng = np.random.default_rng(4)
    cube, truth = three_phases(4)
    dim = rng.poisson(np.full(CHANNELS, 0.02) + 0.8 * _peak(30) + 0.4 * _peak(90), size=(32, 32, CHANNELS))
    cube[truth == 0] = dim[truth == 0]  # phase 0: a few counts per pixel, like resin
    labels = truth.copy()
    # Cut phase 0 by its own counts: pixels with more counts in its first peak than in its second.
    first, second = cube[..., 20:40].sum(axis=2), cube[..., 80:100].sum(axis=2)
    labels[(truth == 0) & (first > 2 * second)] = 3
    halves = [cube[labels == k].sum(axis=0) for k in (0, 3)]
    assert g_test(*halves).p_value < 1e-6  # the sums of a cut by the counts differ
    assert separation(cube[labels == 0], cube[labels == 3]) < 3.0
    # Real phases, however similar, are far apart pixel by pixel.
    assert separation(cube[truth == 1], cube[truth == 2]) > 7.0
    settled = settle_phases(cube, labels, PhaseRule(), None, None)
    assert settled.mapping.tolist() == [0, 1, 2, 0]
    (action,) = settled.actions
    assert action["cluster"] == 3 and action["p_value"] < 1e-3 and action["separation"] < 4.0
    assert settle_phases(cube, labels, PhaseRule(min_separation=0.0), None, None).mapping.tolist() == [0, 1, 2, 3]


def test_a_grains_mixed_rim_goes_to_the_phase_that_covers_most_of_it():
    from edx_live.segment.refine import gaussian_boundaries

    rng = np.random.default_rng(6)
    matrix = rng.normal(0.0, 1.0, size=(400, 2))
    grain = rng.normal(0.0, 1.0, size=(40, 2)) + [8.0, 0.0]
    rim = rng.normal(0.0, 1.0, size=(30, 2)) + [2.0, 0.0]  # mostly matrix, a little grain
    data = np.vstack([matrix, grain, rim])
    labels = np.r_[np.zeros(400), np.ones(70)].astype(np.int64)  # the rim drawn into the grain's cluster
    labels[5] = -1
    moved_labels, strength, moved = gaussian_boundaries(data, labels, np.ones(labels.size))
    assert moved >= 25 and np.all(moved_labels[440:][strength[440:] >= 0.9] == 0)
    assert np.all(moved_labels[400:440] == 1) and moved_labels[5] == -1
    # A pixel the mixture is not sure of keeps its cluster, so that the map holds still between refits.
    assert np.all((moved_labels == labels) | (strength >= 0.9))


def test_one_normal_population_split_at_any_threshold_lies_under_the_separation_a_phase_needs():
    from edx_live.segment.phases import PhaseRule, separation

    rng = np.random.default_rng(5)
    shape = np.full(40, 1.0) + 10 * _peak(12)[:40] + 6 * _peak(30)[:40]
    pixels = rng.poisson(shape * 30, size=(4000, 40))
    w = rng.normal(size=40)  # any direction of the counts
    t = pixels @ w
    for q in (10, 30, 50, 80):
        cut = t > np.percentile(t, q)
        assert separation(pixels[cut], pixels[~cut]) < 2.7 < PhaseRule().min_separation, q


def test_an_estimator_that_settles_its_phases_itself_is_published_as_it_settled():
    """segment() does not settle such an estimator again, and names its merges in the published labels."""
    from sklearn.base import BaseEstimator, ClusterMixin

    cube, truth = three_phases(5)

    class Settled(ClusterMixin, BaseEstimator):  # numbers its clusters small first, one merge recorded
        def fit(self, X, y=None):
            order = {0: 2, 1: 0, 2: 1}
            self.labels_ = np.array([order[t] for t in truth.ravel()])
            self.choices_ = {"phase_rule": "test", "not_phase_pixels": [9.0, 3.0], "not_phase_into": [2.0, -1.0]}
            return self

    result = segment(cube, Settled(), "test")
    # Phase 0 is the largest (its label 2 in the estimator's numbering): label 0 once ordered by size.
    assert result.choices["not_phase_into"] == [0.0, -1.0]
    assert result.choices["not_phase_pixels"] == [9.0, 3.0] and result.n_clusters == 3
    # Without the estimator's record, segment() applies the rule itself and records it its own way.
    assert "not_phase_separation" in segment(cube, PcaGmm(random_state=0), "pca-gmm").choices

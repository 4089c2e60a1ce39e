"""Cluster identities across refits and the convergence measure, on small synthetic spectrum images."""

from __future__ import annotations

import numpy as np
import pytest

from edx_live.segment.result import NOISE, SegmentationResult, cluster_sums
from edx_live.segment.tracking import (ConvergenceTracker, agreement, cluster_ids, hellinger_matrix,
                                       jaccard_matrix, match_clusters)

CHANNELS = 64


def phase_map(rows: int = 12, columns: int = 12) -> np.ndarray:
    """Three vertical bands: 0 (6 columns), 1 (4), 2 (2); sizes differ so the order is fixed."""
    labels = np.zeros((rows, columns), dtype=np.int64)
    labels[:, 6:10] = 1
    labels[:, 10:] = 2
    return labels


def cube_for(labels: np.ndarray, counts: float = 500.0, seed: int = 0) -> np.ndarray:
    """Poisson spectra with one Gaussian peak per phase at a distinct channel, on a flat background."""
    rng = np.random.default_rng(seed)
    channels = np.arange(CHANNELS)
    shapes = np.array([1.0 + 20.0 * np.exp(-0.5 * ((channels - c) / 2.0) ** 2) for c in (10, 30, 50)])
    shapes /= shapes.sum(axis=1, keepdims=True)
    return rng.poisson(counts * shapes[np.maximum(labels, 0)]).astype(np.float64)


def result_of(labels: np.ndarray, cube: np.ndarray) -> SegmentationResult:
    n = int(labels.max()) + 1 if (labels >= 0).any() else 0
    spectra, pixels = cluster_sums(cube, labels, n)
    return SegmentationResult(workflow="pca-gmm", labels=labels, spectra=spectra, pixels=pixels)


def permuted(result: SegmentationResult, perm: np.ndarray) -> SegmentationResult:
    """The same segmentation with cluster k renamed perm[k] (an untracked result, ids 0..n-1)."""
    labels = np.where(result.labels >= 0, perm[np.maximum(result.labels, 0)], NOISE)
    inverse = np.argsort(perm)
    return SegmentationResult(workflow=result.workflow, labels=labels, spectra=result.spectra[inverse],
                              pixels=result.pixels[inverse])


@pytest.fixture
def base():
    labels = phase_map()
    cube = cube_for(labels)
    return labels, cube, result_of(labels, cube)


def test_first_refit_numbers_from_zero(base):
    _, _, r = base
    m = match_clusters(None, r)
    np.testing.assert_array_equal(m.result.labels, r.labels)
    np.testing.assert_array_equal(m.ids, [0, 1, 2])
    assert m.appeared == [0, 1, 2] and m.vanished == [] and m.scores == {} and m.next_id == 3
    assert m.result.choices["cluster_ids"] == [0, 1, 2] and m.result.choices["next_cluster_id"] == 3
    assert match_clusters(None, r, next_id=10).appeared == [10, 11, 12]


@pytest.mark.parametrize("perm", [[1, 2, 0], [2, 1, 0], [0, 2, 1]])
def test_permutation_maps_back_exactly(base, perm):
    _, _, r = base
    previous = match_clusters(None, r).result
    m = match_clusters(previous, permuted(r, np.array(perm)))
    np.testing.assert_array_equal(m.result.labels, previous.labels)
    np.testing.assert_array_equal(m.result.spectra, previous.spectra)
    np.testing.assert_array_equal(m.result.pixels, previous.pixels)
    assert m.mapping == {perm[k]: k for k in range(3)}
    assert m.appeared == [] and m.vanished == [] and m.next_id == 3
    assert m.scores == pytest.approx({0: 1.0, 1: 1.0, 2: 1.0})


def test_permutation_maps_back_to_non_contiguous_ids(base):
    labels, cube, r = base
    ids = np.array([0, 3, 7])
    tracked = SegmentationResult(workflow="pca-gmm", labels=ids[labels], spectra=r.spectra, pixels=r.pixels,
                                 choices={"cluster_ids": ids.tolist(), "next_cluster_id": 9})
    m = match_clusters(tracked, permuted(r, np.array([2, 0, 1])))
    np.testing.assert_array_equal(m.result.labels, tracked.labels)
    np.testing.assert_array_equal(m.result.spectra, tracked.spectra)
    np.testing.assert_array_equal(m.ids, ids)
    assert m.next_id == 9


def test_noise_is_preserved(base):
    labels, cube, _ = base
    noisy = labels.copy()
    noisy[::3, ::4] = NOISE
    r = result_of(noisy, cube)
    previous = match_clusters(None, r).result
    m = match_clusters(previous, permuted(r, np.array([2, 0, 1])))
    np.testing.assert_array_equal(m.result.labels == NOISE, noisy == NOISE)
    np.testing.assert_array_equal(m.result.labels, previous.labels)
    assert m.result.noise_pixels == r.noise_pixels


def split_band_zero(labels: np.ndarray) -> np.ndarray:
    """Band 0 split into columns 0-3 (keeps label 0) and 4-5 (new label 3)."""
    out = labels.copy()
    out[:, 4:6] = 3
    return out


def test_split_reports_appeared(base):
    labels, cube, r = base
    previous = match_clusters(None, r).result
    m = match_clusters(previous, result_of(split_band_zero(labels), cube))
    assert m.appeared == [3] and m.vanished == []
    assert np.all(m.result.labels[:, :4] == 0) and np.all(m.result.labels[:, 4:6] == 3)
    assert m.result.choices["cluster_ids"] == [0, 1, 2, 3]


def test_merge_reports_vanished(base):
    labels, cube, r = base
    previous = match_clusters(None, r).result
    m = match_clusters(previous, result_of(np.minimum(labels, 1), cube))  # bands 1 and 2 merged
    assert m.appeared == [] and m.vanished == [2]
    assert np.all(m.result.labels[:, 6:] == 1)
    assert m.next_id == 3


def test_new_ids_are_never_reused(base):
    labels, cube, r = base
    split, merged = result_of(split_band_zero(labels), cube), r
    m = match_clusters(None, r)
    seen = set(m.ids.tolist())
    for current, expected in [(split, [3]), (merged, []), (split, [4]), (merged, []), (split, [5])]:
        m = match_clusters(m.result, current)
        assert m.appeared == expected
        assert not seen & set(m.appeared)
        seen |= set(m.ids.tolist())
    assert m.next_id == 6


def test_threshold_rejects_weak_pairs(base):
    labels, cube, r = base
    previous = match_clusters(None, r).result
    shifted = np.roll(labels, 3, axis=1)  # overlaps shrink, spectra stay
    assert match_clusters(previous, result_of(shifted, cube), min_similarity=0.5).appeared == []
    strict = match_clusters(previous, result_of(shifted, cube), min_similarity=0.99)
    assert strict.appeared == [3, 4, 5] and strict.vanished == [0, 1, 2]


def test_rebinned_map_matches_on_spectra(base):
    labels, cube, r = base
    previous = match_clusters(None, r).result
    coarse = labels[::2, ::2]
    binned = cube.reshape(6, 2, 6, 2, CHANNELS).sum(axis=(1, 3))
    m = match_clusters(previous, permuted(result_of(coarse, binned), np.array([1, 2, 0])))
    np.testing.assert_array_equal(m.result.labels, coarse)
    assert np.isnan(agreement(previous, m.result).ari)


def test_similarity_parts():
    a = SegmentationResult("pca-gmm", np.array([[0, 0, 1, NOISE]]), np.array([[1.0, 0.0], [0.0, 4.0]]),
                           np.array([2, 1]))
    b = SegmentationResult("pca-gmm", np.array([[0, 1, 1, 1]]), np.array([[2.0, 0.0], [0.0, 0.0]]),
                           np.array([1, 3]))
    np.testing.assert_allclose(jaccard_matrix(a, b), [[1 / 2, 1 / 4], [0.0, 1 / 3]])
    np.testing.assert_allclose(hellinger_matrix(a.spectra, b.spectra), [[0.0, 1.0], [1.0, 1.0]])


def test_identical_results_agree_fully(base):
    _, _, r = base
    tracked = match_clusters(None, r).result
    agree = agreement(tracked, tracked)
    assert agree.ari == 1.0 and agree.spectrum_change == pytest.approx(0.0, abs=1e-7)
    assert agree.shared_ids == [0, 1, 2]
    assert list(cluster_ids(tracked)) == [0, 1, 2]


def test_convergence_after_patience_and_reset(base):
    labels, cube, r = base
    more = result_of(labels, cube + cube_for(labels, seed=1))  # twice the counts, same answer
    tracker = ConvergenceTracker(ari_threshold=0.95, spectrum_threshold=0.05, patience=2)
    states = []
    previous = None
    for current in [r, more, more, result_of(np.minimum(labels, 1), cube), r, r, r]:
        tracked = match_clusters(previous, current).result
        states.append(tracker.update(previous, tracked))
        previous = tracked
    assert [s.converged for s in states] == [False, False, True, False, False, False, True]
    assert [s.stable_refits for s in states] == [0, 1, 2, 0, 0, 1, 2]
    assert states[1].spectrum_change < 0.05 and states[3].ari < 0.95
    assert "2 consecutive refits" in states[0].criterion


def test_spectrum_change_alone_breaks_convergence(base):
    labels, cube, r = base
    tracker = ConvergenceTracker(patience=1)
    tracked = match_clusters(None, r).result
    assert tracker.update(tracked, tracked).converged
    other = cube_for(np.roll(labels, 6, axis=1))  # same map, every spectrum another phase's
    changed = match_clusters(tracked, result_of(labels, other), pixel_weight=1.0).result
    state = tracker.update(tracked, changed)
    assert state.ari == 1.0 and state.spectrum_change > 0.5 and not state.converged


def test_a_refit_where_every_pixel_is_noise_is_tracked(base):
    """Both small Velox files give such results: tracking must not raise, on a first refit or a later one."""
    labels, cube, base = base
    empty = result_of(np.full(labels.shape, NOISE), cube)
    assert empty.n_clusters == 0
    first = match_clusters(None, empty)
    assert (first.appeared, first.vanished, first.result.n_clusters) == ([], [], 0)
    assert np.all(first.result.labels == NOISE)
    tracked = match_clusters(None, base).result
    later = match_clusters(tracked, empty)
    assert later.vanished == cluster_ids(tracked).tolist() and later.appeared == []
    back = match_clusters(later.result, base)  # clusters come back with new ids: ids are never reused
    assert min(back.appeared) >= later.next_id == tracked.n_clusters
    state = ConvergenceTracker().update(tracked, later.result)
    assert not state.converged

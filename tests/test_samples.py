"""Cluster spectra and their resamplings against naive numpy sums."""

import numpy as np
import pytest

from edx_live.quantify.samples import _groups, cluster_samples


@pytest.fixture
def cluster():
    rng = np.random.default_rng(11)
    cube = rng.poisson(3.0, (12, 10, 40)).astype(np.uint32)
    labels = rng.integers(-1, 3, (12, 10))
    weights = rng.uniform(0.2, 1.0, (12, 10))
    return cube, labels, weights


@pytest.mark.parametrize("blocks", [2048, 7])  # every pixel its own group; random groups of pixels
def test_measured_spectrum_is_the_weighted_sum_of_the_members(cluster, blocks):
    cube, labels, weights = cluster
    channels = slice(5, 31)
    s = cluster_samples(cube, labels, 3, weights=weights, replicas=4, bootstrap=6, blocks=blocks,
                        channels=channels, random_state=0)
    flat, lab, w = cube.reshape(-1, 40).astype(float), labels.ravel(), weights.ravel()
    for k in range(3):
        expected = (flat[lab == k] * w[lab == k, None]).sum(axis=0)
        np.testing.assert_allclose(s.stack[k, 0, channels], expected[channels], rtol=1e-12)
        assert not s.stack[k, :, :5].any() and not s.stack[k, :, 31:].any()
        assert s.pixels[k] == (lab == k).sum() and s.weight[k] == pytest.approx(w[lab == k].sum())
    assert s.stack.shape == (3, 1 + 4 + 6, 40)


def test_random_groups_partition_the_pixels_and_keep_both_sums(cluster):
    cube, labels, weights = cluster
    flat = cube.reshape(-1, 40)
    members = np.flatnonzero(labels.ravel() == 1)
    w = weights.ravel()[members]
    sums, squares = _groups(flat, members, w, 5, slice(0, 40), np.random.default_rng(3))
    assert sums.shape == (5, 40)
    x = flat[members].astype(float)
    np.testing.assert_allclose(sums.sum(axis=0), (x * w[:, None]).sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(squares.sum(axis=0), (x * (w * w)[:, None]).sum(axis=0), rtol=1e-12)
    # groups are near-equal in size: their weights sum to the cluster's in about 1/5 each
    per_group = np.array([s.sum() for s in sums]) / sums.sum()
    assert per_group.min() > 0.05


def test_bootstrap_samples_are_resamplings_of_the_members(cluster):
    cube, labels, weights = cluster
    s = cluster_samples(cube, labels, 3, replicas=0, bootstrap=400, random_state=1)
    flat, lab = cube.reshape(-1, 40).astype(float), labels.ravel()
    boot = s.resampled(s.stack)
    for k in range(3):
        measured = flat[lab == k].sum(axis=0)
        np.testing.assert_allclose(boot[k].mean(axis=0).sum(), measured.sum(), rtol=0.02)
        # each sample draws as many pixels as the cluster has: totals stay near the measured total
        assert boot[k].sum(axis=1).std() < 0.2 * measured.sum()

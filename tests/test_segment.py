"""The segmentation workflows: synthetic phases, estimator conventions, cluster sums, the FePt acceptance."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import adjusted_rand_score

from edx_live.segment import NOISE, PcaGmm, UmapHdbscan, cluster_sums, order_by_size, segment, warm_up
from edx_live.segment.scree import scree_knee

from conftest import load_file_sum

# FePt core/shell calibration and lines (see ../shared/data/SOURCES.md).
OFFSET_KEV, SCALE_KEV = 0.16, 0.02
FE_KA, PT_LA = 6.40, 9.44


@pytest.fixture(scope="module", autouse=True)
def _jit():
    """Compile UMAP once per module; exact neighbours are all these small maps use."""
    warm_up(random_state=0, approximate_neighbors=False)


def synthetic_phases(seed: int = 0):
    """32 x 32 pixels, 3 phases (512, 320, 192 pixels) with distinct Gaussian peaks on a flat background.

    Returns the Poisson-count cube (rows, columns, 256 channels) and the true label map.
    """
    rng = np.random.default_rng(seed)
    truth = np.zeros((32, 32), dtype=np.int64)
    truth[16:, :20] = 1
    truth[16:, 20:] = 2
    channels = np.arange(256)
    peak = lambda centre: np.exp(-0.5 * ((channels - centre) / 3.0) ** 2)  # noqa: E731
    background = np.full(256, 0.4)
    means = np.stack([background + 6 * peak(40) + 2 * peak(150),
                      background + 5 * peak(100) + 2 * peak(150),
                      background + 3 * peak(40) + 6 * peak(200)])
    cube = rng.poisson(means[truth]).astype(np.uint32)
    cube[0, :3] = 0  # empty pixels must not break anything
    return cube, truth


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_phases()


@pytest.mark.parametrize("estimator", [PcaGmm(random_state=0), UmapHdbscan(random_state=0)],
                         ids=["pca-gmm", "umap-hdbscan"])
def test_workflows_recover_synthetic_phases(synthetic, estimator):
    cube, truth = synthetic
    result = segment(cube, estimator, "test")
    assert adjusted_rand_score(truth.ravel(), result.labels.ravel()) > 0.9
    assert result.n_clusters == 3
    assert result.labels.shape == truth.shape
    # Labels ordered by decreasing size: the 512-pixel phase is cluster 0.
    assert list(result.pixels) == sorted(result.pixels, reverse=True)
    assert np.all((result.confidence >= 0) & (result.confidence <= 1))


def test_pca_gmm_chooses_the_true_cluster_count(synthetic):
    cube, _ = synthetic
    model = PcaGmm(random_state=0).fit(cube.reshape(-1, cube.shape[-1]))
    assert model.n_clusters_ == 3
    assert model.n_components_ >= 2
    assert model.choices_["n_clusters"] == 3 and len(model.choices_["icl"]) == 8
    assert np.all((model.probabilities_ >= 0) & (model.probabilities_ <= 1))


def test_overrides_are_obeyed(synthetic):
    cube, _ = synthetic
    X = cube.reshape(-1, cube.shape[-1])
    model = PcaGmm(n_components=5, n_clusters=2, random_state=0).fit(X)
    assert (model.n_components_, model.n_clusters_) == (5, 2)
    assert model.choices_["n_clusters_method"] == "user"


@pytest.mark.parametrize("cls", [PcaGmm, UmapHdbscan])
def test_estimator_conventions(synthetic, cls):
    cube, _ = synthetic
    X = cube.reshape(-1, cube.shape[-1])
    estimator = cls(random_state=3)
    before = estimator.get_params()
    assert estimator.fit(X) is estimator
    assert estimator.get_params() == before
    assert not hasattr(clone(estimator), "labels_")
    assert clone(estimator).get_params() == before
    for name in ("labels_", "probabilities_", "n_clusters_", "choices_"):
        assert hasattr(estimator, name)
    _assert_json_friendly(estimator.choices_)


def test_same_seed_same_answer(synthetic):
    cube, _ = synthetic
    first = segment(cube, PcaGmm(random_state=1), "pca-gmm")
    second = segment(cube, PcaGmm(random_state=1), "pca-gmm")
    np.testing.assert_array_equal(first.labels, second.labels)


def _assert_json_friendly(choices: dict) -> None:
    for key, value in choices.items():
        assert isinstance(key, str)
        if isinstance(value, list):
            assert all(isinstance(v, float) and np.isfinite(v) for v in value), key
        else:
            assert isinstance(value, (int, float, str)) and not isinstance(value, bool), key


def test_cluster_sums_match_a_naive_loop():
    rng = np.random.default_rng(1)
    cube = rng.poisson(3.0, size=(5, 7, 11))
    labels = rng.integers(-1, 4, size=(5, 7))
    spectra, pixels = cluster_sums(cube, labels, 4)
    for k in range(4):
        expected = np.zeros(11)
        count = 0
        for r in range(5):
            for c in range(7):
                if labels[r, c] == k:
                    expected += cube[r, c]
                    count += 1
        np.testing.assert_array_equal(spectra[k], expected)
        assert pixels[k] == count


def test_order_by_size_is_deterministic():
    labels, n = order_by_size(np.array([2, 2, 0, 1, 1, 1, -1, 0, 3, 3]))
    # Sizes: 1 -> 3 pixels, then 0, 2 and 3 with 2 each (ties keep the old order).
    assert n == 4
    np.testing.assert_array_equal(labels, [2, 2, 1, 0, 0, 0, NOISE, 1, 3, 3])


def test_result_spectra_cover_all_channels(synthetic):
    cube, _ = synthetic
    result = segment(cube, PcaGmm(random_state=0, energy_rebin=4), "pca-gmm", offset_kev=0.0, scale_kev=0.04)
    assert result.spectra.shape == (result.n_clusters, cube.shape[-1])
    assert result.spectra.sum() == cube.sum()  # PCA+GMM assigns every pixel
    assert result.choices["channel_first"] == 5  # 0.2 keV zero-peak cut at 0.04 keV/channel
    assert result.fit_seconds > 0


def test_empty_cube_gives_one_cluster():
    cube = np.zeros((4, 4, 32), dtype=np.uint32)
    for estimator in (PcaGmm(random_state=0), UmapHdbscan(random_state=0)):
        result = segment(cube, estimator, "test")
        assert result.n_clusters == 1 and np.all(result.labels == 0)


def test_scree_knee_finds_the_elbow():
    ratios = np.array([0.5, 0.2, 0.1] + [0.01 * 0.97 ** i for i in range(17)])
    knee, distance = scree_knee(ratios)
    assert knee == 4  # the first component on the noise floor is kept
    assert distance.shape == (20,)


# --- acceptance on real data -------------------------------------------------------------------------

def _line(spectrum: np.ndarray, energy_kev: float, half_width: int = 5) -> float:
    centre = int(round((energy_kev - OFFSET_KEV) / SCALE_KEV))
    return float(spectrum[centre - half_width:centre + half_width + 1].sum())


@pytest.fixture(scope="module")
def core_shell(data_dir):
    cube = load_file_sum(data_dir / "core_shell.hspy")
    rows, columns, channels = cube.shape
    return cube.reshape(rows // 2, 2, columns // 2, 2, channels).sum(axis=(1, 3))


@pytest.mark.parametrize("estimator", [PcaGmm(random_state=0), UmapHdbscan(random_state=0)],
                         ids=["pca-gmm", "umap-hdbscan"])
def test_core_shell_cores_shell_and_support_are_separate(core_shell, estimator):
    result = segment(core_shell, estimator, "test", offset_kev=OFFSET_KEV, scale_kev=SCALE_KEV)
    fe = np.array([_line(s, FE_KA) for s in result.spectra])
    pt = np.array([_line(s, PT_LA, 6) for s in result.spectra])
    ratio = pt / np.maximum(fe, 1)
    lines_per_pixel = (fe + pt) / result.pixels
    counts_per_pixel = result.spectra.sum(axis=1) / result.pixels
    core = int(np.argmax(ratio))
    support = int(np.argmin(lines_per_pixel))
    # Other clusters may exist (the core/shell interface, thinner or thicker parts of the
    # shell or film); the shell is the most Fe-rich per pixel of those with little Pt.
    others = [k for k in range(result.n_clusters) if k not in (core, support) and ratio[k] < ratio[core] / 5]
    assert others, "the Fe-rich shell merged with the support"
    shell = max(others, key=lambda k: fe[k] / result.pixels[k])
    assert fe[shell] / result.pixels[shell] > 3 * fe[support] / result.pixels[support]
    # The cores are one cluster: no other cluster is even half as Pt-rich.
    assert np.count_nonzero(ratio > ratio[core] / 2) == 1
    assert ratio[core] > 0.3 and ratio[shell] < 0.1 and ratio[core] > 5 * ratio[shell]
    # The support (carbon film) has Fe and Pt lines far below both and fewer counts overall.
    assert lines_per_pixel[support] < 0.3 * min(lines_per_pixel[core], lines_per_pixel[shell])
    assert counts_per_pixel[support] < counts_per_pixel[shell] < counts_per_pixel[core]
    assert result.pixels[core] >= 80  # about a dozen particles, each core 4-5 binned pixels across

"""The analyzer keeps cluster ids across refits of one acquisition and says when the answer settles."""

from __future__ import annotations

import numpy as np
import pytest
from edx_adapters.synthetic import make_phantom
from edx_protocol import NOISE_LABEL, Start

from edx_live.analysis import Analyzer
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

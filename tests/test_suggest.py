"""Follow-up targets and stop advice on label maps whose answer is known, and through the real analysis."""

from __future__ import annotations

import math

import numpy as np
import pytest
from edx_protocol import (NOISE_LABEL, Advice, ClusterComposition, ClusterInfo, Clusters, Composition, Detector,
                          EnergyAxis, StagePosition, Start, Targets, TimeToTarget, decode_result, describe, encode,
                          topic_for)
from edx_protocol.check import check_document

from edx_live.suggest import AdviceOptions, TargetOptions, follow_up_targets, stop_advice, targets_document
from edx_live.suggest.geometry import centre_offset_m, pixel_size_m
from edx_live.suggest.targets import padded_box

CHANNELS = 16
VACUUM, MATRIX, COMMON, SMALL = 3, 0, 1, 2


def _start(shape, **fields) -> Start:
    base = dict(acquisition_id="suggest-test", seq=0, scan_shape=shape,
                energy_axis=EnergyAxis(offset_kev=0.0, scale_kev=1.0, channels=CHANNELS), beam_energy_kev=200.0,
                detectors=[Detector(elevation_deg=18.0, azimuth_deg=45.0)])
    return Start(**(base | fields))


def _scene(shape, seed, radius):
    """Scan labels: a vacuum band on top, the matrix left, a common phase right, one small disc; speckle.

    Returns (labels, disc centre, true matrix/common boundary column).
    """
    rng = np.random.default_rng(seed)
    rows, columns = shape
    y, x = np.mgrid[0:rows, 0:columns]
    split = int(columns * rng.uniform(0.55, 0.7))
    labels = np.where(x < split, MATRIX, COMMON)
    band = int(rows * 0.15)
    labels[y < band + 2 * np.sin(x / 7)] = VACUUM
    cy = rng.uniform(band + radius + 6, rows - radius - 3)
    cx = rng.uniform(radius + 3, split - radius - 6)
    labels[np.hypot(y - cy, x - cx) <= radius] = SMALL
    speckle = rng.random(shape) < 0.01
    labels[speckle & (labels != VACUUM)] = rng.choice([MATRIX, COMMON], size=int((speckle & (labels != VACUUM)).sum()))
    return labels, (cy, cx), split


def _binned(labels, factor):
    """Majority label of each factor x factor block (the scan padded with the last row and column)."""
    rows, columns = labels.shape
    padded = np.pad(labels, ((0, -rows % factor), (0, -columns % factor)), mode="edge")
    blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor)
    blocks = blocks.transpose(0, 2, 1, 3).reshape(*blocks.shape[::2], -1)
    counts = np.stack([(blocks == k).sum(axis=-1) for k in range(4)])
    return np.argmax(counts, axis=0)


def _clusters_doc(binned, bin_factor, workflow="pca-gmm", rate=None, converged=False, confidence=True,
                  outlier=False, refit=3, frames=4):
    """A clusters document of ``binned`` (-1 = noise); ``rate``: counts per binned pixel by label."""
    rate = rate or {VACUUM: 2, MATRIX: 400, COMMON: 500, SMALL: 450}
    ids = sorted(int(v) for v in np.unique(binned) if v >= 0)
    labels = np.where(binned < 0, NOISE_LABEL, binned).astype("<u2")
    spectra = np.zeros((len(ids), CHANNELS), dtype="<u8")
    for row, label in enumerate(ids):
        spectra[row, label] = rate[label] * int((binned == label).sum())
    arrays = {"labels": labels, "spectra": spectra}
    if confidence:
        edge = np.zeros(binned.shape, dtype=bool)
        edge[:, 1:] |= binned[:, 1:] != binned[:, :-1]
        edge[1:, :] |= binned[1:, :] != binned[:-1, :]
        arrays["confidence"] = np.where(edge, 0.4, 0.95).astype("<f4")
    if outlier:
        arrays["outlier"] = np.zeros(binned.shape, dtype="<f4")
    infos = [ClusterInfo(label=i, pixels=int((binned == i).sum()), counts=int(spectra[r].sum()))
             for r, i in enumerate(ids)]
    header = Clusters(acquisition_id="suggest-test", seq=0, frames=frames, counts=int(spectra.sum()), workflow=workflow,
                      refit=refit, refit_s=0.1, bin_factor=bin_factor, energy_offset_kev=0.0, energy_scale_kev=1.0,
                      clusters=infos, noise_pixels=int((binned < 0).sum()), converged=converged,
                      arrays=describe(arrays))
    return header, arrays


def _tt(factor, reachable=True, seconds_per_sweep=2.0, frames=4, target=1.0, element="Fe"):
    more = None if not reachable else max(0.0, (factor - 1) * frames)
    return TimeToTarget(target_sigma_atomic_percent=target, reached=reachable and factor <= 1, reachable=reachable,
                        limiting_element=element, counts_factor=factor if reachable else None, sweeps=more,
                        seconds=None if more is None else more * seconds_per_sweep)


def _composition(header, times):
    clusters = [ClusterComposition(label=c.label, pixels=c.pixels, time_to_target=times.get(c.label), elements={})
                for c in header.clusters]
    return Composition(acquisition_id="suggest-test", seq=0, frames=header.frames, counts=header.counts,
                       workflow=header.workflow, refit=header.refit, quantify_s=0.1, method="test",
                       kfactor_source="test", kfactors={}, xray_lines=[], clusters=clusters)


def _contains(box, point) -> bool:
    return box[0] <= point[0] < box[2] and box[1] <= point[1] < box[3]


# targets on known maps ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed, shape, radius, factor", [
    (0, (64, 64), 3, 1), (1, (96, 96), 4, 2), (2, (128, 128), 5, 2), (3, (128, 96), 6, 3), (4, (80, 120), 4, 2)])
def test_the_small_phase_and_a_boundary_are_among_the_top_targets(seed, shape, radius, factor):
    labels, disc, split = _scene(shape, seed, radius)
    maps = {"pca-gmm": _clusters_doc(_binned(labels, factor), factor)}
    targets = follow_up_targets(_start(shape), maps, {"pca-gmm": None}, TargetOptions())
    assert 1 <= len(targets) <= TargetOptions().max_targets
    assert [t.rank for t in targets] == list(range(1, len(targets) + 1))
    assert all(a.score >= b.score for a, b in zip(targets, targets[1:]))
    assert any(_contains(t.box_px, disc) for t in targets[:3]), [t.box_px for t in targets[:3]]
    top = targets[0]
    assert _contains(top.box_px, disc) and {"small_cluster", "rare_cluster"} & set(top.reasons)
    assert any("boundary" in t.reasons for t in targets[:4])
    rows, columns = shape
    for t in targets:
        r0, c0, r1, c1 = t.box_px
        assert 0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= columns
        assert VACUUM not in t.clusters["pca-gmm"]  # empty space is never a target
        assert min(r1 - r0, c1 - c0) >= min(TargetOptions().min_box_px, rows, columns)


def test_a_region_both_workflows_see_scores_higher_and_names_both():
    labels, disc, _ = _scene((96, 96), 5, 4)
    binned = _binned(labels, 2)
    one = {"pca-gmm": _clusters_doc(binned, 2)}
    both = one | {"umap-hdbscan": _clusters_doc(binned, 2, workflow="umap-hdbscan", outlier=True)}
    single = follow_up_targets(_start((96, 96)), one, {}, TargetOptions())[0]
    double = follow_up_targets(_start((96, 96)), both, {}, TargetOptions())[0]
    assert _contains(double.box_px, disc) and double.workflows == ["pca-gmm", "umap-hdbscan"]
    assert set(double.clusters) == {"pca-gmm", "umap-hdbscan"}
    assert double.score > single.score


def test_bin_factor_scales_boxes_to_scan_pixels():
    binned = np.zeros((16, 16), dtype=int)
    binned[5:7, 9:12] = SMALL  # binned rows 5-6, columns 9-11
    options = TargetOptions(margin_px=0, min_box_px=1)
    for factor in (1, 2, 4):
        shape = (16 * factor, 16 * factor)
        t = follow_up_targets(_start(shape), {"pca-gmm": _clusters_doc(binned, factor, confidence=False)}, {},
                              options)[0]
        assert t.box_px == (5 * factor, 9 * factor, 7 * factor, 12 * factor)


def test_padding_keeps_boxes_inside_the_scan():
    assert padded_box((0, 0, 2, 2), (50, 40), 2, 8) == (0, 0, 8, 8)
    assert padded_box((48, 38, 50, 40), (50, 40), 2, 8) == (42, 32, 50, 40)
    assert padded_box((10, 10, 12, 12), (50, 40), 0, 8) == (7, 7, 15, 15)
    assert padded_box((0, 0, 3, 3), (4, 4), 2, 8) == (0, 0, 4, 4)


# geometry -----------------------------------------------------------------------------------------
def test_physical_box_stage_offset_and_plan_for_a_90_degree_rotation():
    binned = np.zeros((20, 20), dtype=int)
    binned[2:4, 14:16] = SMALL  # scan rows 4-8, columns 28-32 at bin 2: up and right of the centre
    stage = StagePosition(x=1e-3, y=-2e-3, z=0.0, alpha=0.1)
    start = _start((40, 40), pixel_size=2.0, pixel_unit="nm", field_of_view_m=80e-9,
                   scan_rotation_rad=math.pi / 2, stage_position=stage, dwell_time_s=1e-5)
    maps = {"pca-gmm": _clusters_doc(binned, 2, confidence=False, frames=4)}
    comp = _composition(maps["pca-gmm"][0], {SMALL: _tt(3.0)})
    t = follow_up_targets(start, maps, {"pca-gmm": comp}, TargetOptions(margin_px=0, min_box_px=4))[0]
    assert t.box_px == (4, 28, 8, 32)
    assert t.box == pytest.approx((8.0, 56.0, 16.0, 64.0))
    # centre (6, 30): 10 columns right (x = +20 nm), 14 rows up (y = +28 nm); rotated by 90 degrees: (-28, +20) nm
    assert t.centre_offset_m == pytest.approx((-28e-9, 20e-9), abs=1e-15)
    assert t.stage_target == pytest.approx((1e-3 - 28e-9, -2e-3 + 20e-9), abs=1e-15)
    # 3 times the 4 sweeps so far, over the 16 pixels of the box at 10 us
    assert t.sweeps == 12 and t.seconds == pytest.approx(12 * 16 * 1e-5) and t.dwell_time_s == 1e-5
    kw = t.plan.kwargs
    assert t.plan.plan_name == "edx_spectrum_image" and t.plan.args == []
    assert kw["region_px"] == list(t.box_px) and kw["size_px"] == [4, 4] and kw["centre_px"] == [6.0, 30.0]
    assert kw["centre_offset_m"] == pytest.approx(list(t.centre_offset_m))
    assert kw["field_of_view_m"] == pytest.approx(4 * 2e-9) and kw["frames"] == 12 and kw["dwell_time_s"] == 1e-5


def test_without_geometry_only_the_scan_pixels_are_given():
    binned = np.zeros((10, 10), dtype=int)
    binned[2:4, 2:4] = SMALL
    start = _start((10, 10), pixel_unit="px")
    t = follow_up_targets(start, {"pca-gmm": _clusters_doc(binned, 1, confidence=False)}, {}, TargetOptions())[0]
    assert t.box is None and t.centre_offset_m is None and t.stage_target is None
    assert t.sweeps is None and t.plan.kwargs["frames"] == 4 and "no time to target" in t.dose_basis
    assert pixel_size_m(_start((10, 10), pixel_size=0.5, pixel_unit="um")) == pytest.approx(5e-7)
    unrotated = _start((10, 10), pixel_size=1.0, pixel_unit="nm")
    assert centre_offset_m(unrotated, (0, 0, 2, 10)) == pytest.approx((0.0, 4e-9))


# advice -------------------------------------------------------------------------------------------
def _advice_maps(converged=(True, True)):
    labels, _, _ = _scene((64, 64), 0, 4)
    binned = _binned(labels, 2)
    return {w: _clusters_doc(binned, 2, workflow=w, converged=c) for w, c in zip(("pca-gmm", "umap-hdbscan"), converged)}


def _advice_compositions(maps, factors, reachable=True):
    """Every cluster but the vacuum (which stays far off target: it must not hold the stop back)."""
    out = {}
    for w, (h, _) in maps.items():
        times = {c.label: _tt(factors.get(c.label, 0.5), reachable or c.label != SMALL) for c in h.clusters}
        times[VACUUM] = _tt(500.0, reachable=False)
        out[w] = _composition(h, times)
    return out


def test_advice_stops_when_converged_and_precise():
    maps = _advice_maps()
    advice = stop_advice(_start((64, 64)), maps, _advice_compositions(maps, {}), 8.0, AdviceOptions())
    assert advice.stop and advice.reason == "converged_and_precise" and advice.sigma_reached
    assert advice.predicted_seconds == 0.0 and advice.converged == {"pca-gmm": True, "umap-hdbscan": True}


def test_advice_waits_for_convergence_and_for_precision():
    maps = _advice_maps((True, False))
    advice = stop_advice(_start((64, 64)), maps, _advice_compositions(maps, {}), 8.0, AdviceOptions(budget_s=100.0))
    assert not advice.stop and advice.reason == "not_yet" and "umap-hdbscan" in advice.message
    maps = _advice_maps()
    advice = stop_advice(_start((64, 64)), maps, _advice_compositions(maps, {SMALL: 3.0}), 8.0,
                         AdviceOptions(budget_s=100.0))
    # 3 times the counts: 8 more sweeps at 2 s each
    assert not advice.stop and not advice.sigma_reached and advice.predicted_seconds == pytest.approx(16.0)
    assert "cluster 2" in advice.limiting


def test_advice_stops_when_the_budget_would_be_exceeded_or_is_spent():
    maps = _advice_maps()
    comps = _advice_compositions(maps, {SMALL: 3.0})
    advice = stop_advice(_start((64, 64)), maps, comps, 90.0, AdviceOptions(budget_s=100.0))
    assert advice.stop and advice.reason == "budget_exceeded" and advice.predicted_seconds == pytest.approx(16.0)
    spent = stop_advice(_start((64, 64)), _advice_maps((False, False)), comps, 120.0, AdviceOptions(budget_s=100.0))
    assert spent.stop and spent.reason == "budget_exceeded"
    early = stop_advice(_start((64, 64)), _advice_maps((False, False)), comps, 90.0, AdviceOptions(budget_s=100.0))
    assert not early.stop
    assert not stop_advice(_start((64, 64)), maps, comps, 90.0, AdviceOptions()).stop


def test_advice_says_when_a_target_is_unreachable():
    maps = _advice_maps()
    advice = stop_advice(_start((64, 64)), maps, _advice_compositions(maps, {}, reachable=False), 5.0,
                         AdviceOptions())
    assert advice.stop and advice.reason == "target_unreachable" and advice.predicted_seconds is None
    assert "cluster 2" in advice.message and "cannot reach" in advice.message


# documents ----------------------------------------------------------------------------------------
def test_documents_round_trip_through_the_codec_and_pass_the_checker():
    labels, _, _ = _scene((96, 96), 1, 4)
    maps = {"pca-gmm": _clusters_doc(_binned(labels, 2), 2)}
    comps = {"pca-gmm": _composition(maps["pca-gmm"][0], {SMALL: _tt(2.0)})}
    start = _start((96, 96), pixel_size=1.5, field_of_view_m=144e-9, scan_rotation_rad=0.3,
                   stage_position=StagePosition(x=0.0, y=1e-4), dwell_time_s=2e-6)
    targets = follow_up_targets(start, maps, comps, TargetOptions())
    documents = [targets_document(start, refit=3, frames=4, counts=1000, final=False, targets=targets),
                 stop_advice(start, maps, comps, 3.0, AdviceOptions(budget_s=60.0))]
    for doc in documents:
        header, arrays = decode_result(encode(doc))
        assert header == doc and arrays == {}
        assert check_document(header, arrays) == []
        assert topic_for(doc.kind) == doc.kind.encode()
    assert isinstance(documents[0], Targets) and isinstance(documents[1], Advice)
    assert documents[0].stage_position == start.stage_position and documents[0].targets == targets


# through the real analysis ------------------------------------------------------------------------
@pytest.mark.slow
def test_the_smallest_true_phase_is_among_the_top_targets_of_a_real_refit():
    """The default phantom's smallest phase (Ag-Cd particles, 2-4 pixels across) after one pca-gmm refit."""
    from edx_adapters.synthetic import make_phantom

    from edx_live.config import load_settings
    from edx_live.core.snapshot import Snapshot
    from edx_live.pipeline.refit import Analyzer

    phantom = make_phantom((128, 128), channels=512, scale_kev=0.04, seed=3)
    cube = phantom.binned_counts(200.0, 2, seed=1)
    start = Start(acquisition_id="suggest-real", seq=0, **phantom.start_fields(4, 200.0))
    ax = phantom.energy_axis
    snapshot = Snapshot(start, cube, 2, ax.offset_kev, ax.scale_kev, frames=4, counts=int(cube.sum()), refit=0,
                        final=False, elapsed_s=8.0)
    settings = load_settings(overrides={"refit": {"workflows": ["pca-gmm"]}, "quantify": {
        "kfactors": dict(phantom.kfactors), "replicas": 8, "bootstrap": 8}})
    documents = list(Analyzer(settings)(snapshot))
    maps = {h.workflow: (h, a) for h, a in documents if h.kind == "clusters"}
    compositions = {h.workflow: h for h, _ in documents if h.kind == "composition"}
    targets = follow_up_targets(start, maps, compositions, TargetOptions())
    smallest = min(range(1, len(phantom.phases)), key=lambda k: (phantom.labels == k).sum())
    particles = [(row, column) for k, row, column, _ in phantom.grains if k == smallest]
    found = [t for t in targets[:4] if any(_contains(t.box_px, p) for p in particles)]
    assert len(found) >= 3, [(t.box_px, t.reasons) for t in targets]
    assert all(set(t.reasons) & {"small_cluster", "rare_cluster"} for t in found)
    advice = stop_advice(start, maps, compositions, 8.0, AdviceOptions())
    assert not advice.stop and advice.converged == {"pca-gmm": False}  # a first refit has not converged

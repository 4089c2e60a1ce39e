"""Follow-up targets: after a refit, the regions of the scan worth a higher-resolution look.

Candidates come from each workflow's label map (:mod:`edx_live.suggest.regions`) and from
the clusters whose composition has not reached its target sigma. Overlapping candidates,
across reasons and workflows, merge into one target; targets are ranked by score and
become protocol ``Target`` models, each with the plan a controller would run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from edx_protocol import Clusters, Composition, Plan, Start, Target, Targets

from . import geometry
from .regions import (Box, Candidate, MapView, blob_regions, boundary_regions, cluster_regions, largest_region,
                      map_view)

#: The plan a target suggests: a spectrum image of the box.
PLAN_NAME = "edx_spectrum_image"

#: Default weight of each reason in a target's score.
DEFAULT_WEIGHTS = {"small_cluster": 0.6, "rare_cluster": 0.5, "boundary": 0.4, "low_confidence": 0.35,
                   "outlier": 0.35, "sigma_above_target": 0.3}


@dataclass(frozen=True)
class TargetOptions:
    """How follow-up targets are found and ranked.

    Attributes
    ----------
    max_targets : int
        Targets published at most.
    rare_fraction : float
        A cluster covering less than this share of the sample is rare.
    small_fraction : float
        A connected region covering at most this share of the sample is small.
    min_region_px : int
        Binned pixels a region needs (fewer is speckle).
    confidence_threshold : float
        Pixels whose label confidence is below it are low-confidence.
    outlier_threshold : float
        Pixels whose GLOSH outlier score is at least it are outliers.
    empty_fraction : float
        A cluster with fewer counts per pixel than this share of the median is empty space.
    boundary_length_px : int
        Binned pixels on each side at which a boundary stretch counts fully.
    max_box_fraction : float
        A box spans at most this share of the scan's side (larger regions: the densest window).
    boundary_box_fraction : float
        The same cap for boundary windows, which should stay small.
    min_box_px : int
        Smallest box side, in scan pixels.
    margin_px : int
        Scan pixels added around each region.
    merge_overlap : float
        Candidates merge when their intersection covers this share of the smaller box.
    weights : mapping of str to float
        Weight (0 to 1) of each reason in the score.
    """

    max_targets: int = 8
    rare_fraction: float = 0.05
    small_fraction: float = 0.02
    min_region_px: int = 2
    confidence_threshold: float = 0.5
    outlier_threshold: float = 0.8
    empty_fraction: float = 0.1
    boundary_length_px: int = 6
    max_box_fraction: float = 0.25
    boundary_box_fraction: float = 0.125
    min_box_px: int = 8
    margin_px: int = 2
    merge_overlap: float = 0.5
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))


@dataclass
class _Group:
    """Candidates merged so far into one target; ``box`` in scan pixels."""

    box: Box
    candidates: list[Candidate]

    def score(self, weights: Mapping[str, float]) -> float:
        best: dict[tuple[str, str], float] = {}
        for c in self.candidates:
            key = (c.reason, c.workflow)
            best[key] = max(best.get(key, 0.0), c.strength)
        return 1.0 - math.prod(1.0 - weights.get(reason, 0.0) * s for (reason, _), s in best.items())


def follow_up_targets(start: Start, maps: Mapping[str, tuple[Clusters, dict[str, np.ndarray]]],
                      compositions: Mapping[str, Composition | None],
                      options: TargetOptions = TargetOptions()) -> list[Target]:
    """The regions worth a closer look after a refit, best first.

    Parameters
    ----------
    start : edx_protocol.Start
        The acquisition's start (scan shape, pixel size, dwell, field of view, rotation, stage).
    maps : mapping of workflow to (Clusters header, arrays)
        Each workflow's ``clusters`` document of this refit.
    compositions : mapping of workflow to Composition or None
        Each workflow's ``composition`` document of this refit, when there is one.
    options : TargetOptions

    Returns
    -------
    list of edx_protocol.Target
        At most ``options.max_targets``, ranked 1, 2, ... by decreasing score.
    """
    candidates = []
    for workflow, (header, arrays) in maps.items():
        candidates += _scan_pixels(start, header.bin_factor,
                                   _candidates(header, arrays, compositions.get(workflow), start, options))
    groups = _merge(candidates, start, options)
    weights = options.weights
    ranked = sorted(groups, key=lambda g: (-g.score(weights), g.box))[:options.max_targets]
    frames = {w: h.frames for w, (h, _) in maps.items()}
    return [_target(rank, g, start, compositions, frames, options) for rank, g in enumerate(ranked, start=1)]


def _candidates(header: Clusters, arrays, composition: Composition | None, start: Start,
                options: TargetOptions) -> list[Candidate]:
    view = map_view(header, arrays, options.empty_fraction)
    shape = view.labels.shape
    cap = _cap(start, header.bin_factor, options.max_box_fraction, shape)
    small_cap = _cap(start, header.bin_factor, options.boundary_box_fraction, shape)
    found = cluster_regions(view, options, cap) + blob_regions(view, options, cap)
    found += boundary_regions(view, options, small_cap)
    return found + _sigma_regions(view, composition, cap)


def _cap(start: Start, bin_factor: int, fraction: float, shape: tuple[int, int]) -> tuple[int, int]:
    """Largest box in binned pixels: ``fraction`` of each scan side, at least 1 binned pixel."""
    return tuple(max(1, min(n, math.ceil(fraction * side / bin_factor))) for side, n in zip(start.scan_shape, shape))


def _sigma_regions(view: MapView, composition: Composition | None, cap) -> list[Candidate]:
    """``sigma_above_target``: the largest region of each cluster whose composition is not yet precise enough.

    Strength 1 - 1 / counts_factor (twice the counts needed: 0.5), 1 when acquiring longer cannot get there.
    """
    out = []
    for c in [] if composition is None else composition.clusters:
        t = c.time_to_target
        if t is None or t.reached or t.limiting_element is None or c.label in view.empty:
            continue
        box = largest_region(view, c.label, cap)
        if box is None:
            continue
        strength = 1.0 if not t.reachable or not t.counts_factor else 1.0 - 1.0 / max(1.0, t.counts_factor)
        out.append(Candidate("sigma_above_target", view.workflow, frozenset({c.label}), box, strength))
    return out


def _scan_pixels(start: Start, bin_factor: int, candidates: list[Candidate]) -> list[Candidate]:
    """The candidates with their boxes in scan pixels (a binned pixel covers ``bin_factor`` scan pixels a side)."""
    rows, columns = start.scan_shape
    out = []
    for c in candidates:
        r0, c0, r1, c1 = (v * bin_factor for v in c.box)
        box = (r0, c0, min(r1, rows), min(c1, columns))
        out.append(Candidate(c.reason, c.workflow, c.clusters, box, c.strength))
    return out


def _merge(candidates: list[Candidate], start: Start, options: TargetOptions) -> list[_Group]:
    """Greedy merge, strongest first: a candidate joins the first group it overlaps enough, if the union stays capped."""
    cap = tuple(max(options.min_box_px, math.ceil(options.max_box_fraction * side)) for side in start.scan_shape)
    groups: list[_Group] = []
    for c in sorted(candidates, key=lambda c: -options.weights.get(c.reason, 0.0) * c.strength):
        for g in groups:
            union = _union(g.box, c.box)
            if _overlap(g.box, c.box) >= options.merge_overlap and _fits(union, cap):
                g.box = union
                g.candidates.append(c)
                break
        else:
            groups.append(_Group(c.box, [c]))
    return groups


def _area(box: Box) -> int:
    return max(0, box[2] - box[0]) * max(0, box[3] - box[1])


def _overlap(a: Box, b: Box) -> float:
    inter = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    return _area(inter) / max(1, min(_area(a), _area(b)))


def _union(a: Box, b: Box) -> Box:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def _fits(box: Box, cap: tuple[int, int]) -> bool:
    return box[2] - box[0] <= cap[0] and box[3] - box[1] <= cap[1]


def padded_box(box: Box, scan_shape: tuple[int, int], margin: int, min_side: int) -> Box:
    """``box`` grown by ``margin`` and to at least ``min_side`` a side, moved to lie inside the scan."""
    out = []
    for lo, hi, n in ((box[0], box[2], scan_shape[0]), (box[1], box[3], scan_shape[1])):
        lo, hi = lo - margin, hi + margin
        grow = max(0, min(min_side, n) - (hi - lo))
        lo, hi = lo - grow // 2, hi + grow - grow // 2
        shift = max(0, -lo) - max(0, hi - n)
        out.append((max(0, lo + shift), min(n, hi + shift)))
    (r0, r1), (c0, c1) = out
    return r0, c0, r1, c1


def _target(rank: int, group: _Group, start: Start, compositions, frames: Mapping[str, int],
            options: TargetOptions) -> Target:
    box = padded_box(group.box, start.scan_shape, options.margin_px, options.min_box_px)
    workflows = sorted({c.workflow for c in group.candidates})
    clusters = {w: sorted({i for c in group.candidates if c.workflow == w for i in c.clusters}) for w in workflows}
    reasons = sorted({c.reason for c in group.candidates}, key=list(DEFAULT_WEIGHTS).index)
    offset = geometry.centre_offset_m(start, box)
    dose = _dose(start, box, clusters, compositions, frames)
    plan = _plan(start, box, offset, dose)
    return Target(rank=rank, score=float(np.clip(group.score(options.weights), 0.0, 1.0)), reasons=reasons,
                  workflows=workflows, clusters=clusters, box_px=box, box=geometry.physical_box(start, box),
                  centre_offset_m=offset, stage_target=geometry.stage_target(start, offset),
                  sweeps=dose["sweeps"], seconds=dose["seconds"], dwell_time_s=dose["dwell_time_s"],
                  dose_basis=dose["dose_basis"], plan=plan)


def _dose(start: Start, box: Box, clusters, compositions, frames: Mapping[str, int]) -> dict:
    """Sweeps of the box at the start's dwell for the most demanding cluster of the target to reach its target.

    A scan of the box alone collects, per sweep, what the whole scan collected from the box's
    pixels: a cluster inside the box needs ``counts_factor`` times the sweeps so far. A cluster
    whose target no dose reaches leaves the sweeps unknown.
    """
    limiting, unreachable = None, []
    for workflow, ids in clusters.items():
        composition = compositions.get(workflow)
        for c in [] if composition is None else composition.clusters:
            t = c.time_to_target
            if c.label not in ids or t is None or t.limiting_element is None:
                continue
            if not t.reachable:
                unreachable.append(f"{workflow} cluster {c.label} ({t.limiting_element})")
            elif t.counts_factor is not None and (limiting is None or t.counts_factor > limiting[2].counts_factor):
                limiting = (workflow, c.label, t)
    dwell = start.dwell_time_s or _dwell_from(start, limiting)
    pixels = (box[2] - box[0]) * (box[3] - box[1])
    so_far = max([1] + [frames.get(w, 0) for w in clusters])
    if unreachable or limiting is None:
        why = (f"{', '.join(unreachable)} cannot reach its target sigma by dose alone" if unreachable
               else "no time to target for these clusters")
        return {"sweeps": None, "seconds": None, "dwell_time_s": dwell, "frames": so_far,
                "dose_basis": f"{why}: the plan repeats the {so_far} sweeps so far"}
    workflow, label, t = limiting
    sweeps = float(max(1, math.ceil(t.counts_factor * frames.get(workflow, 0))))
    seconds = None if dwell is None else sweeps * pixels * dwell
    basis = (f"time_to_target of {workflow} cluster {label} ({t.limiting_element}): {t.counts_factor:.3g} times the "
             f"{frames.get(workflow, 0)} sweeps so far for {t.target_sigma_atomic_percent:g} at%, "
             f"over the box's {pixels} pixels at " + ("the start's dwell" if start.dwell_time_s else
                                                     "the dwell the acquisition's pace implies"))
    return {"sweeps": sweeps, "seconds": seconds, "dwell_time_s": dwell, "frames": int(sweeps), "dose_basis": basis}


def _dwell_from(start: Start, limiting) -> float | None:
    """Seconds per pixel and sweep implied by a time to target's seconds per sweep; None when unknown."""
    if limiting is None:
        return None
    t = limiting[2]
    if not t.seconds or not t.sweeps:
        return None
    return t.seconds / t.sweeps / start.n_pixels


def _plan(start: Start, box: Box, offset, dose: dict) -> Plan:
    rows, columns = box[2] - box[0], box[3] - box[1]
    row, column = geometry.box_centre(box)
    kwargs = {"region_px": list(box), "centre_px": [row, column], "size_px": [rows, columns],
              "pixel_size": start.pixel_size, "pixel_unit": start.pixel_unit,
              "centre_offset_m": None if offset is None else list(offset),
              "field_of_view_m": geometry.box_width_m(start, box), "dwell_time_s": dose["dwell_time_s"],
              "frames": dose["frames"]}
    return Plan(plan_name=PLAN_NAME, args=[], kwargs=kwargs)


def targets_document(start: Start, refit: int, frames: int, counts: int, final: bool,
                     targets: list[Target]) -> Targets:
    """The ``targets`` document (seq 0: the publisher numbers it), with the geometry a controller needs."""
    return Targets(acquisition_id=start.acquisition_id, seq=0, frames=frames, counts=counts, final=final,
                   refit=refit, scan_shape=start.scan_shape, pixel_size=start.pixel_size,
                   pixel_unit=start.pixel_unit, field_of_view_m=start.field_of_view_m,
                   scan_rotation_rad=start.scan_rotation_rad, stage_position=start.stage_position,
                   targets=list(targets))

"""Consistency checks for the documents the service publishes (SPEC section 7).

:func:`check_document` checks one document on its own (the label map agrees with
the cluster table, compositions sum to 100 %, ...); :class:`DocumentChecker`, a
subscriber, also checks documents against each other (seq numbers, stable
cluster ids, compositions of the published clusters, counts that never go
back). Every problem is a string that starts with a rule code of ``RULES``.
Depends on numpy and this package only, so any subscriber can use it.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, defaultdict

import numpy as np
from pydantic import BaseModel

from .results import NOISE_LABEL

#: Rule code -> what it requires.
RULES = {
    "header.finite": "no float in a header is NaN or infinite",
    "arrays.finite": "float arrays (confidence, outlier, image) are finite",
    "clusters.arrays": "the labels and spectra arrays are present",
    "clusters.order": "cluster labels strictly increase",
    "clusters.labels": "the label map holds only cluster labels and 65535 (noise)",
    "clusters.pixels": "each cluster's pixels equal its label's count in the map",
    "clusters.noise": "noise_pixels equals the count of 65535 in the map",
    "clusters.rows": "spectra has one row per cluster",
    "clusters.counts": "each spectra row sums to its cluster's counts",
    "clusters.confidence": "confidence lies in [0, 1]",
    "clusters.outlier": "outlier lies in [0, 1]",
    "clusters.appeared": "appeared ids are labels of this refit",
    "clusters.vanished": "vanished ids are not labels of this refit",
    "clusters.agreement": "agreement lies in [-1, 1] or is null",
    "clusters.spectrum_change": "spectrum_change lies in [0, 1] or is null",
    "composition.order": "cluster labels strictly increase",
    "composition.kfactors": "every X-ray line has a k-factor",
    "composition.elements": "each cluster reports exactly the elements of xray_lines",
    "composition.sigma": "uncertainties are >= 0",
    "composition.sum": "atomic percents sum to 100 (relative 1e-6)",
    "composition.entropy": "entropy_r is >= 0",
    "status.state": "state is idle exactly when acquisition_id is null",
    "status.gaps": "gaps.count covers the missing ranges, each first <= last",
    "status.rejected": "rejected counts are >= 0",
    "image.arrays": "the image array is present, two-dimensional",
    "image.sweeps": "sweeps is at least 1 and never decreases per acquisition",
    "targets.rank": "targets are ranked 1, 2, 3, ... in order, scores never increasing",
    "targets.box": "each box_px lies inside scan_shape, row0 < row1 and col0 < col1",
    "advice.reason": "stop is true exactly when reason is not not_yet",
    "seq.step": "seq grows by exactly 1 per topic",
    "composition.follows": "a composition follows the clusters document of its acquisition, workflow and refit",
    "composition.match": "a composition has that clusters document's labels, pixels, frames and counts",
    "refit.order": "refit indices strictly increase per acquisition and workflow",
    "refit.counts": "counts and frames never decrease per acquisition and workflow",
    "status.counts": "status counts never decrease within an acquisition",
    "ids.stable": "labels = (previous labels - vanished) | appeared, vanished from the previous labels",
    "ids.reused": "an appeared id was never used before in the acquisition and workflow",
    "final.counts": "the final status has the counts and frames of the final clusters documents",
}

#: Relative tolerance of the atomic percent sum.
SUM_TOLERANCE = 1e-6


class Inconsistency(ValueError):
    """Documents that break the rules; ``problems`` lists them, one rule code each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} inconsistencies:\n  " + "\n  ".join(self.problems))


def check_document(header, arrays: dict[str, np.ndarray] | None = None) -> list[str]:
    """Problems of one published document on its own.

    Parameters
    ----------
    header : edx_protocol.Status, Clusters, Composition, MeanImage, Targets or Advice
        As returned by ``edx_protocol.decode_result``.
    arrays : dict of str to numpy.ndarray, optional
        Its buffers by name.

    Returns
    -------
    list of str
        One string per problem, each starting with a code of ``RULES``; empty if consistent.
    """
    arrays = arrays or {}
    problems = [f"header.finite: {path} is {value}" for path, value in _non_finite(header, "")]
    for name, array in arrays.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            problems.append(f"arrays.finite: {name} has {int(np.count_nonzero(~np.isfinite(array)))} "
                            "non-finite values")
    by_kind = {"status": _status, "clusters": _clusters, "composition": _composition, "image": _image,
               "targets": _targets, "advice": _advice}
    return problems + by_kind[header.kind](header, arrays)


def _non_finite(value, path: str):
    """Yield (path, value) of every NaN or infinite float inside a header, however deeply nested."""
    if isinstance(value, BaseModel):
        items = ((name, getattr(value, name)) for name in type(value).model_fields)
    elif isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    else:
        if isinstance(value, (float, np.floating)) and not math.isfinite(value):
            yield path, value
        return
    for key, item in items:
        sub = f"{path}{key}" if str(key).startswith("[") else f"{path}.{key}" if path else str(key)
        yield from _non_finite(item, sub)


def _increasing(labels: list[int]) -> bool:
    return all(a < b for a, b in zip(labels, labels[1:]))


def _outside(value, low: float, high: float) -> bool:
    """True for a finite value outside [low, high]; a NaN is the finiteness rule's to report."""
    return value is not None and math.isfinite(value) and not low <= value <= high


def _status(h, arrays) -> list[str]:
    problems = []
    if (h.state == "idle") != (h.acquisition_id is None):
        problems.append(f"status.state: state {h.state!r} with acquisition_id {h.acquisition_id!r}")
    reversed_ = [list(r) for r in h.gaps.missing if r[0] > r[1]]
    covered = sum(last - first + 1 for first, last in h.gaps.missing if first <= last)
    if reversed_:
        problems.append(f"status.gaps: missing ranges {reversed_} end before they start")
    if h.gaps.count < covered:
        problems.append(f"status.gaps: count {h.gaps.count} is below the {covered} seq in the missing ranges")
    # Every map of rejections (overall, this acquisition's), whatever the protocol version names them.
    for name in (n for n in type(h).model_fields if n.endswith("rejected")):
        negative = {k: v for k, v in getattr(h, name).items() if v < 0}
        if negative:
            problems.append(f"status.rejected: negative {name} counts {negative}")
    return problems


def _clusters(h, arrays) -> list[str]:
    labels = [c.label for c in h.clusters]
    problems = [] if _increasing(labels) else [f"clusters.order: labels {labels} do not strictly increase"]
    missing = [name for name in ("labels", "spectra") if name not in arrays]
    if missing:
        problems.append(f"clusters.arrays: {missing} missing")
    if "labels" in arrays:
        problems += _label_map(h, arrays["labels"])
    if "spectra" in arrays:
        problems += _spectra(h, arrays["spectra"])
    for name in ("confidence", "outlier"):
        values = arrays.get(name)
        values = None if values is None else values[np.isfinite(values)]
        if values is not None and values.size and (values.min() < 0 or values.max() > 1):
            problems.append(f"clusters.{name}: values span [{values.min()}, {values.max()}], outside [0, 1]")
    stray = sorted(set(h.appeared) - set(labels))
    if stray:
        problems.append(f"clusters.appeared: ids {stray} are not labels of this refit")
    kept = sorted(set(h.vanished) & set(labels))
    if kept:
        problems.append(f"clusters.vanished: ids {kept} are still labels of this refit")
    if _outside(h.agreement, -1.0, 1.0):
        problems.append(f"clusters.agreement: {h.agreement} outside [-1, 1]")
    if _outside(h.spectrum_change, 0.0, 1.0):
        problems.append(f"clusters.spectrum_change: {h.spectrum_change} outside [0, 1]")
    return problems


def _label_map(h, label_map: np.ndarray) -> list[str]:
    values, counts = np.unique(label_map, return_counts=True)
    in_map = dict(zip(values.tolist(), counts.tolist()))
    problems = []
    stray = sorted(set(in_map) - {c.label for c in h.clusters} - {NOISE_LABEL})
    if stray:
        problems.append(f"clusters.labels: the map holds labels {stray} that are no cluster's")
    for c in h.clusters:
        if in_map.get(c.label, 0) != c.pixels:
            problems.append(f"clusters.pixels: label {c.label} has {in_map.get(c.label, 0)} pixels in the map, "
                            f"{c.pixels} in clusters")
    if in_map.get(NOISE_LABEL, 0) != h.noise_pixels:
        problems.append(f"clusters.noise: {in_map.get(NOISE_LABEL, 0)} noise pixels in the map, "
                        f"noise_pixels {h.noise_pixels}")
    return problems


def _spectra(h, spectra: np.ndarray) -> list[str]:
    if spectra.ndim != 2 or spectra.shape[0] != len(h.clusters):
        return [f"clusters.rows: spectra {list(spectra.shape)} for {len(h.clusters)} clusters"]
    sums = spectra.sum(axis=1, dtype=np.uint64).tolist()  # uint64: exact, no float rounding
    return [f"clusters.counts: label {c.label}: spectrum sums to {s}, counts {c.counts}"
            for c, s in zip(h.clusters, sums) if s != c.counts]


def _composition(h, arrays) -> list[str]:
    labels = [c.label for c in h.clusters]
    problems = [] if _increasing(labels) else [f"composition.order: labels {labels} do not strictly increase"]
    no_k = [line for line in h.xray_lines if line not in h.kfactors]
    if no_k:
        problems.append(f"composition.kfactors: no k-factor for {no_k}")
    elements = sorted({line.partition("_")[0] for line in h.xray_lines})
    for c in h.clusters:
        problems += _cluster_composition(c, elements)
    return problems


def _cluster_composition(c, elements: list[str]) -> list[str]:
    problems = []
    if sorted(c.elements) != elements:
        problems.append(f"composition.elements: label {c.label} has {sorted(c.elements)}, "
                        f"xray_lines give {elements}")
    sigmas = {f"{symbol}.{name}": getattr(e, name) for symbol, e in c.elements.items()
              for name in type(e).model_fields if "sigma" in name}
    sigmas["entropy_r_sigma"] = c.entropy_r_sigma
    negative = {k: v for k, v in sigmas.items() if v is not None and v < 0}
    if negative:
        problems.append(f"composition.sigma: label {c.label} has negative {negative}")
    percents = [e.atomic_percent for e in c.elements.values()]
    if percents and all(p is not None and math.isfinite(p) for p in percents):
        total = math.fsum(percents)
        if abs(total - 100.0) > SUM_TOLERANCE * 100.0:
            problems.append(f"composition.sum: label {c.label} atomic percents sum to {total!r}")
    if c.entropy_r is not None and c.entropy_r < 0:
        problems.append(f"composition.entropy: label {c.label} entropy_r {c.entropy_r}")
    return problems


def _image(h, arrays) -> list[str]:
    image = arrays.get("image")
    problems = [] if h.sweeps >= 1 else [f"image.sweeps: an image of {h.sweeps} sweeps"]
    if image is None or image.ndim != 2:
        problems.append(f"image.arrays: {'missing' if image is None else f'shape {list(image.shape)}'}")
    return problems


def _targets(h, arrays) -> list[str]:
    problems = []
    ranks = [t.rank for t in h.targets]
    scores = [t.score for t in h.targets]
    if ranks != list(range(1, len(ranks) + 1)) or any(a < b for a, b in zip(scores, scores[1:])):
        problems.append(f"targets.rank: ranks {ranks} with scores {scores}")
    rows, columns = h.scan_shape
    for t in h.targets:
        r0, c0, r1, c1 = t.box_px
        if not (0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= columns):
            problems.append(f"targets.box: rank {t.rank} box {list(t.box_px)} in a {rows} x {columns} scan")
    return problems


def _advice(h, arrays) -> list[str]:
    if h.stop == (h.reason == "not_yet"):
        return [f"advice.reason: stop {h.stop} with reason {h.reason!r}"]
    return []


def _where(h) -> str:
    """The document a problem belongs to, for the problem's message."""
    workflow = getattr(h, "workflow", None)
    refit = getattr(h, "refit", None)
    return (f"[{h.kind}{'/' + workflow if workflow else ''} acquisition={h.acquisition_id} seq={h.seq}"
            f"{'' if refit is None else f' refit={refit}'}{' final' if h.final else ''}]")


class DocumentChecker:
    """A subscriber that checks every document, alone and against the ones before it.

    Call it with each document in publishing order; it never raises, so it can
    sit beside the other subscribers of a live service. Thread-safe: the service
    emits status and refit documents from different threads.

    Attributes
    ----------
    problems : list of str
        Every problem found so far, each with its rule code first and the
        document (kind, workflow, acquisition, seq, refit) last.
    documents : collections.Counter
        Documents checked, by kind.
    """

    def __init__(self):
        self.problems: list[str] = []
        self.documents: Counter = Counter()
        self._lock = threading.Lock()
        self._seq: dict[tuple, int] = {}
        self._clusters: dict[tuple, object] = {}  # (acquisition, workflow) -> last clusters header
        self._used: defaultdict[tuple, set] = defaultdict(set)  # ids ever given per (acquisition, workflow)
        self._status_counts: dict[str, int] = {}
        self._finals: defaultdict[str, list] = defaultdict(list)  # acquisition -> final clusters headers
        self._final_status: dict[str, object] = {}
        self._image_sweeps: dict[str, int] = {}

    def __call__(self, header, arrays: dict[str, np.ndarray] | None = None) -> None:
        """Check one document; record its problems in :attr:`problems`."""
        with self._lock:
            self.documents[header.kind] += 1
            found = check_document(header, arrays) + self._seq_step(header)
            found += getattr(self, f"_after_{header.kind}")(header)
            self.problems.extend(f"{problem} {_where(header)}" for problem in found)

    def assert_consistent(self) -> None:
        """Raise :class:`Inconsistency` if any document broke a rule."""
        with self._lock:
            if self.problems:
                raise Inconsistency(self.problems)

    def _seq_step(self, h) -> list[str]:
        topic = (h.kind, getattr(h, "workflow", None))
        last = self._seq.get(topic)
        self._seq[topic] = h.seq
        if last is not None and h.seq != last + 1:
            return [f"seq.step: seq {h.seq} after {last}"]
        return []

    def _after_status(self, h) -> list[str]:
        if h.acquisition_id is None:
            return []
        problems = []
        last = self._status_counts.get(h.acquisition_id)
        if last is not None and h.counts < last:
            problems.append(f"status.counts: {h.counts} counts after {last}")
        self._status_counts[h.acquisition_id] = h.counts
        if h.final:
            self._final_status[h.acquisition_id] = h
            problems += [p for c in self._finals[h.acquisition_id] for p in _final_mismatch(h, c)]
        return problems

    def _after_image(self, h) -> list[str]:
        last = self._image_sweeps.get(h.acquisition_id)
        self._image_sweeps[h.acquisition_id] = h.sweeps
        if last is not None and h.sweeps < last:
            return [f"image.sweeps: {h.sweeps} sweeps after {last}"]
        return []

    def _after_targets(self, h) -> list[str]:
        return []

    def _after_advice(self, h) -> list[str]:
        return []

    def _after_clusters(self, h) -> list[str]:
        key = (h.acquisition_id, h.workflow)
        previous = self._clusters.get(key)
        problems = []
        if previous is not None and h.refit <= previous.refit:
            problems.append(f"refit.order: refit {h.refit} after refit {previous.refit}")
        if previous is not None and (h.counts < previous.counts or h.frames < previous.frames):
            problems.append(f"refit.counts: {h.counts} counts, {h.frames} frames after "
                            f"{previous.counts} counts, {previous.frames} frames")
        problems += self._stable_ids(h, previous)
        self._clusters[key] = h
        if h.final:
            self._finals[h.acquisition_id].append(h)
            status = self._final_status.get(h.acquisition_id)
            problems += [] if status is None else _final_mismatch(status, h)
        return problems

    def _stable_ids(self, h, previous) -> list[str]:
        key = (h.acquisition_id, h.workflow)
        labels = {c.label for c in h.clusters}
        problems = []
        reused = sorted(set(h.appeared) & self._used[key])
        if reused:
            problems.append(f"ids.reused: appeared ids {reused} were used before")
        self._used[key] |= labels | set(h.appeared)
        # Without the previous refit (a subscriber that joined late) the ids cannot be followed.
        if previous is None and h.refit != 0:
            return problems
        before = set() if previous is None else {c.label for c in previous.clusters}
        unknown = sorted(set(h.vanished) - before)
        if unknown:
            problems.append(f"ids.stable: vanished ids {unknown} were not labels of the previous refit")
        expected = (before - set(h.vanished)) | set(h.appeared)
        if labels != expected:
            problems.append(f"ids.stable: labels {sorted(labels)}, but previous {sorted(before)} - vanished "
                            f"{sorted(h.vanished)} + appeared {sorted(h.appeared)} = {sorted(expected)}")
        return problems

    def _after_composition(self, h) -> list[str]:
        clusters = self._clusters.get((h.acquisition_id, h.workflow))
        if clusters is None or clusters.refit != h.refit:
            got = "none" if clusters is None else f"refit {clusters.refit}"
            return [f"composition.follows: the last clusters document is {got}, not refit {h.refit}"]
        mine = [(c.label, c.pixels) for c in h.clusters]
        theirs = [(c.label, c.pixels) for c in clusters.clusters]
        problems = []
        if mine != theirs:
            problems.append(f"composition.match: (label, pixels) {mine}, clusters document {theirs}")
        if (h.frames, h.counts) != (clusters.frames, clusters.counts):
            problems.append(f"composition.match: {h.frames} frames, {h.counts} counts; clusters document "
                            f"{clusters.frames} frames, {clusters.counts} counts")
        return problems


def _final_mismatch(status, clusters) -> list[str]:
    if (status.counts, status.frames) == (clusters.counts, clusters.frames):
        return []
    return [f"final.counts: final status {status.counts} counts, {status.frames} frames; final "
            f"clusters/{clusters.workflow} {clusters.counts} counts, {clusters.frames} frames"]

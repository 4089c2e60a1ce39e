"""The document checker: the golden documents pass, and each rule is reported when a document breaks it.

Every broken document is a golden one (or a consistent story built from them)
with one thing changed, and the test asserts that exactly that rule is
reported, so a checker that reports nothing, or everything, fails.
"""

from __future__ import annotations

import struct
from pathlib import Path

import edx_protocol
import numpy as np
import pytest
from edx_protocol import NOISE_LABEL, decode_result
from edx_protocol.check import RULES, DocumentChecker, Inconsistency, check_document

GOLDEN = Path(edx_protocol.__file__).resolve().parents[1] / "golden"


def read_container(path: Path) -> list[bytes]:
    """The frames of a ``NAME.bin`` (SPEC 9.1): per frame a little-endian uint32 length, then its bytes."""
    data, frames, at = path.read_bytes(), [], 0
    while at < len(data):
        (length,) = struct.unpack_from("<I", data, at)
        frames.append(data[at + 4:at + 4 + length])
        at += 4 + length
    assert at == len(data), f"{path.name} ends inside a frame"
    return frames


def golden(name: str):
    """A golden published document as (header, arrays), arrays writable copies."""
    frames = read_container(GOLDEN / f"{name}.bin")
    header, arrays = decode_result(frames[1:])
    assert frames[0].decode() == edx_protocol.topic_for(header.kind, getattr(header, "workflow", None)).decode()
    return header, {name: array.copy() for name, array in arrays.items()}


def codes(problems: list[str]) -> set[str]:
    return {problem.partition(":")[0] for problem in problems}


@pytest.mark.parametrize("name", ["status", "clusters", "composition", "mean_image", "targets", "advice"])
def test_golden_documents_pass(name):
    header, arrays = golden(name)
    assert check_document(header, arrays) == []
    checker = DocumentChecker()
    checker(header, arrays)
    if name != "composition":  # a composition alone lacks its clusters document
        checker.assert_consistent()
    assert checker.documents == {header.kind: 1}


# one document --------------------------------------------------------------------------------------
def _replace_element(header, label_index: int, symbol: str, **update):
    cluster = header.clusters[label_index]
    element = cluster.elements[symbol].model_copy(update=update)
    cluster = cluster.model_copy(update={"elements": {**cluster.elements, symbol: element}})
    clusters = list(header.clusters)
    clusters[label_index] = cluster
    return header.model_copy(update={"clusters": clusters})


def _broken_status(rule: str):
    h, a = golden("status")
    update = {
        "header.finite": {"last_refit_s": float("inf")},
        "status.state": {"state": "idle"},
        "status.gaps": {"gaps": h.gaps.model_copy(update={"count": 1})},  # [3, 4] are 2 missing
        "status.rejected": {"rejected": {"schema": -1}},
    }[rule]
    return h.model_copy(update=update), a


def _broken_clusters(rule: str):
    h, a = golden("clusters")
    c0, c1 = h.clusters
    if rule == "arrays.finite":
        a["confidence"][0, 0] = np.nan
    elif rule == "clusters.arrays":
        del a["spectra"]
    elif rule == "clusters.order":
        h, a["spectra"] = h.model_copy(update={"clusters": [c1, c0]}), a["spectra"][::-1].copy()
    elif rule == "clusters.labels":
        a["labels"][a["labels"] == NOISE_LABEL] = 7
        h = h.model_copy(update={"noise_pixels": 0})
    elif rule == "clusters.pixels":
        h = h.model_copy(update={"clusters": [c0.model_copy(update={"pixels": c0.pixels + 1}), c1]})
    elif rule == "clusters.rows":
        a["spectra"] = np.vstack([a["spectra"], np.zeros_like(a["spectra"][:1])])
    elif rule == "clusters.counts":
        a["spectra"][1, 3] += 1
    elif rule == "clusters.confidence":
        a["confidence"][1, 2] = 1.5
    elif rule == "clusters.outlier":
        a["outlier"] = np.full(a["labels"].shape, -0.25, dtype=np.float32)
    else:
        h = h.model_copy(update={
            "header.finite": {"agreement": float("nan")},
            "clusters.noise": {"noise_pixels": h.noise_pixels + 1},
            "clusters.appeared": {"appeared": [0, 5]},
            "clusters.vanished": {"vanished": [1]},
            "clusters.agreement": {"agreement": -1.5},
            "clusters.spectrum_change": {"spectrum_change": 1.25},
        }[rule])
    return h, a


def _broken_composition(rule: str):
    h, a = golden("composition")
    if rule == "header.finite":
        return _replace_element(h, 0, "Fe", atomic_percent=float("nan")), a
    if rule == "composition.sigma":
        return _replace_element(h, 0, "Pt", atomic_percent_sigma_spread=-0.5), a
    if rule == "composition.sum":
        return _replace_element(h, 1, "Fe", atomic_percent=90.001), a
    update = {
        "composition.order": {"clusters": h.clusters[::-1]},
        "composition.kfactors": {"kfactors": {"Fe_Ka": 1.45}},
        "composition.elements": {"xray_lines": [*h.xray_lines, "Cu_Ka"], "kfactors": {**h.kfactors, "Cu_Ka": 1.6}},
        "composition.entropy": {"clusters": [h.clusters[0].model_copy(update={"entropy_r": -0.1}),
                                             h.clusters[1]]},
    }[rule]
    return h.model_copy(update=update), a


def _broken_image(rule: str):
    h, a = golden("mean_image")
    if rule == "arrays.finite":
        a["image"][1, 2] = np.inf
    elif rule == "image.arrays":
        a["image"] = a["image"][0]
    else:
        h = h.model_copy(update={"header.finite": {"pixel_size": float("nan")}, "image.sweeps": {"sweeps": 0}}[rule])
    return h, a


def _broken_targets(rule: str):
    h, a = golden("targets")
    t = h.targets[0]
    if rule == "targets.rank":
        return h.model_copy(update={"targets": [t.model_copy(update={"rank": 2})]}), a
    rows = h.scan_shape[0]
    return h.model_copy(update={"targets": [t.model_copy(update={"box_px": (2, 0, rows + 1, 4)})]}), a


def _broken_advice(rule: str):
    h, a = golden("advice")
    return h.model_copy(update={"stop": not h.stop}), a  # the reason no longer matches


SINGLE = {
    "targets.rank": [_broken_targets],
    "targets.box": [_broken_targets],
    "advice.reason": [_broken_advice],
    "header.finite": [_broken_status, _broken_clusters, _broken_composition, _broken_image],
    "arrays.finite": [_broken_clusters, _broken_image],
    "image.arrays": [_broken_image],
    "image.sweeps": [_broken_image],
    **{rule: [_broken_status] for rule in ("status.state", "status.gaps", "status.rejected")},
    **{rule: [_broken_clusters] for rule in RULES if rule.startswith("clusters.")},
    **{rule: [_broken_composition] for rule in ("composition.order", "composition.kfactors",
                                                "composition.elements", "composition.sigma",
                                                "composition.sum", "composition.entropy")},
}


@pytest.mark.parametrize("rule, broken", [(rule, f) for rule, fs in SINGLE.items() for f in fs],
                         ids=lambda v: v if isinstance(v, str) else v.__name__.removeprefix("_broken_"))
def test_a_document_that_breaks_a_rule_is_reported_with_its_code(rule, broken):
    problems = check_document(*broken(rule))
    assert codes(problems) == {rule}, problems


def test_problem_messages_say_what_is_wrong():
    h, a = _broken_clusters("clusters.pixels")
    assert check_document(h, a) == ["clusters.pixels: label 0 has 2 pixels in the map, 3 in clusters"]
    h, a = _broken_composition("header.finite")
    assert check_document(h, a) == ["header.finite: clusters[0].elements.Fe.atomic_percent is nan"]


def test_the_atomic_percent_sum_has_a_relative_tolerance_and_skips_unknown_values():
    h, a = golden("composition")
    assert check_document(_replace_element(h, 1, "Fe", atomic_percent=90.0 + 1e-7), a) == []
    assert codes(check_document(_replace_element(h, 1, "Fe", atomic_percent=90.0 + 1e-3), a)) == {"composition.sum"}


def test_status_gaps_must_be_ranges_and_idle_has_no_acquisition():
    h, a = golden("status")
    reversed_range = h.model_copy(update={"gaps": h.gaps.model_copy(update={"missing": [(4, 3)]})})
    assert codes(check_document(reversed_range, a)) == {"status.gaps"}
    idle = h.model_copy(update={"acquisition_id": None})
    assert codes(check_document(idle, a)) == {"status.state"}
    assert check_document(idle.model_copy(update={"state": "idle"}), a) == []


# across documents ---------------------------------------------------------------------------------
#: (labels, appeared, vanished) of each refit: cluster 1 vanishes on refit 1 and 2 appears.
REFITS = [([0, 1], [0, 1], []), ([0, 2], [2], [1])]


def _relabelled(ids: list[int], seq: int, refit: int, appeared, vanished, counts: int, final: bool):
    """The golden clusters document with its two clusters renamed ``ids``, as refit ``refit``."""
    h, a = golden("clusters")
    noise = a["labels"] == NOISE_LABEL
    a["labels"] = np.asarray(ids, dtype=np.uint16)[np.where(noise, 0, a["labels"])]
    a["labels"][noise] = NOISE_LABEL
    clusters = [c.model_copy(update={"label": i}) for c, i in zip(h.clusters, ids)]
    h = h.model_copy(update=dict(seq=seq, refit=refit, clusters=clusters, appeared=appeared, vanished=vanished,
                                 frames=refit + 1, counts=counts, final=final))
    return h, a


def _composition_of(clusters, seq: int):
    h, _ = golden("composition")
    rows = [c.model_copy(update={"label": k.label, "pixels": k.pixels}) for c, k in zip(h.clusters, clusters.clusters)]
    return h.model_copy(update=dict(seq=seq, workflow=clusters.workflow, refit=clusters.refit, frames=clusters.frames,
                                    counts=clusters.counts, final=clusters.final, clusters=rows)), {}


def story(refits=REFITS) -> list[tuple]:
    """A consistent publishing order: a status, clusters and composition per refit, the final status."""
    status, _ = golden("status")
    docs = [(status.model_copy(update=dict(seq=0, counts=10, frames=1)), {})]
    for i, (ids, appeared, vanished) in enumerate(refits):
        clusters = _relabelled(ids, i, i, appeared, vanished, counts=20 * (i + 1), final=i == len(refits) - 1)
        docs += [clusters, _composition_of(clusters[0], i)]
    last = docs[-2][0]
    docs.append((status.model_copy(update=dict(seq=1, state="stopped", final=True, counts=last.counts,
                                               frames=last.frames)), {}))
    return docs


def _edit(docs, index: int, **update) -> list[tuple]:
    docs = list(docs)
    header, arrays = docs[index]
    docs[index] = (header.model_copy(update=update), arrays)
    return docs


def _checked(docs) -> DocumentChecker:
    checker = DocumentChecker()
    for header, arrays in docs:
        checker(header, arrays)
    return checker


def test_a_consistent_story_passes():
    checker = _checked(story())
    assert checker.problems == []
    checker.assert_consistent()
    assert checker.documents == {"status": 2, "clusters": 2, "composition": 2}


def _status_goes_back():
    docs = story()
    status = docs[0][0].model_copy(update={"seq": 1, "counts": 5})
    return docs[:1] + [(status, {})] + _edit(docs[1:], -1, seq=2)


CROSS = {
    "seq.step": lambda: _edit(story(), -1, seq=2),
    "composition.follows": lambda: story()[:1] + story()[2:],
    "composition.match": lambda: _edit(story(), 2, counts=21),
    "refit.order": lambda: _edit(_edit(story(), 3, refit=0), 4, refit=0),
    "refit.counts": lambda: _edit(_edit(story(), 1, counts=50), 2, counts=50),
    "status.counts": _status_goes_back,
    "ids.stable": lambda: _edit(story(), 3, appeared=[]),
    "ids.reused": lambda: story(REFITS + [([0, 1], [1], [2])]),
    "final.counts": lambda: _edit(story(), -1, counts=41),
    "image.sweeps": lambda: story() + [_image(0, sweeps=3), _image(1, sweeps=2)],
}


def _image(seq: int, sweeps: int):
    h, a = golden("mean_image")
    return h.model_copy(update={"seq": seq, "sweeps": sweeps, "final": False}), a


def test_images_whose_sweeps_grow_pass():
    checker = _checked(story() + [_image(0, sweeps=1), _image(1, sweeps=1), _image(2, sweeps=3)])
    assert checker.problems == [] and checker.documents["image"] == 3


def test_a_missing_image_array_is_reported():
    h, a = golden("mean_image")
    assert codes(check_document(h, {})) == {"image.arrays"}


@pytest.mark.parametrize("rule", list(CROSS))
def test_documents_that_contradict_each_other_are_reported_with_the_rule(rule):
    checker = _checked(CROSS[rule]())
    assert codes(checker.problems) == {rule}, checker.problems
    with pytest.raises(Inconsistency) as raised:
        checker.assert_consistent()
    assert raised.value.problems == checker.problems
    assert all(problem in str(raised.value) for problem in checker.problems)


def test_composition_labels_must_be_the_clusters_labels():
    docs = story()
    composition, arrays = docs[4]
    renamed = [c.model_copy(update={"label": label}) for c, label in zip(composition.clusters, [0, 1])]
    docs[4] = (composition.model_copy(update={"clusters": renamed}), arrays)
    problems = _checked(docs).problems
    assert codes(problems) == {"composition.match"}
    assert "(label, pixels) [(0, 2), (1, 3)], clusters document [(0, 2), (2, 3)]" in problems[0]


def test_vanished_ids_must_come_from_the_previous_refit():
    problems = _checked(_edit(story(), 3, vanished=[1, 9])).problems
    assert codes(problems) == {"ids.stable"} and "vanished ids [9]" in problems[0]


def test_problems_name_their_document():
    problems = _checked(_edit(story(), 3, appeared=[])).problems
    assert problems[0].endswith("[clusters/pca-gmm acquisition=golden-0001 seq=1 refit=1 final]")


def test_a_subscriber_that_joins_late_does_not_judge_what_it_missed():
    """Starting at refit 1, with seq numbers not from 0, is not a problem."""
    checker = _checked(story()[3:])
    assert checker.problems == []


def test_final_clusters_after_the_final_status_are_compared_too():
    docs = story()
    docs = docs[:3] + [docs[-1]] + docs[3:-1]
    assert _checked(docs).problems == []
    docs = _edit(docs, 3, counts=39)
    assert codes(_checked(docs).problems) == {"final.counts"}


def test_every_rule_has_a_crafted_case():
    assert set(SINGLE) | set(CROSS) == set(RULES)

"""Stop advice: after a refit, whether the acquisition has what it needs, or cannot get it within budget."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from edx_protocol import Advice, Clusters, Composition, Start

from .regions import empty_labels


@dataclass(frozen=True)
class AdviceOptions:
    """When to advise stopping.

    Attributes
    ----------
    budget_s : float or None
        Acquisition time allowed, s; None: no budget.
    require_sigma : bool
        Converged maps are not enough: every composition must also reach its target sigma.
    empty_fraction : float
        Clusters with fewer counts per pixel than this share of the median are empty space
        (vacuum, resin): their sigmas do not hold the acquisition back.
    """

    budget_s: float | None = None
    require_sigma: bool = True
    empty_fraction: float = 0.1


@dataclass(frozen=True)
class _Precision:
    """Where the compositions stand against their targets."""

    reached: bool
    seconds: float | None          # still needed, the largest over clusters; None: unknown or unreachable
    limiting: str | None
    unreachable: tuple[str, ...]
    unknown: tuple[str, ...]
    target: float | None


def stop_advice(start: Start, maps: Mapping[str, tuple[Clusters, dict[str, np.ndarray]]],
                compositions: Mapping[str, Composition | None], elapsed_s: float | None,
                options: AdviceOptions = AdviceOptions()) -> Advice:
    """The ``advice`` document after a refit (seq 0: the publisher numbers it).

    Stop when every workflow's map has converged and every composition's sigma reached its
    target (``converged_and_precise``); when the budget is spent, or the maps have converged
    and the time still needed would overrun it (``budget_exceeded``); or when the maps have
    converged and a sigma cannot reach its target by acquiring longer (``target_unreachable``).

    Parameters
    ----------
    start : edx_protocol.Start
    maps : mapping of workflow to (Clusters header, arrays)
        Each workflow's ``clusters`` document of this refit.
    compositions : mapping of workflow to Composition or None
    elapsed_s : float or None
        Acquisition time so far.
    options : AdviceOptions
    """
    headers = [h for h, _ in maps.values()]
    converged = {w: bool(h.converged) for w, (h, _) in maps.items()}
    all_converged = bool(converged) and all(converged.values())
    precision = _precision(start, maps, compositions, elapsed_s, options)
    budget = options.budget_s
    stop, reason, message = _decide(converged, all_converged, precision, budget, elapsed_s, options)
    return Advice(acquisition_id=start.acquisition_id, seq=0, frames=max((h.frames for h in headers), default=0),
                  counts=max((h.counts for h in headers), default=0), final=any(h.final for h in headers),
                  refit=max((h.refit for h in headers), default=0), stop=stop, reason=reason, converged=converged,
                  sigma_reached=precision.reached, predicted_seconds=precision.seconds, budget_s=budget,
                  elapsed_s=elapsed_s, limiting=precision.limiting, message=message)


def _precision(start: Start, maps, compositions, elapsed_s: float | None, options: AdviceOptions) -> _Precision:
    seconds, unreachable, unknown, target = {}, [], [], None
    for workflow, (header, _) in maps.items():
        composition = compositions.get(workflow)
        if composition is None:
            unknown.append(f"{workflow}: no composition")
            continue
        empty = empty_labels(header, options.empty_fraction)
        per_sweep = _seconds_per_sweep(start, header.frames, elapsed_s)
        for c in composition.clusters:
            t = c.time_to_target
            name = f"{workflow} cluster {c.label}"
            if c.label in empty or (t is not None and t.limiting_element is None):
                continue  # empty space, or nothing detected to measure
            if t is None:
                unknown.append(f"{name}: no uncertainty")
                continue
            target = t.target_sigma_atomic_percent
            if t.reached:
                seconds[name] = 0.0
            elif not t.reachable:
                unreachable.append(f"{name}: {t.limiting_element}")
            else:
                more = t.seconds if t.seconds is not None else (
                    None if t.sweeps is None or per_sweep is None else t.sweeps * per_sweep)
                seconds[f"{name}: {t.limiting_element}"] = more
                if more is None:
                    unknown.append(f"{name}: time unknown")
    reached = bool(seconds) and not unreachable and not unknown and all(v == 0.0 for v in seconds.values())
    known = {k: v for k, v in seconds.items() if v is not None}
    limiting = max(known, key=known.get) if known and max(known.values()) > 0 else None
    total = None if unreachable or unknown or not known else float(max(known.values()))
    return _Precision(reached, total, unreachable[0] if unreachable else limiting, tuple(unreachable),
                      tuple(unknown), target)


def _seconds_per_sweep(start: Start, frames: int, elapsed_s: float | None) -> float | None:
    """The pace so far, else the dwell times the pixels; None when neither is known."""
    if elapsed_s and frames:
        return elapsed_s / frames
    return None if start.dwell_time_s is None else start.dwell_time_s * start.n_pixels


def _decide(converged: dict[str, bool], all_converged: bool, p: _Precision, budget: float | None,
            elapsed: float | None, options: AdviceOptions) -> tuple[bool, str, str]:
    """(stop, reason, message)."""
    waiting = [w for w, done in converged.items() if not done]
    target = "its target" if p.target is None else f"{p.target:g} at%"
    if all_converged and (p.reached or not options.require_sigma):
        what = "every sigma reached " + target if p.reached else "sigma not required"
        return True, "converged_and_precise", f"stop: every map converged and {what}"
    if budget is not None and elapsed is not None and elapsed >= budget:
        return True, "budget_exceeded", f"stop: the budget of {budget:g} s is spent ({elapsed:.3g} s)"
    if budget is not None and all_converged and p.seconds is not None and (elapsed or 0.0) + p.seconds > budget:
        return True, "budget_exceeded", (f"stop: every sigma needs about {p.seconds:.3g} s more ({p.limiting}), "
                                         f"beyond the budget of {budget:g} s")
    if all_converged and p.unreachable:
        return True, "target_unreachable", (f"stop: the maps converged, but {', '.join(p.unreachable)} cannot reach "
                                            f"{target}: the spread inside the cluster alone exceeds it")
    why = []
    if waiting:
        why.append(f"{', '.join(waiting)} {'has' if len(waiting) == 1 else 'have'} not converged")
    if p.seconds is not None and p.seconds > 0:
        why.append(f"about {p.seconds:.3g} s more until every sigma reaches {target} ({p.limiting})")
    elif p.unknown:
        why.append(f"precision unknown ({', '.join(p.unknown[:3])})")
    elif p.unreachable:
        why.append(f"{', '.join(p.unreachable)} cannot reach {target}")
    return False, "not_yet", "keep acquiring: " + ("; ".join(why) or "nothing to report")

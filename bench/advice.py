"""Stop advice against the truth: at which dose the advice says stop, and when the answer stopped changing.

python bench/advice.py [--seeds 0 1] [--frames 20] [--every 2] [--dose 400] [--target 2.0]
                       [--workflows pca-gmm] [--budget 0]

A synthetic acquisition (the default four-phase phantom, 128 x 128) is replayed sweep by
sweep: the cumulative counts are analysed by the real Analyzer every ``--every`` sweeps (and
after the last), and ``edx_live.suggest.stop_advice`` is asked after each refit, the acquisition
time being the sweeps times a fixed sweep time. The answer has settled at the first refit from
which on, to the final refit: the label map's ARI against the final map is >= 0.99, and every
cluster's atomic percents lie within their sigma of the final ones. Printed: the dose (sweeps,
counts) of the first stop advice against that settled dose, and their ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Seconds per sweep of the replayed acquisition (128 x 128 pixels at 50 us).
SWEEP_S = 128 * 128 * 50e-6
ARI_SETTLED = 0.99


def replay(seed: int, frames: int, every: int, dose: float, target: float, workflows, budget):
    """One acquisition: a list of refits, each (sweeps, counts, {workflow: labels}, {workflow: composition}, advice)."""
    from edx_adapters.synthetic import make_phantom
    from edx_protocol import Start

    from edx_live.config import load_settings
    from edx_live.core.snapshot import Snapshot
    from edx_live.pipeline.refit import Analyzer
    from edx_live.suggest import AdviceOptions, stop_advice

    phantom = make_phantom((128, 128), channels=512, scale_kev=0.04, seed=seed)
    settings = load_settings(overrides={"refit": {"workflows": list(workflows)}, "quantify": {
        "kfactors": dict(phantom.kfactors), "target_sigma_at": target, "replicas": 16, "bootstrap": 16}})
    analyzer = Analyzer(settings)
    start = Start(acquisition_id=f"advice-{seed}", seq=0, **phantom.start_fields(frames, dose))
    ax = phantom.energy_axis
    options = AdviceOptions(budget_s=budget or None)
    cube, refits = None, []
    for sweep in range(frames):
        part = phantom.binned_counts(dose / frames, 2, seed=[seed, 11, sweep])
        cube = part if cube is None else cube + part
        if (sweep + 1) % every and sweep + 1 != frames:
            continue
        elapsed = (sweep + 1) * SWEEP_S
        snapshot = Snapshot(start, cube.copy(), 2, ax.offset_kev, ax.scale_kev, sweep + 1, int(cube.sum()),
                            len(refits), sweep + 1 == frames, elapsed_s=elapsed)
        documents = list(analyzer(snapshot))
        maps = {h.workflow: (h, a) for h, a in documents if h.kind == "clusters"}
        compositions = {h.workflow: h for h, _ in documents if h.kind == "composition"}
        advice = stop_advice(start, maps, compositions, elapsed, options)
        refits.append((sweep + 1, snapshot.counts, {w: a["labels"].copy() for w, (_, a) in maps.items()},
                       compositions, advice))
    return refits


def _within_sigma(composition, final) -> bool:
    """Every element of every cluster of ``composition`` within its sigma of the final refit's (same id)."""
    if composition is None or final is None:
        return composition is final
    last = {c.label: c for c in final.clusters}
    for c in composition.clusters:
        f = last.get(c.label)
        if f is None:
            return False
        for element, e in c.elements.items():
            g = f.elements.get(element)
            if e.atomic_percent is None or g is None or g.atomic_percent is None:
                continue
            if e.atomic_percent_sigma is None or abs(e.atomic_percent - g.atomic_percent) > e.atomic_percent_sigma:
                return False
    return {c.label for c in composition.clusters} == set(last)


def settled_index(refits) -> int:
    """Index of the first refit from which every later one agrees with the final answer."""
    from sklearn.metrics import adjusted_rand_score

    _, _, final_labels, final_comps, _ = refits[-1]
    settled = len(refits) - 1
    for i in range(len(refits) - 1, -1, -1):
        _, _, labels, comps, _ = refits[i]
        ok = all(adjusted_rand_score(final_labels[w].ravel(), labels[w].ravel()) >= ARI_SETTLED for w in labels)
        ok = ok and all(_within_sigma(comps.get(w), final_comps.get(w)) for w in labels)
        if not ok:
            break
        settled = i
    return settled


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--dose", type=float, default=400.0, help="counts per pixel after all the sweeps")
    parser.add_argument("--target", type=float, default=2.0, help="target 1-sigma, at%%")
    parser.add_argument("--workflows", nargs="+", default=["pca-gmm"])
    parser.add_argument("--budget", type=float, default=0.0, help="time budget, s (0: none)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    print(f"{args.frames} sweeps to {args.dose:g} counts/pixel, refit every {args.every}, target {args.target:g} at%, "
          f"{'/'.join(args.workflows)}, sweep {SWEEP_S:.3g} s, budget {args.budget or 'none'}")
    for seed in args.seeds:
        t0 = time.perf_counter()
        refits = replay(seed, args.frames, args.every, args.dose, args.target, args.workflows, args.budget)
        for sweeps, counts, _, _, advice in refits:
            print(f"  seed {seed} sweeps {sweeps:3d} counts {counts:>10d}  {advice.reason:22s} "
                  f"predicted {advice.predicted_seconds if advice.predicted_seconds is None else round(advice.predicted_seconds, 1)}"
                  f"  {advice.message}")
        first = next((i for i, r in enumerate(refits) if r[4].stop), None)
        settled = settled_index(refits)
        s_sweeps, s_counts = refits[settled][:2]
        if first is None:
            print(f"seed {seed}: no stop advice within {args.frames} sweeps; answer settled at {s_sweeps} sweeps "
                  f"({s_counts} counts)  [{time.perf_counter() - t0:.0f} s]")
            continue
        a_sweeps, a_counts = refits[first][:2]
        print(f"seed {seed}: stop advised at {a_sweeps} sweeps ({a_counts} counts, {refits[first][4].reason}); "
              f"answer settled at {s_sweeps} sweeps ({s_counts} counts); advised / settled dose "
              f"{a_counts / s_counts:.2f}  [{time.perf_counter() - t0:.0f} s]")


if __name__ == "__main__":
    main()

"""Time to a target uncertainty: predicted early in an acquisition, against when it happened.

python bench/target.py [--layouts default sulfide] [--seeds 0 1] [--frames 20] [--at 0.25] [--target 0.5]

Each acquisition is replayed sweep by sweep through the real Analyzer (a refit after every
sweep, as the live service refits). At the refit after ``--at`` of the sweeps, every cluster
publishes ``time_to_target``: the sweeps still needed until each detected element's sigma is
at most ``--target`` at%. The prediction is then checked against the first later refit at
which that cluster (same tracked id) reached it. The ratio actual / predicted sweeps is the
figure: 1 is a perfect prediction.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import progress  # noqa: E402


def run(layout: str, seed: int, frames: int, at: float, target: float, dose: float) -> list[dict]:
    from answers import layouts, sample_dose, settings_for

    from edx_adapters.synthetic import make_phantom
    from edx_protocol import Start

    from edx_live.pipeline.refit import Analyzer
    from edx_live.core.snapshot import Snapshot

    phantom = make_phantom((128, 128), seed=seed, **layouts()[layout].kwargs)
    settings = settings_for(phantom)
    settings = settings.model_copy(update={
        "quantify": settings.quantify.model_copy(update={"target_sigma_at": target, "replicas": 32,
                                                         "bootstrap": 32}),
        "refit": settings.refit.model_copy(update={"workflows": ["pca-gmm"]})})
    analyzer = Analyzer(settings)
    full = sample_dose(phantom, dose)
    start = Start(acquisition_id=f"target-{layout}-{seed}", seq=0, **phantom.start_fields(frames, full))
    ax = phantom.energy_axis
    early = max(1, int(round(at * frames)))
    predicted, reached = {}, {}
    cube = None
    for frame in range(frames):
        sweep = phantom.binned_counts(full / frames, 2, seed=[seed, 7, frame])
        cube = sweep if cube is None else cube + sweep
        snap = Snapshot(start, cube.copy(), 2, ax.offset_kev, ax.scale_kev, frame + 1, int(cube.sum()), frame,
                        frame == frames - 1, elapsed_s=float(frame + 1))
        for header, _ in analyzer(snap):
            if header.kind != "composition":
                continue
            for c in header.clusters:
                t = c.time_to_target
                if t is None or t.limiting_element is None:
                    continue
                if frame + 1 == early and not t.reached:
                    predicted[c.label] = (t.sweeps, t.reachable, c.pixels, t.limiting_element)
                if t.reached and c.label not in reached and frame + 1 > early:
                    reached[c.label] = frame + 1
    rows = []
    for label, (sweeps, reachable, pixels, element) in predicted.items():
        rows.append({"layout": layout, "seed": seed, "label": label, "pixels": pixels, "element": element,
                     "predicted": None if not reachable or sweeps is None else early + sweeps,
                     "actual": reached.get(label), "early": early})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", nargs="+", default=["default", "sulfide"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--at", type=float, default=0.25, help="fraction of the sweeps at which to predict")
    parser.add_argument("--target", type=float, default=0.5, help="target 1-sigma, at%%")
    parser.add_argument("--dose", type=float, default=200.0, help="full dose, counts per sample pixel")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    from edx_live.logs import configure

    configure(level="error")
    t0 = time.perf_counter()
    rows = []
    for layout, seed in progress(list(itertools.product(args.layouts, args.seeds)), desc="target", unit="run"):
        rows += run(layout, seed, args.frames, args.at, args.target, args.dose)
    print(f"## Time to a {args.target:g} at% sigma, predicted after {args.at:.0%} of {args.frames} sweeps "
          "(pca-gmm, a refit after every sweep)")
    print("| layout | seed | cluster | pixels | limiting | predicted sweep | reached at sweep | actual / predicted |")
    print("|---|---|---|---|---|---|---|---|")
    ratios = []
    for r in rows:
        predicted = "not reachable" if r["predicted"] is None else f"{r['predicted']:.1f}"
        actual = "not within the acquisition" if r["actual"] is None else str(r["actual"])
        ratio = ""
        if r["predicted"] is not None and r["actual"] is not None:
            ratio = f"{r['actual'] / r['predicted']:.2f}"
            ratios.append(r["actual"] / r["predicted"])
        print(f"| {r['layout']} | {r['seed']} | {r['label']} | {r['pixels']} | {r['element']} | {predicted} | "
              f"{actual} | {ratio} |")
    if ratios:
        print(f"\nactual / predicted over {len(ratios)} clusters: median {np.median(ratios):.2f}, "
              f"range {min(ratios):.2f}..{max(ratios):.2f}")
    within = [r for r in rows if r["predicted"] is not None and r["predicted"] <= args.frames]
    hit = sum(r["actual"] is not None for r in within)
    print(f"predicted to reach it within the acquisition: {len(within)}; reached: {hit}; "
          f"{time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()

"""The whole live refit at 512x512 scan pixels x 2048 channels: before and after the worker process and the
settled UMAP epochs, beside the study's recipe as written, on 1 and 2 cores, with the maps' quality.

python bench/live_refit.py [--size 256] [--channels 2048] [--refits 5] [--cores 1 2] [--no-as-written]

One acquisition of the synthetic phantom (``--size`` binned pixels a side, 2x2 binning as the
service does) grows by 10 % of its dose between refits. Each refit is what the service runs: the
2x2 binning of the full-resolution cube (timed once on an accumulator of that size and added), then
the :class:`~edx_live.pipeline.refit.Analyzer` (both workflows, tracking, quantification, targets and
advice), timed to its last document.

- **before**: ``[refit] parallel = "off"``, ``[umap_hdbscan] warm_epochs = 60``: the two
  workflows one after the other in the refit thread, 60 UMAP epochs at every warm refit;
- **after**: the defaults, ``parallel = "auto"``, ``warm_epochs = "auto"``: with 2 or more cores
  umap-hdbscan in the worker process beside pca-gmm, 20 UMAP epochs once the map holds still;
- **as written**: the study's workflows on the same binned cube (RobustScaler on all channels,
  PCA + GaussianMixture; UMAP + HDBSCAN), one fit each, once.

All in the same run, so the ratios hold on a shared machine. ``--cores`` pins the process (and
the worker it starts) to that many cores. Quality: the adjusted Rand index of each workflow's last
map against the phantom's phases, before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

CADENCE_S = 5.0
CONFIGS = {"before": {"refit": {"parallel": "off"}, "umap_hdbscan": {"warm_epochs": 60}},
           "after": {"refit": {"parallel": "auto"}, "umap_hdbscan": {"warm_epochs": "auto"}}}


def _acquisition(size: int, channels: int, refits: int, dose: float):
    """The phantom and the binned cube at each refit (grown by 10 % of the dose each time)."""
    from edx_adapters.synthetic import make_phantom

    phantom = make_phantom((2 * size, 2 * size), channels=channels, scale_kev=20.48 / channels)
    cube = phantom.binned_counts(dose, 2, seed=1).astype(np.uint32)
    for i in range(refits):
        if i:
            cube = cube + phantom.binned_counts(0.1 * dose, 2, seed=1 + i).astype(np.uint32)
        yield phantom, cube


def run_config(name: str, size: int, channels: int, refits: int, dose: float, t_bin: float) -> dict:
    from edx_protocol import Start
    from sklearn.metrics import adjusted_rand_score

    from edx_live.config import load_settings
    from edx_live.core.snapshot import Snapshot
    from edx_live.pipeline.refit import Analyzer

    analyzer = Analyzer(load_settings(overrides=CONFIGS[name]))
    if analyzer.prepare(size * size) is not None:
        t0 = time.perf_counter()
        analyzer.pool._ready.result()
        print(f"  {name}: worker warmed up in {time.perf_counter() - t0:.0f} s", flush=True)
    times, parts = [], []
    try:
        for i, (phantom, cube) in enumerate(_acquisition(size, channels, refits, dose)):
            start = Start(acquisition_id=f"live-{name}", seq=0, **phantom.start_fields())
            ax = phantom.energy_axis
            t0 = time.perf_counter()
            snap = Snapshot(start, cube, 2, ax.offset_kev, ax.scale_kev, i + 1, int(cube.sum()), i, False)
            documents = list(analyzer(snap))
            seconds = time.perf_counter() - t0 + t_bin
            latest = analyzer.latest
            parts.append({w: (o.result.fit_seconds, o.quantify_seconds) for w, o in latest.items()})
            times.append(seconds)
            print(f"  {name} refit {i}: {seconds:.2f} s (binning {t_bin:.2f}; "
                  + ", ".join(f"{w} {f:.2f} + {q:.2f}" for w, (f, q) in parts[-1].items())
                  + f"; {len(documents)} documents)", flush=True)
        truth = phantom.binned_labels(2).ravel()
        quality = {w: adjusted_rand_score(truth, o.result.labels.ravel()) for w, o in analyzer.latest.items()}
    finally:
        analyzer.close()
    return {"times": times, "parts": parts, "quality": quality}


def as_written_times(size: int, channels: int, dose: float) -> dict:
    from segmentation import as_written

    phantom, cube = next(_acquisition(size, channels, 1, dose))
    X = cube.reshape(-1, channels)
    mcs = max(5, int(round(0.005 * X.shape[0])))
    out = {}
    for workflow in ("pca-gmm", "umap-hdbscan"):
        t0 = time.perf_counter()
        as_written(X, workflow, len(phantom.phases), mcs)
        out[workflow] = time.perf_counter() - t0
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="binned side (scan side / 2)")
    parser.add_argument("--channels", type=int, default=2048)
    parser.add_argument("--refits", type=int, default=5)
    parser.add_argument("--dose", type=float, default=200.0, help="counts per scan pixel at the first refit")
    parser.add_argument("--cores", type=int, nargs="+", default=[2])
    parser.add_argument("--no-as-written", action="store_true")
    args = parser.parse_args(argv)

    from scaling import snapshot_binning

    from edx_live.segment import warm_up

    print(machine())
    print(f"warm-up of this process: {warm_up():.0f} s")
    t_bin, _ = snapshot_binning(args.size, args.channels)
    print(f"snapshot binning of the {2 * args.size}x{2 * args.size} cube: {t_bin:.2f} s (added to every refit)")
    available = sorted(os.sched_getaffinity(0))
    rows = []
    for cores in args.cores:
        if cores > len(available):
            print(f"{cores} cores: this machine has {len(available)}, skipped")
            continue
        os.sched_setaffinity(0, available[:cores])
        for name in CONFIGS:
            result = run_config(name, args.size, args.channels, args.refits, args.dose, t_bin)
            rows.append((cores, name, result))
    os.sched_setaffinity(0, available)
    aw = None if args.no_as_written else as_written_times(args.size, args.channels, args.dose)

    print(f"\n## Whole live refit, {2 * args.size}x{2 * args.size} scan pixels ({args.size}x{args.size} binned) "
          f"x {args.channels} channels, {args.refits} refits of one acquisition\n")
    print("| cores | recipe | first refit | later refits, median | max | within 5 s | ARI pca-gmm | "
          "ARI umap-hdbscan |")
    print("|---|---|---|---|---|---|---|---|")
    medians = {}
    for cores, name, r in rows:
        later = r["times"][1:]
        medians[(cores, name)] = statistics.median(later)
        print(f"| {cores} | {name} | {r['times'][0]:.2f} s | {statistics.median(later):.2f} s | {max(later):.2f} s | "
              f"{sum(t <= CADENCE_S for t in later)}/{len(later)} | {r['quality'].get('pca-gmm', float('nan')):.3f} | "
              f"{r['quality'].get('umap-hdbscan', float('nan')):.3f} |")
    for cores in args.cores:
        if (cores, "before") in medians and (cores, "after") in medians:
            print(f"\n{cores} cores: after / before = x{medians[(cores, 'after')] / medians[(cores, 'before')]:.2f}")
    if aw:
        print("\nThe study's recipe as written on the same binned cube (one fit each): "
              + ", ".join(f"{w} {s:.1f} s" for w, s in aw.items())
              + f"; both: {sum(aw.values()):.1f} s")
        for (cores, name), m in medians.items():
            print(f"  as written / {name} on {cores} cores: x{sum(aw.values()) / m:.1f}")


if __name__ == "__main__":
    main()

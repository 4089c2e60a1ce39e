"""Refit cost against scan size: time and peak memory of each workflow, beside the study's as written.

python bench/scaling.py [--sizes 64 128 256] [--channels 1024 2048] [--no-as-written]

For binned scans of 64x64, 128x128 and 256x256 pixels (128 to 512 scan pixels, 2x2
binning as the service does) at 1024 and 2048 channels over the same 0 to 20.48 keV,
the synthetic acquisition at 200 counts per scan pixel goes through the real
``Analyzer`` one workflow at a time:

- snapshot: binning the full-resolution cube 2x2, as every refit starts;
- first refit of an acquisition (models built, resolution calibrated, cold fit);
- a later refit (10 % more counts; warm start, cached quantification model): what
  every live refit after the first costs;
- the study's workflow as written on the same binned cube (RobustScaler on all
  channels, PCA + full GaussianMixture, or UMAP + HDBSCAN, library defaults).

Peak memory is the highest resident memory sampled during the call minus the
resident memory just before it. The exponent ``b`` of ``time = a * pixels ** b``
(least squares in log-log) says how the cost grows; the scan at which the two
workflows' later refits plus the snapshot fill the default 5 s cadence is where the
service stops refitting at its cadence (refits then run back to back).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import gib, machine, peak_memory, progress  # noqa: E402
from segmentation import as_written  # noqa: E402

WORKFLOWS = ("pca-gmm", "umap-hdbscan")
ENERGY_RANGE_KEV = 20.48
CADENCE_S = 5.0


def _measure(fn):
    with peak_memory() as memory:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
    return out, seconds, memory["extra"]


def snapshot_binning(size: int, channels: int) -> tuple[float, int]:
    """Seconds and extra memory of binning a full-resolution (2 size)^2 cube 2x2 (pages already in memory)."""
    from edx_live.core.accumulator import Accumulator, EnergySelection
    from edx_live.core.memory import populate

    acc = Accumulator((2 * size, 2 * size), channels, EnergySelection.from_range(0.0, 0.01, channels))
    populate(acc._flat)
    acc.binned(2)  # compiled, and the allocator warm
    _, seconds, extra = _measure(lambda: acc.binned(2))
    return seconds, extra


def run(size: int, channels: int, dose: float, with_as_written: bool) -> list[dict]:
    from edx_adapters.synthetic import make_phantom
    from edx_protocol import Start

    from edx_live.pipeline.refit import Analyzer
    from edx_live.config import load_settings
    from edx_live.core.snapshot import Snapshot

    phantom = make_phantom((2 * size, 2 * size), channels=channels, scale_kev=ENERGY_RANGE_KEV / channels)
    first = phantom.binned_counts(dose, 2, seed=1)
    later = first + phantom.binned_counts(dose * 0.1, 2, seed=2)
    ax = phantom.energy_axis
    start = Start(acquisition_id=f"bench-{size}-{channels}", seq=0, **phantom.start_fields())
    binning_s, binning_mem = snapshot_binning(size, channels)
    rows = []
    for workflow in WORKFLOWS:
        analyzer = Analyzer(load_settings(overrides={"refit": {"workflows": [workflow]}}))
        out = {"size": size, "channels": channels, "workflow": workflow, "binning_s": binning_s,
               "binning_mem": binning_mem}
        for name, cube, index in (("first", first, 0), ("later", later, 1)):
            snap = Snapshot(start, cube, 2, ax.offset_kev, ax.scale_kev, index + 1, int(cube.sum()), index, False)
            _, seconds, extra = _measure(lambda: list(analyzer(snap)))
            latest = analyzer.latest[workflow]
            out[name] = (seconds, latest.result.fit_seconds, latest.quantify_seconds, extra)
        if with_as_written:
            X = first.reshape(-1, channels)
            mcs = max(5, int(round(0.005 * X.shape[0])))
            _, seconds, extra = _measure(lambda: as_written(X, workflow, len(phantom.phases), mcs))
            out["as_written"] = (seconds, extra)
        rows.append(out)
        later_s = out["later"][0]
        aw = out.get("as_written")
        print(f"| {size}x{size} | {channels} | {workflow} | {out['first'][0]:.2f} s | {later_s:.2f} s "
              f"({out['later'][1]:.2f} + {out['later'][2]:.2f}) | {gib(out['later'][3])} | "
              + (f"{aw[0]:.2f} s | {gib(aw[1])} | x{aw[0] / later_s:.1f} |" if aw else "- | - | - |"), flush=True)
    return rows


def power_law(pixels: np.ndarray, seconds: np.ndarray) -> tuple[float, float]:
    """(a, b) of seconds = a * pixels ** b, least squares in log-log."""
    b, log_a = np.polyfit(np.log(pixels), np.log(seconds), 1)
    return float(np.exp(log_a)), float(b)


def summarise(rows: list[dict]) -> None:
    for channels in sorted({r["channels"] for r in rows}):
        these = [r for r in rows if r["channels"] == channels]
        sizes = sorted({r["size"] for r in these})
        if len(sizes) < 2:
            continue
        print(f"\n| channels | curve | exponent b | time at {sizes[-1]}x{sizes[-1]} binned | "
              "predicted at 512x512 binned (1024x1024 scan) |")
        print("|---|---|---|---|---|")
        pixels = np.array(sizes, float) ** 2
        curves = {}
        for workflow in WORKFLOWS:
            by = {r["size"]: r for r in these if r["workflow"] == workflow}
            curves[f"{workflow}, later refit"] = [by[s]["later"][0] for s in sizes]
            if all("as_written" in by[s] for s in sizes):
                curves[f"{workflow}, as written"] = [by[s]["as_written"][0] for s in sizes]
        binning = [next(r["binning_s"] for r in these if r["size"] == s) for s in sizes]
        curves["snapshot binning"] = binning
        curves["whole live refit (binning + both workflows)"] = [
            binning[i] + sum(r["later"][0] for r in these if r["size"] == s) for i, s in enumerate(sizes)]
        for name, seconds in curves.items():
            a, b = power_law(pixels, np.array(seconds))
            print(f"| {channels} | {name} | {b:.2f} | {seconds[-1]:.2f} s | {a * (512.0 ** 2) ** b:.1f} s |")
        a, b = power_law(pixels, np.array(curves["whole live refit (binning + both workflows)"]))
        limit = (CADENCE_S / a) ** (1 / b)
        print(f"\nAt {channels} channels the whole live refit fills the {CADENCE_S:g} s cadence at about "
              f"{limit:,.0f} binned pixels ({np.sqrt(limit):.0f}x{np.sqrt(limit):.0f} binned, "
              f"{2 * np.sqrt(limit):.0f}x{2 * np.sqrt(limit):.0f} scan pixels); beyond it refits run back to back "
              f"and the map lags by one refit time.\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="binned side in pixels")
    parser.add_argument("--channels", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--dose", type=float, default=200.0, help="counts per scan pixel")
    parser.add_argument("--no-as-written", action="store_true", help="skip the study's workflow (minutes at 256)")
    args = parser.parse_args(argv)
    from edx_live.core.kernels import warm_up as warm_up_kernels
    from edx_live.segment import warm_up

    print(f"machine: {machine()}")
    warm_up_kernels()
    warm_up()
    print(f"\n## Refit cost against scan size ({args.dose:g} counts per scan pixel, 2x2 binning)")
    print("Later refit = segmentation + quantification; peak = highest resident memory during the call "
          "minus before it.")
    print("| binned scan | channels | workflow | first refit | later refit (segment + quantify) | peak memory | "
          "as written | as written peak memory | as written / later |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for channels, size in progress(list(itertools.product(args.channels, args.sizes)), desc="scaling", unit="scan"):
        rows += run(size, channels, args.dose, not args.no_as_written)
    print("\n| binned scan | channels | snapshot binning | its peak memory |")
    print("|---|---|---|---|")
    for r in rows[::len(WORKFLOWS)]:
        print(f"| {r['size']}x{r['size']} | {r['channels']} | {r['binning_s']:.2f} s | {gib(r['binning_mem'])} |")
    summarise(rows)


if __name__ == "__main__":
    main()

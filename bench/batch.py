"""Many sessions as Dask tasks: inputs per minute on a local cluster of 1 and 2 workers, against a plain loop.

python bench/batch.py [--inputs 6] [--frames 4] [--workers 1 2] [--workflow pca-gmm] [--dir FOLDER]

``inputs`` copies of the bundled ``core_shell.hspy`` (64 x 64 pixels, 992 channels) are processed
three ways in the same run, so that the ratios hold on a loaded machine: one after the other in this
process with ``edx_live.shell.offline.process_file`` (the reference), then with
``edx_live.scale.batch.process_many`` on a local cluster of each ``--workers`` count (every run
from an empty folder; the cluster's start and stop are included in its time, the reference has
no such cost). Each prints seconds, inputs per minute and the rate relative to the plain loop.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402


def plain_loop(paths: list[Path], out: Path, settings, frames: int) -> tuple[float, float]:
    """Seconds to process every input one after the other in this process, and the median of one input."""
    from edx_live.shell.offline import process_file

    each = []
    for path in paths:
        t0 = time.perf_counter()
        process_file(path, out / path.stem, settings, frames=frames, progress=False)
        each.append(time.perf_counter() - t0)
    return sum(each), statistics.median(each)


def on_cluster(paths: list[Path], out: Path, settings, frames: int, workers: int) -> tuple[float, float]:
    """Seconds to process every input as Dask tasks on a new local cluster of ``workers`` processes, and the
    median seconds of one task (in its worker, from the index)."""
    from edx_live.scale.batch import Options, process_many
    from edx_live.scale.cluster import ClusterOptions

    t0 = time.perf_counter()
    results = process_many([str(p) for p in paths], out, settings, Options(frames=frames),
                           cluster=ClusterOptions(workers=workers))
    seconds = time.perf_counter() - t0
    failed = [r for r in results if r["status"] != "done"]
    if failed:
        raise RuntimeError(f"inputs not done: {failed}")
    return seconds, statistics.median(r["seconds"] for r in results)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=6, help="copies of core_shell.hspy")
    parser.add_argument("--frames", type=int, default=4, help="sweeps each input is replayed in")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="local cluster sizes")
    parser.add_argument("--workflow", action="append", choices=["pca-gmm", "umap-hdbscan"],
                        help="workflows to run (repeatable; default pca-gmm)")
    parser.add_argument("--dir", type=Path, help="where inputs and outputs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    from edx_live.config import load_settings
    from edx_live.logs import configure
    from edx_live.shell.demo import bundled_dataset

    configure("console", "warning")
    settings = load_settings(None, {"refit": {"workflows": args.workflow or ["pca-gmm"]}, "log_level": "warning"})
    work = Path(tempfile.mkdtemp(prefix="edx-live-batch-", dir=args.dir))
    try:
        paths = []
        for i in range(args.inputs):
            paths.append(work / "in" / f"scan_{i:02d}.hspy")
            paths[-1].parent.mkdir(exist_ok=True)
            shutil.copy(bundled_dataset(), paths[-1])
        print(machine())
        print(f"{args.inputs} inputs: core_shell.hspy copies, {args.frames} sweeps each, workflows "
              f"{', '.join(settings.refit.workflows)}")
        print(f"  {'':30s} {'total':>9s}  {'rate':>16s}  {'vs loop':>7s}  {'one input (median)':>18s}")
        base, one = plain_loop(paths, work / "loop", settings, args.frames)
        print(f"  {'plain loop, this process':30s} {base:7.1f} s  {args.inputs / base * 60:6.2f} inputs/min  "
              f"{1:6.2f} x  {one:16.1f} s")
        for workers in args.workers:
            seconds, one = on_cluster(paths, work / f"cluster{workers}", settings, args.frames, workers)
            label = f"local cluster, {workers} worker{'s' if workers > 1 else ''}"
            print(f"  {label:30s} {seconds:7.1f} s  {args.inputs / seconds * 60:6.2f} inputs/min  "
                  f"{base / seconds:6.2f} x  {one:16.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

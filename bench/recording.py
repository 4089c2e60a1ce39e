"""Recording's cost: bytes on disk per message, and the ingest rate with and without a Recorder.

python bench/recording.py [--size 256] [--sweeps 5] [--rows 1 8 64] [--pairs 5] [--dir FOLDER] [--fsync]

The synthetic acquisition of bench/ingest.py (``size`` x ``size`` pixels, 2048 channels,
about 20 counts per pixel and sweep, events in raster order; ``rows`` scan rows per
message) is fed, already encoded, into ``Ingest.receive`` as the service's ingest thread
does: A without a recorder, B with ``Recorder.message`` after every message, writing
``.edxrec`` files to ``--dir`` (default: a temporary folder). The first sweep of each run
(the start, the cube's allocation) is not timed. A and B alternate, A B B A A B ..., so
that a drift of the machine falls on both; the ratio B / A is taken per pair and its
median and range printed. The write goes to the operating system (its page cache) as
each message arrives; a disk slower than the recorded data rate would throttle that
later, which this in-memory run does not show (``--fsync`` puts every record on the disk).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from ingest import PAYLOADS, first_sweep_end, messages, sweep_events  # noqa: E402


def filesystem(folder: Path) -> str:
    """The type and mount point of the file system holding ``folder`` (from /proc/mounts)."""
    best = ("?", "")
    folder = str(folder.resolve())
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, kind = line.split()[:3]
            if (folder == mount or folder.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best[1]):
                best = (kind, mount)
    except OSError:
        pass
    return f"{best[0]} on {best[1] or '?'}"


def run(frames: list, first: int, folder: Path | None, fsync: bool) -> tuple[float, int]:
    """Seconds to receive messages ``first..`` (and record them if ``folder``); bytes recorded."""
    from edx_live.core.ingest import Ingest
    from edx_live.core.memory import populate
    from edx_live.shell.record import Recorder

    ingest = Ingest()
    recorder = Recorder(folder, fsync=fsync) if folder is not None else None
    for message in frames[:first]:
        outcome = ingest.receive(message)
        if recorder is not None:
            recorder.message(message, outcome)
    populate(ingest.current.accumulator._flat)
    t0 = time.perf_counter()
    if recorder is None:
        for message in frames[first:]:
            ingest.receive(message)
    else:
        for message in frames[first:]:
            recorder.message(message, ingest.receive(message))
    seconds = time.perf_counter() - t0
    nbytes = 0
    if recorder is not None:
        recorder.close()
        nbytes = sum(p.stat().st_size for p in recorder.files)
        if sum(recorder.dropped.values()):
            raise RuntimeError(f"messages not recorded: {dict(recorder.dropped)}")
        for path in recorder.files:
            path.unlink()
    if sum(ingest.rejected.values()):
        raise RuntimeError(f"messages rejected: {dict(ingest.rejected)}")
    return seconds, nbytes


def measure(frames: list, first: int, pairs: int, folder: Path, fsync: bool) -> dict:
    """A/B runs in alternating order; per-pair ratios of the rate with a recorder to the rate without."""
    without, with_, ratios, recorded = [], [], [], 0
    for i in range(pairs):
        order = ("A", "B") if i % 2 == 0 else ("B", "A")
        times = {}
        for arm in order:
            seconds, nbytes = run(frames, first, folder if arm == "B" else None, fsync)
            times[arm] = seconds
            recorded = nbytes or recorded
        without.append(times["A"])
        with_.append(times["B"])
        ratios.append(times["A"] / times["B"])  # rate with / rate without
    return {"without": without, "with": with_, "ratios": ratios, "recorded": recorded}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="scan side in pixels")
    parser.add_argument("--sweeps", type=int, default=5, help="sweeps per run (the first is not timed)")
    parser.add_argument("--counts", type=float, default=20.0, help="counts per pixel and sweep")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 64], help="scan rows per message")
    parser.add_argument("--payloads", nargs="+", default=["events", "dense"], choices=PAYLOADS)
    parser.add_argument("--pairs", type=int, default=5, help="A/B pairs per configuration")
    parser.add_argument("--dir", type=Path, help="where the recordings go (default: a temporary folder)")
    parser.add_argument("--fsync", action="store_true", help="fsync every record")
    args = parser.parse_args(argv)
    from edx_live import logs
    from edx_live.core import kernels

    logs.configure(level="warning")  # a line per file opened would interleave with the table
    kernels.warm_up()
    folder = Path(tempfile.mkdtemp(prefix="edx-bench-recording-", dir=args.dir))
    print(f"machine: {machine()}")
    pixel, channel, channels = sweep_events(args.size, args.counts)
    n = args.size
    print(f"\n## Recording, {n}x{n} pixels x {channels} channels, {pixel.size / n / n:.1f} counts per pixel and "
          f"sweep; {args.sweeps} sweeps per run, the last {args.sweeps - 1} timed; recordings to {folder} "
          f"({filesystem(folder)}){', fsync per record' if args.fsync else ''}")
    print(f"Ingest rate (decode + validate + accumulate) without and with the recorder, median of {args.pairs} "
          "runs each, A and B alternating; ratio = rate with / rate without per pair, median [min, max].")
    print("| payload | rows per message | messages | MB per message | recorded bytes per message | "
          "file / message bytes | M events/s without | M events/s with | ratio with / without | "
          "MB/s received, with |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    try:
        for payload in args.payloads:
            for rows in args.rows:
                frames, decoded = messages(payload, pixel, channel, n, channels, rows, args.sweeps)
                del decoded
                first = first_sweep_end(len(frames), args.sweeps)
                message_bytes = sum(memoryview(f).nbytes for m in frames for f in m)
                timed_events = pixel.size * (args.sweeps - 1)
                result = measure(frames, first, args.pairs, folder, args.fsync)
                ratios = np.array(result["ratios"])
                a, b = np.median(result["without"]), np.median(result["with"])
                timed_bytes = sum(memoryview(f).nbytes for m in frames[first:] for f in m)
                print(f"| {payload} | {rows} | {len(frames)} | {message_bytes / len(frames) / 1e6:.3f} | "
                      f"{result['recorded'] / len(frames):,.0f} | {result['recorded'] / message_bytes:.4f} | "
                      f"{timed_events / a / 1e6:.1f} | {timed_events / b / 1e6:.1f} | "
                      f"x{np.median(ratios):.2f} [{ratios.min():.2f}, {ratios.max():.2f}] | "
                      f"{timed_bytes / b / 1e6:.0f} |", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print("\nNo file is kept: each run's recording is checked (nothing dropped or rejected), measured and removed.")


if __name__ == "__main__":
    main()

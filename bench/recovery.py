"""Crash recovery's cost: checkpoint size and write time against the refit, and the time to recover against ingest.

python bench/recovery.py [--sizes 128 256] [--sweeps 5] [--rows 8] [--pairs 3] [--dir FOLDER]

1. Checkpoints. A synthetic acquisition (``bench/ingest.py``'s events, ``size`` x ``size`` pixels,
   2048 channels) is refitted twice by the service's Analyzer (both workflows, 2x2 binning),
   as a live service does; then the acquisition's record is checkpointed as the service does
   after each refit (``Checkpoints.save``), with and without fsync. The checkpoint is written on
   the ingest thread, so its time is what ingest pauses per refit; the ratio to the refit's own
   time is printed.
2. Recovery. The same acquisition's messages are recorded (``Recorder``) with a checkpoint
   beside them; a new App is built on that folder and timed until it has replayed everything
   (``recovered``), against the baseline of ingesting the same messages without recording, in
   the same run (A/B alternating, ``pairs`` times). Both counts are checked against each other.
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
from ingest import messages, sweep_events  # noqa: E402


def _acquire(frames: list, folder: Path | None):
    """Ingest ``frames`` (recording them under ``folder`` if given); the acquisition, seconds, recorder."""
    from edx_live.core.ingest import Ingest
    from edx_live.shell.record import Recorder

    ingest = Ingest()
    recorder = Recorder(folder) if folder is not None else None
    t0 = time.perf_counter()
    for message in frames:
        outcome = ingest.receive(message)
        if recorder is not None:
            recorder.message(message, outcome)
    seconds = time.perf_counter() - t0
    acq = ingest.current
    return acq, seconds, recorder


def checkpoint_cost(frames: list, folder: Path) -> dict:
    from edx_live.config import load_settings
    from edx_live.core.snapshot import take_snapshot
    from edx_live.pipeline.refit import Analyzer
    from edx_live.pipeline.state import AcquisitionRecord
    from edx_live.shell.recover import Checkpoints

    acq, _, recorder = _acquire(frames[:-1], folder)  # acquiring still: no stop
    recorder.close()
    settings = load_settings(overrides={"quantify": {"elements": ["Fe", "Pt"], "replicas": 16, "bootstrap": 16}})
    analyzer = Analyzer(settings)
    record = AcquisitionRecord(acq.acquisition_id, recording=str(recorder.files[0]))
    refit_s = []
    for index in range(2):
        t0 = time.perf_counter()
        list(analyzer(take_snapshot(acq, 2, index, False, 1.0), record))
        refit_s.append(time.perf_counter() - t0)
        record.refits = index + 1
    out = {"refit_s": refit_s[-1]}
    for fsync in (False, True):
        store = Checkpoints(fsync=fsync)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            path = store.save(record)
            times.append(time.perf_counter() - t0)
        out[f"save_s_fsync={fsync}"] = float(np.median(times))
        out["bytes"] = path.stat().st_size
    for path in folder.iterdir():
        path.unlink()
    return out


def recovery_cost(frames: list, folder: Path, pairs: int) -> dict:
    from edx_live.config import load_settings
    from edx_live.pipeline.state import AcquisitionRecord
    from edx_live.shell.app import App, on_free_ports
    from edx_live.shell.recover import Checkpoints
    from edx_live.shell.transport import MemoryConnection

    acquiring = frames[:-1]
    acq, _, recorder = _acquire(acquiring, folder)
    recorder.close()
    recording = recorder.files[0]
    Checkpoints(fsync=False).save(AcquisitionRecord(acq.acquisition_id, recording=str(recording)))
    expected = acq.accumulator.counts
    settings = on_free_ports(load_settings(), record_dir=folder)
    baseline, recover = [], []
    for i in range(pairs):
        for arm in (("A", "B") if i % 2 == 0 else ("B", "A")):
            if arm == "A":
                acq, seconds, _ = _acquire(acquiring, None)
                baseline.append(seconds)
                assert acq.accumulator.counts == expected
                continue
            t0 = time.perf_counter()
            app = App(settings, connection=MemoryConnection(), publish=False, control=False, sessions=False,
                      analyze=lambda snapshot, record: [])
            try:
                app.start()
                while app.service.recovering or app.service.ingest.current is None:
                    time.sleep(0.001)
                recover.append(time.perf_counter() - t0)
                assert app.service.ingest.current.accumulator.counts == expected
            finally:
                app.stop()
                app.close()
            for extra in folder.glob("*.edxrec"):  # the "resumed" marker the recovery added: start afresh
                if extra != recording:
                    extra.unlink()
    return {"baseline_s": baseline, "recover_s": recover, "recording_bytes": recording.stat().st_size}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="scan sides in pixels")
    parser.add_argument("--sweeps", type=int, default=5)
    parser.add_argument("--counts", type=float, default=20.0, help="counts per pixel and sweep")
    parser.add_argument("--rows", type=int, default=8, help="scan rows per message")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="where the recordings go (default: a temporary folder)")
    args = parser.parse_args(argv)
    from edx_live import logs
    from edx_live.core import kernels

    logs.configure(level="warning")
    kernels.warm_up()
    print(f"machine: {machine()}")
    print("\n## Checkpoints: size and time to write, after the second refit (both workflows, 2x2 binned)")
    print("| scan | binned | checkpoint bytes | write, no fsync | write, fsync | refit | write / refit |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for n in args.sizes:
        pixel, channel, channels = sweep_events(n, args.counts)
        frames, _ = messages("events", pixel, channel, n, channels, args.rows, args.sweeps)
        folder = Path(tempfile.mkdtemp(prefix="edx-bench-recovery-", dir=args.dir))
        try:
            c = checkpoint_cost(frames, folder)
            print(f"| {n}x{n}x{channels} | {n // 2}x{n // 2} | {c['bytes']:,} | {c['save_s_fsync=False'] * 1e3:.1f} ms | "
                  f"{c['save_s_fsync=True'] * 1e3:.1f} ms | {c['refit_s']:.2f} s | "
                  f"x{c['save_s_fsync=True'] / c['refit_s']:.4f} |", flush=True)
            r = recovery_cost(frames, folder, args.pairs)
            rows.append((n, channels, len(frames) - 1, r))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\n## Time to recover: replay of the recording (plan + ingest until `recovered`) against ingesting the same "
          f"messages, {args.sweeps} sweeps, {args.rows} rows per message; median of {args.pairs}, A/B alternating")
    print("| scan | messages | recording MB | ingest (baseline) | recovery | recovery / ingest | recovery MB/s |")
    print("|---|---|---|---|---|---|---|")
    for n, channels, count, r in rows:
        a, b = np.median(r["baseline_s"]), np.median(r["recover_s"])
        print(f"| {n}x{n}x{channels} | {count} | {r['recording_bytes'] / 1e6:.1f} | {a:.3f} s | {b:.3f} s | "
              f"x{b / a:.2f} | {r['recording_bytes'] / b / 1e6:.0f} |")


if __name__ == "__main__":
    main()

"""Fuzzing throughput: hostile messages through the receive path, against valid messages of the same run.

python bench/fuzz.py [--messages 100000] [--seed 101] [--sweeps 3]

The long fuzz of tests/test_fuzz.py: hostile messages, built from the field tables of
SPEC section 3 with faults or mutated from the golden messages and from real acquisitions,
spread between the messages of a real acquisition (core_shell.hspy, ``--sweeps`` sweeps) and
fed to ``Ingest.receive``, the call the service's ingest thread makes for every message.
Hostile messages that are valid and would change the real acquisition (a start, or a frame or
stop naming it) are not fed: without authentication they cannot be told from the producer's.

Measured in the same run:

1. valid: the real acquisition's messages alone through a fresh ``Ingest`` (best of 3);
2. hostile: each hostile message's ``Ingest.receive``, timed alone; generating and classifying
   the messages is not timed.

Printed: messages per second of both and their ratio, rejections by reason with their mean
and longest time, resident memory before and after, whether the real acquisition's cube is
still exactly the file's sum, and the crashes (an exception out of ``receive``) and hangs (a
message over two seconds). The SPEC verdict of every message is checked by the tests, not here.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the generator lives with the tests that check it
from _common import machine, peak_rss_bytes, progress, release_free_memory, rss_bytes  # noqa: E402

#: A message that takes longer than this is counted as a hang (as in tests/test_fuzz.py: the slowest
#: refusal known takes about 0.7 s).
HANG_S = 2.0


def valid_rate(real: tuple) -> tuple[float, float]:
    """Messages and bytes per second of the real acquisition's frames and stop, alone, best of 3.

    Each pass opens a fresh acquisition and waits until its cube is in memory before the clock
    starts, as the hostile run's acquisition is by the time most hostile messages arrive.
    """
    import threading

    from edx_live.core.ingest import Ingest

    def feed() -> float:
        ingest = Ingest()
        ingest.receive(real[0])
        for thread in threading.enumerate():
            if thread.name == "edx-live-populate":
                thread.join()
        t0 = time.perf_counter()
        for message in real[1:]:
            if ingest.receive(message).kind == "rejected":
                raise RuntimeError("a real message was rejected")
        return time.perf_counter() - t0

    seconds = min(feed() for _ in range(3))
    nbytes = sum(len(f) for m in real[1:] for f in m)
    return (len(real) - 1) / seconds, nbytes / seconds


class Tally:
    """Time and count of the hostile messages fed, by the reason they were rejected with."""

    def __init__(self):
        self.count: Counter = Counter()
        self.seconds: defaultdict = defaultdict(float)
        self.longest: defaultdict = defaultdict(float)
        self.nbytes = 0
        self.crashes: list[str] = []
        self.hangs: list[str] = []
        self.skipped = 0
        self.slowest: tuple[float, str] = (0.0, "")

    def note(self, reason: str, seconds: float, nbytes: int, name: str) -> None:
        self.count[reason] += 1
        self.seconds[reason] += seconds
        self.longest[reason] = max(self.longest[reason], seconds)
        self.nbytes += nbytes
        self.slowest = max(self.slowest, (seconds, name))

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())


def would_change(frames, real_id: str) -> bool:
    """A valid start, or a valid message naming the real acquisition (decided with decode, untimed)."""
    from edx_protocol import ProtocolError, decode

    try:
        header = decode(frames).header
    except ProtocolError:
        return False
    return header.kind == "start" or header.acquisition_id == real_id


def feed_hostile(ingest, case, real_id: str, tally: Tally) -> None:
    """One hostile message through ``Ingest.receive``, timed; an exception is a crash, not an abort."""
    if would_change(case.frames, real_id):
        tally.skipped += 1
        return
    t0 = time.perf_counter()
    try:
        outcome = ingest.receive(case.frames)
    except Exception as exc:  # the service would count it as internal_error and go on: so do we
        tally.crashes.append(f"{case.name} [{case.origin}]: {type(exc).__name__}: {exc}")
        return
    seconds = time.perf_counter() - t0
    if seconds > HANG_S:
        tally.hangs.append(f"{case.name} [{case.origin}]: {seconds:.2f} s")
    reason = outcome.reason if outcome.kind == "rejected" else f"accepted ({outcome.kind})"
    tally.note(reason, seconds, sum(memoryview(f).nbytes for f in case.frames), f"{case.name} [{case.origin}]")


def fuzz_run(fuzz, bases, acquisition: tuple, n: int, seed: int) -> tuple[Tally, object, float]:
    """The interleaved run; returns the tally, the ingest and the wall time of the real messages in it."""
    from edx_live.core.ingest import Ingest

    real = fuzz.real_acquisition(*acquisition)
    ingest, tally, real_s = Ingest(), Tally(), 0.0
    messages = fuzz.interleaved(real, fuzz.hostile_stream(bases, seed, n), n, seed)
    for is_real, item in progress(messages, total=n + len(real), desc="fuzz", unit="msg", mininterval=0.5):
        if is_real:
            t0 = time.perf_counter()
            if ingest.receive(item).kind == "rejected":
                raise RuntimeError("a real message was rejected among hostile ones")
            real_s += time.perf_counter() - t0
        else:
            feed_hostile(ingest, item, acquisition[2], tally)
    return tally, ingest, real_s


def exact(fuzz, ingest, acquisition: tuple) -> bool:
    """Whether the real acquisition ended stopped, without gaps, and with exactly the file's sum."""
    acq = ingest.current
    reference = fuzz.file_sum(acquisition[0])
    return (acq is not None and acq.acquisition_id == acquisition[2] and acq.state == "stopped"
            and acq.missing == 0 and np.array_equal(acq.accumulator.cube, reference))


def report(tally: Tally, valid: tuple[float, float], real_in_run: float, n_real: int) -> None:
    fed = sum(tally.count.values())
    rate = fed / tally.total_s
    print("| messages | fed | skipped (valid, would change the acquisition) | messages/s | MB/s | "
          "valid messages/s, alone (best of 3, cube in memory) | valid messages/s, among the hostile ones | "
          "hostile / valid, messages/s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| hostile | {fed:,} | {tally.skipped:,} | {rate:,.0f} | {tally.nbytes / tally.total_s / 1e6:.1f} | "
          f"{valid[0]:,.0f} | {n_real / real_in_run:,.0f} (start included) | x{rate / valid[0]:.2f} |")
    print(f"\nValid messages of the acquisition: {valid[1] / 1e6:.0f} MB/s alone.\n")
    print("| outcome | messages | share | mean µs | longest ms |")
    print("|---|---|---|---|---|")
    for reason, count in tally.count.most_common():
        print(f"| {reason} | {count:,} | {count / fed:.1%} | {tally.seconds[reason] / count * 1e6:.0f} | "
              f"{tally.longest[reason] * 1e3:.2f} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="hostile messages generated")
    parser.add_argument("--seed", type=int, default=101, help="seed of the hostile stream")
    parser.add_argument("--sweeps", type=int, default=3, help="sweeps of core_shell.hspy in the real acquisition")
    args = parser.parse_args(argv)
    import test_fuzz as fuzz

    print(f"machine: {machine()}")
    acquisition = (fuzz.CORE_SHELL[0], args.sweeps, fuzz.CORE_SHELL[2])
    real = fuzz.real_acquisition(*acquisition)
    print(f"\n## Fuzz: {args.messages:,} hostile messages (seed {args.seed}) among the {len(real)} messages of "
          f"{acquisition[0]} ({args.sweeps} sweeps), through Ingest.receive")
    valid = valid_rate(real)
    bases = fuzz.mutation_bases()  # loaded before the memory is measured: the other real acquisition too
    fuzz.schema_validator()
    gc.collect()
    release_free_memory()
    peak_before, rss_before = peak_rss_bytes(), rss_bytes()
    t0 = time.perf_counter()
    tally, ingest, real_in_run = fuzz_run(fuzz, bases, acquisition, args.messages, args.seed)
    wall = time.perf_counter() - t0
    gc.collect()
    release_free_memory()
    peak_after, rss_after = peak_rss_bytes(), rss_bytes()
    report(tally, valid, real_in_run, len(real))
    print(f"\nResident memory: peak {peak_before / 2**20:.0f} MiB before, {peak_after / 2**20:.0f} MiB after; "
          f"now {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB (the acquisition's cube is "
          f"{ingest.current.accumulator.cube.nbytes / 2**20:.0f} MiB). Whole run {wall:.0f} s, generation included.")
    rejected = {r: c for r, c in tally.count.items() if not r.startswith("accepted")}
    print(f"Real acquisition exact (cube = file sum, no gap): {'yes' if exact(fuzz, ingest, acquisition) else 'NO'}; "
          f"rejections counted by Ingest equal the outcomes: {'yes' if dict(ingest.rejected) == rejected else 'NO'}.")
    print(f"Crashes: {len(tally.crashes)}; hangs (a message over {HANG_S:g} s): {len(tally.hangs)}. Slowest message: "
          f"{tally.slowest[0] * 1e3:.1f} ms, {tally.slowest[1]} (rebuild it with "
          f"test_fuzz.hostile_message(test_fuzz.RandomDraw('SEED:INDEX'), test_fuzz.mutation_bases())).")
    for line in (tally.crashes + tally.hangs)[:10]:
        print(f"  {line}")


if __name__ == "__main__":
    main()

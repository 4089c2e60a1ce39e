"""Every real file replayed live through the real service over loopback ZeroMQ; every document checked.

The producer is held at the end of each sweep until the service has finished
a refit, so each sweep gets its own refit (``refit.every_frames = 1``) however
slow the machine: a file of N sweeps gives N live refits and a final one per
workflow, and the :class:`~edx_protocol.check.DocumentChecker` sees every
document through a real SUB socket.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest
import zmq
from conftest import DATA_FILES, load_file_sum
from edx_adapters.producer import SweepDone, send_replay
from edx_adapters.replay import open_replay, xray_count
from edx_protocol import WORKFLOWS, decode_result
from edx_protocol.check import RULES, DocumentChecker

from edx_live.config import load_settings
from edx_live.shell.app import App, on_free_ports
from edx_live.shell.sockets import Sockets

#: Sweeps the dense files (.hspy, .bcf) are split into; .pts and .emd replay their recorded sweeps.
DENSE_SWEEPS = 4
#: Bins that keep every segmented map small: under 4096 pixels UMAP uses exact neighbours (the
#: approximate search costs 40 s of compilation), and the .pts has 15 refits (20 s each on
#: 128 x 128 bins). SiO2's 3 does not divide its scan: its label map has ceil(128 / 3) sides.
SPATIAL_BIN = {"SiO2 EDS Spectrum Image.hspy": 3, "View000_0000006.pts": 16}
#: Longest wait for one refit (the producer is held meanwhile), and for a whole replay.
REFIT_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 600.0


def settings_for(name: str, min_counts: int):
    """Both workflows, a refit after every sweep and never on the clock."""
    return load_settings(overrides={
        "output": {"address": "tcp://127.0.0.1:*", "status_interval_s": 0.05},
        "accumulate": {"spatial_bin": SPATIAL_BIN.get(name, 2)},
        "refit": {"every_frames": 1, "interval_s": 3600.0, "min_counts": min_counts, "workflows": list(WORKFLOWS)},
        # Light uncertainties; the energy calibration is redone when the counts have quadrupled, not doubled.
        "quantify": {"replicas": 8, "bootstrap": 8, "recalibrate_growth": 4.0},
    })


def first_sweep_counts(replay) -> int:
    """X-rays of the replay's first sweep.

    As ``refit.min_counts`` it makes the first refit wait for the whole first
    sweep (a later refit starts as the next sweep begins), so no refit segments
    a scan that is still mostly empty.
    """
    counts, first = 0, None
    for header, arrays in replay.messages():
        if header.kind != "frame" or first not in (None, header.frame_index):
            break
        first = header.frame_index
        counts += xray_count(header, arrays)
    return counts


def sweeps_for(name: str) -> int | None:
    return DENSE_SWEEPS if name.lower().endswith((".hspy", ".bcf")) else None


class _Thread(threading.Thread):
    """A daemon thread that keeps its exception for the test."""

    def __init__(self, target, name: str):
        super().__init__(name=name, daemon=True)
        self._target_fn, self.error = target, None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as exc:  # re-raised or reported by the test
            self.error = exc


class Pacer:
    """``on_sweep`` of the producer: waits until the service has completed one refit per finished sweep.

    The refit of sweep k starts when sweep k's first message raises the frame
    count; status documents carry the number of completed refits.
    """

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.refits = 0
        self.late: list[int] = []  # sweeps whose refit did not complete in time
        self._released = False
        self._condition = threading.Condition()

    def saw(self, status) -> None:
        with self._condition:
            self.refits = max(self.refits, status.refits)
            self._condition.notify_all()

    def release(self) -> None:
        """Stop holding the producer (the service ended or the test is over)."""
        with self._condition:
            self._released = True
            self._condition.notify_all()

    def __call__(self, done: SweepDone) -> None:
        with self._condition:
            if not self._condition.wait_for(lambda: self._released or self.refits > done.frame_index,
                                            timeout=self.timeout_s):
                self.late.append(done.frame_index)


@dataclass
class LiveRun:
    """What one replay published and how the threads ended."""

    sweeps: int
    checker: DocumentChecker = field(default_factory=DocumentChecker)
    headers: list = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    late: list[int] = field(default_factory=list)


def _receive(sub: zmq.Socket, run: LiveRun, pacer: Pacer | None, server: App, until_final: bool,
             timeout_s: float) -> bool:
    """Check every document that arrives; True once the awaited one (first status, or final status) came."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not sub.poll(100):
            if not server.alive:
                return False  # everything it published has been read
            continue
        frames = sub.recv_multipart(copy=False)
        header, arrays = decode_result(frames[1:])
        run.checker(header, arrays)
        run.headers.append(header)
        if header.kind == "status":
            if pacer is not None:
                pacer.saw(header)
            if not until_final or header.final:
                return True
    return False


def _produce(replay, endpoint: str, context: zmq.Context, stop: threading.Event, pacer: Pacer) -> None:
    push = context.socket(zmq.PUSH)
    push.connect(endpoint)
    try:
        send_replay(replay, push, interval_s=0, stop_event=stop, on_sweep=pacer)
    finally:
        push.close(linger=5000)


def run_live(path, frames: int | None, context: zmq.Context) -> LiveRun:
    """Replay ``path`` through a real service on random loopback ports; check what a SUB socket receives."""
    replay = open_replay(path, frames=frames)
    settings = settings_for(path.name, first_sweep_counts(replay))
    run = LiveRun(sweeps=replay.frames)
    app = App(on_free_ports(settings), control=False, sockets=Sockets(context))
    sub = app.sockets.subscriber(app.output_endpoint)
    pacer, stop = Pacer(REFIT_TIMEOUT_S), threading.Event()
    producer = _Thread(lambda: _produce(replay, app.input_endpoint, context, stop, pacer), "edx-live-producer")
    app.start(stop_after=1)
    try:
        # A status proves the subscription is live, so no document of the acquisition is missed.
        if not _receive(sub, run, None, app, until_final=False, timeout_s=30.0):
            run.errors.append("no status from the service within 30 s")
            return run
        producer.start()
        _receive(sub, run, pacer, app, until_final=True, timeout_s=RUN_TIMEOUT_S)
    finally:
        stop.set()
        pacer.release()
        app.close(timeout_s=60)
        if producer.ident is not None:  # started
            producer.join(60)
        for error, name in ((producer.error, "producer"), (app.error, "service")):
            if error is not None:
                run.errors.append(f"{name} raised {type(error).__name__}: {error}")
        sub.close(linger=0)
    run.late = pacer.late
    return run


@pytest.fixture(scope="module")
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture(scope="module")
def warmed_up():
    """Compile the ingest kernels and UMAP/HDBSCAN once, so the first file does not pay for it."""
    from edx_live.core.kernels import warm_up as warm_up_kernels
    from edx_live.segment import warm_up

    warm_up_kernels()
    warm_up(approximate_neighbors=False)  # every map has fewer than 4096 pixels (SPATIAL_BIN)


def _failures(run: LiveRun, expected_counts: int) -> list[str]:
    failures = list(run.errors) + run.checker.problems
    if run.late:
        failures.append(f"no refit completed within {REFIT_TIMEOUT_S} s after sweeps {run.late}")
    for workflow in WORKFLOWS:
        clusters = [h for h in run.headers if h.kind == "clusters" and h.workflow == workflow]
        if len(clusters) < run.sweeps + 1:  # one refit per sweep, then the final one
            failures.append(f"{workflow}: {len(clusters)} clusters documents for {run.sweeps} sweeps + final")
        if not clusters or not clusters[-1].final:
            failures.append(f"{workflow}: the last clusters document is not final")
    finals = [h for h in run.headers if h.kind == "status" and h.final]
    if not finals:
        return failures + ["no final status"]
    final = finals[-1]
    if final.counts != expected_counts:
        failures.append(f"final status counts {final.counts}, the file holds {expected_counts}")
    if final.state != "stopped" or sum(final.rejected.values()) or final.gaps.count:
        failures.append(f"final status {final.state}, rejected {final.rejected}, gaps {final.gaps.count}")
    if final.refit_errors:
        failures.append(f"{final.refit_errors} workflow refits or quantifications failed (see the log)")
    return failures


@pytest.mark.parametrize("name", list(DATA_FILES))
def test_live_replay_publishes_consistent_documents(name, data_dir, context, warmed_up):
    path = data_dir / name
    run = run_live(path, sweeps_for(name), context)
    assert run.sweeps >= 2, "a live test needs several sweeps"
    # Summed after the run: the .pts reference is 1 GB beside the service's own cube.
    expected = int(load_file_sum(path).sum(dtype=np.uint64))
    failures = _failures(run, expected)
    assert not failures, _summary(name, failures)


def _summary(name: str, failures: list[str], shown: int = 40) -> str:
    """The failures, counted by rule code first: one broken rule can repeat on every document."""
    rules = Counter(f.partition(":")[0] for f in failures if f.partition(":")[0] in RULES)
    more = f"\n  ... and {len(failures) - shown} more" if len(failures) > shown else ""
    return (f"{name}: {len(failures)} failures; broken rules {dict(rules)}:\n  "
            + "\n  ".join(failures[:shown]) + more)

"""SIGTERM ends ``edx-live serve`` within seconds, during warm-up or a running refit."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time

import zmq
from edx_adapters.producer import send_replay
from edx_adapters.replay import open_replay

GRACE_S = 3.0


class Serve:
    """``edx-live serve`` as a subprocess, its JSON log lines read on a thread."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edx_live.cli", "serve", "--input", "tcp://127.0.0.1:*",
             "--output", "tcp://127.0.0.1:*", "--log-format", "json", "--no-sessions", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            try:
                self.lines.put(json.loads(line))
            except json.JSONDecodeError:
                pass  # library warnings on stderr

    def wait_for(self, event: str, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                record = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, "the service exited"
                continue
            self.seen.append(record)
            if record.get("event") == event:
                return record
        raise TimeoutError(f"no {event!r} log line within {timeout} s")

    def terminate_and_time(self) -> float:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        elapsed = time.monotonic() - t0
        while True:
            try:
                self.seen.append(self.lines.get(timeout=1.0))
            except queue.Empty:
                return elapsed

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_sigterm_during_warm_up_ends_the_service_at_once():
    serve = Serve()
    try:
        serve.wait_for("serving")
        assert serve.terminate_and_time() < GRACE_S + 3.0
        assert serve.proc.returncode == 0
    finally:
        serve.kill()


def test_sigterm_during_a_refit_abandons_it_after_the_grace_period(data_dir):
    serve = Serve("--refit-every-frames", "1")
    try:
        endpoint = serve.wait_for("serving")["input"]
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.connect(endpoint)
        replay = open_replay(data_dir / "SiO2 EDS Spectrum Image.hspy", frames=4)
        threading.Thread(target=send_replay, args=(replay, push), daemon=True).start()
        started = serve.wait_for("refit_started")
        elapsed = serve.terminate_and_time()
        push.close(linger=0)
        ctx.destroy(linger=0)
        assert elapsed < GRACE_S + 4.0, elapsed
        events = [r.get("event") for r in serve.seen]
        # the running refit either finished within the grace period or was abandoned, and said so
        assert "refit_abandoned" in events or "refit_done" in events
        if "refit_abandoned" in events:
            abandoned = next(r for r in serve.seen if r.get("event") == "refit_abandoned")
            assert abandoned["acquisition_id"] == started["acquisition_id"]
    finally:
        serve.kill()

"""A service killed (SIGKILL) mid-acquisition, during a refit or while writing its session folder, and started
again: it recovers the acquisition from its recording and checkpoint, takes the rest of the stream (the producer
resends what it is unsure of), and ends with the file's spectrum image exactly and the answer of an uninterrupted
run with the same refits (``edx-live process`` of the recording)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import free_port
from edx_adapters.producer import make_socket, send_replay
from edx_adapters.replay import open_replay
from edx_protocol.container import read_recording

from edx_live.config import load_settings
from edx_live.shell.demo import DEMO_KFACTORS, bundled_dataset
from edx_live.shell.offline import process_recording
from edx_live.shell.recover import CHECKPOINT_SUFFIX

SWEEPS = 10
KFACTORS = [arg for line, k in DEMO_KFACTORS.items() for arg in ("--kfactor", f"{line}={k}")]



class Serve:
    """``edx-live serve`` as a process, its JSON log lines kept as they come."""

    def __init__(self, root: Path, addresses: dict):
        config = root / "edx-live.toml"
        config.write_text('[refit]\nmin_counts = 1\n[quantify]\nreplicas = 8\nbootstrap = 8\nintensities = "windows"\n')
        self.addresses = addresses
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edx_live.cli", "serve", "--config", str(config), "--input", addresses["input"],
             "--output", addresses["output"], "--control", addresses["control"], "--record", str(root / "rec"),
             "--sessions", str(root / "ses"), "--acquisitions", "1", "--workflow", "pca-gmm",
             "--refit-every-frames", "1", "--refit-interval", "600", *KFACTORS, "--log-format", "json"],
            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[dict] = []
        self.text: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.text.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._changed:
                self.lines.append(event)
                self._changed.notify_all()

    def wait_for(self, predicate, timeout_s: float = 240.0) -> dict:
        """The first log event that ``predicate`` accepts (waiting for it)."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._changed:
            while True:
                for event in self.lines[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and seen == len(self.lines):
                    raise AssertionError(f"no such log event; last lines:\n{''.join(self.text[-30:])}")
                self._changed.wait(min(left, 0.5))

    def events(self, name: str) -> list[dict]:
        return [e for e in self.lines if e.get("event") == name]

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def finish(self, timeout_s: float = 300) -> None:
        self.proc.wait(timeout_s)
        assert self.proc.returncode == 0, "".join(self.text[-40:])


def _event(name, **fields):
    return lambda e: e.get("event") == name and all(e.get(k) == v for k, v in fields.items())


@pytest.fixture(scope="module")
def file_cube():
    import hyperspy.api as hs

    return np.asarray(hs.load(bundled_dataset()).data)


@pytest.fixture
def served(tmp_path):
    addresses = {name: f"tcp://127.0.0.1:{free_port()}" for name in ("input", "output", "control")}
    started: list[Serve] = []

    def start() -> Serve:
        started.append(Serve(tmp_path, addresses))
        return started[-1]

    def refits_done(sweep: int, timeout_s: float = 180.0) -> None:
        """After each of the first three sweeps, wait until the services started so far have finished
        ``sweep + 1`` refits in all; then let the rest of the acquisition go."""
        deadline = time.monotonic() + timeout_s
        while (sweep < 3 and sum(len(s.events("refit_done")) for s in started) < sweep + 1
               and time.monotonic() < deadline):
            time.sleep(0.05)

    start.refits_done = refits_done
    yield start
    for serve in started:
        if serve.proc.poll() is None:
            serve.proc.kill()


class Producer(threading.Thread):
    """The adapters' producer on a thread: PUSH, resending after a reconnection.

    ``gate(i)``, if given, is called after sweep ``i`` and returns when the next may go (a microscope
    whose frames follow the service's refits, so that refits fall during the acquisition).
    """

    def __init__(self, address: str, acquisition_id: str, gate=None):
        super().__init__(daemon=True)
        self.address, self.acquisition_id, self.gate = address, acquisition_id, gate
        self.sent = None

    def run(self) -> None:
        context = zmq.Context()
        socket = make_socket(self.address, context=context)
        on_sweep = None if self.gate is None else (lambda done: self.gate(done.frame_index))
        try:
            replay = open_replay(bundled_dataset(), frames=SWEEPS, acquisition_id=self.acquisition_id)
            self.sent = send_replay(replay, socket, on_sweep=on_sweep)
        finally:
            socket.close(linger=60_000)
            context.term()


def _session(root: Path, acquisition_id: str) -> Path:
    return root / "ses" / acquisition_id


def _spectrum_image(folder: Path) -> np.ndarray:
    import hyperspy.api as hs

    return np.asarray(hs.load(folder / "spectrum_image.hspy").data)


def _same_answer_as_processing(tmp_path: Path, acquisition_id: str) -> None:
    """The live (recovered) session folder holds what processing its recording gives: an uninterrupted run."""
    (recording,) = (tmp_path / "rec").glob(f"{acquisition_id}-*.edxrec")
    settings = load_settings(overrides={"refit": {"min_counts": 1, "workflows": ["pca-gmm"]},
                                        "quantify": {"kfactors": DEMO_KFACTORS, "replicas": 8, "bootstrap": 8,
                                                     "intensities": "windows"}})
    offline = process_recording(recording, tmp_path / "offline", settings)
    live = json.loads((_session(tmp_path, acquisition_id) / "summary.json").read_text())
    for key in ("acquisition", "workflows"):
        assert _without_times(live[key]) == _without_times(offline[key]), key


def _without_times(value):
    """A summary without what depends on the clock (durations, dates) or on the folder's place."""
    clock = ("seconds", "_s", "time", "date", "elapsed", "folder", "source", "processing", "rate")
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if not any(c in k for c in clock)}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def test_killed_mid_acquisition_during_a_refit_it_recovers_and_finishes_as_if_never_killed(served, tmp_path,
                                                                                          file_cube):
    first = served()
    producer = Producer(first.addresses["input"], "crash-1", gate=served.refits_done)
    producer.start()
    # killed as a refit starts, its checkpoints and recording on disk from earlier refits
    first.wait_for(lambda e: e.get("event") == "refit_started" and e.get("refit", 0) >= 2 and not e.get("final"))
    first.kill()
    killed_at = [e for e in first.events("refit_started")][-1]["refit"]
    rec = tmp_path / "rec"
    (recording,) = rec.glob("crash-1-*.edxrec")
    checkpoint = Path(str(recording) + CHECKPOINT_SUFFIX)
    assert checkpoint.is_file() and recording.is_file()
    for path in (recording, checkpoint):  # nobody else on the machine reads them
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(rec.stat().st_mode) == 0o700
    # what a kill while writing leaves: a torn last record, a half-written next checkpoint
    with open(recording, "ab") as f:
        f.write(b"\x40\x00\x00\x00torn")
    Path(str(checkpoint) + ".tmp").write_bytes(b"EDXCKPT\x01half")

    second = served()
    recovered = second.wait_for(_event("recovered"))
    assert recovered["acquisitions"] == ["crash-1"] and recovered["counts"][0] > 0
    second.wait_for(lambda e: e.get("event") == "refit_started" and e.get("refit") == killed_at)  # run again
    producer.join(300)
    assert producer.sent is not None and not producer.sent.aborted and producer.sent.resent > 0
    second.finish()

    folder = _session(tmp_path, "crash-1")
    np.testing.assert_array_equal(_spectrum_image(folder), file_cube)  # no count lost or doubled
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["acquisition"]["stop_reason"] == "complete"
    assert not checkpoint.exists() and not Path(str(checkpoint) + ".tmp").exists()  # finished: nothing to recover
    refits = [e.fields["refit"] for e in read_recording(recording) if e.kind == "marker" and e.name == "refit"]
    assert refits == list(range(len(refits))) and killed_at in refits  # each refit once, the interrupted one too
    _same_answer_as_processing(tmp_path, "crash-1")


def test_killed_while_writing_its_session_folder_it_writes_it_again(served, tmp_path, file_cube):
    first = served()
    producer = Producer(first.addresses["input"], "crash-2")
    producer.start()
    first.wait_for(_event("session_writing", acquisition_id="crash-2"))
    first.kill()
    producer.join(60)
    folder = _session(tmp_path, "crash-2")
    assert not (folder / "summary.json").exists()  # killed while the folder was being written
    (recording,) = (tmp_path / "rec").glob("crash-2-*.edxrec")
    assert Path(str(recording) + CHECKPOINT_SUFFIX).is_file()

    second = served()  # no producer now: the acquisition is complete on disk
    second.wait_for(_event("session_written", acquisition_id="crash-2"))
    assert not second.events("refit_started")  # the final results came from the checkpoint
    second.finish()
    np.testing.assert_array_equal(_spectrum_image(folder), file_cube)
    assert not Path(str(recording) + CHECKPOINT_SUFFIX).exists()
    _same_answer_as_processing(tmp_path, "crash-2")

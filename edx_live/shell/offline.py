"""Offline processing: replay a file through the same service in-process, then export the results."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from edx_protocol import encode

from edx_live.analysis import Analyzer
from edx_live.export import write_outputs
from edx_live.logs import get_logger
from edx_live.summary import build_summary

from .publish import Collector
from .service import Service
from .transport import MemoryConnection

log = get_logger("service")


class _Feeder(threading.Thread):
    """Puts a replay's encoded messages on an in-memory connection; keeps any error for the caller."""

    def __init__(self, replay, connection: MemoryConnection, on_error):
        super().__init__(name="edx-live-feeder", daemon=True)
        self.replay, self.connection, self.on_error = replay, connection, on_error
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.connection.put(encode(self.replay.start))
            for header, arrays in self.replay.messages():
                self.connection.put(encode(header, arrays))
        except BaseException as exc:  # re-raised by process_file on the calling thread
            self.error = exc
            self.on_error()


def offline_settings(settings, refit_every: int | None):
    """Settings for offline runs: refit on sweeps only (``refit_every``), never on the clock."""
    refit = settings.refit.model_copy(update={"interval_s": float("inf"), "every_frames": refit_every})
    return settings.model_copy(update={"refit": refit})


def process_file(path: str | Path, out_dir: str | Path, settings, frames: int | None = None,
                 chunk_pixels: int | None = None, refit_every: int | None = None, subscribers=()) -> dict:
    """Replay ``path`` into the pipeline, write ``out_dir``/summary.json and HyperSpy files.

    Returns the summary dictionary.
    """
    from edx_adapters.replay import open_replay

    replay = open_replay(path, frames=frames, chunk_pixels=chunk_pixels)
    return process_replay(replay, out_dir, settings, refit_every=refit_every, subscribers=subscribers)


def process_replay(replay, out_dir: str | Path, settings, refit_every: int | None = None, subscribers=()) -> dict:
    """Run an opened replay (``edx_adapters.replay.Replay``) through the pipeline and export the results."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = offline_settings(settings, refit_every)
    connection = MemoryConnection(maxsize=256)
    analyzer = Analyzer(settings)
    service = Service(settings, connection, [Collector(), *subscribers], analyzer)
    feeder = _Feeder(replay, connection, service.stop)
    t0 = time.perf_counter()
    feeder.start()
    service.run(stop_after=1)
    feeder.join()
    if feeder.error is not None:
        raise feeder.error
    elapsed = time.perf_counter() - t0
    acq = service.ingest.current
    files = write_outputs(out_dir, acq, analyzer.latest)
    summary = build_summary(replay.path, acq, analyzer.latest, service, elapsed, files)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("processed", file=str(replay.path), out=str(out_dir), seconds=round(elapsed, 2))
    return summary

"""Offline processing: replay a file through the same service in-process, then write its session folder."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from edx_protocol import encode

from edx_live.analysis import Analyzer
from edx_live.export import acquisition_facts, main_settings, write_session
from edx_live.logs import get_logger
from edx_live.summary import build_summary

from .publish import Collector
from .service import Service
from .transport import MemoryConnection

log = get_logger("service")


class _Feeder(threading.Thread):
    """Puts a replay's encoded messages on an in-memory connection; keeps any error for the caller.

    ``progress`` (a tqdm bar over the replay's sweeps) advances as each sweep's messages are taken.
    """

    def __init__(self, replay, connection: MemoryConnection, on_error, progress=None):
        super().__init__(name="edx-live-feeder", daemon=True)
        self.replay, self.connection, self.on_error = replay, connection, on_error
        self.progress = progress
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.connection.put(encode(self.replay.start))
            for header, arrays in self.replay.messages():
                self.connection.put(encode(header, arrays))
                self._advance(header)
        except BaseException as exc:  # re-raised by process_file on the calling thread
            self.error = exc
            self.on_error()

    def _advance(self, header) -> None:
        """Sweeps begun so far (all of them at the stop): frame_index counts from 0."""
        if self.progress is None:
            return
        done = self.replay.frames if header.kind == "stop" else getattr(header, "frame_index", 0)
        if done > self.progress.n:
            self.progress.update(done - self.progress.n)


def _progress_bar(replay, progress: bool | None):
    """A tqdm bar over the replay's sweeps on stderr; ``progress=None``: only when stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(total=replay.frames, unit="sweep", desc=f"replaying {Path(replay.path).name}",
                disable=None if progress is None else not progress, dynamic_ncols=True)


def offline_settings(settings, refit_every: int | None):
    """Settings for offline runs: refit on sweeps only (``refit_every``), never on the clock."""
    refit = settings.refit.model_copy(update={"interval_s": float("inf"), "every_frames": refit_every})
    return settings.model_copy(update={"refit": refit})


def process_file(path: str | Path, out_dir: str | Path, settings, frames: int | None = None,
                 chunk_pixels: int | None = None, refit_every: int | None = None, subscribers=(),
                 progress: bool | None = None) -> dict:
    """Replay ``path`` into the pipeline and write the session folder ``out_dir`` (see :func:`process_replay`).

    Returns the summary dictionary.
    """
    from edx_adapters.replay import open_replay

    replay = open_replay(path, frames=frames, chunk_pixels=chunk_pixels)
    return process_replay(replay, out_dir, settings, refit_every=refit_every, subscribers=subscribers,
                          progress=progress)


def process_replay(replay, out_dir: str | Path, settings, refit_every: int | None = None, subscribers=(),
                   progress: bool | None = None) -> dict:
    """Run an opened replay (``edx_adapters.replay.Replay``) through the pipeline and write its session folder.

    Parameters
    ----------
    replay : edx_adapters.replay.Replay
    out_dir : str or Path
        The session folder (:func:`edx_live.export.write_session`): HyperSpy files,
        compositions, ``report.png`` and ``summary.json``.
    settings : edx_live.config.Settings
    refit_every : int, optional
        Also refit every this many sweeps (the final refit always runs).
    subscribers : sequence of callables
        Receive the documents as the service publishes them.
    progress : bool, optional
        Show a progress bar over the sweeps on stderr; None: only when stderr is a terminal.

    Returns
    -------
    dict
        The summary, as written to ``summary.json``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = offline_settings(settings, refit_every)
    connection = MemoryConnection(maxsize=256)
    analyzer = Analyzer(settings)
    service = Service(settings, connection, [Collector(), *subscribers], analyzer)
    t0 = time.perf_counter()
    with _progress_bar(replay, progress) as bar:
        feeder = _Feeder(replay, connection, service.stop, bar)
        feeder.start()
        service.run(stop_after=1)
        feeder.join()
    if feeder.error is not None:
        raise feeder.error
    elapsed = time.perf_counter() - t0
    acq = service.ingest.current
    acc = acq.accumulator
    summary = build_summary(replay.path, acq, analyzer.latest, service, elapsed, files=[])
    # A replay's wall time is how fast it was processed, not how long the sample was scanned.
    facts = {**acquisition_facts(acq, None, str(replay.path)), "processing": f"{elapsed:.1f} s offline"}
    write_session(out_dir, acq.start, acc.cube, acc.selection.offset_kev, acc.selection.scale_kev, analyzer.latest,
                  image=getattr(acq, "image", None), image_detector=getattr(acq, "image_detector", None),
                  settings=main_settings(settings), facts=facts, summary=summary)
    log.info("processed", file=str(replay.path), out=str(out_dir), seconds=round(elapsed, 2))
    return json.loads((out_dir / "summary.json").read_text())


"""Offline processing: a file or a recording through the same application in-process, then its session folder."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from edx_protocol import encode

from edx_live.logs import get_logger

from .publish import Collector
from .transport import MarksEnd, MemoryConnection, RefitMark

log = get_logger("service")


class _Feeder(threading.Thread):
    """Puts a replay's encoded messages on an in-memory connection; keeps any error for the caller.

    ``progress`` (a tqdm bar over the replay's sweeps) advances as each sweep's messages are taken.
    """

    def __init__(self, replay, connection: MemoryConnection, progress=None, on_error=lambda: None):
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


class _RecordingFeeder(_Feeder):
    """Puts a recording's messages, and its refit markers as :class:`RefitMark`, on the connection."""

    def __init__(self, recording, connection: MemoryConnection):
        super().__init__(None, connection)
        self.recording = recording

    def run(self) -> None:
        try:
            for entry in self.recording:
                if entry.kind == "message":
                    self.connection.put(entry.frames)
                elif entry.name == "refit":
                    f = entry.fields
                    self.connection.put(RefitMark(f["acquisition_id"], f["refit"], f["final"], f.get("elapsed_s")))
            self.connection.put(MarksEnd())
        except BaseException as exc:  # re-raised on the calling thread
            self.error = exc
            self.on_error()


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
    settings = offline_settings(settings, refit_every)
    connection = MemoryConnection(maxsize=256)
    with _progress_bar(replay, progress) as bar:
        feeder = _Feeder(replay, connection, bar)
        return _run(connection, feeder, out_dir, settings, str(replay.path), subscribers)


def process_recording(path: str | Path, out_dir: str | Path, settings, subscribers=()) -> dict:
    """Analyse a recording (``serve --record``) exactly as the live service did, and write its session folder.

    Every message goes in as it was received, and each refit is taken where the recording's ``refit``
    markers say the live service took it, with the elapsed time it had then: the labels and
    compositions equal the live run's. A recording without markers (or after the last one) refits
    at the end only.
    """
    from edx_protocol.container import read_recording

    recording = read_recording(path)  # RecordingError (a ValueError) names what is wrong
    connection = MemoryConnection(maxsize=256)
    connection.refits_marked = True
    return _run(connection, _RecordingFeeder(recording, connection), out_dir, offline_settings(settings, None),
                str(path), subscribers)


def _run(connection: MemoryConnection, feeder, out_dir, settings, source: str, subscribers) -> dict:
    from .app import App
    from .sessions import SessionWriter

    out_dir = Path(out_dir)
    writer = SessionWriter(out_dir, settings, source=source, folder=out_dir, wall_time=False)
    t0 = time.perf_counter()
    with App(settings, connection=connection, publish=False, control=False, record=False,
             subscribers=[Collector(), *subscribers], source=source, session_writer=writer) as app:
        feeder.on_error = app.stop
        feeder.start()
        app.run(stop_after=1)
        feeder.join()
        if feeder.error is not None:
            raise feeder.error
        writer.join()
    if not writer.written:
        raise RuntimeError(f"the session folder {out_dir} was not written (see the log)")
    log.info("processed", source=source, out=str(out_dir), seconds=round(time.perf_counter() - t0, 2))
    return json.loads((out_dir / "summary.json").read_text())

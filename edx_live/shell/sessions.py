"""Session folders written when an acquisition is finished, on a thread of their own.

The service calls a :class:`SessionWriter` once an acquisition's final refit is done; the folder
(``edx_live.export.write_session``) is written beside ingest and the next acquisition's refits,
from the acquisition's own data and the results of its final refit, captured at that moment.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from edx_live.logs import get_logger

from .folders import writable_folder

log = get_logger("service")


def session_folder(root: Path, acquisition_id: str) -> Path:
    """``root/<acquisition id>``, the id made safe for a file name; a new suffix if it exists already."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", acquisition_id).strip("._") or "acquisition"
    folder = root / name
    n = 1
    while folder.exists():
        n += 1
        folder = root / f"{name}-{n}"
    return folder


def check_writable(root: Path) -> Path:
    """Create ``root`` if needed and check a file can be written there; raise OSError saying what is wrong."""
    return writable_folder(root, "session folder", "set [output] sessions_dir to a folder this user can write, "
                                                   "or --no-sessions")


class SessionWriter:
    """Writes each finished acquisition's session folder under ``root``, on a thread of its own.

    The service calls it once an acquisition's final refit is done (``on_finished``); the control
    command ``export`` calls :meth:`export` for an acquisition still running. Offline processing
    uses the same writer with ``folder`` fixed.

    Parameters
    ----------
    root : Path
    settings : edx_live.config.Settings
        For the report's settings section.
    source : str
        Where the acquisition came from (the input endpoint, a file), for the report.
    folder : Path, optional
        Write every acquisition to this folder (offline processing) instead of ``root/<id>``.
    wall_time : bool
        The report gives the acquisition's duration; False: it says how long processing took
        (a replay's wall time is how fast it was processed, not how long the sample was scanned).
    """

    def __init__(self, root: Path, settings, source: str = "", folder: Path | None = None, wall_time: bool = True):
        self.root = check_writable(root)
        self.settings, self.source, self.folder, self.wall_time = settings, source, folder, wall_time
        self.written: list[Path] = []
        self._threads: list[threading.Thread] = []

    def __call__(self, acq, record, elapsed_s: float | None, done=None) -> threading.Thread:
        """Write ``acq``'s folder from its final results; ``done()`` is called once it is written (or failed).

        A record that names its folder already (a service recovered while writing it) is written there again.
        """
        folder = self.folder_for(acq, record)
        return self._start(folder, acq, acq.accumulator.cube, dict(record.outputs), record.refits, elapsed_s, done)

    def folder_for(self, acq, record) -> Path:
        """Where ``acq``'s folder goes; kept in ``record.session_folder`` (chosen once: a recovery reuses it)."""
        if record.session_folder is None:
            record.session_folder = str(self.folder or session_folder(self.root, acq.acquisition_id))
        return Path(record.session_folder)

    def export(self, acq, record, folder: Path | None = None) -> Path:
        """Write ``acq``'s folder now, from a copy of its counts and its latest results; return the folder."""
        folder = folder or session_folder(self.root, acq.acquisition_id)
        cube = acq.accumulator.cube.copy()  # ingest goes on while the folder is written
        self._start(folder, acq, cube, dict(record.outputs), record.refits, record.elapsed(time.monotonic()))
        return folder

    def _start(self, folder: Path, acq, cube, outputs: dict, refits: int, elapsed_s, done=None) -> threading.Thread:
        thread = threading.Thread(target=self._write, args=(folder, acq, cube, outputs, refits, elapsed_s, done),
                                  name=f"edx-live-session-{acq.acquisition_id}", daemon=True)
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        return thread

    def join(self, timeout_s: float = 120.0) -> None:
        """Wait for the folders being written."""
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _write(self, folder: Path, acq, cube, outputs: dict, refits: int, elapsed_s: float | None,
               done=None) -> None:
        log.info("session_writing", acquisition_id=acq.acquisition_id, folder=str(folder))
        try:
            self._write_folder(folder, acq, cube, outputs, refits, elapsed_s)
        finally:
            if done is not None:
                done()

    def _write_folder(self, folder: Path, acq, cube, outputs: dict, refits: int, elapsed_s: float | None) -> None:
        from edx_live.export import acquisition_facts, main_settings, write_session
        from edx_live.export.summary import build_summary

        t0 = time.perf_counter()
        try:
            sel = acq.accumulator.selection
            summary = build_summary(self.source, acq, outputs, refits, elapsed_s or 0.0, files=[])
            facts = acquisition_facts(acq, elapsed_s if self.wall_time else None, self.source)
            if not self.wall_time:
                facts["processing"] = f"{elapsed_s or 0.0:.1f} s offline"
            write_session(folder, acq.start, cube, sel.offset_kev, sel.scale_kev, outputs,
                          image=acq.image, image_detector=acq.image_detector,
                          settings=main_settings(self.settings), facts=facts, summary=summary)
        except Exception:  # contained: the service goes on; the log says which acquisition lost its folder
            log.exception("session_not_written", acquisition_id=acq.acquisition_id, folder=str(folder))
            return
        self.written.append(folder)
        log.info("session_written", acquisition_id=acq.acquisition_id, folder=str(folder),
                 seconds=round(time.perf_counter() - t0, 2))

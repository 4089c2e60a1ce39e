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
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".edx-live-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"session folder {root} is not writable ({exc.strerror or exc}): set "
                      "[output] sessions_dir to a folder this user can write, or --no-sessions") from None
    return root


class SessionWriter:
    """Writes each finished acquisition's session folder under ``root``.

    Parameters
    ----------
    root : Path
    settings : edx_live.config.Settings
        For the report's settings section.
    latest : callable
        Returns the analyzer's newest results by workflow (``Analyzer.latest``).
    source : str
        Where the acquisition came from (the input endpoint), for the report.
    """

    def __init__(self, root: Path, settings, latest, source: str = ""):
        self.root = check_writable(root)
        self.settings, self._latest, self.source = settings, latest, source
        self.written: list[Path] = []
        self._threads: list[threading.Thread] = []

    def __call__(self, acq, service, elapsed_s: float | None) -> threading.Thread:
        latest = {wf: out for wf, out in dict(self._latest()).items()
                  if out.snapshot.start.acquisition_id == acq.acquisition_id}
        folder = session_folder(self.root, acq.acquisition_id)
        thread = threading.Thread(target=self._write, args=(folder, acq, latest, service, elapsed_s),
                                  name=f"edx-live-session-{acq.acquisition_id}", daemon=True)
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        return thread

    def join(self, timeout_s: float = 120.0) -> None:
        """Wait for the folders being written."""
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _write(self, folder: Path, acq, latest: dict, service, elapsed_s: float | None) -> None:
        from edx_live.export import acquisition_facts, main_settings, write_session
        from edx_live.summary import build_summary

        t0 = time.perf_counter()
        try:
            acc = acq.accumulator
            summary = build_summary(self.source, acq, latest, service, elapsed_s or 0.0, files=[])
            write_session(folder, acq.start, acc.cube, acc.selection.offset_kev, acc.selection.scale_kev, latest,
                          image=acq.image, image_detector=acq.image_detector,
                          settings=main_settings(self.settings),
                          facts=acquisition_facts(acq, elapsed_s, self.source), summary=summary)
        except Exception:  # contained: the service goes on; the log says which acquisition lost its folder
            log.exception("session_not_written", acquisition_id=acq.acquisition_id, folder=str(folder))
            return
        self.written.append(folder)
        log.info("session_written", acquisition_id=acq.acquisition_id, folder=str(folder),
                 seconds=round(time.perf_counter() - t0, 2))

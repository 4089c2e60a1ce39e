"""The recorder: every received message into a ``.edxrec`` file per acquisition, for byte-for-byte replay.

The service calls :meth:`Recorder.message` on its ingest thread after each message,
:meth:`Recorder.marker` where each refit's snapshot is taken, and :meth:`Recorder.close`
at shutdown. An accepted start opens ``root/<acquisition id>-<UTC yyyymmddThhmmss>.edxrec``
(the start is its first message); what arrives before any start goes to
``root/unassigned-<time>.edxrec``. Every message is kept, rejected ones too, so that a
replay reproduces the live session exactly (``edx_adapters.recording.send_recording``).

The recorder never stops the service: a full folder or a failed write is logged once,
counted in :attr:`Recorder.dropped`, and recording pauses (see :class:`Recorder`).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

from edx_protocol.container import SUFFIX, RecordingWriter

from edx_live import __version__
from edx_live.logs import get_logger

from .folders import writable_folder

log = get_logger("record")

#: How often, while the folder is over ``max_total_bytes``, the recorder looks again whether space was freed.
RESCAN_S = 5.0
#: Bytes a record adds to its frames: prefix, msgpack map keys, time, frame headers (an upper bound for few frames).
_RECORD_OVERHEAD = 64
_PER_FRAME_OVERHEAD = 5


def check_writable(root: Path) -> Path:
    """Create ``root`` (mode 0o700) if needed and check a file can be written there; raise OSError if not."""
    return writable_folder(root, "recording folder", "set [record] dir or --record to a folder this user can write",
                           mode=0o700)


def recording_name(acquisition_id: str | None, when: datetime | None = None) -> str:
    """``<safe id>-<UTC yyyymmddThhmmss>.edxrec``; ``unassigned-...`` without an acquisition."""
    when = when or datetime.now(timezone.utc)
    stem = "unassigned"
    if acquisition_id is not None:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", acquisition_id).strip("._")[:100] or "acquisition"
    return f"{stem}-{when.strftime('%Y%m%dT%H%M%S')}{SUFFIX}"


def _frames_nbytes(frames: Sequence) -> int:
    return sum(memoryview(getattr(f, "buffer", f)).nbytes for f in frames)


class Recorder:
    """Records the messages a service receives, one file per acquisition.

    Parameters
    ----------
    root : Path
        The folder (created with mode 0o700; files are 0o600).
    max_bytes_per_acquisition : int or None
        A file stops growing at this size: the rest of that acquisition is not
        recorded (``dropped["acquisition_full"]``). None: no limit.
    max_total_bytes : int or None
        The folder's ``.edxrec`` files together stay below this: recording pauses
        (``dropped["folder_full"]``) until files are removed, looked at again every
        :data:`RESCAN_S` seconds and at each start; the file then gets a ``gap``
        marker saying how many messages it misses. None: no limit.
    fsync : bool
        Put each record on the disk before going on (see ``RecordingWriter``).
    source : str
        Where the messages come from (the input endpoint), for the files' headers.

    Attributes
    ----------
    files : list of Path
        Every file opened, in order.
    dropped : collections.Counter
        Messages not recorded, by reason: ``acquisition_full``, ``folder_full``,
        ``write_error``.
    messages : int
        Messages recorded.
    """

    def __init__(self, root: Path, max_bytes_per_acquisition: int | None = None,
                 max_total_bytes: int | None = None, fsync: bool = False, source: str = ""):
        self.root = check_writable(root)
        self.max_bytes_per_acquisition = max_bytes_per_acquisition
        self.max_total_bytes = max_total_bytes
        self.fsync, self.source = fsync, source
        self.files: list[Path] = []
        self.dropped: Counter = Counter()
        self.messages = 0
        self._writer: RecordingWriter | None = None
        self._stopped: str | None = None  # why the current file takes no more records
        self._opened = False  # a file was opened (or tried): later messages never go to "unassigned"
        self._acquisition_id: str | None = None
        self._total = self._folder_bytes()
        self._rescan_at = 0.0
        self._gap = 0  # messages missed while the folder was full, for the next gap marker

    # --- what the service calls ------------------------------------------------------------------
    def message(self, frames: Sequence, outcome=None) -> None:
        """Record one received message; ``outcome`` (``edx_live.core.ingest.Outcome``) says whether it started one."""
        if outcome is not None and outcome.kind == "start":
            self._open(outcome.acquisition_id)
        elif not self._opened:
            self._open(None)
        if self._writer is None:
            if self._stopped is not None:
                self.dropped[self._stopped] += 1
            return
        size = _frames_nbytes(frames) + _RECORD_OVERHEAD + _PER_FRAME_OVERHEAD * len(frames)
        if self._room_for(size) and self._note_gap() and self._write(lambda w: w.message(frames)):
            self.messages += 1

    def marker(self, name: str, fields: Mapping | None = None) -> None:
        """Mark the stream of the current file (a refit: ``{"refit": i, "final": bool, "elapsed_s": float}``).

        Call it on the ingest thread at the moment the refit's snapshot is taken, so that
        the marker follows exactly the messages the snapshot contains.
        """
        if self._writer is not None and self._room_for(_RECORD_OVERHEAD + 256, count=False) and self._note_gap():
            self._write(lambda w: w.marker(name, fields))

    def resume(self, path: Path, fields: Mapping | None = None) -> bool:
        """Go on recording into ``path``, a recording a killed service left unfinished; False if it cannot.

        A torn last record is cut off (``RecordingWriter.resume``); a ``resumed`` marker says
        where the restart happened.
        """
        self._close()
        try:
            self._writer = RecordingWriter.resume(path, fsync=self.fsync)
        except (OSError, ValueError) as exc:  # RecordingError is a ValueError
            log.error("recording_not_resumed", file=str(path), error=str(exc))
            self._opened, self._stopped = True, "write_error"
            return False
        self._opened, self._stopped, self._gap = True, None, 0
        self._acquisition_id = self._writer.header.get("acquisition_id")
        self._total = self._folder_bytes()
        if path not in self.files:
            self.files.append(path)
        self._write(lambda w: w.marker("resumed", fields))
        log.info("recording_reopened", file=str(path), acquisition_id=self._acquisition_id,
                 messages=self._writer.messages, bytes=self._writer.nbytes)
        return True

    def close(self) -> None:
        """Close the current file; further messages open new ones (no effect if nothing is open)."""
        self._close()
        self._opened, self._stopped = False, None

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def current(self) -> Path | None:
        """The file being written, if any."""
        return self._writer.path if self._writer is not None else None

    # --- files -----------------------------------------------------------------------------------
    def _open(self, acquisition_id: str | None) -> None:
        self._close()
        self._opened, self._stopped, self._gap = True, None, 0
        self._acquisition_id = acquisition_id
        self._total = self._folder_bytes()  # files may have been removed since
        header = {"source": self.source, "acquisition_id": acquisition_id, "meta": {"edx_live": __version__}}
        name = recording_name(acquisition_id)
        for n in range(1, 1000):
            path = self.root / (name if n == 1 else name.replace(SUFFIX, f"-{n}{SUFFIX}"))
            try:
                self._writer = RecordingWriter(path, header, fsync=self.fsync)
                break
            except FileExistsError:
                continue
            except OSError as exc:
                self._fail(path, exc)
                return
        else:
            self._fail(self.root / name, FileExistsError("too many files with this name"))
            return
        self.files.append(path)
        self._total += self._writer.nbytes
        log.info("recording", file=str(path), acquisition_id=acquisition_id)

    def _close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            writer.close()
        except OSError as exc:
            log.warning("recording_failed", file=str(writer.path), error=str(exc))
        log.info("recording_closed", file=str(writer.path), messages=writer.messages, bytes=writer.nbytes)

    def _folder_bytes(self) -> int:
        total = 0
        for path in self.root.glob(f"*{SUFFIX}"):
            try:
                total += path.stat().st_size
            except OSError:  # removed meanwhile
                pass
        return total

    # --- limits and failures ---------------------------------------------------------------------
    def _room_for(self, size: int, count: bool = True) -> bool:
        """Whether ``size`` more bytes fit; if not, count the message and log once."""
        limit = self.max_bytes_per_acquisition
        if limit is not None and self._writer.nbytes + size > limit:
            if count:
                self.dropped["acquisition_full"] += 1
            log.warning("recording_full", reason="acquisition_full", file=str(self._writer.path),
                        bytes=self._writer.nbytes, limit=limit, setting="[record] max_bytes_per_acquisition")
            self._close()
            self._stopped = "acquisition_full"
            return False
        limit = self.max_total_bytes
        if limit is not None and self._total + size > limit:
            now = time.monotonic()
            if self._gap and now >= self._rescan_at:  # paused already: has space been freed since?
                self._total = self._folder_bytes()
                self._rescan_at = now + RESCAN_S
            if self._total + size > limit:
                if count:
                    if not self._gap:
                        log.warning("recording_full", reason="folder_full", folder=str(self.root),
                                    bytes=self._total, limit=limit, setting="[record] max_total_bytes")
                        self._rescan_at = now + RESCAN_S
                    self._gap += 1
                    self.dropped["folder_full"] += 1
                return False
            log.info("recording_resumed", folder=str(self.root), bytes=self._total, missed=self._gap)
        return True

    def _note_gap(self) -> bool:
        """Write the ``gap`` marker of messages missed while the folder was full, if any; False if that failed."""
        if not self._gap:
            return True
        gap, self._gap = self._gap, 0
        return self._write(lambda w: w.marker("gap", {"messages": gap, "reason": "folder_full"}))

    def _write(self, write) -> bool:
        try:
            n = write(self._writer)
        except (OSError, ValueError) as exc:  # ValueError: a record larger than the format allows
            self.dropped["write_error"] += 1
            self._fail(self._writer.path, exc)
            return False
        self._total += n
        return True

    def _fail(self, path: Path, exc: Exception) -> None:
        log.error("recording_failed", file=str(path), error=str(exc),
                  detail="recording of this acquisition stops; the service goes on")
        self._close()
        self._stopped = "write_error"

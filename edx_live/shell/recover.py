"""Crash recovery: checkpoints beside the recordings, and the plan that resumes what a killed service left.

With ``[record] dir`` set, every acquisition has a recording (every message, byte for byte, and
where each refit was taken) and, beside it, a checkpoint ``<recording>.ckpt``: its
:class:`~edx_live.pipeline.state.AcquisitionRecord` as it stood after its latest refit
(``edx_live.pipeline.checkpoint``). The checkpoint is written at the start and after every refit,
and removed once the acquisition's session folder is written: a checkpoint on disk means an
acquisition that is not finished.

At start-up (``[record] recover``) :func:`plan` finds those, and the service, before it reads
its socket, replays each recording's messages through ingest (the spectrum image comes back
exactly), restores the record from the checkpoint, runs again the refits the recording marks
after it (the one a kill interrupted), and goes on recording into the same file. A producer
that resends what it is unsure of then fills the stream: a message seen already is a
``duplicate_seq``, one lost is accepted into its gap.

A checkpoint is written to ``.ckpt.tmp`` (mode 0o600), flushed, and renamed over the old one, so
a kill while writing it leaves the previous checkpoint intact; recovery ignores the ``.tmp``.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from edx_protocol.container import SUFFIX, read_recording

from edx_live.logs import get_logger
from edx_live.pipeline import checkpoint
from edx_live.pipeline.state import AcquisitionRecord

from .transport import RefitMark

log = get_logger("recover")

#: The checkpoint of ``x.edxrec`` is ``x.edxrec.ckpt``.
CHECKPOINT_SUFFIX = ".ckpt"
_MAGIC = b"EDXCKPT\x01"


def checkpoint_path(recording: str | Path) -> Path:
    return Path(str(recording) + CHECKPOINT_SUFFIX)


class Checkpoints:
    """Writes, reads and removes the checkpoints of the acquisitions recorded under one folder.

    Thread-safe: the service writes from its ingest thread, a session writer removes from its own.

    Parameters
    ----------
    fsync : bool
        Put each checkpoint on the disk before renaming it (survives a power cut, not only a crash).
    """

    def __init__(self, fsync: bool = True):
        self.fsync = fsync
        self.written = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self._finished: set[Path] = set()  # removed for good: a late save must not bring them back

    def save(self, record: AcquisitionRecord, published: Counter | None = None) -> Path | None:
        """Write ``record``'s checkpoint beside its recording; None (logged) when it cannot be written."""
        if record.recording is None:
            return None
        path = checkpoint_path(record.recording)
        try:
            data = checkpoint.dumps({"record": record, "published": Counter(published or {})})
        except checkpoint.CheckpointError:
            log.exception("checkpoint_not_written", file=str(path))
            return None
        with self._lock:
            if path in self._finished:
                return None
            try:
                _write_atomic(path, _MAGIC + zlib.crc32(data).to_bytes(4, "little") + data, self.fsync)
            except OSError as exc:
                log.error("checkpoint_not_written", file=str(path), error=str(exc),
                          detail="recovery after a crash would redo this acquisition's refits from its recording")
                return None
            self.written += 1
            self.bytes = len(data)
        return path

    def remove(self, recording: str | Path | None) -> None:
        """The acquisition of ``recording`` is finished (its session folder written): drop its checkpoint."""
        if recording is None:
            return
        path = checkpoint_path(recording)
        with self._lock:
            self._finished.add(path)
            for stale in (path, path.with_name(path.name + ".tmp")):
                try:
                    stale.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("checkpoint_not_removed", file=str(stale), error=str(exc))


def load(path: Path) -> dict:
    """A checkpoint's content; CheckpointError if it is damaged or of another format."""
    data = path.read_bytes()
    if data[:len(_MAGIC)] != _MAGIC or len(data) < len(_MAGIC) + 4:
        raise checkpoint.CheckpointError(f"{path} is not a checkpoint")
    crc, payload = int.from_bytes(data[len(_MAGIC):len(_MAGIC) + 4], "little"), data[len(_MAGIC) + 4:]
    if zlib.crc32(payload) != crc:
        raise checkpoint.CheckpointError(f"{path} is damaged (CRC-32 mismatch)")
    return checkpoint.loads(payload)


def _write_atomic(path: Path, data: bytes, fsync: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if fsync:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@dataclass(frozen=True)
class Resume:
    """Put before a recovered recording's messages: record into ``recording`` again, with ``record`` restored.

    ``record`` is None when the checkpoint could not be read: every refit the recording marks is run again.
    """

    recording: Path
    record: AcquisitionRecord | None
    published: Counter
    last_t_s: float  # the recording's last entry, seconds after it was created
    start_t_s: float | None  # when its start arrived
    stop_t_s: float | None  # when its stop arrived, if it did


def plan(root: Path) -> list:
    """What the service replays before it reads its socket: for each unfinished acquisition under ``root``
    (oldest first), a :class:`Resume`, then its recorded messages and refit marks, in order."""
    items: list = []
    for ckpt in sorted(Path(root).glob(f"*{SUFFIX}{CHECKPOINT_SUFFIX}"), key=_created):
        recording_path = Path(str(ckpt)[:-len(CHECKPOINT_SUFFIX)])
        try:
            content = load(ckpt)
            record, published = content["record"], content.get("published", Counter())
        except (OSError, checkpoint.CheckpointError, KeyError) as exc:
            log.error("checkpoint_unreadable", file=str(ckpt), error=str(exc),
                      detail="its acquisition is recovered from the recording alone: every refit is run again")
            record, published = None, Counter()
        try:
            entries = list(read_recording(recording_path))
        except (OSError, ValueError) as exc:
            log.error("recording_unreadable", file=str(recording_path), error=str(exc),
                      detail="this acquisition cannot be recovered; its checkpoint is left for inspection")
            continue
        done = record.refits if record is not None else 0
        messages, marks, start_t, stop_t = [], 0, None, None
        for entry in entries:
            if entry.kind == "message":
                messages.append(entry.frames)
                start_t = entry.t_s if start_t is None else start_t
            elif entry.name == "refit" and int(entry.fields.get("refit", -1)) >= done:
                f = entry.fields
                messages.append(RefitMark(str(f.get("acquisition_id", "")), int(f["refit"]), bool(f.get("final")),
                                          f.get("elapsed_s")))
                marks += 1
        last_t = entries[-1].t_s if entries else 0.0
        stop_t = _stop_time(entries)
        items.append(Resume(recording_path, record, Counter(published), last_t, start_t, stop_t))
        items.extend(messages)
        log.info("recovering", recording=str(recording_path), messages=sum(1 for m in messages if not
                 isinstance(m, RefitMark)), refits_restored=done, refits_to_run=marks,
                 acquisition_id=record.acquisition_id if record is not None else None)
    return items


def _created(ckpt: Path) -> str:
    """When the recording of ``ckpt`` was created (its header), so that acquisitions are replayed in order."""
    try:
        return str(read_recording(str(ckpt)[:-len(CHECKPOINT_SUFFIX)]).header.get("created", ""))
    except (OSError, ValueError):
        return ""


def _stop_time(entries) -> float | None:
    """When the recording's (last) stop arrived; None if it holds none."""
    from edx_protocol import ProtocolError, Stop, decode

    for entry in reversed(entries):
        if entry.kind != "message":
            continue
        try:
            header, _ = decode(list(entry.frames))
        except ProtocolError:
            continue
        if isinstance(header, Stop):
            return entry.t_s
    return None

"""Recordings (``.edxrec``): every message a service received, byte for byte, with its arrival time.

>>> with RecordingWriter("run.edxrec", {"source": "tcp://*:5556"}) as rec:   # doctest: +SKIP
...     rec.message(socket.recv_multipart(copy=False))
...     rec.marker("refit", {"refit": 0, "final": False, "elapsed_s": 2.0})
>>> recording = read_recording("run.edxrec")                              # doctest: +SKIP
>>> [e.frames for e in recording if e.kind == "message"]                  # doctest: +SKIP

The layout (protocol/SPEC.md section 12)::

    signature   8 bytes: b"EDXREC\\x00" and the format version (1)
    header      one record whose payload is the file header map
    entries     records, one per message or marker, appended as they happen

    record      uint32 LE payload length | uint32 LE CRC-32 of the payload | payload (one msgpack map)

An entry's payload is ``{"kind": "message", "t_s": float, "frames": [bin, ...]}`` or
``{"kind": "marker", "t_s": float, "name": str, "fields": map}``. Each record reaches the
operating system as one write, so a killed process loses at most the record it was writing;
the reader returns every record before a torn or corrupted one and says so
(:attr:`Recording.truncated`). Stdlib and msgpack only, so that any tool can read recordings.
"""

from __future__ import annotations

import math
import os
import struct
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import msgpack

from .version import PROTOCOL_VERSION

#: Version of the container layout (independent of the wire protocol's version).
FORMAT_VERSION = 1
#: The first bytes of every recording: the signature, then the format version as one byte.
MAGIC = b"EDXREC\x00"
SIGNATURE = MAGIC + bytes([FORMAT_VERSION])
SUFFIX = ".edxrec"
#: Keys of the file header; the writer refuses others, the reader keeps whatever it finds.
HEADER_KEYS = ("format", "protocol", "created", "source", "acquisition_id", "meta")
#: Largest record payload the uint32 length can describe.
MAX_RECORD_BYTES = 2**32 - 1

_PREFIX = struct.Struct("<II")  # payload length, CRC-32 of the payload
_IOV_MAX = 512  # pieces per writev call; well under every system's IOV_MAX
_PACK = msgpack.Packer(use_bin_type=True)
_MESSAGE_KEYS = _PACK.pack("kind") + _PACK.pack("message") + _PACK.pack("t_s")


class RecordingError(ValueError):
    """The file is not a recording this reader can read (wrong signature, unsupported version, no header)."""


class Entry(NamedTuple):
    """One entry of a recording.

    Attributes
    ----------
    kind : str
        ``"message"`` or ``"marker"``.
    t_s : float
        Seconds since the file was created (message: when it was received).
    frames : tuple of bytes
        A message's multipart frames exactly as received; empty for a marker.
    name : str or None
        A marker's name (``"refit"``); None for a message.
    fields : dict or None
        A marker's fields; None for a message.
    """

    kind: str
    t_s: float
    frames: tuple[bytes, ...] = ()
    name: str | None = None
    fields: dict | None = None


def utc_now_iso() -> str:
    """The current UTC time as ISO 8601 with seconds and a ``Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _buffer(frame) -> memoryview:
    """A flat byte view of a frame: bytes, memoryview, numpy array, zmq.Frame (``.buffer``) or ``.bytes``."""
    obj = getattr(frame, "buffer", frame)
    try:
        view = memoryview(obj)
    except TypeError:
        if not hasattr(frame, "bytes"):
            raise TypeError(f"a frame must expose the buffer protocol, .buffer or .bytes; got "
                            f"{type(frame).__name__}") from None
        view = memoryview(frame.bytes)
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _bin_header(n: int) -> bytes:
    """The msgpack ``bin`` header for ``n`` bytes (msgpack numbers are big-endian)."""
    if n < 2**8:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 2**16:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def _time(t_s) -> float:
    t = float(t_s)
    if not math.isfinite(t):
        raise ValueError(f"t_s must be a finite number of seconds, got {t_s!r}")
    return t


class RecordingWriter:
    """Appends records to a new ``.edxrec`` file.

    Each record goes to the operating system in one ``writev`` as soon as it is
    written, without being copied into a larger buffer first, so a process that is
    killed loses at most that record (and the reader detects it). Not thread-safe:
    one thread writes.

    Parameters
    ----------
    path : str or pathlib.Path
        The file to create (mode 0o600); an existing file is never overwritten
        (``FileExistsError``).
    header : dict
        Header fields: ``source`` (where the messages came from), ``acquisition_id``
        (if known), ``meta`` (a free map of msgpack-able values). ``format``,
        ``protocol`` and ``created`` are filled in unless given.
    fsync : bool
        Also ask the operating system to put each record on the disk before
        returning (slower; survives a power cut, not just a killed process).
    """

    def __init__(self, path: str | Path, header: Mapping | None = None, fsync: bool = False):
        header = dict(header or {})
        unknown = sorted(set(header) - set(HEADER_KEYS))
        if unknown:
            raise ValueError(f"unknown recording header keys {unknown}; allowed: {list(HEADER_KEYS)}")
        self.header = {"format": FORMAT_VERSION, "protocol": PROTOCOL_VERSION, "created": utc_now_iso(),
                       "source": "", "acquisition_id": None, "meta": {}, **header}
        self.path = Path(path)
        self.fsync = fsync
        self.messages = 0
        self.nbytes = 0
        payload = msgpack.packb(self.header, use_bin_type=True)  # refuses values msgpack cannot hold
        self._t0 = time.monotonic()
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            self._write([SIGNATURE, _PREFIX.pack(len(payload), zlib.crc32(payload)), payload])
        except BaseException:
            self.close()
            raise

    @classmethod
    def resume(cls, path: str | Path, fsync: bool = False) -> "RecordingWriter":
        """Go on appending to an existing recording (a service restarted after a crash).

        A torn or corrupted record at the end (the one being written when the process was
        killed) is cut off first; every record before it is kept. Times go on from the last
        record's, so ``t_s`` never runs backwards (the time the process was down is not counted).
        """
        recording = read_recording(path)
        last_t, messages = 0.0, 0
        for entry in recording:
            last_t = entry.t_s
            messages += entry.kind == "message"
        end = recording.valid_bytes
        self = cls.__new__(cls)
        self.header, self.path, self.fsync = recording.header, Path(path), fsync
        self.messages = messages
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        if os.fstat(self._fd).st_size > end:
            os.ftruncate(self._fd, end)
        self.nbytes = end
        self._t0 = time.monotonic() - last_t
        return self

    @property
    def closed(self) -> bool:
        return self._fd is None

    def elapsed_s(self) -> float:
        """Seconds since the file was created: the default ``t_s`` of the next record."""
        return time.monotonic() - self._t0

    def message(self, frames: Iterable, t_s: float | None = None) -> int:
        """Append one received multipart message; returns the bytes written.

        Parameters
        ----------
        frames : iterable
            The message's frames: bytes, memoryview, ``zmq.Frame`` or anything with
            the buffer protocol. Stored unchanged, empty frames included.
        t_s : float, optional
            When it was received, in seconds since the file was created (default: now).
        """
        views = [_buffer(f) for f in frames]
        t = _time(self.elapsed_s() if t_s is None else t_s)
        head = (b"\x83" + _MESSAGE_KEYS + _PACK.pack(t) + _PACK.pack("frames")
                + _PACK.pack_array_header(len(views)))
        pieces: list = [head]
        for view in views:
            pieces += [_bin_header(view.nbytes), view]
        n = self._record(pieces)
        self.messages += 1
        return n

    def marker(self, name: str, fields: Mapping | None = None, t_s: float | None = None) -> int:
        """Append a marker (e.g. ``"refit"`` with ``{"refit": 3, "final": False, "elapsed_s": 6.1}``).

        A marker sits between the messages received before it and those after; it
        says where something happened in the stream. Returns the bytes written.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"a marker's name must be a non-empty string, got {name!r}")
        t = _time(self.elapsed_s() if t_s is None else t_s)
        payload = msgpack.packb({"kind": "marker", "t_s": t, "name": name, "fields": dict(fields or {})},
                                use_bin_type=True)
        return self._record([payload])

    def _record(self, pieces: list) -> int:
        size = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in pieces)
        if size > MAX_RECORD_BYTES:
            raise ValueError(f"a record of {size} bytes exceeds the format's limit of {MAX_RECORD_BYTES} bytes")
        crc = 0
        for piece in pieces:
            crc = zlib.crc32(piece, crc)
        return self._write([_PREFIX.pack(size, crc), *pieces])

    def _write(self, pieces: list) -> int:
        if self._fd is None:
            raise ValueError(f"recording {self.path} is closed")
        views = [memoryview(p).cast("B") for p in pieces if len(p)]
        total = sum(v.nbytes for v in views)
        while views:  # writev may write less than asked (a signal, a full pipe): go on from there
            done = os.writev(self._fd, views[:_IOV_MAX])
            while views and done >= views[0].nbytes:
                done -= views[0].nbytes
                views.pop(0)
            if done:
                views[0] = views[0][done:]
        if self.fsync:
            os.fsync(self._fd)
        self.nbytes += total
        return total

    def close(self) -> None:
        """Close the file (again: no effect)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> "RecordingWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Recording:
    """A recording opened by :func:`read_recording`: its header, then its entries on iteration.

    Attributes
    ----------
    path : pathlib.Path
    header : dict
        The file header (``format``, ``protocol``, ``created``, ``source``,
        ``acquisition_id``, ``meta``).
    """

    def __init__(self, path: Path, header: dict, data_offset: int):
        self.path, self.header, self._data_offset = path, header, data_offset
        self._problem: str | None = None
        self._checked = False
        self._end = data_offset

    def __iter__(self) -> Iterator[Entry]:
        """Every entry in file order; stops before a torn or corrupted record (see :attr:`truncated`)."""
        return self._entries(decode=True)

    def messages(self) -> Iterator[tuple[bytes, ...]]:
        """The frames of every message, in order."""
        return (entry.frames for entry in self if entry.kind == "message")

    @property
    def truncated(self) -> bool:
        """True if the file ends in a torn record or a record fails its CRC (everything before it is read).

        Known after one full iteration; before that, asking reads the file once to find out.
        """
        if not self._checked:
            for _ in self._entries(decode=False):
                pass
        return self._problem is not None

    @property
    def valid_bytes(self) -> int:
        """The length of the file up to the end of its last whole, intact record."""
        if not self._checked:
            for _ in self._entries(decode=False):
                pass
        return self._end

    @property
    def problem(self) -> str | None:
        """What is wrong with the end of the file, in words; None for a complete file."""
        return self._problem if self.truncated else None

    def _entries(self, decode: bool) -> Iterator[Entry]:
        with open(self.path, "rb") as f:
            f.seek(self._data_offset)
            index = 0
            while True:
                offset = f.tell()
                payload, problem = _read_record(f)
                if payload is None:
                    self._end = offset
                    self._finish(problem and f"record {index} at byte {offset}: {problem}")
                    return
                if decode:
                    try:
                        entry = _entry(msgpack.unpackb(payload, raw=False))
                    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
                        self._end = offset
                        self._finish(f"record {index} at byte {offset}: malformed entry ({exc})")
                        return
                    if entry is not None:  # None: a kind this reader does not know, skipped
                        yield entry
                index += 1

    def _finish(self, problem: str | None) -> None:
        self._problem, self._checked = problem, True

    def __repr__(self) -> str:
        return f"Recording({str(self.path)!r}, acquisition_id={self.header.get('acquisition_id')!r})"


def _read_record(f) -> tuple[bytes | None, str | None]:
    """(payload, None); (None, None) at a clean end of file; (None, what is wrong) otherwise."""
    prefix = f.read(_PREFIX.size)
    if not prefix:
        return None, None
    if len(prefix) < _PREFIX.size:
        return None, f"torn record: {len(prefix)} of {_PREFIX.size} prefix bytes"
    size, crc = _PREFIX.unpack(prefix)
    payload = f.read(size)
    if len(payload) < size:
        return None, f"torn record: {len(payload)} of {size} payload bytes"
    if zlib.crc32(payload) != crc:
        return None, "CRC-32 mismatch (corrupted)"
    return payload, None


def _entry(obj) -> Entry | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
        raise ValueError("an entry is a map with a string 'kind'")
    t_s = obj["t_s"]
    if isinstance(t_s, bool) or not isinstance(t_s, (int, float)):
        raise ValueError(f"t_s must be a number, got {type(t_s).__name__}")
    if obj["kind"] == "message":
        frames = obj["frames"]
        if not isinstance(frames, list) or not all(isinstance(b, bytes) for b in frames):
            raise ValueError("a message's frames must be a list of bin")
        return Entry("message", float(t_s), tuple(frames))
    if obj["kind"] == "marker":
        if not isinstance(obj["name"], str) or not isinstance(obj["fields"], dict):
            raise ValueError("a marker needs a string name and a map of fields")
        return Entry("marker", float(t_s), (), obj["name"], obj["fields"])
    return None


def read_recording(path: str | Path) -> Recording:
    """Open a recording and read its header; iterate the result for its entries.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    RecordingError
        If the file is not a recording: wrong signature, a format version this
        reader does not know, or a missing or damaged header.
    """
    path = Path(path)
    with open(path, "rb") as f:
        signature = f.read(len(SIGNATURE))
        if signature[:len(MAGIC)] != MAGIC:
            if MAGIC.startswith(signature):
                raise RecordingError(f"{path} is not a recording: {len(signature)} bytes, shorter than the "
                                     f"{len(SIGNATURE)}-byte signature")
            raise RecordingError(f"{path} is not a recording: it starts with {signature!r}, not {MAGIC!r}")
        if len(signature) < len(SIGNATURE):
            raise RecordingError(f"{path} is cut short inside its signature ({len(signature)} bytes)")
        if signature[-1] != FORMAT_VERSION:
            raise RecordingError(f"{path} is a recording in format version {signature[-1]}; this reader knows "
                                 f"version {FORMAT_VERSION} only (use a newer edx_protocol)")
        payload, problem = _read_record(f)
        if payload is None:
            raise RecordingError(f"{path} has no readable header: {problem or 'the file ends after the signature'}")
        try:
            header = msgpack.unpackb(payload, raw=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise RecordingError(f"{path}: the header is not msgpack ({exc})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
            raise RecordingError(f"{path}: the header is not a map with format {FORMAT_VERSION}: {header!r:.200}")
        return Recording(path, header, f.tell())

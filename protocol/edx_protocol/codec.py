"""Encode and decode multipart messages: a msgpack header, then raw array buffers.

``encode(header, arrays)`` returns the list of frames to send; the header's
``arrays`` field is ``describe(arrays)``. ``decode(frames)`` checks
everything a message can get wrong on its own (bytes, version, schema, buffer
sizes) and raises :class:`ProtocolError` with a short ``reason`` code; checks
that need the acquisition (pixel inside the scan) belong to the receiver.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgpack
import numpy as np
from pydantic import TypeAdapter, ValidationError

from .acquisition import AcquisitionMessage, ArrayDescriptor
from .results import ResultDocument
from .version import PROTOCOL_VERSION

_ACQUISITION = TypeAdapter(AcquisitionMessage)
_RESULT = TypeAdapter(ResultDocument)


class ProtocolError(ValueError):
    """A message that cannot be decoded. ``reason`` is a short, stable code for counting."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Decoded(NamedTuple):
    """A decoded message: its header model and its arrays by name (read-only views of the frames)."""

    header: Any
    arrays: dict[str, np.ndarray]


def _wire(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))


def describe(arrays: dict[str, np.ndarray]) -> list[ArrayDescriptor]:
    """Descriptors of ``arrays`` as they will travel (little-endian), for a header's ``arrays``."""
    return [ArrayDescriptor(name=name, dtype=_wire(a).dtype.str, shape=list(a.shape))
            for name, a in arrays.items()]


def encode(header, arrays: dict[str, np.ndarray] | None = None) -> list[bytes | memoryview]:
    """Return ``[header, *buffers]`` ready for ``socket.send_multipart``.

    Parameters
    ----------
    header : pydantic model
        A message model whose ``arrays`` equals ``describe(arrays)``.
    arrays : dict of str to numpy.ndarray
        Buffers to send, in order. Converted to little-endian C order if needed.
    """
    arrays = arrays or {}
    if list(header.arrays) != describe(arrays):
        raise ValueError("header.arrays does not describe the arrays given; build it with describe()")
    doc = header.model_dump(mode="json")
    # reshape(-1): memoryview cannot cast a multi-dimensional view with a zero in its shape
    return [msgpack.packb(doc, use_bin_type=True)] + [memoryview(_wire(a).reshape(-1)).cast("B")
                                                      for a in arrays.values()]


def _buffer(frame) -> memoryview:
    buf = getattr(frame, "buffer", frame)  # zmq.Frame or bytes-like
    return memoryview(buf).cast("B")


#: Largest header frame accepted, in bytes: a start with every optional field is about 2 KiB.
MAX_HEADER_BYTES = 65536


def _unpack_header(frame) -> dict:
    buf = _buffer(frame)
    if buf.nbytes > MAX_HEADER_BYTES:
        raise ProtocolError("too_large", f"header of {buf.nbytes} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        doc = msgpack.unpackb(buf, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError("not_msgpack", f"header is not msgpack ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise ProtocolError("not_msgpack", f"header must be a map, got {type(doc).__name__}")
    if not all(isinstance(key, str) for key in doc):  # msgpack's strict_map_key lets bin keys through
        raise ProtocolError("not_msgpack", "header keys must be msgpack str")
    version = doc.get("protocol")
    if isinstance(version, bool) or version != PROTOCOL_VERSION:  # True == 1 in Python, not on the wire
        raise ProtocolError("version", f"protocol {version!r} is not supported (this is {PROTOCOL_VERSION})")
    return doc


def _arrays(descriptors: Sequence[ArrayDescriptor], frames: Sequence) -> dict[str, np.ndarray]:
    if len(frames) != len(descriptors):
        raise ProtocolError("buffer_count", f"header names {len(descriptors)} buffers, {len(frames)} arrived")
    out = {}
    for desc, frame in zip(descriptors, frames):
        buf = _buffer(frame)
        dtype = np.dtype(desc.dtype)
        expected = math.prod(desc.shape) * dtype.itemsize  # exact: np.prod could overflow and wrap
        if buf.nbytes != expected:
            raise ProtocolError("buffer_size", f"array {desc.name!r} {desc.dtype}{desc.shape} needs "
                                               f"{expected} bytes, got {buf.nbytes}")
        out[desc.name] = np.frombuffer(buf, dtype=dtype).reshape(desc.shape)
    return out


def _decode(frames: Sequence, adapter: TypeAdapter) -> Decoded:
    if not frames:
        raise ProtocolError("empty", "message has no frames")
    doc = _unpack_header(frames[0])
    try:
        header = adapter.validate_python(doc)
    except ValidationError as exc:
        raise ProtocolError("schema", _short(exc)) from None
    return Decoded(header, _arrays(header.arrays, frames[1:]))


def decode(frames: Sequence) -> Decoded:
    """Decode an acquisition message (start, frame or stop) from its frames."""
    return _decode(frames, _ACQUISITION)


def decode_result(frames: Sequence) -> Decoded:
    """Decode a published document; ``frames`` excludes the topic frame."""
    return _decode(frames, _RESULT)


def _short(exc: ValidationError, limit: int = 3) -> str:
    errors = exc.errors(include_url=False)
    parts = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:limit]]
    more = f" (+{len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(parts) + more

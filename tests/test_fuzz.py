"""Property-based and mutation fuzzing of the decoder and of the service's receive path.

One generator makes hostile messages from either of two sources of randomness: a seeded
``random.Random`` (:class:`RandomDraw`: long reproducible streams, fast) or hypothesis
(:class:`HypothesisDraw`: shrinks a failing message). A message is either

* built from the field tables of SPEC section 3 with faults injected: booleans, numeric
  strings, bytes, NaN and infinities, integers up to 2**64-1 and down to -2**63, missing and
  unknown keys, wrong kinds and payloads, nested garbage, array descriptors of the wrong
  dtype, rank or count, buffers of the wrong count or size; or
* a mutation of a real message (the golden files of protocol/golden and the messages of two
  real acquisitions): bit flips, inserted and deleted bytes, truncation, frames dropped,
  duplicated or reordered, header fields replaced by hostile values, msgpack re-encoded with
  other integer, string and container widths.

:func:`spec_outcome` says what SPEC sections 2 and 6 make of any message ("accepted" or the
reason ``decode`` must give); it is written from the SPEC tables, not from the models, and
lets msgpack do the unpacking. The tests check ``decode`` against it, then ``Ingest.receive``
and the real ``Service`` with hostile messages between the messages of a real acquisition.

A failure names the message as ``seed:index``; ``hostile_message(RandomDraw("seed:index"),
bases, ids)`` rebuilds it alone.
"""

from __future__ import annotations

import copy
import faulthandler
import gc
import json
import math
import os
import random
import re
import string
import struct
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import jsonschema
import msgpack
import numpy as np
import pytest
import zmq
from conftest import DATA_DIR, REPO, ServedApp, load_file_sum
from edx_adapters.replay import open_replay
from edx_protocol import ProtocolError, decode, encode
from edx_protocol.codec import MAX_HEADER_BYTES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edx_live.config import load_settings
from edx_live.core.ingest import REASONS, Ingest, IngestOptions

GOLDEN = REPO / "protocol" / "golden"
SCHEMA = REPO / "protocol" / "schema" / "acquisition.schema.json"

#: Reasons ``decode`` may give (SPEC section 6, first table).
DECODE_REASONS = frozenset({"too_large", "empty", "not_msgpack", "version", "schema", "buffer_count",
                            "buffer_size"})
#: Every reason a rejected message may carry; ``internal_error`` (a defect) is deliberately absent.
DOCUMENTED_REASONS = DECODE_REASONS | frozenset(REASONS)

#: Reasons only a valid message aimed at an open acquisition can get: proof that hostile data
#: reached the accumulator, not only the decoder.
DATA_REASONS = frozenset({"pixel_out_of_range", "channel_out_of_range", "detector_out_of_range", "shape_mismatch",
                          "count_overflow", "duplicate_seq", "seq_out_of_window"})

MAX_INDEX = 2**31 - 1
MAX_PIXEL = 2**32 - 1
ITEMSIZE = {"|u1": 1, "<u2": 2, "<u4": 4, "<u8": 8, "<f4": 4, "<f8": 8}

#: Longest one message may take to decode or ingest. Typical is well under a millisecond; the
#: slowest refusal found is about 0.7 s (test_a_64_kib_header_is_refused_quickly), and these
#: machines are shared: the bound catches a hang, not a slow path.
MESSAGE_BOUND_S = 2.0
#: Resident memory a run may gain beyond the spectrum images it holds: hostile messages must
#: leave nothing behind. Measured growth is a few MiB (allocator noise).
RSS_SLACK_BYTES = 64 * 2**20

#: The real acquisitions: file, sweeps replayed (None: all the recorded ones), acquisition id.
CORE_SHELL = ("core_shell.hspy", 3, "core-shell-real")
VELOX = ("EMDReader_SpectrumImage_Si.emd", None, "emd-si-real")
GOLDEN_ID = "golden-0001"
#: Acquisition ids the generator puts in headers: the real ones, the golden one and strangers.
IDS = (GOLDEN_ID, CORE_SHELL[2], VELOX[2], "fuzz-0", "fuzz-1")


# ---------------------------------------------------------------------------------------------
# Sources of randomness: one generator, two drivers
# ---------------------------------------------------------------------------------------------

class RandomDraw:
    """Choices from a seeded ``random.Random``: long, reproducible and fast streams.

    Parameters
    ----------
    seed : int or str
        ``random.Random`` seeds a str deterministically, so ``"7:1234"`` names message 1234 of
        stream 7 on every machine.
    """

    def __init__(self, seed):
        self.rng = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, options: Sequence):
        return options[self.rng.randrange(len(options))]

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def seed(self) -> int:
        """A seed for bulk content (strings, array values) drawn in one go."""
        return self.rng.getrandbits(32)


class HypothesisDraw:
    """The same choices drawn by hypothesis from ``st.data()``, which can then shrink a failure.

    ``choice`` draws an index (options need not be hashable) and shrinks towards the first
    option; ``chance`` shrinks towards False.
    """

    def __init__(self, data):
        self.data = data

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def choice(self, options: Sequence):
        return options[self.data.draw(st.integers(0, len(options) - 1))]

    def chance(self, p: float) -> bool:
        return self.data.draw(st.integers(0, 999)) >= 1000 * (1 - p)

    def seed(self) -> int:
        return self.data.draw(st.integers(0, 2**32 - 1))


# ---------------------------------------------------------------------------------------------
# msgpack written by hand: every width SPEC 2.1 allows, and forms it refuses
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Raw:
    """Bytes spliced into a header as they are: a pre-encoded msgpack value, or garbage."""

    data: bytes


@dataclass
class Encoding:
    """How :func:`pack` writes msgpack.

    Attributes
    ----------
    widths : {"shortest", "widest", "mixed"}
        Format of each int, str, array and map: the shortest that holds it (what the reference
        encoder writes), the widest (uint64/int64, str32, array32, map32), or one drawn per value.
    f32 : bool
        Floats as float32 where they fit (they may round).
    bin_strings, bin_keys : bool
        Strings, or map keys, as msgpack bin: refused by SPEC.
    draw : RandomDraw or HypothesisDraw, optional
        Needed for ``widths="mixed"``.
    """

    widths: str = "shortest"
    f32: bool = False
    bin_strings: bool = False
    bin_keys: bool = False
    draw: object = field(default=None, compare=False)


_INT_FORMATS = ((0xcc, ">B", 0, 2**8 - 1), (0xcd, ">H", 0, 2**16 - 1), (0xce, ">I", 0, 2**32 - 1),
                (0xcf, ">Q", 0, 2**64 - 1), (0xd0, ">b", -2**7, 2**7 - 1), (0xd1, ">h", -2**15, 2**15 - 1),
                (0xd2, ">i", -2**31, 2**31 - 1), (0xd3, ">q", -2**63, 2**63 - 1))
_STR_TAGS = ((0xd9, ">B"), (0xda, ">H"), (0xdb, ">I"))
_BIN_TAGS = ((0xc4, ">B"), (0xc5, ">H"), (0xc6, ">I"))
_ARRAY_TAGS = ((0xdc, ">H"), (0xdd, ">I"))
_MAP_TAGS = ((0xde, ">H"), (0xdf, ">I"))
_FLOAT32_MAX = 3.4028234663852886e38


def pack(value, encoding: Encoding | None = None) -> bytes:
    """msgpack of ``value`` (None, bool, int, float, str, bytes, list, tuple, dict, :class:`Raw`)."""
    encoding = encoding or Encoding()
    if encoding == Encoding():
        try:  # the reference encoder writes the shortest forms too, and fast
            return msgpack.packb(value, use_bin_type=True, default=_refuse)
        except (TypeError, ValueError, UnicodeEncodeError, OverflowError):
            pass  # a Raw value or a lone surrogate: written by hand below
    out = bytearray()
    _write(value, encoding, out)
    return bytes(out)


def _refuse(value):
    raise TypeError(f"{type(value).__name__} is written by hand")


def _pick(forms: list[bytes], enc: Encoding) -> bytes:
    if enc.widths == "shortest":
        return forms[0]
    if enc.widths == "widest":
        return forms[-1]
    return enc.draw.choice(forms)


def _int_forms(v: int) -> list[bytes]:
    forms = [bytes([v & 0xff])] if -32 <= v <= 127 else []  # positive and negative fixint
    forms += [bytes([tag]) + struct.pack(fmt, v) for tag, fmt, lo, hi in _INT_FORMATS if lo <= v <= hi]
    if not forms:
        raise ValueError(f"{v} does not fit a msgpack int")
    return sorted(forms, key=len)


def _sized(n: int, fix: int | None, fix_limit: int, tags, enc: Encoding) -> bytes:
    """The head of a str, bin, array or map of ``n`` bytes or entries."""
    forms = [bytes([fix | n])] if fix is not None and n < fix_limit else []
    forms += [bytes([tag]) + struct.pack(fmt, n) for tag, fmt in tags if n < 256 ** struct.calcsize(fmt)]
    return _pick(forms, enc)


def _float(v: float, enc: Encoding) -> bytes:
    if enc.f32 and (not math.isfinite(v) or abs(v) <= _FLOAT32_MAX):
        return b"\xca" + struct.pack(">f", v)
    return b"\xcb" + struct.pack(">d", v)


def _write(v, enc: Encoding, out: bytearray) -> None:
    if isinstance(v, Raw):
        out += v.data
    elif v is None:
        out.append(0xc0)
    elif isinstance(v, bool):
        out.append(0xc3 if v else 0xc2)
    elif isinstance(v, int):
        out += _pick(_int_forms(v), enc)
    elif isinstance(v, float):
        out += _float(v, enc)
    elif isinstance(v, str):
        _write_str(v.encode("utf-8", "surrogatepass"), enc.bin_strings, enc, out)  # a lone surrogate: bad UTF-8
    elif isinstance(v, (bytes, bytearray)):
        _write_str(bytes(v), True, enc, out)
    elif isinstance(v, (list, tuple)):
        out += _sized(len(v), 0x90, 16, _ARRAY_TAGS, enc)
        for item in v:
            _write(item, enc, out)
    elif isinstance(v, dict):
        out += _sized(len(v), 0x80, 16, _MAP_TAGS, enc)
        for key, item in v.items():
            if isinstance(key, str) and enc.bin_keys:
                _write_str(key.encode(), True, enc, out)
            else:
                _write(key, enc, out)
            _write(item, enc, out)
    else:
        raise TypeError(f"cannot pack {type(v).__name__}")


def _write_str(data: bytes, as_bin: bool, enc: Encoding, out: bytearray) -> None:
    out += _sized(len(data), None, 0, _BIN_TAGS, enc) if as_bin else _sized(len(data), 0xa0, 32, _STR_TAGS, enc)
    out += data


# ---------------------------------------------------------------------------------------------
# The field tables of SPEC section 3: what each field accepts, valid values, values at its limits
# ---------------------------------------------------------------------------------------------

_ID_CHARS = string.ascii_letters + string.digits + "._:-"
_TEXT_CHARS = _ID_CHARS + " é😀\x00/"


class Spec:
    """One field of SPEC section 3, read with the type rules of SPEC 2.1."""

    def accepts(self, v) -> bool:
        """Whether SPEC accepts ``v`` (as msgpack unpacks it) for this field."""
        raise NotImplementedError

    def valid(self, draw):
        """A value SPEC accepts."""
        raise NotImplementedError

    def edges(self) -> tuple:
        """Values on both sides of this field's limits, and of its type's."""
        return ()


@dataclass(frozen=True, eq=False)
class Int(Spec):
    """integer, lo..hi: any msgpack int, or a float without fraction; never a bool or a string."""

    lo: int
    hi: int

    def accepts(self, v) -> bool:
        if type(v) is float and math.isfinite(v) and v.is_integer():
            v = int(v)
        return type(v) is int and self.lo <= v <= self.hi

    def valid(self, draw):
        pick = draw.integer(0, 5)
        if pick < 2:
            return (self.lo, self.hi)[pick]
        return draw.integer(self.lo, self.hi if pick == 5 else min(self.hi, self.lo + 16))

    def edges(self) -> tuple:
        return (self.lo - 1, self.lo, self.hi, self.hi + 1, float(self.lo), float(self.hi), self.lo + 0.5,
                str(self.lo), True, False)


@dataclass(frozen=True, eq=False)
class Num(Spec):
    """number in [lo, hi] (or (lo, hi] when ``lo_open``); None: no limit. Finite, never a bool or a string."""

    lo: float | None
    hi: float | None
    lo_open: bool = False

    def accepts(self, v) -> bool:
        if type(v) not in (int, float) or not math.isfinite(float(v)):
            return False
        x = float(v)
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        return self.hi is None or x <= self.hi

    def valid(self, draw):
        lo = 0.0 if self.lo is None else float(self.lo)
        hi = 1e6 if self.hi is None else float(self.hi)
        pick = draw.integer(0, 4)
        if pick == 0 and not self.lo_open:
            return lo
        if pick == 1:
            return hi
        return lo + (hi - lo) * draw.integer(1, 999) / 1000

    def edges(self) -> tuple:
        out = [0, -0.0, 5e-324, 1e308, 2**64 - 1, -2**63, "1.0", math.nan, math.inf, -math.inf, True]
        for bound in (self.lo, self.hi):
            if bound is not None:
                out += [bound, int(bound), math.nextafter(bound, -math.inf), math.nextafter(bound, math.inf)]
        return tuple(out)


@dataclass(frozen=True, eq=False)
class Str(Spec):
    """string (msgpack str, never bin) of lo..hi characters, matching ``pattern`` as a whole."""

    lo: int
    hi: int
    pattern: str | None = None

    def accepts(self, v) -> bool:
        return (type(v) is str and self.lo <= len(v) <= self.hi
                and (self.pattern is None or re.fullmatch(self.pattern, v) is not None))

    def valid(self, draw):
        n = draw.choice((self.lo, max(self.lo, min(self.hi, 8)), self.hi))
        chars = _ID_CHARS if self.pattern else _TEXT_CHARS
        return "".join(random.Random(draw.seed()).choices(chars, k=n))

    def edges(self) -> tuple:
        return ("", "a" * self.hi, "a" * (self.hi + 1), "é" * self.hi, "😀" * self.hi, "a b", "a\n", "\x00",
                "\uff41", b"abc", 5)


@dataclass(frozen=True, eq=False)
class Enum(Spec):
    """One of the strings ``values``."""

    values: tuple

    def accepts(self, v) -> bool:
        return type(v) is str and v in self.values

    def valid(self, draw):
        return draw.choice(self.values)

    def edges(self) -> tuple:
        return self.values + tuple(x for v in self.values for x in (v.upper(), v + " ", v.encode())) + ("", 0)


@dataclass(frozen=True, eq=False)
class Nullable(Spec):
    """``inner`` or null."""

    inner: Spec

    def accepts(self, v) -> bool:
        return v is None or self.inner.accepts(v)

    def valid(self, draw):
        return None if draw.chance(0.3) else self.inner.valid(draw)

    def edges(self) -> tuple:
        return (None,) + self.inner.edges()


@dataclass(frozen=True, eq=False)
class ListOf(Spec):
    """array of lo..hi ``item``."""

    item: Spec
    lo: int = 0
    hi: int = MAX_PIXEL

    def accepts(self, v) -> bool:
        return type(v) is list and self.lo <= len(v) <= self.hi and all(self.item.accepts(x) for x in v)

    def valid(self, draw):
        return [self.item.valid(draw) for _ in range(draw.integer(self.lo, min(self.hi, self.lo + 3)))]

    def edges(self) -> tuple:
        too_many = [[0] * (self.hi + 1)] if self.hi < 300 else []
        return ([], {}, "x", [None], *too_many)


@dataclass(frozen=True, eq=False)
class Obj(Spec):
    """object: a map with str keys; ``fields`` maps each name to (spec, required); no other key."""

    fields: dict

    def accepts(self, v) -> bool:
        if type(v) is not dict or not all(type(k) is str and k in self.fields for k in v):
            return False
        return all(spec.accepts(v[name]) if name in v else not required
                   for name, (spec, required) in self.fields.items())

    def valid(self, draw):
        return {name: spec.valid(draw) for name, (spec, required) in self.fields.items()
                if required or draw.chance(0.5)}

    def edges(self) -> tuple:
        return ({}, [], "x", None)


DTYPES = tuple(ITEMSIZE)
DESCRIPTOR = Obj({"name": (Str(0, 64), True), "dtype": (Enum(DTYPES), True),
                  "shape": (ListOf(Int(0, MAX_PIXEL), 0, 8), True)})


@dataclass(frozen=True, eq=False)
class Arrays(Spec):
    """A frame's ``arrays`` (SPEC 4): descriptors whose names, dtypes and ranks follow ``rules``.

    ``rules`` maps each name to (dtypes, ndim, optional); names are unique, required ones present.
    """

    rules: dict
    equal_lengths: bool = False
    item = DESCRIPTOR

    def accepts(self, v) -> bool:
        if not ListOf(DESCRIPTOR).accepts(v):
            return False
        names = [d["name"] for d in v]
        if len(set(names)) != len(names) or not set(names) <= set(self.rules):
            return False
        if any(not optional and name not in names for name, (_, _, optional) in self.rules.items()):
            return False
        if any(d["dtype"] not in self.rules[d["name"]][0] or len(d["shape"]) != self.rules[d["name"]][1]
               for d in v):
            return False
        return not self.equal_lengths or len({int(d["shape"][0]) for d in v}) == 1

    def valid(self, draw):
        """Descriptors of empty arrays (frame_doc builds real ones, with their buffers)."""
        return [{"name": name, "dtype": dtypes[0], "shape": [0] * ndim}
                for name, (dtypes, ndim, optional) in self.rules.items() if not optional or draw.chance(0.5)]

    def edges(self) -> tuple:
        return ([], {}, None, [{"name": "stream"}])


INDEX = Int(0, MAX_INDEX)
PIXEL = Int(0, MAX_PIXEL)
PROTOCOL = Int(1, 1)
POSITIVE = Num(0, None, lo_open=True)
NO_ARRAYS = ListOf(DESCRIPTOR, 0, 0)


ID = Str(1, 128, r"[A-Za-z0-9._:-]+")


def _common(kind: str) -> dict:
    return {"protocol": (PROTOCOL, True), "acquisition_id": (ID, True),
            "seq": (INDEX, True), "kind": (Enum((kind,)), True)}


ENERGY_AXIS = Obj({"offset_kev": (Num(-1000, 1000), True), "scale_kev": (Num(0, 1000, lo_open=True), True),
                   "channels": (Int(1, 65534), True)})
DETECTOR = Obj({"name": (Nullable(Str(0, 256)), False), "elevation_deg": (Num(-90, 90), True),
                "azimuth_deg": (Num(-360, 360), True),
                "energy_resolution_mnka_ev": (Nullable(POSITIVE), False),
                "solid_angle_sr": (Nullable(POSITIVE), False)})
STAGE = Obj({**{axis: (Nullable(Num(-1, 1)), False) for axis in "xyz"},
             **{tilt: (Nullable(Num(-2 * math.pi, 2 * math.pi)), False) for tilt in ("alpha", "beta")}})
START = Obj({**_common("start"), "scan_shape": (ListOf(Int(1, 65535), 2, 2), True),
             "energy_axis": (ENERGY_AXIS, True), "beam_energy_kev": (Num(0, 2000, lo_open=True), True),
             "detectors": (ListOf(DETECTOR, 1, 255), True), "pixel_size": (Nullable(POSITIVE), False),
             "pixel_unit": (Str(0, 32), False), "dwell_time_s": (Nullable(POSITIVE), False),
             "expected_frames": (Nullable(Int(1, MAX_INDEX)), False),
             "elements": (ListOf(Str(0, 2), 0, 118), False), "xray_lines": (ListOf(Str(0, 16), 0, 256), False),
             "instrument": (Nullable(Str(0, 1024)), False), "title": (Nullable(Str(0, 1024)), False),
             "field_of_view_m": (Nullable(Num(0, 1, lo_open=True)), False),
             "scan_rotation_rad": (Nullable(Num(-2 * math.pi, 2 * math.pi)), False),
             "stage_position": (Nullable(STAGE), False),
             "arrays": (NO_ARRAYS, False)})
STOP = Obj({**_common("stop"), "frames": (INDEX, True), "reason": (Enum(("complete", "aborted")), False),
            "arrays": (NO_ARRAYS, False)})


def _frame(payload: str, arrays: Arrays, **extra) -> Obj:
    return Obj({**_common("frame"), "payload": (Enum((payload,)), True), "frame_index": (INDEX, True),
                "arrays": (arrays, True), **extra})


FRAMES = {
    "events": _frame("events", Arrays({"pixel": (("<u4",), 1, False), "channel": (("<u2",), 1, False),
                                       "detector": (("|u1",), 1, True)}, equal_lengths=True)),
    "velox": _frame("velox", Arrays({"stream": (("<u2",), 1, False)}), pixel_start=(PIXEL, True),
                    detector=(Nullable(Int(0, 254)), False)),
    "dense": _frame("dense", Arrays({"counts": (("|u1", "<u2", "<u4", "<u8"), 2, False)}),
                    pixel_start=(PIXEL, True)),
}


IMAGE = Obj({**_common("image"), "frame_index": (INDEX, True), "detector": (Str(1, 64), True),
             "first_row": (Int(0, 65534), False),
             "arrays": (Arrays({"image": (("|u1", "<u2", "<u4", "<f4", "<f8"), 2, False)}), True)})


def message_spec(doc: dict) -> Obj | None:
    """The table of the message ``doc`` claims to be, by its ``kind`` (and ``payload``); None if neither names one."""
    kind, payload = doc.get("kind"), doc.get("payload")
    if type(kind) is not str:
        return None
    if kind == "frame":
        return FRAMES.get(payload) if type(payload) is str else None
    return {"start": START, "stop": STOP, "image": IMAGE}.get(kind)


def _nbytes(frame) -> int:
    return memoryview(frame).nbytes


def spec_outcome(frames: Sequence) -> str:
    """What SPEC sections 2 and 6 make of ``frames``: "accepted", or the reason ``decode`` must give."""
    if not frames:
        return "empty"
    if _nbytes(frames[0]) > MAX_HEADER_BYTES:
        return "too_large"
    try:
        doc = msgpack.unpackb(bytes(frames[0]), raw=False, strict_map_key=True)
    except Exception:  # msgpack raises several unrelated types, as the receiver's msgpack does
        return "not_msgpack"
    if type(doc) is not dict or not all(type(k) is str for k in doc):
        return "not_msgpack"
    if not PROTOCOL.accepts(doc.get("protocol")):
        return "version"
    spec = message_spec(doc)
    if spec is None or not spec.accepts(doc):
        return "schema"
    arrays, buffers = doc.get("arrays", []), frames[1:]
    if len(buffers) != len(arrays):
        return "buffer_count"
    for desc, buffer in zip(arrays, buffers):
        if _nbytes(buffer) != math.prod(int(n) for n in desc["shape"]) * ITEMSIZE[desc["dtype"]]:
            return "buffer_size"
    return "accepted"


# ---------------------------------------------------------------------------------------------
# Messages built from the tables, with faults
# ---------------------------------------------------------------------------------------------

#: Hostile values for any slot, whatever its type.
HOSTILE = (None, True, False, 0, 1, -1, 2**64 - 1, -2**63, 2**31, 2**32, 65535, 0.5, -0.0, 1.0, math.nan,
           math.inf, -math.inf, 1e308, 5e-324, "", "5", "1.0", "nan", "start", "frame", "events", b"", b"5",
           b"\xff", [], [0], [[]], {}, {"protocol": 1}, {"": None})
#: Keys a header or one of its objects may gain: unknown ones, near misses, other messages' fields.
EXTRA_KEYS = ("extra", "Seq", "seq ", "kind\x00", "", "payload", "pixel_start", "detector", "frames",
              "scan_shape", "protocol", 7, -1, b"seq")


def _hostile(draw):
    """A value of HOSTILE, copied: a fault may later add keys to it, which must not reach the table."""
    return copy.deepcopy(draw.choice(HOSTILE))


@dataclass
class Case:
    """One hostile message.

    Attributes
    ----------
    frames : list of bytes-like
    origin : str
        How it was made, e.g. ``spec:frame+replace_value`` or ``golden:stop+bit_flip``.
    same_as : list, optional
        Frames of a message that SPEC reads the same (an equivalent encoding): ``decode`` must
        give both the same reason, or equal headers and arrays.
    name : str
        ``seed:index`` in a stream, to rebuild it alone.
    """

    frames: list
    origin: str
    same_as: list | None = None
    name: str = ""


def garbage(draw, depth: int = 0):
    """Nested values of every msgpack type, or something huge, deep or broken."""
    pick = draw.integer(0, 12)
    if pick <= 3 or depth > 3:
        return _hostile(draw)
    if pick <= 6:
        return [garbage(draw, depth + 1) for _ in range(draw.integer(0, 3))]
    if pick <= 8:
        return {draw.choice(("a", "seq", "", "protocol")): garbage(draw, depth + 1) for _ in range(draw.integer(0, 3))}
    return draw.choice((
        "x" * 70_000,                          # the header alone past 64 KiB: too_large
        list(range(20_000)),                   # a long list of the wrong items
        Raw(b"\x91" * 5_000 + b"\xc0"),        # nested deeper than msgpack's stack
        Raw(b"\x91" * 300 + b"\xc0"),          # deep but legal
        Raw(b"\xc1"),                          # the one byte msgpack never uses
        Raw(b"\xa2\xff\xfe"),                  # a str that is not UTF-8
        "\ud800",                              # a lone surrogate, written as bad UTF-8
        Raw(b"\xd4\x05\x00"),                  # an extension type
        Raw(b"\xd6\xff\x00\x00\x00\x00"),      # a msgpack timestamp
        Raw(b"\xcd\x01"),                      # an int cut short: swallows what follows
        Raw(b"\xdf\xff\xff\xff\xff"),          # a map that claims 4 billion entries
    ))


def candidate(draw, spec: Spec | None):
    """A value for a slot of ``spec``: one at its limits, a valid one, or anything hostile."""
    pick = draw.integer(0, 9)
    if spec is not None and pick < 5:
        return draw.choice(spec.edges())
    if spec is not None and pick == 5:
        return spec.valid(draw)
    return garbage(draw) if pick == 9 else _hostile(draw)


def slots(value, spec: Spec | None) -> list[tuple[object, object, Spec | None]]:
    """Every place in a header where a value can be replaced or removed: (container, key, spec)."""
    spec = spec.inner if isinstance(spec, Nullable) else spec
    out = []
    if type(value) is dict:
        fields = spec.fields if isinstance(spec, Obj) else {}
        for key, item in value.items():
            sub = fields.get(key, (None,))[0] if isinstance(key, str) else None
            out.append((value, key, sub))
            out += slots(item, sub)
    elif type(value) is list:
        item_spec = spec.item if isinstance(spec, (ListOf, Arrays)) else None
        for i, item in enumerate(value):
            out.append((value, i, item_spec))
            out += slots(item, item_spec)
    return out


def _spec_of(doc) -> Obj | None:
    return message_spec(doc) if type(doc) is dict else None


def replace_value(draw, doc, buffers):
    """A field, or a nested value, replaced by a value at or past its limits, or by garbage."""
    places = slots(doc, _spec_of(doc))
    if places:
        container, key, spec = draw.choice(places)
        container[key] = candidate(draw, spec)
    return doc, buffers


def drop_key(draw, doc, buffers):
    """A key removed from the header or one of its objects (required or optional)."""
    places = [(c, k) for c, k, _ in slots(doc, _spec_of(doc)) if type(c) is dict]
    if places:
        container, key = draw.choice(places)
        del container[key]
    return doc, buffers


def extra_key(draw, doc, buffers):
    """An unknown key (or another message's field) added to the header or one of its objects."""
    objects = [doc] + [c[k] for c, k, _ in slots(doc, _spec_of(doc)) if type(c[k]) is dict]
    objects = [o for o in objects if type(o) is dict]
    if objects:
        draw.choice(objects)[draw.choice(EXTRA_KEYS)] = candidate(draw, None)
    return doc, buffers


def _descriptors(doc) -> list | None:
    arrays = doc.get("arrays") if type(doc) is dict else None
    return arrays if type(arrays) is list and arrays else None


def drop_array(draw, doc, buffers):
    """A descriptor dropped, with its buffer or without it."""
    arrays = _descriptors(doc)
    if arrays:
        i = draw.integer(0, len(arrays) - 1)
        del arrays[i]
        if draw.chance(0.7) and i < len(buffers):
            del buffers[i]
    return doc, buffers


def duplicate_array(draw, doc, buffers):
    """A descriptor and its buffer repeated: names must be unique."""
    arrays = _descriptors(doc)
    if arrays:
        i = draw.integer(0, len(arrays) - 1)
        arrays.append(arrays[i])
        if i < len(buffers):
            buffers.append(buffers[i])
    return doc, buffers


def reorder_arrays(draw, doc, buffers):
    """Descriptors and buffers permuted together: SPEC 2.2 allows any order."""
    arrays = _descriptors(doc)
    if arrays and len(arrays) == len(buffers):
        order = list(range(len(arrays)))
        random.Random(draw.seed()).shuffle(order)
        arrays[:] = [arrays[i] for i in order]
        buffers[:] = [buffers[i] for i in order]
    return doc, buffers


def foreign_array(draw, doc, buffers):
    """A descriptor of another payload (or a made-up one) with a buffer that matches it."""
    if type(doc) is dict and type(doc.get("arrays")) is list:
        name = draw.choice(("pixel", "channel", "detector", "stream", "counts", "labels", "x" * 65))
        dtype = draw.choice(DTYPES)
        n = draw.integer(0, 4)
        doc["arrays"].append({"name": name, "dtype": dtype, "shape": [n]})
        buffers.append(b"\x01" * (n * ITEMSIZE[dtype]))
    return doc, buffers


def drop_buffer(draw, doc, buffers):
    if buffers:
        del buffers[draw.integer(0, len(buffers) - 1)]
    return doc, buffers


def extra_buffer(draw, doc, buffers):
    buffers.insert(draw.integer(0, len(buffers)), draw.choice((b"", b"\x00" * 4, b"\xff" * 7)))
    return doc, buffers


def resize_buffer(draw, doc, buffers):
    """A buffer one byte, one element or all of itself longer or shorter, or empty."""
    if buffers:
        i = draw.integer(0, len(buffers) - 1)
        data = bytes(buffers[i])
        buffers[i] = draw.choice((data[:-1], data + b"\x00", data[:-8], data + b"\x00" * 8, b"", data * 2))
    return doc, buffers


def not_a_map(draw, doc, buffers):
    """The header replaced by a msgpack value that is not a map."""
    return draw.choice(([doc], "header", 1, None, b"\x80", [])), buffers


FAULTS = (replace_value, replace_value, replace_value, replace_value, drop_key, drop_key, extra_key, extra_key,
          drop_array, duplicate_array, reorder_arrays, foreign_array, drop_buffer, extra_buffer, resize_buffer,
          resize_buffer, not_a_map)


def _ids(draw, ids: Sequence[str]) -> str:
    """Mostly an id of the pool (so that frames meet their acquisition), else a new valid one."""
    return draw.choice(ids) if draw.chance(0.8) else ID.valid(draw)


def start_doc(draw, ids: Sequence[str]) -> dict:
    doc = START.valid(draw)
    doc["acquisition_id"] = _ids(draw, ids)
    return doc


def stop_doc(draw, ids: Sequence[str]) -> dict:
    doc = STOP.valid(draw)
    doc["acquisition_id"] = _ids(draw, ids)
    return doc


def _values(rng: np.random.Generator, n: int, below: int, edges: Sequence[int], dtype: str) -> np.ndarray:
    """``n`` values under ``below``, a few replaced by edge values (the limits of the acquisitions fed)."""
    out = rng.integers(0, below, n, dtype=np.uint64)
    hit = rng.random(n) < 0.05
    out[hit] = rng.choice(np.asarray(edges, np.uint64), int(hit.sum()))
    return out.astype(dtype)


@dataclass(frozen=True)
class Limits:
    """The scan a frame is aimed at: pixels, detector channels and detectors of its acquisition."""

    pixels: int
    channels: int
    detectors: int

    @classmethod
    def of(cls, start) -> "Limits":
        return cls(start.scan_shape[0] * start.scan_shape[1], start.energy_axis.channels, len(start.detectors))

    @classmethod
    def drawn(cls, draw) -> "Limits":
        """The golden scan (24 pixels, 32 channels, 4 detectors) or one of the real ones."""
        return draw.choice((cls(24, 32, 4), cls(4096, 992, 1), cls(256, 4096, 1)))


def frame_arrays(payload: str, draw, rng: np.random.Generator, limits: Limits) -> tuple[dict, dict]:
    """Arrays of a frame and its payload's header fields: values inside ``limits``, a few on or past them."""
    pixels, channels, detectors = limits.pixels, limits.channels, limits.detectors
    pixel_edges, channel_edges = (pixels - 1, pixels, MAX_PIXEL), (channels - 1, channels, 65535)
    n = draw.choice((0, 1, 3, draw.integer(0, 200)))
    start = draw.choice((0, draw.integer(0, pixels), pixels - 1, pixels, MAX_PIXEL))
    if payload == "events":
        arrays = {"pixel": _values(rng, n, pixels, pixel_edges, "<u4"),
                  "channel": _values(rng, n, channels, channel_edges, "<u2")}
        if draw.chance(0.3):
            arrays["detector"] = _values(rng, n, detectors, (detectors - 1, detectors, 255), "|u1")
        return arrays, {}
    if payload == "velox":
        stream = _values(rng, n, channels, channel_edges, "<u2")
        stream[rng.random(n) < 0.3] = 65535
        fields = {"pixel_start": start}
        if draw.chance(0.4):
            fields["detector"] = draw.choice((None, 0, detectors - 1, detectors, 254))
        return {"stream": stream}, fields
    dtype = draw.choice(("|u1", "<u2", "<u4", "<u8"))
    width = draw.choice((channels, channels, channels + 1, channels - 1, draw.integer(0, 40)))
    rows = draw.integer(0, 3)
    counts = _values(rng, rows * width, 3, (np.iinfo(np.dtype(dtype)).max,), dtype).reshape(rows, width)
    return {"counts": counts}, {"pixel_start": start}


def frame_doc(draw, ids: Sequence[str], limits: Limits | None = None, seq: int | None = None) -> tuple[dict, list]:
    payload = draw.choice(tuple(FRAMES))
    rng = np.random.default_rng(draw.seed())
    arrays, fields = frame_arrays(payload, draw, rng, limits or Limits.drawn(draw))
    doc = {"protocol": 1, "acquisition_id": _ids(draw, ids), "seq": INDEX.valid(draw) if seq is None else seq,
           "kind": "frame", "payload": payload, "frame_index": INDEX.valid(draw), **fields,
           "arrays": [{"name": k, "dtype": a.dtype.str, "shape": list(a.shape)} for k, a in arrays.items()]}
    return doc, [a.tobytes() for a in arrays.values()]


def _shuffled(draw, doc):
    """SPEC 2.1: keys may come in any order."""
    if type(doc) is not dict or not draw.chance(0.2):
        return doc
    items = list(doc.items())
    random.Random(draw.seed()).shuffle(items)
    return dict(items)


def encoding(draw) -> Encoding:
    """Mostly the reference encoder's shortest forms, sometimes the widest, mixed, or float32."""
    widths = draw.choice(("shortest", "shortest", "shortest", "widest", "mixed"))
    return Encoding(widths=widths, f32=draw.chance(0.1), draw=draw)


def synthesized(draw, ids: Sequence[str]) -> Case:
    """A message built from the SPEC tables, with zero to three faults."""
    kind = draw.choice(("frame", "frame", "start", "stop"))
    if kind == "frame":
        doc, buffers = frame_doc(draw, ids)
    else:
        doc, buffers = (start_doc if kind == "start" else stop_doc)(draw, ids), []
    names = []
    for _ in range(draw.choice((0, 0, 1, 1, 1, 2, 3))):
        fault = draw.choice(FAULTS)
        doc, buffers = fault(draw, doc, buffers)
        names.append(fault.__name__)
    frames = [pack(_shuffled(draw, doc), encoding(draw))] + buffers
    return Case(frames, "+".join([f"spec:{kind}"] + names))


# ---------------------------------------------------------------------------------------------
# Mutations of real messages
# ---------------------------------------------------------------------------------------------

def _frame_index(draw, frames: list) -> int:
    """Mostly the header: a flipped bit in a buffer usually leaves a valid message."""
    return 0 if len(frames) == 1 or draw.chance(0.7) else draw.integer(1, len(frames) - 1)


def bit_flip(draw, frames, ids):
    i = _frame_index(draw, frames)
    data = bytearray(frames[i])
    if data:
        pos = draw.integer(0, len(data) - 1)
        data[pos] ^= 1 << draw.integer(0, 7)
    frames[i] = bytes(data)
    return frames


def insert_bytes(draw, frames, ids):
    i = _frame_index(draw, frames)
    data = bytes(frames[i])
    pos = draw.integer(0, len(data))
    frames[i] = data[:pos] + random.Random(draw.seed()).randbytes(draw.integer(1, 8)) + data[pos:]
    return frames


def delete_bytes(draw, frames, ids):
    i = _frame_index(draw, frames)
    data = bytes(frames[i])
    pos = draw.integer(0, len(data))
    frames[i] = data[:pos] + data[pos + draw.integer(1, 8):]
    return frames


def truncate(draw, frames, ids):
    i = _frame_index(draw, frames)
    data = bytes(frames[i])
    frames[i] = data[:draw.integer(0, max(len(data) - 1, 0))]
    return frames


def drop_frame(draw, frames, ids):
    if frames:
        del frames[draw.integer(0, len(frames) - 1)]
    return frames


def duplicate_frame(draw, frames, ids):
    if frames:
        frames.insert(draw.integer(0, len(frames)), frames[draw.integer(0, len(frames) - 1)])
    return frames


def swap_frames(draw, frames, ids):
    if len(frames) > 1:
        i, j = draw.integer(0, len(frames) - 1), draw.integer(0, len(frames) - 1)
        frames[i], frames[j] = frames[j], frames[i]
    return frames


def unaligned(draw, frames, ids):
    """Each frame a view at an odd address, as ZeroMQ may hand them over: SPEC reads it the same."""
    return [memoryview(b"\x00" + bytes(f))[1:] for f in frames]


def _header(frames) -> dict | None:
    """The header as msgpack reads it (int keys allowed, to be written back), or None."""
    if not frames:
        return None
    try:
        doc = msgpack.unpackb(bytes(frames[0]), raw=False, strict_map_key=False)
    except Exception:
        return None
    return doc if type(doc) is dict else None


def _rewritten(frames, doc, enc: Encoding) -> list:
    try:
        return [pack(doc, enc)] + frames[1:]
    except (TypeError, ValueError):  # msgpack read something pack cannot write (an ExtType): leave it
        return frames


def reencode(draw, frames, ids):
    """The header written with other int, str, array and map widths: SPEC reads it the same."""
    doc = _header(frames)
    return frames if doc is None else _rewritten(frames, doc, Encoding(draw.choice(("widest", "mixed")), draw=draw))


def ints_as_floats(value):
    """Every int as a float of the same value (SPEC 2.1 accepts 5.0 for an integer)."""
    if type(value) is int and abs(value) <= 2**53:
        return float(value)
    if type(value) is list:
        return [ints_as_floats(v) for v in value]
    if type(value) is dict:
        return {k: ints_as_floats(v) for k, v in value.items()}
    return value


def floats_for_ints(draw, frames, ids):
    doc = _header(frames)
    return frames if doc is None else _rewritten(frames, ints_as_floats(doc), Encoding())


def float32(draw, frames, ids):
    doc = _header(frames)
    return frames if doc is None else _rewritten(frames, doc, Encoding(f32=True))


def strings_as_bin(draw, frames, ids):
    doc = _header(frames)
    return frames if doc is None else _rewritten(frames, doc, Encoding(bin_strings=True))


def keys_as_bin(draw, frames, ids):
    doc = _header(frames)
    return frames if doc is None else _rewritten(frames, doc, Encoding(bin_keys=True))


def header_fault(draw, frames, ids):
    """One of the faults of the synthesized messages, applied to this message's header and buffers."""
    doc = _header(frames)
    if doc is None:
        return frames
    doc, buffers = draw.choice(FAULTS)(draw, doc, list(frames[1:]))
    return _rewritten([frames[0]] + buffers, doc, encoding(draw))


def relabel(draw, frames, ids):
    """Another acquisition id or seq: a real frame that is valid, but for someone else."""
    doc = _header(frames)
    if doc is None:
        return frames
    doc["acquisition_id"] = draw.choice(ids) if draw.chance(0.5) else "shadow-of-a-real-one"
    if draw.chance(0.3):
        doc["seq"] = draw.choice((0, 1, 2, 2**20 + 2, MAX_INDEX))
    return _rewritten(frames, doc, Encoding())


MUTATIONS = (bit_flip, bit_flip, bit_flip, insert_bytes, delete_bytes, truncate, drop_frame, duplicate_frame,
             swap_frames, unaligned, reencode, floats_for_ints, float32, strings_as_bin, keys_as_bin,
             header_fault, header_fault, header_fault, relabel, relabel)
#: Mutations after which SPEC reads the message exactly as before.
EQUIVALENT = (unaligned, reencode, floats_for_ints)


def mutated(draw, bases: Sequence[tuple[str, list]], ids: Sequence[str]) -> Case:
    """A real message with one to three mutations."""
    name, base = draw.choice(bases)
    frames = list(base)
    ops = [draw.choice(MUTATIONS) for _ in range(draw.choice((1, 1, 1, 2, 3)))]
    for op in ops:
        if not frames:  # every frame dropped: nothing left to mutate
            break
        try:
            frames = op(draw, frames, ids)
        except RecursionError:  # a header nested hundreds deep (legal msgpack) is sent as it is
            pass
    same_as = list(base) if len(ops) == 1 and ops[0] in EQUIVALENT else None
    return Case(frames, "+".join([name] + [op.__name__ for op in ops]), same_as)


def hostile_message(draw, bases: Sequence[tuple[str, list]], ids: Sequence[str] = IDS) -> Case:
    """One hostile message: built from the SPEC tables, or a mutated real one, half and half."""
    return synthesized(draw, ids) if draw.chance(0.5) else mutated(draw, bases, ids)


def hostile_stream(bases, seed, n: int, ids: Sequence[str] = IDS) -> Iterator[Case]:
    """``n`` hostile messages; message ``i`` depends only on ``seed`` and ``i``."""
    for i in range(n):
        case = hostile_message(RandomDraw(f"{seed}:{i}"), bases, ids)
        case.name = f"{seed}:{i}"
        yield case


def episode(draw, start, n: int) -> Iterator[Case]:
    """Frames for an acquisition that just opened, aimed at its scan; a few faulty; maybe a stop.

    Valid hostile frames reach the accumulator only if they name an open acquisition with a
    fresh ``seq``: these do, so the checks against the scan (pixel, channel, detector, width,
    count overflow) and the kernels get hostile data, not just the id check.
    """
    limits, seq, aid = Limits.of(start), start.seq, start.acquisition_id
    for _ in range(n):
        seq = draw.choice((seq + 1, seq + 1, seq + 1, seq + draw.integer(2, 5), seq, max(seq - 1, 0)))
        doc, buffers = frame_doc(draw, (aid,), limits, seq)
        names = []
        if draw.chance(0.15):
            fault = draw.choice(FAULTS)
            doc, buffers = fault(draw, doc, buffers)
            names.append(fault.__name__)
        yield Case([pack(doc)] + buffers, "+".join(["episode:frame"] + names))
    if draw.chance(0.3):
        yield Case([pack({"protocol": 1, "acquisition_id": aid, "seq": seq + 1, "kind": "stop", "frames": 1})],
                   "episode:stop")


# ---------------------------------------------------------------------------------------------
# Real messages
# ---------------------------------------------------------------------------------------------

def read_container(path: Path) -> list[bytes]:
    """Frames of a ``NAME.bin`` container (SPEC 9.1): per frame a little-endian uint32 length, then the bytes."""
    data, frames, pos = path.read_bytes(), [], 0
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "little")
        frames.append(data[pos + 4:pos + 4 + n])
        pos += 4 + n
    return frames


def golden_messages() -> list[tuple[str, list]]:
    """The seven golden acquisition messages in order, then the result documents without their topic."""
    names = ["start", "frame_events", "frame_events_detector", "frame_velox", "frame_dense_u8",
             "frame_dense_u16", "stop"]
    out = [(f"golden:{n}", read_container(GOLDEN / f"{n}.bin")) for n in names]
    documents = ("status", "clusters", "composition")
    return out + [(f"golden:{n}", read_container(GOLDEN / f"{n}.bin")[1:]) for n in documents]


@lru_cache(maxsize=None)
def real_acquisition(name: str, sweeps: int | None, acquisition_id: str) -> tuple[tuple[bytes, ...], ...]:
    """Every message of a real acquisition, start to stop, as frames of bytes."""
    replay = open_replay(DATA_DIR / name, frames=sweeps, acquisition_id=acquisition_id)
    messages = [encode(replay.start)] + [encode(h, a) for h, a in replay.messages()]
    return tuple(tuple(bytes(f) for f in m) for m in messages)


@lru_cache(maxsize=None)
def file_sum(name: str) -> np.ndarray:
    return load_file_sum(DATA_DIR / name)


def mutation_bases() -> list[tuple[str, list]]:
    """Messages to mutate: the golden ones, and the start, two frames and stop of each real acquisition."""
    out = golden_messages()
    for name, sweeps, aid in (CORE_SHELL, VELOX):
        messages = real_acquisition(name, sweeps, aid)
        picks = {"start": 0, "frame": 1, "frame-late": len(messages) // 2, "stop": len(messages) - 1}
        out += [(f"{aid}:{label}", list(messages[i])) for label, i in picks.items()]
    return out


# ---------------------------------------------------------------------------------------------
# Judging decode, and running streams through Ingest
# ---------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def schema_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def describe_case(case: Case, limit: int = 96) -> str:
    """The message in a form to paste into a regression test."""
    frames = ", ".join(f"bytes.fromhex('{bytes(f)[:limit].hex()}')" + ("..." if _nbytes(f) > limit else "")
                       + f" ({_nbytes(f)} bytes)" for f in case.frames)
    return f"{case.name or '?'} [{case.origin}]: [{frames}]"


@dataclass
class Judged:
    """What ``decode`` did with a message, and how long it took."""

    decoded: object  # Decoded or None
    reason: str | None
    seconds: float


def judge(case: Case, check_schema: bool = True) -> Judged:
    """Decode ``case`` and check the outcome against SPEC.

    Raises AssertionError when decode disagrees with :func:`spec_outcome`, when what it accepts
    does not re-validate or does not match the JSON Schema, or when an equivalent encoding reads
    differently; any exception other than ProtocolError escapes as it is.
    """
    t0 = time.perf_counter()
    try:
        decoded, reason = decode(case.frames), None
    except ProtocolError as exc:
        decoded, reason = None, exc.reason
    seconds = time.perf_counter() - t0
    assert reason is None or reason in DECODE_REASONS, f"undocumented reason {reason!r}"
    expected, actual = spec_outcome(case.frames), reason or "accepted"
    assert actual == expected, f"decode says {actual}, SPEC says {expected}"
    if decoded is not None:
        _consistent(decoded, case.frames[0], check_schema)
    if case.same_as is not None:
        _same(decoded, reason, case.same_as)
    return Judged(decoded, reason, seconds)


def _consistent(decoded, header_frame, check_schema: bool) -> None:
    """What decode accepts re-validates, and its header is valid against the JSON Schema."""
    header = decoded.header
    assert type(header).model_validate(header.model_dump()) == header, "does not re-validate"
    if check_schema:
        doc = msgpack.unpackb(bytes(header_frame), raw=False, strict_map_key=True)
        errors = [e.message for e in schema_validator().iter_errors(doc)]
        assert not errors, f"decode accepted a header the schema refuses: {errors[:3]}"
        assert schema_validator().is_valid(header.model_dump(mode="json")), "the decoded header dumps invalid"


def _same(decoded, reason, original: list) -> None:
    try:
        reference, reference_reason = decode(original), None
    except ProtocolError as exc:
        reference, reference_reason = None, exc.reason
    assert reason == reference_reason, f"an equivalent encoding gives {reason}, the original {reference_reason}"
    if decoded is not None:
        assert decoded.header == reference.header, "an equivalent encoding decodes to another header"
        assert decoded.arrays.keys() == reference.arrays.keys()
        for name, array in decoded.arrays.items():
            assert array.dtype == reference.arrays[name].dtype
            np.testing.assert_array_equal(array, reference.arrays[name])


def rss_bytes() -> int:
    """Resident memory of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def watchdog(seconds: float):
    """Dump every thread's stack and end the process if the block hangs: a hang must not hang CI."""
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@dataclass
class Run:
    """What a stream run saw; failures are collected (with the message) rather than raised one by one.

    ``schema_every``: the JSON Schema check of accepted headers costs about 2 ms (jsonschema),
    forty times a decode, so long runs check one accepted header in that many; the decode
    tests check every one.
    """

    rejected: Counter = field(default_factory=Counter)  # by reason, from the outcomes
    expected: Counter = field(default_factory=Counter)  # by reason, predicted
    accepted: Counter = field(default_factory=Counter)  # by kind, from the outcomes
    fed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    slowest: tuple[float, str] = (0.0, "")
    schema_every: int = 1
    decoded: int = 0

    def fail(self, what: str, case: Case | None = None) -> None:
        if len(self.failures) < 20:
            self.failures.append(what + (f"\n    {describe_case(case)}" if case is not None else ""))

    def judge(self, case: Case) -> Judged | None:
        check_schema = self.decoded % self.schema_every == 0
        try:
            judged = judge(case, check_schema)
        except Exception as exc:  # the message is the finding: keep it with its repro, go on
            self.fail(f"decode: {type(exc).__name__}: {exc}", case)
            return None
        self.decoded += judged.decoded is not None
        self._time(judged.seconds, case)
        return judged

    def receive(self, ingest: Ingest, case: Case):
        t0 = time.perf_counter()
        try:
            outcome = ingest.receive(case.frames)
        except Exception as exc:  # what the service would count as internal_error
            self.fail(f"receive raised {type(exc).__name__}: {exc}", case)
            return None
        self._time(time.perf_counter() - t0, case)
        if outcome.kind == "rejected":
            self.rejected[outcome.reason] += 1
            if outcome.reason not in DOCUMENTED_REASONS:
                self.fail(f"undocumented reason {outcome.reason!r}", case)
        else:
            self.accepted[outcome.kind] += 1
        return outcome

    def _time(self, seconds: float, case: Case) -> None:
        if seconds > self.slowest[0]:
            self.slowest = (seconds, describe_case(case, 32))

    def check(self) -> None:
        assert not self.failures, f"{len(self.failures)} failures, first ones:\n" + "\n".join(self.failures)
        assert self.slowest[0] < MESSAGE_BOUND_S, f"a message took {self.slowest[0]:.3f} s: {self.slowest[1]}"


def would_change(judged: Judged, real_id: str) -> bool:
    """A valid start (it replaces the open acquisition, SPEC 5) or a valid message naming ``real_id``.

    Without authentication such a forgery cannot be told from the producer's own messages, so
    the interleaved runs do not send it.
    """
    header = judged.decoded.header if judged.decoded is not None else None
    return header is not None and (header.kind == "start" or header.acquisition_id == real_id)


def interleaved(real: Sequence, hostile: Iterator[Case], n: int, seed: int, after_stop: bool = True) -> Iterator:
    """The real messages in order, with ``n`` hostile ones spread at random between them.

    Yields ``(True, frames)`` for a real message and ``(False, case)`` for a hostile one;
    with ``after_stop`` False none follows the stop.
    """
    gaps = len(real) + 1 if after_stop else len(real)
    counts = np.random.default_rng(seed).multinomial(n, [1 / gaps] * gaps)
    for i, message in enumerate(real):
        for _ in range(counts[i]):
            yield False, next(hostile)
        yield True, message
    if after_stop:
        for _ in range(counts[-1]):
            yield False, next(hostile)


def run_interleaved(acquisition: tuple, bases, n: int, seed: int, schema_every: int = 10,
                    batch_deadline_s: float = 300.0) -> tuple[Run, Ingest, float]:
    """Hostile messages between the messages of a real acquisition, through a fresh ``Ingest``.

    Every hostile message is judged first; those that would legitimately change the real
    acquisition are skipped, the others are fed and must be rejected with the reason SPEC
    gives them (decode's, or ``unknown_acquisition`` for a valid frame or stop of another
    acquisition). Returns the run, the ingest and the resident memory the hostile messages
    added beyond the real acquisition.
    """
    name, sweeps, real_id = acquisition
    real = real_acquisition(name, sweeps, real_id)
    ingest, run = Ingest(), Run(schema_every=schema_every)
    cube_bytes = None
    before = _warm_rss(real)
    with watchdog(batch_deadline_s):
        for count, (is_real, item) in enumerate(interleaved(real, hostile_stream(bases, seed, n), n, seed)):
            if count % 1000 == 0:
                faulthandler.dump_traceback_later(batch_deadline_s, exit=True)  # re-armed: the run may be long
            if is_real:
                outcome = ingest.receive(item)
                if outcome.kind == "rejected":
                    run.fail(f"a real message was rejected: {outcome.reason}: {outcome.detail}")
                if cube_bytes is None:
                    cube_bytes = ingest.current.accumulator.cube.nbytes
                continue
            _feed_hostile(run, ingest, item, real_id)
    grown = rss_bytes() - before - (cube_bytes or 0)
    return run, ingest, grown


def warm_kernels() -> None:
    """Compile every kernel variant a message can reach, before anything is timed.

    numba compiles once per argument type, and read-only (from bytes) and unaligned arrays
    (from a view at an odd address) are types of their own; a first compilation inside a
    timed message would look like a hang.
    """
    ingest = Ingest(IngestOptions(energy_min_kev=0.1, energy_rebin=2))
    ingest.receive(read_container(GOLDEN / "start.bin"))
    seq = 1
    for name in ("frame_events", "frame_events_detector", "frame_velox", "frame_dense_u8", "frame_dense_u16"):
        frames = read_container(GOLDEN / f"{name}.bin")
        for view in (lambda f: f, lambda f: memoryview(b"\x00" + f)[1:]):
            doc = msgpack.unpackb(frames[0]) | {"seq": seq}
            ingest.receive([pack(doc)] + [view(f) for f in frames[1:]])
            seq += 1
    for dtype in ("<u4", "<u8"):  # dense dtypes no golden message carries
        counts = np.zeros((1, 32), dtype)
        doc = {"protocol": 1, "acquisition_id": GOLDEN_ID, "seq": seq, "kind": "frame", "payload": "dense",
               "frame_index": 0, "pixel_start": 0, "arrays": [{"name": "counts", "dtype": dtype, "shape": [1, 32]}]}
        for view in (lambda f: f, lambda f: memoryview(b"\x00" + f)[1:]):
            ingest.receive([pack(doc | {"seq": seq}), view(counts.tobytes())])
            seq += 1


def _warm_rss(real: Sequence) -> int:
    """Resident memory once everything a run loads on first use is loaded (kernels, schema, caches)."""
    warm_kernels()
    warm = Ingest()
    for message in real:
        warm.receive(message)
    del warm
    schema_validator()
    gc.collect()
    return rss_bytes()


def _feed_hostile(run: Run, ingest: Ingest, case: Case, real_id: str) -> None:
    judged = run.judge(case)
    if judged is None:
        return
    if would_change(judged, real_id):
        run.skipped += 1
        return
    expected = judged.reason or "unknown_acquisition"
    run.expected[expected] += 1
    run.fed += 1
    outcome = run.receive(ingest, case)
    if outcome is not None and (outcome.kind, outcome.reason) != ("rejected", expected):
        run.fail(f"expected rejection {expected}, got {outcome.kind} {outcome.reason}: {outcome.detail}", case)


def check_real_acquisition(ingest: Ingest, acquisition: tuple) -> None:
    """The real acquisition is stopped, complete, and its cube is the file's own sum, exactly."""
    name, sweeps, real_id = acquisition
    acq = ingest.current
    assert acq is not None and acq.acquisition_id == real_id and acq.state == "stopped"
    assert acq.missing == 0 and acq.messages == len(real_acquisition(name, sweeps, real_id))
    reference = file_sum(name)
    assert acq.accumulator.counts == int(reference.sum(dtype=np.uint64))
    np.testing.assert_array_equal(acq.accumulator.cube, reference)


class CubeModel:
    """What an acquisition's cube must hold: each accepted frame added again with plain numpy.

    Independent of the kernels; only the energy selection (crop and rebinning) is taken from
    the accumulator, whose own tests cover it.
    """

    def __init__(self, acq):
        self.acq = acq
        self.selection = acq.accumulator.selection
        self.cube = np.zeros((acq.accumulator.n_pixels, self.selection.channels), np.uint64)

    def add(self, header, arrays: dict) -> None:
        lo, rebin, kept = self.selection.lo, self.selection.rebin, self.selection.channels
        if header.payload == "dense":
            counts = arrays["counts"].astype(np.uint64)[:, lo:lo + kept * rebin]
            rows = slice(header.pixel_start, header.pixel_start + counts.shape[0])
            self.cube[rows] += counts.reshape(counts.shape[0], kept, rebin).sum(axis=2)
            return
        if header.payload == "events":
            pixel, channel = arrays["pixel"].astype(np.int64), arrays["channel"].astype(np.int64)
        else:
            stream = arrays["stream"].astype(np.int64)
            marker = stream == 65535
            pixel = header.pixel_start + np.cumsum(marker) - marker
            pixel, channel = pixel[~marker], stream[~marker]
        c = channel - lo
        keep = (c >= 0) & (c // rebin < kept)
        np.add.at(self.cube, (pixel[keep], c[keep] // rebin), 1)

    def differs(self) -> str | None:
        """Where the acquisition's cube and counts differ from the model, or None."""
        cube = self.acq.accumulator.cube.reshape(self.cube.shape)
        if not np.array_equal(cube, self.cube):
            return f"cube of {self.acq.acquisition_id!r} differs in {int((cube != self.cube).sum())} cells"
        if self.acq.accumulator.counts != int(self.cube.sum()):
            return f"counts of {self.acq.acquisition_id!r}: {self.acq.accumulator.counts} != {int(self.cube.sum())}"
        return None


def run_everything(acquisition: tuple, bases, n: int, seed: int, options: IngestOptions,
                   release_every: int = 37, schema_every: int = 10) -> tuple[Run, Ingest, int]:
    """Every hostile message fed, valid starts included, between the messages of a real acquisition.

    After each start accepted, an :func:`episode` of frames aimed at it follows. Every cube is
    compared with a :class:`CubeModel` when its acquisition stops being the current one, and at
    the end. Every ``release_every`` messages the oldest acquisition waiting for its final
    refit is released, as the service does when that refit ends. Returns the run, the ingest and
    the most acquisitions held at once.
    """
    name, sweeps, real_id = acquisition
    real = real_acquisition(name, sweeps, real_id)
    warm_kernels()
    ingest, run, most_open, model = Ingest(options), Run(schema_every=schema_every), 0, None
    draw = RandomDraw(f"{seed}:episodes")
    pending = iter(())
    count = 0
    stream = interleaved(real, hostile_stream(bases, seed, n), n, seed)
    for is_real, item in _with_episodes(stream, lambda: pending):
        case = Case(list(item), "real") if is_real else item
        judged = run.judge(case)
        outcome = run.receive(ingest, case)
        if outcome is None or judged is None:
            continue
        if judged.reason is not None and outcome.reason != judged.reason:  # Ingest must give decode's reason
            run.fail(f"decode said {judged.reason}, Ingest {outcome.kind} {outcome.reason}", case)
        if outcome.kind == "start":
            model = _switch_model(run, model, ingest.current)
            pending = episode(draw, ingest.current.start, draw.integer(2, 30))
        elif outcome.kind == "frame":
            model.add(judged.decoded.header, judged.decoded.arrays)
        run.fed += 1
        most_open = max(most_open, ingest.open_acquisitions)
        if ingest.open_acquisitions > options.max_open_acquisitions:
            run.fail(f"{ingest.open_acquisitions} acquisitions held, limit {options.max_open_acquisitions}", case)
        count += 1
        if count % release_every == 0 and ingest.pending:
            ingest.release(ingest.pending[0])
    _switch_model(run, model, None)
    return run, ingest, most_open


def _with_episodes(stream: Iterator, episode_now) -> Iterator:
    """``stream``, with the episode current at each step drained before the next message."""
    for item in stream:
        yield item
        yield from ((False, case) for case in episode_now())


def _switch_model(run: Run, model: CubeModel | None, acq) -> CubeModel | None:
    if model is not None and (difference := model.differs()):
        run.fail(difference)
    return CubeModel(acq) if acq is not None else None


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bases(data_dir) -> list[tuple[str, list]]:
    """The messages mutated (needs the real data folder)."""
    return mutation_bases()


# ---------------------------------------------------------------------------------------------
# The generator itself
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, -1, -32,
                                   -33, -128, -129, -2**15, -2**31, -2**63, 0.1, -1e308, None, True, False,
                                   "", "a" * 31, "a" * 32, "é" * 300, "x" * 70_000, b"", b"\x00" * 300,
                                   list(range(15)), list(range(16)), list(range(70_000)),
                                   {str(i): i for i in range(15)}, {str(i): i for i in range(16)},
                                   {"a": [1, {"b": [None, 2.5]}]}])
@pytest.mark.parametrize("widths", ["shortest", "widest", "mixed"])
def test_the_hand_written_msgpack_reads_back(value, widths):
    """Every width pack writes is msgpack; the shortest is byte for byte the reference encoder's."""
    encoded = pack(value, Encoding(widths, draw=RandomDraw(0)))
    assert msgpack.unpackb(encoded, raw=False, strict_map_key=False) == value
    if widths == "shortest":
        assert encoded == msgpack.packb(value, use_bin_type=True)


def test_the_oracle_agrees_with_the_golden_files(bases):
    """Every golden acquisition message is valid to SPEC; result documents are not acquisition messages."""
    outcomes = {name: spec_outcome(frames) for name, frames in golden_messages()}
    assert {n: o for n, o in outcomes.items() if o != "accepted"} == {
        "golden:status": "schema", "golden:clusters": "schema", "golden:composition": "schema"}
    for name, sweeps, aid in (CORE_SHELL, VELOX):
        assert {spec_outcome(m) for m in real_acquisition(name, sweeps, aid)} == {"accepted"}


def test_the_stream_is_reproducible_and_mixed(bases):
    """Message i depends only on the seed and i (no state leaks from one message to the next);
    both halves of the generator and every decode outcome appear."""
    cases = list(hostile_stream(bases, 3, 2000))
    for i in range(0, 2000, 97):
        alone = hostile_message(RandomDraw(f"3:{i}"), bases)
        assert [bytes(f) for f in alone.frames] == [bytes(f) for f in cases[i].frames], i
    origins = Counter(c.origin.split(":")[0] for c in cases)
    assert origins["spec"] > 600 and sum(origins.values()) - origins["spec"] > 600
    outcomes = Counter(spec_outcome(c.frames) for c in cases)
    assert set(outcomes) >= DECODE_REASONS | {"accepted"}, outcomes
    assert outcomes["accepted"] > 200, outcomes


# ---------------------------------------------------------------------------------------------
# decode: a property
# ---------------------------------------------------------------------------------------------

@settings(max_examples=500, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(data=st.data())
def test_decode_returns_or_refuses_with_the_reason_spec_gives(bases, data):
    """decode returns a valid header or raises ProtocolError with the reason SPEC gives, in bounded time.

    What it accepts re-validates and matches the JSON Schema: the decoder is not laxer than
    the schema (nor, by the oracle, stricter than SPEC).
    """
    case = hostile_message(HypothesisDraw(data), bases)
    judged = judge(case)
    assert judged.seconds < MESSAGE_BOUND_S, describe_case(case)


def test_decode_on_a_seeded_stream(bases):
    """The same property on the seeded stream the ingest runs use (failures collected, not shrunk)."""
    run = Run()
    for case in hostile_stream(bases, 11, 1000):
        run.judge(case)
    run.check()


# ---------------------------------------------------------------------------------------------
# Ingest: hostile messages between the messages of a real acquisition
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("acquisition, seed", [(CORE_SHELL, 21), (VELOX, 22)], ids=["core_shell", "velox"])
def test_ingest_keeps_a_real_acquisition_exact_among_hostile_messages(bases, acquisition, seed):
    """Each hostile message refused with the reason SPEC gives it, nothing raised, counts by reason
    exact, the cube exactly the file's sum, memory back where it was."""
    run, ingest, grown = run_interleaved(acquisition, bases, 800, seed)
    run.check()
    assert run.fed > 600
    assert run.rejected == run.expected == ingest.rejected
    assert "internal_error" not in ingest.rejected
    check_real_acquisition(ingest, acquisition)
    assert grown < RSS_SLACK_BYTES, f"resident memory grew by {grown / 2**20:.0f} MiB"


def test_ingest_takes_everything_and_holds_at_most_the_open_acquisitions_allowed(bases):
    """Valid starts too: no exception, counts by reason exact, acquisitions held bounded.

    The cube limit is small so that a valid hostile start cannot take gigabytes; the energy
    crop and rebinning exercise the paths that drop channels.
    """
    options = IngestOptions(max_cube_bytes=32 * 2**20, energy_min_kev=0.1, energy_max_kev=15.0, energy_rebin=2)
    run, ingest, most_open = run_everything(VELOX, bases, 1200, 31, options)
    run.check()
    assert run.rejected == ingest.rejected and "internal_error" not in ingest.rejected
    assert sum(ingest.rejected.values()) + ingest.accepted == run.fed >= 1200 + len(real_acquisition(*VELOX))
    assert 1 <= most_open <= options.max_open_acquisitions
    # hostile data reached the accumulator and its checks, not only the decoder
    assert run.accepted["start"] > 10 and run.accepted["frame"] > 50
    assert set(ingest.rejected) >= DATA_REASONS


# ---------------------------------------------------------------------------------------------
# The service over loopback ZeroMQ
# ---------------------------------------------------------------------------------------------

def test_service_over_zeromq_counts_every_hostile_message(bases):
    """The loop survives, the real acquisition is exact, and ``rejected`` counts what was sent, by reason."""
    real = real_acquisition(*CORE_SHELL)
    context = zmq.Context()
    server = ServedApp(load_settings(overrides={"refit": {"interval_s": 3600}}), context).start()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDTIMEO, 60_000)  # a dead service fails the test instead of blocking it
    push.setsockopt(zmq.LINGER, 0)
    push.connect(server.endpoint)
    run = Run()
    try:
        for is_real, item in interleaved(real, hostile_stream(bases, 41, 600), 600, 41, after_stop=False):
            if is_real:
                if item is real[-1]:
                    assert server.is_alive(), f"the service died: {server.app.error!r}"
                push.send_multipart(item)
                continue
            judged = run.judge(item)
            # ZeroMQ cannot send a message of no frames; every other one is far below ZMQ_MAXMSGSIZE
            if judged is None or would_change(judged, CORE_SHELL[2]) or not item.frames:
                run.skipped += 1
                continue
            assert max(map(_nbytes, item.frames)) < server.connection.max_message_bytes  # ZeroMQ would drop it
            run.expected[judged.reason or "unknown_acquisition"] += 1
            push.send_multipart(item.frames)
        server.finish(120)
    finally:
        push.close()
        server.app.close()
        context.destroy(linger=0)
    run.check()
    assert not server.is_alive() and server.app.error is None and server.service.finished == 1
    ingest = server.service.ingest
    assert dict(ingest.rejected) == dict(run.expected) and "internal_error" not in ingest.rejected
    final = [h for h, _ in server.collector.documents if h.kind == "status" and h.final]
    assert len(final) == 1
    status, reference = final[0], file_sum(CORE_SHELL[0])
    assert status.rejected == dict(run.expected)
    assert status.acquisition_id == CORE_SHELL[2] and status.state == "stopped"
    assert (status.messages, status.gaps.count) == (len(real), 0)
    assert (status.frames, status.counts) == (CORE_SHELL[1], int(reference.sum(dtype=np.uint64)))
    np.testing.assert_array_equal(ingest.current.accumulator.cube, reference)


# ---------------------------------------------------------------------------------------------
# What the fuzzing found, each fixed
# ---------------------------------------------------------------------------------------------

def test_a_bytes_key_is_not_msgpack():
    stop = json.loads((GOLDEN / "stop.json").read_text())["header"]
    with pytest.raises(ProtocolError) as caught:
        decode([pack({**stop, b"x": 1})])
    assert caught.value.reason == "not_msgpack"


def test_acquisition_rejected_counts_only_messages_naming_the_acquisition():
    ingest = Ingest()
    assert ingest.receive(read_container(GOLDEN / "start.bin")).kind == "start"
    stop = json.loads((GOLDEN / "stop.json").read_text())["header"] | {"acquisition_id": "someone-else"}
    assert ingest.receive([msgpack.packb(stop)]).reason == "unknown_acquisition"
    assert dict(ingest.current.rejected) == {}


def test_a_64_kib_header_is_refused_quickly():
    """One header of 65,400 empty maps as ``arrays`` costs the ingest thread about 0.7 s (3 errors per item,
    all turned into dicts by ``exc.errors()``); the schema's ``maxItems`` would refuse it at once."""
    doc = {"protocol": 1, "acquisition_id": "a", "seq": 1, "kind": "frame", "payload": "dense", "frame_index": 0,
           "pixel_start": 0, "arrays": [{}] * 65_400}
    frames = [msgpack.packb(doc)]
    assert len(frames[0]) <= MAX_HEADER_BYTES
    ingest = Ingest()
    seconds = min(_timed(ingest.receive, frames) for _ in range(3))
    assert seconds < 0.1, f"{seconds:.2f} s"


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# The long run
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_hundred_thousand_hostile_messages_among_a_real_acquisition(bases):
    """100,000 messages, same assertions as the default run, each message in bounded time, memory bounded."""
    run, ingest, grown = run_interleaved(CORE_SHELL, bases, 100_000, 101)
    run.check()
    assert run.fed + run.skipped == 100_000 and run.fed > 70_000
    assert run.rejected == run.expected == ingest.rejected
    assert "internal_error" not in ingest.rejected
    check_real_acquisition(ingest, CORE_SHELL)
    assert grown < RSS_SLACK_BYTES, f"resident memory grew by {grown / 2**20:.0f} MiB"


@pytest.mark.slow
def test_a_hundred_thousand_messages_fed_whole(bases):
    """60,000 generated messages and the episodes their valid starts open: over 100,000 fed in all."""
    options = IngestOptions(max_cube_bytes=32 * 2**20)
    before = _warm_rss(real_acquisition(*CORE_SHELL))
    run, ingest, most_open = run_everything(CORE_SHELL, bases, 60_000, 102, options, schema_every=50)
    run.check()
    assert run.rejected == ingest.rejected and "internal_error" not in ingest.rejected
    assert sum(ingest.rejected.values()) + ingest.accepted == run.fed >= 100_000
    assert most_open <= options.max_open_acquisitions
    assert set(ingest.rejected) >= DATA_REASONS | {"acquisition_too_large", "too_many_acquisitions"}
    # cubes held: the open ones, the current one once released, and the model of one
    held = (options.max_open_acquisitions + 1) * options.max_cube_bytes + 2 * options.max_cube_bytes
    assert rss_bytes() - before < held + RSS_SLACK_BYTES

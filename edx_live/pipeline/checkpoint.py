"""Checkpoints of an acquisition's record: bytes that restore it exactly, without pickle.

A checkpoint holds what a killed service needs to go on where it was: the acquisition's
:class:`~edx_live.pipeline.state.AcquisitionRecord` (refit index, the latest result of each
workflow with its quantification, convergence, the quantification set-up) and the service's
document numbering. The counts are not in it: the recording of the acquisition holds every
message, and replaying it rebuilds the spectrum image exactly (``edx_live.shell.recover``).

The format is msgpack with extension types for numpy arrays, tuples, sets and the project's own
classes. Only the classes in :data:`TYPES` are written or read: reading never imports or runs
anything a file names, so a checkpoint from anywhere is data, not code. Pure: no files here.

>>> data = dumps({"record": record})          # doctest: +SKIP
>>> loads(data)["record"] == record           # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import msgpack
import numpy as np
from edx_protocol import Start

from edx_live.core.snapshot import Snapshot
from edx_live.pipeline.state import AcquisitionRecord
from edx_live.quantify.calibration import AxisCalibration
from edx_live.quantify.cliff_lorimer import Geometry
from edx_live.quantify.composition import Estimate, Quantification, Setup, TargetTime
from edx_live.segment.result import SegmentationResult
from edx_live.segment.tracking import ConvergenceState, ConvergenceTracker

#: Version of the checkpoint layout; a reader refuses others (the service then replays every refit).
FORMAT = 1


class CheckpointError(ValueError):
    """Bytes that are not a checkpoint this version can read, or an object it cannot write."""


def _classes() -> dict[str, type]:
    from edx_live.pipeline.refit import WorkflowOutput  # refit imports this module's neighbours

    kinds = (AcquisitionRecord, WorkflowOutput, Snapshot, SegmentationResult, ConvergenceState, ConvergenceTracker,
             Setup, Geometry, AxisCalibration, Quantification, Estimate, TargetTime, Start)
    return {f"{k.__module__}.{k.__qualname__}": k for k in kinds}


#: The classes a checkpoint may hold, by qualified name (filled on first use).
TYPES: dict[str, type] = {}

_ARRAY, _TUPLE, _OBJECT, _SCALAR, _MODEL, _SET, _COUNTER = range(1, 8)


def _name(obj) -> str:
    if not TYPES:
        TYPES.update(_classes())
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if name not in TYPES:
        raise CheckpointError(f"a checkpoint cannot hold a {name}; add it to edx_live.pipeline.checkpoint.TYPES")
    return name


def _pack(obj) -> bytes:
    return msgpack.packb(obj, default=_default, use_bin_type=True, strict_types=True)


def _default(obj):
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise CheckpointError("a checkpoint holds numeric arrays only, not object arrays")
        data = np.ascontiguousarray(obj)
        return msgpack.ExtType(_ARRAY, _pack([data.dtype.str, list(data.shape), data.tobytes()]))
    if isinstance(obj, np.generic):
        return msgpack.ExtType(_SCALAR, _pack([obj.dtype.str, obj.tobytes()]))
    if isinstance(obj, Counter):
        return msgpack.ExtType(_COUNTER, _pack(dict(obj)))
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return msgpack.ExtType(_TUPLE, _pack(list(obj)))
    if isinstance(obj, (set, frozenset)):
        return msgpack.ExtType(_SET, _pack(sorted(obj, key=repr)))
    if isinstance(obj, dict):  # a dict subclass other than Counter
        return dict(obj)
    if isinstance(obj, float):  # a float subclass
        return float(obj)
    if isinstance(obj, int) and not isinstance(obj, bool):
        return int(obj)
    if isinstance(obj, str):
        return str(obj)
    name = _name(obj)
    if hasattr(obj, "model_dump_json"):  # a protocol message
        return msgpack.ExtType(_MODEL, _pack([name, obj.model_dump_json()]))
    if dataclasses.is_dataclass(obj):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    else:
        fields = dict(vars(obj))
    return msgpack.ExtType(_OBJECT, _pack([name, fields]))


def _unpack(data: bytes):
    return msgpack.unpackb(data, ext_hook=_ext, raw=False, strict_map_key=False, use_list=True)


def _ext(code: int, data: bytes):
    value = _unpack(data)
    if code == _ARRAY:
        dtype, shape, raw = value
        return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
    if code == _SCALAR:
        dtype, raw = value
        return np.frombuffer(raw, dtype=np.dtype(dtype))[0]
    if code == _TUPLE:
        return tuple(value)
    if code == _SET:
        return set(value)
    if code == _COUNTER:
        return Counter(value)
    if code in (_MODEL, _OBJECT):
        name, fields = value
        if not TYPES:
            TYPES.update(_classes())
        cls = TYPES.get(name)
        if cls is None:
            raise CheckpointError(f"a checkpoint names a class this version does not restore: {name}")
        if code == _MODEL:
            return cls.model_validate_json(fields)
        obj = object.__new__(cls)
        for key, item in fields.items():
            object.__setattr__(obj, key, item)
        return obj
    raise CheckpointError(f"unknown extension type {code} in a checkpoint")


def dumps(content: dict) -> bytes:
    """``content`` (a map of plain data, arrays and the classes of :data:`TYPES`) as checkpoint bytes."""
    return _pack({"format": FORMAT, "content": content})


def loads(data: bytes) -> dict:
    """The content :func:`dumps` wrote; CheckpointError if the bytes are not a checkpoint of this version."""
    try:
        top = _unpack(data)
    except CheckpointError:
        raise
    except Exception as exc:  # msgpack raises several kinds on damaged bytes
        raise CheckpointError(f"not a checkpoint: {exc}") from None
    if not isinstance(top, dict) or top.get("format") != FORMAT or not isinstance(top.get("content"), dict):
        raise CheckpointError(f"not a checkpoint of format {FORMAT}")
    return top["content"]

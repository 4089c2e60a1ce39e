"""Field types exactly as strict as the wire: what SPEC 2.1 allows for each JSON Schema type.

A msgpack header decodes to Python ``int``, ``float``, ``str``, ``bytes``, ``bool``,
``None``, lists and dicts. pydantic's lax mode would turn ``True`` into 1, ``"5"``
into 5 and ``b"id"`` into ``"id"``; the schema forbids all three, so these types
refuse them. They still take numpy scalars, which Python code on either side
hands to the models.
"""

from __future__ import annotations

import math
import numbers
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

#: Largest sequence number, sweep index or sweep count: int32-safe for any producer language.
MAX_INDEX = 2**31 - 1

#: Largest pixel index on the wire (``pixel`` arrays are <u4).
MAX_PIXEL = 2**32 - 1

#: Largest scan side: rows x columns stays below 2**32, so a pixel index fits a <u4.
MAX_SCAN_SIDE = 65535


def _integer(value):
    """An integer, or a float with no fractional part (SPEC 2.1); never a bool or a string."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"must be an integer, got {type(value).__name__}")
    if isinstance(value, numbers.Integral):
        return int(value)
    value = float(value)
    if not math.isfinite(value) or not value.is_integer():
        raise ValueError(f"must be an integer, got {value!r}")
    return int(value)


def _number(value):
    """A finite float or integer; never a bool, a string, NaN or infinity."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"must be finite, got {value!r}")
    return value


def _string(value):
    """A str (msgpack str); msgpack bin arrives as bytes and is refused."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type(value).__name__}")
    return value


def wire_int(**constraints):
    """An integer type with pydantic ``Field`` constraints (ge, le, gt...) that refuses bools and strings.

    The constraints must sit before the validator in ``Annotated``: placed on a field
    around an already validated type, pydantic neither applies nor documents them.
    """
    return Annotated[int, Field(**constraints), BeforeValidator(_integer)]


def wire_float(**constraints):
    """A finite number type with ``Field`` constraints that refuses bools, strings, NaN and infinity."""
    return Annotated[float, Field(**constraints), BeforeValidator(_number)]


def wire_str(**constraints):
    """A string type with ``Field`` constraints (max_length, pattern) that refuses msgpack bin."""
    return Annotated[str, Field(**constraints), BeforeValidator(_string)]


#: ``seq``, ``frame_index``, ``frames``: 0 .. MAX_INDEX.
Index = wire_int(ge=0, le=MAX_INDEX)
#: ``pixel_start``: 0 .. MAX_PIXEL.
PixelIndex = wire_int(ge=0, le=MAX_PIXEL)
#: The protocol version field: the integer 1, not ``true``.
Version1 = Annotated[Literal[1], BeforeValidator(_integer)]

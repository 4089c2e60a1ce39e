"""Scan pixels to physical units and to the stage frame. Pure arithmetic on the start's geometry.

Convention (protocol/SPEC.md 7.6): scan x runs along the columns, scan y against the rows
(rows go down the image, y goes up), both from the scan centre; the scan rotation turns
scan (x, y) counter-clockwise into the stage frame.
"""

from __future__ import annotations

import math

from edx_protocol import Start

#: Metres per unit of the length units a ``pixel_unit`` may name.
LENGTH_UNITS_M = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "μm": 1e-6, "nm": 1e-9, "pm": 1e-12,
                  "A": 1e-10, "Å": 1e-10}

Box = tuple[int, int, int, int]


def pixel_size_m(start: Start) -> float | None:
    """The scan step in metres: the field of view over the columns, else the pixel size in a length unit."""
    if start.field_of_view_m is not None:
        return start.field_of_view_m / start.scan_shape[1]
    if start.pixel_size is not None and start.pixel_unit in LENGTH_UNITS_M:
        return start.pixel_size * LENGTH_UNITS_M[start.pixel_unit]
    return None


def box_centre(box: Box) -> tuple[float, float]:
    """(row, column) of a box's centre, pixel ``i`` spanning [i, i + 1)."""
    r0, c0, r1, c1 = box
    return (r0 + r1) / 2, (c0 + c1) / 2


def physical_box(start: Start, box: Box) -> tuple[float, float, float, float] | None:
    """``box`` times the pixel size, in ``pixel_unit``; None without a pixel size."""
    if start.pixel_size is None:
        return None
    return tuple(float(v * start.pixel_size) for v in box)


def centre_offset_m(start: Start, box: Box) -> tuple[float, float] | None:
    """(x, y) of the box centre from the scan centre, in m, rotated into the stage frame.

    None when the pixel size in metres is unknown; a start without a scan rotation is taken
    as unrotated.
    """
    step = pixel_size_m(start)
    if step is None:
        return None
    rows, columns = start.scan_shape
    row, column = box_centre(box)
    x, y = (column - columns / 2) * step, -(row - rows / 2) * step
    theta = start.scan_rotation_rad or 0.0
    cos, sin = math.cos(theta), math.sin(theta)
    return _clean(x * cos - y * sin), _clean(x * sin + y * cos)


def stage_target(start: Start, offset: tuple[float, float] | None) -> tuple[float, float] | None:
    """The stage (x, y) of a point ``offset`` from the scan centre; None without a stage x and y."""
    stage = start.stage_position
    if offset is None or stage is None or stage.x is None or stage.y is None:
        return None
    return stage.x + offset[0], stage.y + offset[1]


def box_width_m(start: Start, box: Box) -> float | None:
    """The box's extent along the columns in m: the field of view a scan of just the box would have."""
    step = pixel_size_m(start)
    return None if step is None else (box[3] - box[1]) * step


def _clean(value: float) -> float:
    """Round away the 1e-33 a rotation by a multiple of 90 degrees leaves where the answer is 0."""
    return 0.0 if abs(value) < 1e-24 else float(value)

"""Messages a producer sends to the service: acquisition start, frame data, images, stop.

Every message is a small msgpack header (one of the models below) followed by
the raw buffers its ``arrays`` list describes. These pydantic models are the
single source of truth: ``protocol/schema`` and ``protocol/golden`` are
generated from them (``python -m edx_protocol.generate``).
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal, NamedTuple, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .fields import (MAX_INDEX, MAX_PIXEL, MAX_SCAN_SIDE, Index, PixelIndex, Version1, wire_float,
                     wire_int, wire_str)
from .version import PROTOCOL_VERSION

#: dtypes allowed on the wire, as numpy ``dtype.str`` (explicit byte order).
UNSIGNED_DTYPES = ("|u1", "<u2", "<u4", "<u8")

#: dtypes a simultaneous image may travel in (integers as the detector digitises them, or floats).
IMAGE_DTYPES = ("|u1", "<u2", "<u4", "<f4", "<f8")

#: Velox SpectrumStream marker that closes a pixel's list of channels.
VELOX_NEXT_PIXEL = 65535

#: Header fields that have a Python default but that every peer must put on the wire.
WIRE_REQUIRED = ("protocol", "kind", "payload")

AcquisitionId = Annotated[wire_str(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$"), Field(
    description="Identifies one acquisition; every message of it carries the same id.")]


class ArraySpec(NamedTuple):
    """What a message kind allows for one named array: dtypes, number of dimensions, optional."""

    dtypes: tuple[str, ...]
    ndim: int
    optional: bool = False


def _wire_json_schema(schema: dict, cls: type) -> None:
    """Complete a message's JSON Schema with what pydantic cannot infer.

    Marks the ``WIRE_REQUIRED`` fields as required (the codec and the
    discriminated unions need them on the wire even though Python fills them
    in), and ``arrays`` too when ``cls.ARRAYS`` names a required array, whose
    rules it adds to the ``arrays`` property.
    """
    properties = schema.get("properties", {})
    spec = getattr(cls, "ARRAYS", None)
    required = set(schema.get("required", [])) | (set(WIRE_REQUIRED) & set(properties))
    if spec and not all(s.optional for s in spec.values()):
        required.add("arrays")
    schema["required"] = [name for name in properties if name in required]
    if spec:
        arrays = properties["arrays"]
        extra = arrays_json_schema(spec)
        arrays["items"].update(extra.pop("items"))  # keep pydantic's $ref to ArrayDescriptor
        arrays.update(extra)


def arrays_json_schema(spec: dict[str, ArraySpec]) -> dict:
    """JSON Schema keywords for an ``arrays`` list that follows ``spec``.

    Each descriptor must be one of the named arrays with an allowed dtype and
    rank; each name appears once, required ones at least once.
    """
    allowed = [{"properties": {"name": {"const": name}, "dtype": {"enum": list(s.dtypes)},
                               "shape": {"minItems": s.ndim, "maxItems": s.ndim}}}
               for name, s in spec.items()]
    counts = [{"contains": {"properties": {"name": {"const": name}}, "required": ["name"]},
               "minContains": 0 if s.optional else 1, "maxContains": 1}
              for name, s in spec.items()]
    return {"items": {"anyOf": allowed}, "allOf": counts, "maxItems": len(spec)}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ArrayDescriptor(_Model):
    """Names one raw buffer that follows the header, in order."""

    name: wire_str(max_length=64) = Field(description="Name of the array; which names a message allows depends on its kind.")
    dtype: Literal["|u1", "<u2", "<u4", "<u8", "<f4", "<f8"] = Field(
        description="Element type as a numpy dtype string: u = unsigned integer, f = IEEE float, "
                    "digit = bytes per element, < = little-endian, | = single byte.")
    shape: list[wire_int(ge=0, le=MAX_PIXEL)] = Field(max_length=8, 
        description="Dimensions in C order (last index varies fastest); the buffer holds "
                    "product(shape) * itemsize bytes.")


def check_arrays(arrays: list[ArrayDescriptor], spec: dict[str, ArraySpec]) -> dict[str, ArrayDescriptor]:
    """Check a message's arrays against ``spec`` (names, dtypes, ranks); return them by name.

    Raises
    ------
    ValueError
        When a name repeats, a required array is missing, an unknown one is
        present, or a dtype or rank is not allowed.
    """
    by_name = {a.name: a for a in arrays}
    if len(by_name) != len(arrays):
        raise ValueError("array names must be unique")
    optional = sorted(name for name, s in spec.items() if s.optional)
    missing = {name for name, s in spec.items() if not s.optional} - set(by_name)
    unknown = set(by_name) - set(spec)
    if missing or unknown:
        raise ValueError(f"arrays must be {sorted(spec)} (optional {optional}); "
                         f"missing {sorted(missing)}, unknown {sorted(unknown)}")
    for name, desc in by_name.items():
        dtypes, ndim, _ = spec[name]
        if desc.dtype not in dtypes:
            raise ValueError(f"array {name!r} must have dtype in {dtypes}, got {desc.dtype}")
        if len(desc.shape) != ndim:
            raise ValueError(f"array {name!r} must have {ndim} dimension(s), got shape {desc.shape}")
    return by_name


class EnergyAxis(_Model):
    """Calibration of the detector channels: E(channel i) = offset + i * scale, in keV."""

    offset_kev: wire_float(ge=-1000, le=1000) = Field(description="Energy of channel 0, in keV (may be negative).")
    scale_kev: wire_float(gt=0, le=1000) = Field(description="Channel width, in keV.")
    channels: wire_int(gt=0, le=65534) = Field( description="Number of channels; valid channel indices are "
                                                      "0 .. channels-1.")


class Detector(_Model):
    """One X-ray detector (a Super-X system has four)."""

    name: wire_str(max_length=256) | None = None
    elevation_deg: wire_float(ge=-90, le=90) = Field(description="Take-off (elevation) angle, in degrees.")
    azimuth_deg: wire_float(ge=-360, le=360) = Field(description="Azimuth angle, in degrees.")
    energy_resolution_mnka_ev: wire_float(gt=0) | None = Field(
        default=None, description="Energy resolution (FWHM) at Mn Ka, in eV.")
    solid_angle_sr: wire_float(gt=0) | None = Field(default=None, description="Collection solid angle, in sr.")


#: Largest stage coordinate, m: a stage travels a few mm; 1 m leaves room for any unit mistake to show.
MAX_STAGE_M = 1.0

#: Largest angle, rad: one full turn either way.
MAX_ANGLE_RAD = 2 * math.pi


class StagePosition(_Model):
    """Where the specimen stage was when the scan was taken, in the microscope's stage frame.

    Lengths in metres and angles in radians, as ThermoFisher AutoScript reports them
    (its ``StagePosition`` x, y, z, a, b). Every coordinate is optional.
    """

    x: wire_float(ge=-MAX_STAGE_M, le=MAX_STAGE_M) | None = Field(default=None, description="Stage x, in m.")
    y: wire_float(ge=-MAX_STAGE_M, le=MAX_STAGE_M) | None = Field(default=None, description="Stage y, in m.")
    z: wire_float(ge=-MAX_STAGE_M, le=MAX_STAGE_M) | None = Field(default=None, description="Stage z (height), in m.")
    alpha: wire_float(ge=-MAX_ANGLE_RAD, le=MAX_ANGLE_RAD) | None = Field(
        default=None, description="Tilt about the stage's x axis (alpha), in rad.")
    beta: wire_float(ge=-MAX_ANGLE_RAD, le=MAX_ANGLE_RAD) | None = Field(
        default=None, description="Tilt about the stage's y axis (beta, double-tilt holders), in rad.")


class _Header(_Model):
    model_config = ConfigDict(json_schema_extra=_wire_json_schema)

    protocol: Version1 = Field(default=PROTOCOL_VERSION, description="Wire protocol version.")
    acquisition_id: AcquisitionId
    seq: Index = Field(description="Message counter within the acquisition; start is 0.")


class Start(_Header):
    """Opens an acquisition: everything needed to interpret the frames that follow."""

    kind: Literal["start"] = "start"
    scan_shape: tuple[wire_int(gt=0, le=MAX_SCAN_SIDE), wire_int(gt=0, le=MAX_SCAN_SIDE)] = Field(
        description="(rows, columns) of the scan; pixel index = row * columns + column."
    )
    energy_axis: EnergyAxis
    beam_energy_kev: wire_float(gt=0, le=2000) = Field(description="Primary beam energy, in keV.")
    detectors: list[Detector] = Field(
        min_length=1, max_length=255,
        description="The detectors; a frame's detector index is a position in this list.")
    pixel_size: wire_float(gt=0) | None = Field(default=None, description="Scan step, in pixel_unit.")
    pixel_unit: wire_str(max_length=32) = Field(default="nm", description="Unit of pixel_size, e.g. nm.")
    dwell_time_s: wire_float(gt=0) | None = Field(default=None,
                                       description="Beam dwell time per pixel and sweep, in s.")
    expected_frames: wire_int(gt=0, le=MAX_INDEX) | None = Field(default=None, description="Sweeps planned, if known.")
    elements: list[wire_str(max_length=2)] = Field(default_factory=list, max_length=118, description="Element symbols to quantify, e.g. Fe.")
    xray_lines: list[wire_str(max_length=16)] = Field(default_factory=list, max_length=256,
                                  description="X-ray lines to quantify, HyperSpy style, e.g. Fe_Ka.")
    instrument: wire_str(max_length=1024) | None = None
    title: wire_str(max_length=1024) | None = None
    field_of_view_m: wire_float(gt=0, le=MAX_STAGE_M) | None = Field(
        default=None, description="Horizontal field width: the scan's extent along its columns, in m.")
    scan_rotation_rad: wire_float(ge=-MAX_ANGLE_RAD, le=MAX_ANGLE_RAD) | None = Field(
        default=None, description="Scan rotation: the angle from the stage's x axis to the scan's column "
                                  "direction, counter-clockwise, in rad.")
    stage_position: StagePosition | None = Field(default=None, description="The stage when the scan was taken.")
    arrays: list[ArrayDescriptor] = Field(default_factory=list, max_length=0,
                                          description="Always empty: a start carries no buffer.")

    @property
    def n_pixels(self) -> int:
        return self.scan_shape[0] * self.scan_shape[1]


class _FrameHeader(_Header):
    ARRAYS: ClassVar[dict[str, ArraySpec]] = {}

    kind: Literal["frame"] = "frame"
    frame_index: Index = Field(description="Which sweep of the scan these counts belong to.")
    arrays: list[ArrayDescriptor] = Field(max_length=3, description="The buffers that follow the header, in order.")

    @model_validator(mode="after")
    def _arrays_follow_spec(self) -> "_FrameHeader":
        check_arrays(self.arrays, self.ARRAYS)
        return self


class EventsFrame(_FrameHeader):
    """A list of X-ray events: ``pixel`` (<u4), ``channel`` (<u2), optional ``detector`` (|u1)."""

    ARRAYS: ClassVar[dict[str, ArraySpec]] = {
        "pixel": ArraySpec(("<u4",), 1), "channel": ArraySpec(("<u2",), 1),
        "detector": ArraySpec(("|u1",), 1, optional=True)}

    payload: Literal["events"] = "events"

    @model_validator(mode="after")
    def _equal_lengths(self) -> "EventsFrame":
        lengths = {d.shape[0] for d in self.arrays}
        if len(lengths) != 1:
            raise ValueError(f"event arrays must have equal lengths, got {sorted(lengths)}")
        return self


class VeloxFrame(_FrameHeader):
    """A chunk of a Velox SpectrumStream: ``stream`` (<u2) of channel indices, 65535 = next pixel.

    The first value belongs to pixel ``pixel_start``; every 65535 advances one pixel.
    """

    ARRAYS: ClassVar[dict[str, ArraySpec]] = {"stream": ArraySpec(("<u2",), 1)}

    payload: Literal["velox"] = "velox"
    pixel_start: PixelIndex = Field(description="Pixel the first value of the stream belongs to.")
    detector: wire_int(ge=0, le=254) | None = Field(default=None,
                                 description="Index into start.detectors; null for a summed stream.")


class DenseFrame(_FrameHeader):
    """A block of whole spectra: ``counts`` (n_pixels, channels) for pixels from ``pixel_start`` on."""

    ARRAYS: ClassVar[dict[str, ArraySpec]] = {"counts": ArraySpec(UNSIGNED_DTYPES, 2)}

    payload: Literal["dense"] = "dense"
    pixel_start: PixelIndex = Field(description="Pixel of the first row of counts.")


class Image(_Header):
    """A sweep's simultaneous image (HAADF, ADF...), or a block of its rows: ``image`` (rows, columns).

    The block covers scan rows ``first_row`` to ``first_row + rows - 1`` of sweep
    ``frame_index``; its columns are the scan's. The receiver checks both against the start.
    """

    ARRAYS: ClassVar[dict[str, ArraySpec]] = {"image": ArraySpec(IMAGE_DTYPES, 2)}

    kind: Literal["image"] = "image"
    frame_index: Index = Field(description="Which sweep of the scan the image belongs to.")
    detector: wire_str(min_length=1, max_length=64) = Field(
        description="Name of the image detector, e.g. HAADF; every image of an acquisition names the same one.")
    first_row: wire_int(ge=0, le=MAX_SCAN_SIDE - 1) = Field(
        default=0, description="Scan row of the image's first row (a block of rows may be sent).")
    arrays: list[ArrayDescriptor] = Field(max_length=1, description="The image buffer that follows the header.")

    @model_validator(mode="after")
    def _arrays_follow_spec(self) -> "Image":
        check_arrays(self.arrays, self.ARRAYS)
        return self


class Stop(_Header):
    """Closes an acquisition. ``frames`` is the number of sweeps the producer completed."""

    kind: Literal["stop"] = "stop"
    frames: Index = Field(description="Sweeps the producer completed.")
    reason: Literal["complete", "aborted", "producer_timeout"] = Field("complete", description=(
        "Why the acquisition ended; producer_timeout: the service closed it after "
        "[input] producer_timeout_s without a message (its recording holds that stop)."))
    arrays: list[ArrayDescriptor] = Field(default_factory=list, max_length=0,
                                          description="Always empty: a stop carries no buffer.")


Frame = Annotated[Union[EventsFrame, VeloxFrame, DenseFrame], Field(discriminator="payload")]
AcquisitionMessage = Annotated[Union[Start, Frame, Image, Stop], Field(discriminator="kind")]

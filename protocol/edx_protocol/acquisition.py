"""Messages a producer sends to the service: acquisition start, frame data, stop.

Every message is a small msgpack header (one of the models below) followed by
the raw buffers its ``arrays`` list describes. These pydantic models are the
single source of truth: ``protocol/schema`` and ``protocol/golden`` are
generated from them (``python -m edx_protocol.generate``).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .version import PROTOCOL_VERSION

#: dtypes allowed on the wire, as numpy ``dtype.str`` (explicit byte order).
UNSIGNED_DTYPES = ("|u1", "<u2", "<u4", "<u8")

#: Velox SpectrumStream marker that closes a pixel's list of channels.
VELOX_NEXT_PIXEL = 65535

AcquisitionId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArrayDescriptor(_Model):
    """Names one raw buffer that follows the header, in order."""

    name: str
    dtype: Literal["|u1", "<u2", "<u4", "<u8", "<f4", "<f8"]
    shape: list[Annotated[int, Field(ge=0)]]


class EnergyAxis(_Model):
    """Calibration of the detector channels: E(channel i) = offset + i * scale, in keV."""

    offset_kev: float
    scale_kev: float = Field(gt=0)
    channels: int = Field(gt=0, le=65534)


class Detector(_Model):
    """One X-ray detector (a Super-X system has four)."""

    name: str | None = None
    elevation_deg: float = Field(ge=-90, le=90)
    azimuth_deg: float = Field(ge=-360, le=360)
    energy_resolution_mnka_ev: float | None = Field(default=None, gt=0)
    solid_angle_sr: float | None = Field(default=None, gt=0)


class _Header(_Model):
    protocol: Literal[1] = PROTOCOL_VERSION
    acquisition_id: AcquisitionId
    seq: int = Field(ge=0, description="Message counter within the acquisition; start is 0.")


class Start(_Header):
    """Opens an acquisition: everything needed to interpret the frames that follow."""

    kind: Literal["start"] = "start"
    scan_shape: tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]] = Field(
        description="(rows, columns) of the scan; pixel index = row * columns + column."
    )
    energy_axis: EnergyAxis
    beam_energy_kev: float = Field(gt=0, le=2000)
    detectors: list[Detector] = Field(min_length=1, max_length=255)
    pixel_size: float | None = Field(default=None, gt=0)
    pixel_unit: str = "nm"
    dwell_time_s: float | None = Field(default=None, gt=0)
    expected_frames: int | None = Field(default=None, gt=0)
    elements: list[str] = Field(default_factory=list)
    xray_lines: list[str] = Field(default_factory=list)
    instrument: str | None = None
    title: str | None = None
    arrays: list[ArrayDescriptor] = Field(default_factory=list, max_length=0)

    @property
    def n_pixels(self) -> int:
        return self.scan_shape[0] * self.scan_shape[1]


def _check_arrays(arrays: list[ArrayDescriptor], expected: dict[str, tuple[tuple[str, ...], int]],
                  optional: tuple[str, ...] = ()) -> dict[str, ArrayDescriptor]:
    """Check names, dtypes and ranks of a frame's arrays; return them by name."""
    by_name = {a.name: a for a in arrays}
    if len(by_name) != len(arrays):
        raise ValueError("array names must be unique")
    missing = set(expected) - set(optional) - set(by_name)
    unknown = set(by_name) - set(expected)
    if missing or unknown:
        raise ValueError(f"arrays must be {sorted(expected)} (optional {sorted(optional)}); "
                         f"missing {sorted(missing)}, unknown {sorted(unknown)}")
    for name, desc in by_name.items():
        dtypes, ndim = expected[name]
        if desc.dtype not in dtypes:
            raise ValueError(f"array {name!r} must have dtype in {dtypes}, got {desc.dtype}")
        if len(desc.shape) != ndim:
            raise ValueError(f"array {name!r} must have {ndim} dimension(s), got shape {desc.shape}")
    return by_name


class _FrameHeader(_Header):
    kind: Literal["frame"] = "frame"
    frame_index: int = Field(ge=0, description="Which sweep of the scan these counts belong to.")
    arrays: list[ArrayDescriptor]


class EventsFrame(_FrameHeader):
    """A list of X-ray events: ``pixel`` (<u4), ``channel`` (<u2), optional ``detector`` (|u1)."""

    payload: Literal["events"] = "events"

    @model_validator(mode="after")
    def _arrays_match(self) -> "EventsFrame":
        by_name = _check_arrays(self.arrays, {"pixel": (("<u4",), 1), "channel": (("<u2",), 1),
                                              "detector": (("|u1",), 1)}, optional=("detector",))
        lengths = {d.shape[0] for d in by_name.values()}
        if len(lengths) != 1:
            raise ValueError(f"event arrays must have equal lengths, got {sorted(lengths)}")
        return self


class VeloxFrame(_FrameHeader):
    """A chunk of a Velox SpectrumStream: ``stream`` (<u2) of channel indices, 65535 = next pixel.

    The first value belongs to pixel ``pixel_start``; every 65535 advances one pixel.
    """

    payload: Literal["velox"] = "velox"
    pixel_start: int = Field(ge=0)
    detector: int | None = Field(default=None, ge=0, le=254)

    @model_validator(mode="after")
    def _arrays_match(self) -> "VeloxFrame":
        _check_arrays(self.arrays, {"stream": (("<u2",), 1)})
        return self


class DenseFrame(_FrameHeader):
    """A block of whole spectra: ``counts`` (n_pixels, channels) for pixels from ``pixel_start`` on."""

    payload: Literal["dense"] = "dense"
    pixel_start: int = Field(ge=0)

    @model_validator(mode="after")
    def _arrays_match(self) -> "DenseFrame":
        _check_arrays(self.arrays, {"counts": (UNSIGNED_DTYPES, 2)})
        return self


class Stop(_Header):
    """Closes an acquisition. ``frames`` is the number of sweeps the producer completed."""

    kind: Literal["stop"] = "stop"
    frames: int = Field(ge=0)
    reason: Literal["complete", "aborted"] = "complete"
    arrays: list[ArrayDescriptor] = Field(default_factory=list, max_length=0)


Frame = Annotated[Union[EventsFrame, VeloxFrame, DenseFrame], Field(discriminator="payload")]
AcquisitionMessage = Annotated[Union[Start, Frame, Stop], Field(discriminator="kind")]

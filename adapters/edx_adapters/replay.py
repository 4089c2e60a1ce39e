"""Replay a recorded spectrum image as the messages a live acquisition would send.

>>> replay = open_replay("core_shell.hspy", frames=5)        # doctest: +SKIP
>>> for header, arrays in replay.messages():                # doctest: +SKIP
...     socket.send_multipart(encode(header, arrays))

Supported files: HyperSpy ``.hspy`` and Bruker ``.bcf`` (dense; the counts are
split over invented sweeps), JEOL ``.pts`` (real sweeps, as events) and Velox
``.emd`` (the raw SpectrumStream of every detector).

The simultaneous image travels too, as ``image`` messages after each sweep: a
``.bcf`` file's own image (HAADF preferred), a Velox file's HAADF (or other
dark-field) image, one per recorded frame, and for ``.hspy`` the sibling image
file named by :func:`edx_adapters.formats.dense.sibling_image_paths`.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from edx_protocol import VELOX_NEXT_PIXEL, DenseFrame, EventsFrame, Start, Stop, VeloxFrame, describe

from .formats import dense, jeol, velox
from .formats.common import Source

#: File extension (lower case) -> the module that reads it.
FORMATS = {".hspy": dense, ".bcf": dense, ".pts": jeol, ".emd": velox}

_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]+")


@dataclass(frozen=True)
class Replay:
    """A file ready to be sent: its start message and a generator of the rest.

    Attributes
    ----------
    start : edx_protocol.Start
        The start header (seq 0).
    frames : int
        Number of sweeps :meth:`messages` sends (the stop message's ``frames``).
    chunk_pixels : int
        Most pixels one frame message covers.
    path : pathlib.Path
        The file replayed.
    """

    start: Start
    frames: int
    chunk_pixels: int
    path: Path
    _source: Source = field(repr=False)

    def messages(self) -> Iterator[tuple[object, dict[str, np.ndarray]]]:
        """Yield ``(header, arrays)`` for every frame message, then the stop message.

        When the file has a simultaneous image (HAADF, ADF...), each sweep's image
        follows that sweep's frames as ``image`` messages. The seq numbers run 1, 2,
        ... without gaps. Each call starts again and yields the same messages (the
        dense split depends only on the seed).
        """
        seq = 0
        for chunk in self._source.stream(self.chunk_pixels):
            seq += 1
            header = chunk.payload(acquisition_id=self.start.acquisition_id, seq=seq,
                                   frame_index=chunk.frame_index, arrays=describe(chunk.arrays), **chunk.fields)
            yield header, chunk.arrays
        yield Stop(acquisition_id=self.start.acquisition_id, seq=seq + 1, frames=self.frames), {}

    def rechunk(self, chunk_pixels: int) -> "Replay":
        """The same replay in messages of ``chunk_pixels`` pixels, without reading the file again."""
        _check_int("chunk_pixels", chunk_pixels, allow_none=False)
        return replace(self, chunk_pixels=int(chunk_pixels))


def default_acquisition_id(path: str | Path) -> str:
    """The file's stem made safe for the protocol, plus a random suffix so replays differ."""
    stem = _UNSAFE.sub("_", Path(path).stem).strip("_.-:") or "replay"
    return f"{stem[:100]}-{secrets.token_hex(3)}"


def _check_int(name: str, value, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _format_for(path: Path):
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path} (check the path; quote names with spaces)")
    if not path.is_file():
        raise ValueError(f"{path} is not a file; give the spectrum image file itself")
    module = FORMATS.get(path.suffix.lower())
    if module is None:
        known = ", ".join(sorted(FORMATS))
        raise ValueError(f"cannot replay {path.name!r}: extension {path.suffix or '(none)'!r} is not "
                         f"supported; use one of {known} (convert other files with HyperSpy: "
                         f"s.save('name.hspy'))")
    return module


def open_replay(path: str | Path, frames: int | None = None, chunk_pixels: int | None = None,
                seed: int = 0, acquisition_id: str | None = None) -> Replay:
    """Open a recorded spectrum image for replay.

    Parameters
    ----------
    path : str or pathlib.Path
        A ``.hspy``, ``.bcf``, ``.pts`` or ``.emd`` file.
    frames : int, optional
        Dense files: number of sweeps to split the counts into (default 10).
        ``.pts`` and ``.emd``: replay only the first ``frames`` recorded sweeps (default all).
    chunk_pixels : int, optional
        Pixels per frame message (default one scan row). Any positive size works,
        including sizes that do not divide the scan.
    seed : int
        Seed of the dense files' binomial split.
    acquisition_id : str, optional
        Default: the file's stem plus a short random suffix.

    Returns
    -------
    Replay

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the extension is not supported, the file holds no usable spectrum
        image, or an argument is out of range.
    """
    path = Path(path)
    _check_int("frames", frames)
    _check_int("chunk_pixels", chunk_pixels)
    module = _format_for(path)
    source = module.load(path, frames, seed)
    start = Start(acquisition_id=acquisition_id or default_acquisition_id(path), seq=0, **source.start_fields)
    # One scan row per message by default: what a live detector delivers as the beam moves on.
    chunk = int(chunk_pixels) if chunk_pixels is not None else start.scan_shape[1]
    return Replay(start=start, frames=source.frames, chunk_pixels=chunk, path=path, _source=source)


def xray_count(header, arrays: dict[str, np.ndarray]) -> int:
    """Number of X-rays a frame message carries (0 for start and stop)."""
    if isinstance(header, EventsFrame):
        return int(arrays["pixel"].size)
    if isinstance(header, DenseFrame):
        return int(arrays["counts"].sum(dtype=np.uint64))
    if isinstance(header, VeloxFrame):
        return int(np.count_nonzero(arrays["stream"] != VELOX_NEXT_PIXEL))
    return 0

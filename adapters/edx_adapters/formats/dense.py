"""Dense spectrum images (HyperSpy ``.hspy``, Bruker ``.bcf``) replayed as sweeps.

A dense file holds only the sum over all sweeps, so the replay invents the
sweeps: frame i of N takes Binomial(remaining, 1/(N - i)) counts of every
pixel and channel. The last frame takes all that remains, so the frames sum
exactly to the file, and each frame looks like a fair share of the dose.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from edx_protocol import DenseFrame

from .common import Chunk, Source, hyperspy_fields

#: Sweeps a dense file is split into when the caller does not say.
DEFAULT_FRAMES = 10


def _read(path: Path) -> list[dict]:
    if path.suffix.lower() == ".bcf":
        from rsciio.bruker import file_reader

        return file_reader(str(path), select_type="spectrum_image")
    from rsciio.hspy import file_reader

    return file_reader(str(path))


def _is_spectrum_image(signal: dict) -> bool:
    axes = signal["axes"]
    return (np.ndim(signal["data"]) == 3 and len(axes) == 3
            and [bool(a.get("navigate", i < 2)) for i, a in enumerate(axes)] == [True, True, False])


def _spectrum_image(path: Path) -> dict:
    signals = [s for s in _read(path) if _is_spectrum_image(s)]
    if not signals:
        raise ValueError(f"{path.name} holds no spectrum image (3-D data with two navigation axes "
                         "and one energy axis); replay a file saved from an EDS spectrum image")
    eds = [s for s in signals if str(s["metadata"].get("Signal", {}).get("signal_type", "")).startswith("EDS")]
    return (eds or signals)[0]


def load(path: Path, frames: int | None, seed: int) -> Source:
    """Read a dense spectrum image and plan its split into ``frames`` sweeps.

    Parameters
    ----------
    path : pathlib.Path
        A ``.hspy`` or ``.bcf`` file.
    frames : int or None
        Number of sweeps to invent (default :data:`DEFAULT_FRAMES`).
    seed : int
        Seed of the binomial thinning; the same seed gives the same sweeps,
        whatever the message size.
    """
    signal = _spectrum_image(path)
    frames = DEFAULT_FRAMES if frames is None else frames
    # Load the whole cube: the thinning needs every pixel's remaining counts from sweep to sweep.
    data = np.asarray(signal["data"])
    if data.dtype.kind not in "ui":
        raise ValueError(f"{path.name} holds {data.dtype} data; a replay needs integer X-ray counts")
    if data.dtype.kind == "i" and data.size and data.min() < 0:
        raise ValueError(f"{path.name} holds negative counts; a replay needs raw X-ray counts")
    fields = hyperspy_fields(signal["metadata"], signal["axes"])
    rows, columns, channels = data.shape
    counts = data.reshape(rows * columns, channels)
    fields["expected_frames"] = frames
    return Source(fields, frames, lambda block: _sweeps(counts, frames, block, seed))


def thin(remaining: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Draw Binomial(remaining, p) per element, as int64.

    Only non-zero elements consume random numbers, in C order, so drawing a
    block at a time gives the same result as drawing the whole array at once.
    """
    taken = np.zeros(remaining.shape, dtype=np.int64)
    if p >= 1.0:
        taken[...] = remaining
        return taken
    flat = remaining.reshape(-1)
    nonzero = np.flatnonzero(flat)
    taken.reshape(-1)[nonzero] = rng.binomial(flat[nonzero].astype(np.int64), p)
    return taken


def smallest_unsigned(block: np.ndarray) -> np.ndarray:
    """``block`` in the narrowest unsigned dtype that holds its largest value."""
    top = int(block.max()) if block.size else 0
    return block.astype(np.min_scalar_type(top))


def _sweeps(counts: np.ndarray, frames: int, block: int, seed: int) -> Iterator[Chunk]:
    rng = np.random.default_rng(seed)
    remaining = counts.astype(np.min_scalar_type(int(counts.max()) if counts.size else 0), copy=True)
    n_pixels = counts.shape[0]
    for index in range(frames):
        p = 1.0 / (frames - index)
        for lo in range(0, n_pixels, block):
            part = remaining[lo:lo + block]
            taken = thin(part, p, rng)
            part -= taken.astype(part.dtype)
            yield Chunk(index, DenseFrame, {"pixel_start": lo}, {"counts": smallest_unsigned(taken)})

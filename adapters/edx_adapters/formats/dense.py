"""Dense spectrum images (HyperSpy ``.hspy``, Bruker ``.bcf``) replayed as sweeps.

A dense file holds only the sum over all sweeps, so the replay invents the
sweeps: frame i of N takes Binomial(remaining, 1/(N - i)) counts of every
pixel and channel. The last frame takes all that remains, so the frames sum
exactly to the file, and each frame looks like a fair share of the dose.

The simultaneous image, when there is one, is sent after every invented sweep
(the file holds one image for the whole acquisition, so the mean of the sweeps'
images is that image): a ``.bcf`` file's own image (HAADF, else another
dark-field image, else the first, e.g. an SEM's BSE image), and for a ``.hspy``
spectrum image a sibling HyperSpy image file (:func:`sibling_image_paths`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from edx_protocol import DenseFrame

from .common import (Chunk, Source, SweepImages, fit_to_scan, hyperspy_fields, image_rank, log, pixel_size,
                     wire_image)

#: Sweeps a dense file is split into when the caller does not say.
DEFAULT_FRAMES = 10

#: How a spectrum image's name gives its image's: (part of the stem, replaced by, detector).
SIBLING_RULES = (("EDS Spectrum Image", "HAADF Image", "HAADF"), ("EDS Spectrum Image", "ADF Image", "ADF"),
                 ("EDS", "HAADF", "HAADF"), ("EDS", "ADF", "ADF"))

#: Largest relative difference of field of view between a sibling image and the spectrum image.
FIELD_TOLERANCE = 0.01


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
    images = _images(path, signal, fields["scan_shape"])
    return Source(fields, frames, lambda block: _sweeps(counts, frames, block, seed), images)


def sibling_image_paths(path: Path) -> list[tuple[Path, str]]:
    """Where the image of a ``.hspy`` spectrum image may be, with its detector, in order of preference.

    HyperSpy saves one signal per file, so the image sits beside the spectrum
    image, named after it: every occurrence of ``EDS Spectrum Image`` in the stem
    replaced by ``HAADF Image`` (then ``ADF Image``), else every ``EDS`` by
    ``HAADF`` (then ``ADF``). ``SiO2 EDS Spectrum Image.hspy`` gives
    ``SiO2 HAADF Image.hspy``; ``area1_EDS.hspy`` gives ``area1_HAADF.hspy``.
    """
    out = []
    for old, new, detector in SIBLING_RULES:
        if old in path.stem:
            out.append((path.with_name(path.stem.replace(old, new) + path.suffix), detector))
    return out


def _images(path: Path, signal: dict, scan_shape: tuple[int, int]) -> SweepImages | None:
    """The simultaneous image of a dense file, at the scan's shape, or None."""
    if path.suffix.lower() == ".bcf":
        from rsciio.bruker import file_reader

        found = [s for s in file_reader(str(path), select_type="image") if np.ndim(s["data"]) == 2]
        if not found:
            return None
        titles = [str(s["metadata"].get("General", {}).get("title") or "image") for s in found]
        best = min(range(len(found)), key=lambda i: image_rank(titles[i]))
        return _fitted(found[best]["data"], titles[best], scan_shape, f"{path.name} image {titles[best]!r}")
    for sibling, detector in sibling_image_paths(path):
        if sibling.is_file():
            return _sibling(sibling, detector, signal, scan_shape)
    return None


def _sibling(path: Path, detector: str, spectrum_image: dict, scan_shape: tuple[int, int]) -> SweepImages | None:
    from rsciio.hspy import file_reader

    image = file_reader(str(path))[0]
    axes = image["axes"]
    if np.ndim(image["data"]) != 2 or any(a.get("navigate", False) for a in axes):
        log.warning("%s is not a single image (2-D, no navigation axes): not sent", path.name)
        return None
    fov = [_field_nm(a) for a in axes]
    expected = [_field_nm(a) for a in spectrum_image["axes"][:2]]
    if all(f is not None for f in fov + expected) and any(
            abs(f - e) > FIELD_TOLERANCE * e for f, e in zip(fov, expected)):
        log.warning("%s covers %s nm, the spectrum image %s nm: not sent", path.name,
                    "x".join(f"{f:g}" for f in fov), "x".join(f"{e:g}" for e in expected))
        return None
    return _fitted(image["data"], detector, scan_shape, path.name)


def _field_nm(axis: dict) -> float | None:
    """Length an axis covers, in nm (None when its unit is not a known length)."""
    size, unit = pixel_size(axis)
    return None if size is None or unit != "nm" else size * int(axis["size"])


def _fitted(data, detector: str, scan_shape: tuple[int, int], what: str) -> SweepImages | None:
    image = wire_image(np.asarray(data))
    image = None if image is None else fit_to_scan(image, scan_shape, what)
    if image is None:
        return None
    log.info("%s sent after every sweep as detector %r", what, detector)
    return SweepImages.repeated(detector, image)


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

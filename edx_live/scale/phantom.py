"""A synthetic spectrum image of any size, written to a chunked HyperSpy file a band of rows at a time.

For the out-of-core tests and benchmark: :func:`write_phantom` draws the counts of a
:func:`edx_adapters.synthetic.make_phantom` phantom band by band (a Dask array of
``map_blocks``) and saves them with HyperSpy's lazy save, so the whole cube is never held;
the file loads with ``hs.load`` as a calibrated EDS spectrum image with the phantom's elements.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def phantom_counts(phantom, dose: float, rows_per_chunk: int, seed: int = 0, dtype=np.uint16):
    """Poisson counts of ``phantom`` at ``dose`` counts per pixel, as a Dask array chunked by rows.

    Each band's counts depend only on ``seed`` and the band's first row, so any band can be
    drawn again alone.
    """
    import dask.array as da

    rows, columns = phantom.shape
    channels = phantom.spectra.shape[1]
    n_phases = len(phantom.phases)
    weight = (phantom.fractions * (phantom.thickness * phantom._scale * dose)).astype(np.float32)
    spectra = phantom.spectra.astype(np.float32)
    limit = np.iinfo(dtype).max

    def band(block, block_info=None):
        r0, r1 = block_info[None]["array-location"][0]
        w = weight[:, r0:r1].reshape(n_phases, -1)
        expected = (w.T @ spectra).reshape(r1 - r0, columns, channels)
        counts = np.random.default_rng([seed, r0]).poisson(expected)
        return np.minimum(counts, limit).astype(dtype)

    template = da.zeros((rows, columns, channels), chunks=(rows_per_chunk, columns, channels), dtype=dtype)
    return template.map_blocks(band, dtype=dtype)


def write_phantom(path: str | Path, phantom, dose: float = 100.0, rows_per_chunk: int = 16, seed: int = 0,
                  dtype=np.uint16) -> Path:
    """Save ``phantom``'s counts to ``path`` (``.zspy`` or ``.hspy``), chunked by ``rows_per_chunk`` rows.

    Memory stays at a few bands of the cube (HyperSpy's lazy save stores chunk by chunk).
    """
    from edx_protocol import Start

    from edx_live.export.signals import spectrum_image_signal

    path = Path(path)
    data = phantom_counts(phantom, dose, rows_per_chunk, seed, dtype)
    start = Start(acquisition_id=path.stem, seq=0, **phantom.start_fields(1, dose))
    axis = phantom.energy_axis
    signal = spectrum_image_signal(data, start, axis.offset_kev, axis.scale_kev)
    if not signal._lazy:
        signal = signal.as_lazy()
    signal.save(path, overwrite=True, show_progressbar=False, chunks=(rows_per_chunk, data.shape[1], data.shape[2]))
    return path

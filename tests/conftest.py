"""Shared fixtures: where the real instrument files live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("EDX_LIVE_DATA", REPO.parent / "shared" / "data"))

#: Every real file, with the keyword arguments that load its summed spectrum image.
DATA_FILES = {
    "core_shell.hspy": {},
    "SiO2 EDS Spectrum Image.hspy": {},
    "test_TEM.bcf": {"select_type": "spectrum_image"},
    "30x30_instructively_packed_16bit_compressed.bcf": {"select_type": "spectrum_image"},
    "View000_0000006.pts": {},
    "Test SI 16x16 215 kx.emd": {"select_type": "spectrum_image"},
    "EMDReader_SpectrumImage_Si.emd": {"select_type": "spectrum_image"},
}


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.fail(f"real data folder {DATA_DIR} is missing: put ../shared/data beside the repo "
                    "or set EDX_LIVE_DATA")
    return DATA_DIR


def load_file_sum(path: Path):
    """The file's own summed spectrum image (rows, columns, channels) in its native dtype, via HyperSpy.

    Native, not widened: the .pts sum is 512 x 512 x 4096, 1 GB as uint8 but 8.6 GB as uint64.
    """
    import hyperspy.api as hs
    import numpy as np

    s = hs.load(path, **DATA_FILES[path.name])
    if isinstance(s, list):
        s = s[0]
    return np.asarray(s.data)

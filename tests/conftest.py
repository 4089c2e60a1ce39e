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


#: The Debian package of the browser the page is tested in (never a browser download).
CHROMIUM_PACKAGE = "chromium"


def _system_chromium() -> str | None:
    import shutil

    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _install_chromium() -> str:
    import subprocess

    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, env=env, timeout=900)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", CHROMIUM_PACKAGE], check=True,
                   capture_output=True, env=env, timeout=1800)
    return _system_chromium()


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of the system's chromium: installed with apt when missing and root; else skipped (failed under CI)."""
    path = _system_chromium()
    if path is None and hasattr(os, "geteuid") and os.geteuid() == 0:
        import shutil

        if shutil.which("apt-get"):
            path = _install_chromium()
    if path is None:
        message = (f"the browser test needs Debian's '{CHROMIUM_PACKAGE}' package: "
                   f"apt-get install {CHROMIUM_PACKAGE} (as root)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture()
def browser_page(chromium, tmp_path):
    """A headless chromium page (Playwright driving the system browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1900})
            yield page
        finally:
            browser.close()


class ServedApp:
    """The application on free loopback ports, served on a thread until ``stop_after`` acquisitions are finished.

    Its documents go to ``collector`` (and to a PUB socket with ``publish``); ``finish()`` waits for
    the end and returns the service's ingest state.
    """

    def __init__(self, settings, context, analyze=lambda snapshot, record: [], publish: bool = False,
                 connection=None, stop_after: int = 1, record_dir=None, **app_options):
        from edx_live.shell.app import App, on_free_ports
        from edx_live.shell.publish import Collector
        from edx_live.shell.sockets import Sockets

        self.collector = Collector()
        self.stop_after = stop_after
        self.app = App(on_free_ports(settings, record_dir=record_dir), connection=connection, publish=publish, control=False,
                       subscribers=[self.collector], analyze=analyze, sockets=Sockets(context), **app_options)
        self.service, self.connection = self.app.service, self.app.connection

    @property
    def endpoint(self) -> str:
        return self.app.input_endpoint

    def start(self) -> "ServedApp":
        self.app.start(self.stop_after)
        return self

    def is_alive(self) -> bool:
        return self.app.alive

    def finish(self, timeout: float = 300):
        try:
            self.app.wait(timeout)
        finally:
            self.app.close()
        return self.service.ingest


def until(predicate, timeout_s: float = 120.0, what: str = "the condition"):
    """``predicate()``'s first true value, polled until ``timeout_s``; AssertionError naming ``what`` after that."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {timeout_s} s")


def free_port() -> int:
    """A loopback TCP port free now, for a service that must come back on the same address after a restart."""
    import zmq

    probe = zmq.Context.instance().socket(zmq.REP)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)
    return port

"""``edx-live demo``: the whole live loop over real loopback sockets on the bundled dataset.

Starts the service (PULL in, PUB out, both on free ports), the web viewer on
loopback, a subscriber that prints every update, and a producer that replays
``core_shell.hspy`` as a live acquisition. Returns once the final refit has been
printed, or, in a terminal, keeps the page up until Ctrl-C.
"""

from __future__ import annotations

import sys
import threading
import time
from importlib import resources
from pathlib import Path

import zmq
from edx_protocol import decode_result

from edx_live.config import load_settings
from edx_live.logs import get_logger

from .app import App
from .publish import format_document

log = get_logger("service")

#: Documents the demo prints as they arrive (the final status ends it).
PRINTED = ("clusters", "composition", "targets", "advice")

#: k-factors of the bundled FePt data (exspy documentation example).
DEMO_KFACTORS = {"Fe_Ka": 1.450226, "Pt_La": 5.075602}


def bundled_dataset() -> Path:
    """Path of the packaged ``core_shell.hspy``."""
    return Path(str(resources.files("edx_live") / "data" / "core_shell.hspy"))


def demo_settings(overrides: dict | None = None):
    base = {"input": {"address": "tcp://127.0.0.1:*", "socket": "pull", "bind": True},
            "output": {"address": "tcp://127.0.0.1:*", "status_interval_s": 0.5, "sessions_dir": None},
            "control": {"address": "tcp://127.0.0.1:*"},
            "refit": {"interval_s": 2.0},
            "quantify": {"kfactors": DEMO_KFACTORS}}
    for key, value in (overrides or {}).items():
        base.setdefault(key, {}).update(value)
    return load_settings(overrides=base)


class _Thread(threading.Thread):
    """A thread that keeps its exception for the caller."""

    def __init__(self, target, name):
        super().__init__(name=name, daemon=True)
        self._target_fn, self.error = target, None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as exc:
            self.error = exc


def _wait_for_status(sub: zmq.Socket, timeout_s: float) -> None:
    """Block until the first status arrives, so the subscription is live before data flows."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sub.poll(100):
            frames = sub.recv_multipart()
            if frames[0] == b"status":
                return
    raise TimeoutError("no status from the service: the result socket did not connect")


def _warm_up(out) -> None:
    """Compile the ingest kernels and UMAP/HDBSCAN now, so the first live refit is not slow."""
    from edx_live.core.kernels import warm_up as warm_up_kernels
    from edx_live.segment import warm_up

    print("edx_live demo: compiling the numerical kernels (a few seconds, cached for later runs)",
          file=out, flush=True)
    warm_up_kernels()
    warm_up(approximate_neighbors=False)  # the bundled scan is small: UMAP uses exact neighbours


def _produce(endpoint: str, frames: int, interval_s: float, context: zmq.Context) -> None:
    from edx_adapters.producer import send_replay
    from edx_adapters.replay import open_replay

    push = context.socket(zmq.PUSH)
    push.connect(endpoint)
    try:
        send_replay(open_replay(bundled_dataset(), frames=frames), push, interval_s=interval_s)
    finally:
        push.close(linger=5000)


def _start_viewer(endpoint: str, port: int, out):
    """The web page on loopback, in a process of its own (None, with a note, when it cannot start)."""
    try:
        from edx_live.view.server import ViewerProcess
    except ImportError as exc:
        print(f"edx_live demo: no web page ({exc.name} missing: pip install 'edx-live[viewer]')", file=out)
        return None
    for candidate in dict.fromkeys((port, 0)):  # the usual port, else any free one
        try:
            return ViewerProcess(endpoint, port=candidate).start()
        except OSError as exc:
            problem = exc
    print(f"edx_live demo: no web page ({problem})", file=out)
    return None


def _hold(viewer, out) -> None:
    print(f"edx_live demo: the final results stay on {viewer.url} until Ctrl-C", file=out, flush=True)
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("", file=out)


def run_demo(frames: int = 20, interval_s: float | None = None, out=None, timeout_s: float = 600.0,
             view: bool = True, view_port: int = 5006, hold: bool | None = None,
             sessions_dir: str | Path | None = "sessions") -> float:
    """Run the demo; print updates to ``out``; return the wall time in seconds.

    Parameters
    ----------
    frames : int
        Sweeps the bundled scan is replayed as.
    interval_s : float, optional
        Seconds between sweeps; None = 1 s in a terminal (a pace to watch), else 0.5 s.
    view : bool
        Serve the web page on loopback (``view_port``, or any free port when it is taken).
    hold : bool, optional
        Keep the page up after the final refit until Ctrl-C; None = when run in a terminal.
    sessions_dir : str or Path, optional
        Where the acquisition's session folder (maps, compositions, report.png) is written; None = nowhere.
    """
    out = out or sys.stdout
    interactive = sys.stdin.isatty() and getattr(out, "isatty", lambda: False)()
    hold = interactive if hold is None else hold
    if interval_s is None:
        interval_s = 1.0 if interactive else 0.5
    t0 = time.perf_counter()
    settings = demo_settings({"output": {"sessions_dir": sessions_dir}} if sessions_dir is not None else None)
    _warm_up(out)
    app = App(settings, source="demo replay")
    sub = app.sockets.subscriber(app.output_endpoint)
    app.start(stop_after=1)
    viewer = _start_viewer(app.output_endpoint, view_port, out) if view else None
    try:
        _wait_for_status(sub, 30.0)
        if viewer is not None:
            print(f"edx_live demo: live page at {viewer.url} (open it in a browser on this PC)", file=out,
                  flush=True)
        print(f"edx_live demo: service in {app.input_endpoint}, results on {app.output_endpoint}, control on "
              f"{app.control_endpoint}; replaying {bundled_dataset().name} as {frames} frames, one every "
              f"{interval_s:g} s", file=out, flush=True)
        producer = _Thread(lambda: _produce(app.input_endpoint, frames, interval_s, app.sockets.context),
                           "edx-live-producer")
        producer.start()
        _print_until_final(sub, app, out, timeout_s)
        producer.join()
        if producer.error is not None:
            raise producer.error
        app.wait(timeout_s=120)  # the session folder is started once the final refit is collected
        for folder in app.sessions.written if app.sessions is not None else []:
            print(f"edx_live demo: session folder {folder} (report.png, spectrum_image.hspy, maps, "
                  "compositions as JSON and CSV)", file=out, flush=True)
        if viewer is not None and hold:
            _hold(viewer, out)
    finally:
        if viewer is not None:
            viewer.stop()
        sub.close(linger=0)
        app.close()
    return time.perf_counter() - t0


def _print_until_final(sub: zmq.Socket, app: App, out, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if app.error is not None:
            raise app.error
        if not sub.poll(200):
            continue
        frames = sub.recv_multipart(copy=False)
        header, _ = decode_result(frames[1:])
        if header.kind in PRINTED and (header.kind != "targets" or header.final):  # the final targets only
            print(format_document(header), file=out, flush=True)
        elif header.final:
            print(format_document(header), file=out, flush=True)
            return
    raise TimeoutError(f"the final update did not arrive within {timeout_s} s")

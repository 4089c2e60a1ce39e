"""Serve the page: a Bokeh server on loopback by default, fed by one subscription to the service.

BokehJS is served from the installed ``bokeh`` package, so the page works on a PC without
internet. :func:`serve` blocks (``edx-live view``); :class:`Viewer` runs the server on a
thread of its own beside other work (the demo, tests).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.server.server import Server
from tornado.ioloop import IOLoop

from edx_live.logs import get_logger

from .feed import Feed
from .page import Page

log = get_logger("view")

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 5006


def _server(feed: Feed, address: str, port: int, allow_origin: list[str] | None, io_loop: IOLoop) -> Server:
    app = Application(FunctionHandler(lambda doc: Page(feed, doc)))
    origins = list(allow_origin or [])
    # The server checks the page's origin on the websocket: the bound address, plus any a user names
    # (e.g. the host name an acquisition PC uses to reach a workstation).
    server = Server({"/": app}, address=address, port=port, io_loop=io_loop,
                    allow_websocket_origin=origins + [f"{address}:{port}" if port else address, "localhost",
                                                      "127.0.0.1"],
                    check_unused_sessions_milliseconds=2000, unused_session_lifetime_milliseconds=5000)
    return server


def url(address: str, port: int) -> str:
    host = "127.0.0.1" if address in ("0.0.0.0", "") else address
    return f"http://{host}:{port}/"


class Viewer:
    """The page served on a background thread.

    Parameters
    ----------
    connect : str
        The service's result PUB endpoint.
    address, port : str, int
        Where the page is served; port 0 picks a free port (see :attr:`url` after :meth:`start`).
    allow_origin : list of str, optional
        Extra ``host[:port]`` a browser may reach the page as.
    context : zmq.Context, optional
    keys : edx_protocol.security.ClientKeys, optional
        CurveZMQ client keys of the subscription (a service with ``[security] curve = true``).
    """

    def __init__(self, connect: str, address: str = DEFAULT_ADDRESS, port: int = DEFAULT_PORT,
                 allow_origin: list[str] | None = None, context=None, keys=None):
        self.feed = Feed(connect, context, keys=keys)
        self.address, self.port, self.allow_origin = address, port, allow_origin
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: IOLoop | None = None
        self._server: Server | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return url(self.address, self.port)

    def start(self, timeout_s: float = 30.0) -> "Viewer":
        self.feed.start()
        self._thread = threading.Thread(target=self._run, name="edx-live-view", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("the viewer did not start")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        self._loop = IOLoop.current()
        try:
            self._server = _server(self.feed, self.address, self.port, self.allow_origin, self._loop)
            self._server.start()
            self.port = self._server.port
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            return
        log.info("view_serving", url=self.url, connect=self.feed.endpoint)
        self._ready.set()
        self._loop.start()

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            server, loop = self._server, self._loop

            def _stop():
                server.stop()
                loop.stop()

            loop.add_callback(_stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.feed.stop()


def serve(connect: str, address: str = DEFAULT_ADDRESS, port: int = DEFAULT_PORT,
          allow_origin: list[str] | None = None, keys=None) -> None:
    """Serve the page until interrupted (Ctrl-C); ``keys``: CurveZMQ client keys of the subscription."""
    feed = Feed(connect, keys=keys).start()
    loop = IOLoop.current()
    server = _server(feed, address, port, allow_origin, loop)
    server.start()
    log.info("view_serving", url=url(address, server.port), connect=connect)
    print(f"edx-live view: open {url(address, server.port)} (results from {connect}); Ctrl-C stops", flush=True)
    try:
        loop.start()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        feed.stop()


class ViewerProcess:
    """``edx-live view`` in a process of its own, beside a service in this one.

    A refit holds the interpreter for seconds at a time (UMAP, HDBSCAN); a page served from
    another process keeps updating meanwhile. Same parameters as :class:`Viewer`, except
    ``key_files``: ``(client secret key file, server public key file)`` for CurveZMQ (the process
    reads the files itself; keys are never put on a command line).
    """

    def __init__(self, connect: str, address: str = DEFAULT_ADDRESS, port: int = DEFAULT_PORT,
                 allow_origin: list[str] | None = None, key_files: tuple[str, str] | None = None):
        self.connect, self.address, self.port = connect, address, port
        self.allow_origin = list(allow_origin or [])
        self.key_files = key_files
        self.url: str | None = None
        self._proc = None

    def start(self, timeout_s: float = 60.0) -> "ViewerProcess":
        import subprocess
        import sys
        import time

        cmd = [sys.executable, "-m", "edx_live.cli", "view", "--connect", self.connect, "--address", self.address,
               "--port", str(self.port), *[a for origin in self.allow_origin for a in ("--allow-origin", origin)]]
        if self.key_files is not None:
            cmd += ["--curve-secret-key", str(self.key_files[0]), "--curve-server-key", str(self.key_files[1])]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
        errors: deque = deque(maxlen=20)
        drain = threading.Thread(target=lambda: errors.extend(self._proc.stderr), daemon=True)
        drain.start()  # a full pipe would block the viewer: its log is read all along
        deadline = time.monotonic() + timeout_s
        for line in self._proc.stdout:  # the first line says where the page is
            if "open http" in line:
                self.url = line.split("open ", 1)[1].split()[0]
                threading.Thread(target=lambda: deque(self._proc.stdout, maxlen=0), daemon=True).start()
                return self
            if time.monotonic() > deadline:
                break
        self.stop()
        drain.join(5)
        last = [e.strip() for e in errors if e.strip()][-1:]
        raise OSError(f"the viewer did not start: {last[0] if last else 'no address printed'}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except Exception:
                self._proc.kill()

"""The viewer's cost: page update latency, document to pixels, and the service's ingest rate with a page open.

python bench/viewer.py [--updates 30] [--seconds 10] [--runs 3] [--file core_shell.hspy] [--quick]

Real sockets on loopback, random ports; the page in headless chromium (the system's
``chromium``, driven by Playwright), served by the viewer on a thread of this process.

1. Page update latency. The bench binds a PUB socket, a :class:`~edx_live.view.server.Viewer`
   subscribes to it and a page is open on the viewer. Each update publishes the golden
   ``clusters`` document with ``refit`` and ``seq`` set to a new ``N``, after a random pause of
   up to one refresh period (the page polls its feed every ``UPDATE_MS``: a document waits a
   uniformly random part of that period), and times until the browser's Bokeh document holds
   the map title ``refit N``: the title is set after the map's arrays in the same refresh, so
   the arrays have arrived and been applied by then (the check runs on every animation frame).
   Also timed: until the viewer's feed holds the document (ZeroMQ and decoding alone). The
   baseline is the same browser check on a title already shown: the measuring overhead (one
   Playwright round trip). With the golden 2 x 3 label map, then 128 x 128 and 512 x 512 (uint16,
   with a float32 confidence map of the same size).
2. Ingest with the viewer attached. A producer process replays a real file (default
   ``core_shell.hspy``, split into sweeps) over PUSH as fast as the service takes it, its sweeps
   sent over and over (renumbered), so that one acquisition streams throughout. The service is
   built as ``edx-live serve`` builds it (default settings: a refit every 5 s, status every 1 s,
   both workflows with quantification, result PUB socket). After the acquisition's first refit
   (models built, run cold), timed windows alternate without and with a viewer attached: a
   :class:`Viewer` subscribed to the service's PUB socket on a thread of this process, as the demo
   runs it, and a browser page open on it, both opened before the window and closed after it.
   Alternating windows of one acquisition put drift of the machine, and the refits' schedule, on
   both alike. Per window: messages and counts taken per second, and the CPU-seconds of this
   process, of the viewer's threads and of the browser.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import random
import select
import shutil
import subprocess
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine, progress, wait_for  # noqa: E402

DATA_DIR = Path(os.environ.get("EDX_LIVE_DATA", HERE.parent.parent / "shared" / "data"))
ACQUISITION_ID = "bench-viewer"
VIEWPORT = {"width": 1200, "height": 1900}
TARGET = 0.95  # ingest rate with the viewer / without
#: True once the page's Bokeh document holds a map title naming refit ``n`` (and no longer number).
TITLE_SHOWS = """(n) => {
  const doc = window.Bokeh && window.Bokeh.documents[0];
  if (!doc) return false;
  const refit = new RegExp('refit ' + n + '(?!\\\\d)');
  for (const m of doc.all_models)
    if (m.constructor.__name__ === 'Title' && typeof m.text === 'string' && refit.test(m.text)) return true;
  return false;
}"""


# the browser ------------------------------------------------------------------------------------
def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("this benchmark needs the system's chromium: apt-get install chromium")


@contextmanager
def browser():
    """A headless chromium (Playwright driving the system browser) for the whole benchmark."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@contextmanager
def viewer_page(b, endpoint: str, context=None):
    """A Viewer subscribed to ``endpoint`` on a thread of this process, and a browser page open on it."""
    from edx_live.view.server import Viewer

    viewer = Viewer(endpoint, port=0, context=context).start()
    page = b.new_page(viewport=VIEWPORT)
    try:
        page.goto(viewer.url)
        page.wait_for_selector("text=edx_live: live STEM-EDX phases", timeout=30000)
        yield viewer, page
    finally:
        page.close()
        viewer.stop()


# part 1: page update latency --------------------------------------------------------------------
def clusters_arrays(side: int | None) -> tuple[object, dict]:
    """The golden clusters document, with a ``side`` x ``side`` label map of its two clusters and noise."""
    from edx_protocol import describe
    from edx_protocol.examples import result_examples

    golden = next(e for e in result_examples() if e.name == "clusters")
    if side is None:
        return golden, dict(golden.arrays)
    noise = golden.arrays["labels"].max()
    y, x = np.mgrid[:side, :side]
    labels = ((x // 7 + y // 5) % 2).astype("<u2")
    labels[(x - side // 2) ** 2 + (y - side // 2) ** 2 < (side // 8) ** 2] = noise
    arrays = {"labels": labels, "spectra": golden.arrays["spectra"],
              "confidence": np.linspace(0, 1, side * side, dtype="<f4").reshape(side, side)}
    clusters = [c.model_copy(update={"pixels": int((labels == c.label).sum())}) for c in golden.header.clusters]
    header = golden.header.model_copy(update={"clusters": clusters, "noise_pixels": int((labels == noise).sum()),
                                              "arrays": describe(arrays)})
    return golden._replace(header=header), arrays


def _publish(pub, example, arrays: dict, n: int) -> None:
    from edx_protocol import encode

    header = example.header.model_copy(update={"refit": n, "seq": n})
    pub.send_multipart([example.topic, *encode(header, arrays)], copy=False)


def _shown(feed, n: int) -> bool:
    entry = feed.snapshot().clusters.get("pca-gmm")
    return entry is not None and entry[0].refit == n


def time_updates(pub, viewer, page, example, arrays: dict, first: int, updates: int, rng) -> dict:
    """Seconds from publishing to the viewer's feed, to the browser, and the same browser check again."""
    out = {"feed": [], "page": [], "again": []}
    for n in progress(range(first, first + updates), desc="page updates", unit="update"):
        time.sleep(rng.uniform(0, _update_ms() / 1000))  # land anywhere in the page's refresh period
        t0 = time.perf_counter()
        _publish(pub, example, arrays, n)
        _poll(lambda: _shown(viewer.feed, n))
        t1 = time.perf_counter()
        page.wait_for_function(TITLE_SHOWS, arg=n, polling="raf", timeout=20000)
        t2 = time.perf_counter()
        page.wait_for_function(TITLE_SHOWS, arg=n, polling="raf", timeout=20000)
        t3 = time.perf_counter()
        out["feed"].append(t1 - t0)
        out["page"].append(t2 - t0)
        out["again"].append(t3 - t2)
    return {k: np.array(v) for k, v in out.items()}


def _poll(condition, timeout_s: float = 10.0) -> None:
    """Like ``wait_for``, polling every 0.5 ms: the feed takes a few ms, a 5 ms step would be most of it."""
    deadline = time.perf_counter() + timeout_s
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError("the viewer's feed did not receive the document")
        time.sleep(0.0005)


def _update_ms() -> int:
    from edx_live.view.page import UPDATE_MS

    return UPDATE_MS


def page_latency(b, sides, updates: int, warm: int, seed: int = 0) -> list[tuple]:
    """Part 1: per label-map size, (side, bytes of the document's arrays, timings)."""
    import zmq

    context = zmq.Context.instance()
    pub = context.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    rng = random.Random(seed)
    rows, n = [], 1000  # four-digit refits: no title is another's prefix
    try:
        with viewer_page(b, f"tcp://127.0.0.1:{port}", context) as (viewer, page):
            example, arrays = clusters_arrays(None)
            deadline = time.monotonic() + 30
            while not _shown(viewer.feed, n):  # a SUB joins a PUB asynchronously: publish until it listens
                if time.monotonic() > deadline:
                    raise TimeoutError("the viewer never received the first document")
                _publish(pub, example, arrays, n)
                time.sleep(0.05)
            for side in sides:
                example, arrays = clusters_arrays(side)
                time_updates(pub, viewer, page, example, arrays, n + 1, warm, rng)  # new extent, first layout
                n += warm
                timings = time_updates(pub, viewer, page, example, arrays, n + 1, updates, rng)
                n += updates
                rows.append((side, sum(a.nbytes for a in arrays.values()), timings))
    finally:
        pub.close(linger=0)
    return rows


def report_latency(rows, updates: int) -> None:
    period = _update_ms()
    print(f"\n## Page update latency, document to browser: {updates} updates per row, each after a random "
          f"pause of 0 to {period} ms (the page's refresh period)")
    print("Median and 95th percentile in ms; to the feed: publish until the viewer's subscription holds the "
          "document; to the page: until the browser's Bokeh document holds the new map title (set after the "
          "map's arrays); baseline: the same browser check on a title already shown (the measuring overhead).")
    print("| label map | arrays sent, MB | to the feed | to the page | baseline | page / refresh period | "
          "page / baseline | page - baseline |")
    print("|---|---|---|---|---|---|---|---|")
    for side, nbytes, t in rows:
        name = "golden 2x3" if side is None else f"{side}x{side} uint16"
        ms = {k: (1e3 * np.median(v), 1e3 * np.percentile(v, 95)) for k, v in t.items()}
        print(f"| {name} | {nbytes / 1e6:.3f} | {ms['feed'][0]:.1f} / {ms['feed'][1]:.1f} | "
              f"{ms['page'][0]:.0f} / {ms['page'][1]:.0f} | {ms['again'][0]:.0f} / {ms['again'][1]:.0f} | "
              f"x{ms['page'][0] / period:.2f} / x{ms['page'][1] / period:.2f} | "
              f"x{ms['page'][0] / ms['again'][0]:.1f} | {ms['page'][0] - ms['again'][0]:.0f} |", flush=True)


# part 2: the producer process -------------------------------------------------------------------
def file_messages(path: str, sweeps: int | None) -> tuple[object, int, list]:
    """The file's start, its number of sweeps and its frame messages as (header fields, buffers).

    The header fields are the wire's (``model_dump``): the producer packs them again with a new
    ``seq`` and sweep, a few microseconds a message, so that the file can be repeated for as long
    as a run lasts without encoding it all beforehand.
    """
    from edx_protocol import Stop, encode

    from edx_adapters.replay import open_replay

    replay = open_replay(path, frames=sweeps, acquisition_id=ACQUISITION_ID)
    body = [(header.model_dump(mode="json"), encode(header, arrays)[1:])
            for header, arrays in replay.messages() if not isinstance(header, Stop)]
    return replay.start.model_copy(update={"expected_frames": None}), replay.frames, body


def produce(path: str, sweeps: int) -> None:
    """For every ``run ENDPOINT`` line: send the start and first sweep; on ``go``, the file's sweeps
    over and over, renumbered, as fast as the receiver takes them, until ``stop``."""
    import msgpack
    import zmq
    from edx_protocol import encode

    warnings.filterwarnings("ignore")  # HyperSpy's deprecations when it reads the file
    start, frames, body = file_messages(path, sweeps or None)
    first = sum(1 for doc, _ in body if doc["frame_index"] == 0)
    print(f"ready {1 + first}", flush=True)
    for line in sys.stdin:
        if not line.startswith("run "):
            break
        context = zmq.Context()
        socket = context.socket(zmq.PUSH)
        socket.connect(line.split()[1])
        socket.send_multipart(encode(start))
        seq, stop = 1, False
        for repeat in itertools.count():
            for i, (doc, buffers) in enumerate(body):
                doc = {**doc, "seq": seq, "frame_index": repeat * frames + doc["frame_index"]}
                socket.send_multipart([msgpack.packb(doc, use_bin_type=True), *buffers], copy=False)
                seq += 1
                if repeat == 0 and i == first - 1:
                    print("first sweep sent", flush=True)
                    sys.stdin.readline()  # go
                elif seq % 64 == 0 and select.select([sys.stdin], [], [], 0)[0]:
                    stop = sys.stdin.readline()
                    break
            if stop:
                break
        socket.close(linger=0)
        context.term()
        print("stopped", flush=True)


# part 2: the service side -----------------------------------------------------------------------
class _Documents:
    """A subscriber of the service that counts the documents it publishes."""

    def __init__(self):
        self.count = 0

    def __call__(self, header, arrays) -> None:
        self.count += 1


def _cpu_s(stat_path: str) -> float:
    """User + system CPU seconds of a process or thread, from its /proc stat file (0 once it is gone)."""
    try:
        text = Path(stat_path).read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(root: int, skip: int) -> list[int]:
    """Process ids below ``root`` (the browser and its driver), leaving out ``skip``'s subtree."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            parent[int(entry.name)] = int(text[text.rindex(")") + 2:].split()[1])
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, ppid in parent.items() if ppid in frontier and pid != skip]
        found += children
        frontier = children
    return found


def _cpu_marks(viewer, producer_pid: int) -> dict:
    """CPU seconds so far: this process, the viewer's two threads, and per process the browser and its driver."""
    marks = {"process": time.process_time(),
             "browser": {pid: _cpu_s(f"/proc/{pid}/stat") for pid in _descendants(os.getpid(), producer_pid)}}
    if viewer is not None:
        threads = (viewer._thread, viewer.feed._thread)
        marks["viewer"] = sum(_cpu_s(f"/proc/self/task/{t.native_id}/stat") for t in threads)
    return marks


def _cpu_used(before: dict, after: dict) -> dict:
    """CPU seconds between two marks; a browser process that ended meanwhile counts nothing."""
    out = {k: after[k] - before[k] for k in before if k != "browser"}
    out["browser"] = sum(max(0.0, cpu - before["browser"].get(pid, 0.0))
                         for pid, cpu in after["browser"].items() if cpu > 0)
    return out


@contextmanager
def live_service(path: Path, sweeps: int):
    """The service as ``edx-live serve`` builds it, fed by a producer process replaying ``path`` without end.

    Yields (service, documents counter, producer, result endpoint) once the first sweep is in and
    the rest is flowing; on exit the producer stops and the service ends with no refit left running.
    """
    from edx_live.config import load_settings
    from edx_live.core.kernels import warm_up as warm_up_kernels
    from edx_live.segment import warm_up
    from edx_live.shell.app import App, on_free_ports

    warm_up_kernels()
    documents = _Documents()
    app = App(on_free_ports(load_settings()), subscribers=[documents], warm_up=warm_up)
    service = app.service
    worker = threading.Thread(target=service.run, name="edx-live-service", daemon=True)
    producer = subprocess.Popen([sys.executable, __file__, "--produce", str(path), str(sweeps)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        first = int(_expect(producer, "ready")[1])
        worker.start()
        _tell(producer, f"run {app.input_endpoint}")
        _expect(producer, "first sweep sent")
        wait_for(lambda: service.ingest.current is not None and service.ingest.current.messages >= first)
        _tell(producer, "go")
        yield service, documents, producer, app.output_endpoint
        _tell(producer, "stop")
        _expect(producer, "stopped")
        _tell(producer, "end")
        producer.wait(timeout=60)
    finally:
        producer.kill()
        service.stop()
        if worker.ident is not None:
            worker.join(timeout=60)
        for thread in threading.enumerate():  # a refit the service left behind would publish on a closed socket
            if thread.name.startswith("edx-live-refit"):
                thread.join()
        app.close()
    if sum(service.ingest.rejected.values()):
        raise RuntimeError(f"messages rejected: {dict(service.ingest.rejected)}")


def _tell(producer, line: str) -> None:
    producer.stdin.write(line + "\n")
    producer.stdin.flush()


def _expect(producer, word: str) -> list[str]:
    answer = producer.stdout.readline().split()
    if not answer or answer[0] != word.split()[0]:
        raise RuntimeError(f"the producer process said {answer!r}, not {word!r}; run it alone to see why")
    return answer


@contextmanager
def _nothing():
    yield None


def window(service, documents, producer_pid: int, seconds: float, viewer) -> dict:
    """What the service takes in ``seconds``, what it publishes, and who used the CPU meanwhile."""
    acq = service.ingest.current

    def mark():
        return (time.perf_counter(), acq.messages, acq.accumulator.counts, service.refits, documents.count)

    cpu0, before = _cpu_marks(viewer, producer_pid), mark()
    time.sleep(seconds)
    after, cpu1 = mark(), _cpu_marks(viewer, producer_pid)
    d = [a - b for a, b in zip(after, before)]
    return {"seconds": d[0], "messages": d[1], "counts": d[2], "refits": d[3], "documents": d[4],
            **{f"cpu_{k}": v for k, v in _cpu_used(cpu0, cpu1).items()}}


def ingest_with_and_without(b, path: Path, sweeps: int, seconds: float, runs: int) -> list:
    """Part 2: one acquisition streaming throughout; windows alternate without and with the viewer.

    The first refit of an acquisition builds its models and runs cold, and the service compiles
    UMAP's code on a thread of its own at start-up: the windows start once both are done.
    """
    def warm() -> bool:
        return service.refits >= 1 and not any(t.name == "edx-live-warm-up" for t in threading.enumerate())

    with live_service(path, sweeps) as (service, documents, producer, endpoint):
        wait_for(warm, 600, "the first refit")
        results = []
        order = [with_viewer for _ in range(runs) for with_viewer in (False, True)]
        for with_viewer in progress(order, desc="ingest windows", unit="window"):
            with (viewer_page(b, endpoint) if with_viewer else _nothing()) as attached:
                if attached:  # the page shows the service before the window opens
                    attached[1].wait_for_selector("text=Service at", timeout=30000)
                    received = attached[0].feed.snapshot().received
                r = window(service, documents, producer.pid, seconds, attached[0] if attached else None)
                if attached:
                    r["viewer_documents"] = attached[0].feed.snapshot().received - received
                results.append((with_viewer, r))
    return results


def report_ingest(results, path: Path, sweeps: int, seconds: float) -> None:
    print(f"\n## Ingest with and without the viewer: {path.name} ({sweeps or 'its own'} sweeps, sent over and over) "
          f"as fast as the service takes it, windows of {seconds:g} s; default settings (refit every 5 s, status "
          f"every 1 s)")
    print("One acquisition streams throughout; after its first refit, timed windows alternate without and with "
          "a viewer and a browser page attached (opened before the window, closed after it). Per window: "
          "refits completed and documents published by the service, documents the viewer received, and "
          "CPU-seconds of this process (service and viewer), of the viewer's threads (Bokeh server, "
          "subscription) and of the browser with Playwright's driver.")
    print("| window | viewer and page | messages/s | counts/s | refits | documents | viewer documents | "
          "CPU-s process | CPU-s viewer threads | CPU-s browser |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for i, (with_viewer, r) in enumerate(results, 1):
        viewer = (f"{r['viewer_documents']} | {r['cpu_process']:.1f} | {r['cpu_viewer']:.2f}" if with_viewer
                  else f"- | {r['cpu_process']:.1f} | -")
        print(f"| {i} | {'yes' if with_viewer else 'no'} | {r['messages'] / r['seconds']:,.0f} | "
              f"{r['counts'] / r['seconds'] / 1e6:.2f} M | {r['refits']} | {r['documents']} | {viewer} | "
              f"{r['cpu_browser']:.1f} |")
    rate = {w: [r["messages"] / r["seconds"] for v, r in results if v == w] for w in (False, True)}
    counts = {w: [r["counts"] / r["seconds"] for v, r in results if v == w] for w in (False, True)}
    ratio = np.median(rate[True]) / np.median(rate[False])
    pairs = [a / b for a, b in zip(rate[True], rate[False])]
    print(f"\nMedian without the viewer: {np.median(rate[False]):,.0f} messages/s, "
          f"{np.median(counts[False]) / 1e6:.2f} M counts/s; with: {np.median(rate[True]):,.0f} messages/s, "
          f"{np.median(counts[True]) / 1e6:.2f} M counts/s. Ratio with / without: x{ratio:.3f} "
          f"(pairs: {', '.join(f'x{p:.3f}' for p in pairs)}); target x{TARGET}: "
          f"{'met' if ratio >= TARGET else 'missed'}.")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=30, help="timed page updates per label-map size")
    parser.add_argument("--sides", type=int, nargs="+", default=[128, 512], help="label-map sides beyond the golden")
    parser.add_argument("--file", default="core_shell.hspy", help="real file replayed, in ../shared/data")
    parser.add_argument("--sweeps", type=int, default=10, help="sweeps a dense file is split into (0: its own)")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed window of each ingest run")
    parser.add_argument("--runs", type=int, default=3, help="runs without, and as many with, the viewer")
    parser.add_argument("--quick", action="store_true", help="10 updates, 2 runs of 6 s each")
    args = parser.parse_args(argv)
    if args.quick:
        args.updates, args.runs, args.seconds = 10, 2, 6.0
    path = Path(args.file) if Path(args.file).exists() else DATA_DIR / args.file
    from edx_live.logs import configure

    configure(level="error")
    warnings.filterwarnings("ignore")  # HyperSpy's and exspy's deprecations
    for name in ("bokeh", "tornado"):  # a page closed while its session still sends: expected here
        logging.getLogger(name).setLevel(logging.ERROR)
    print(f"machine: {machine()}", flush=True)
    with browser() as b:  # part 2 first: its service compiles UMAP while nothing is timed
        results = ingest_with_and_without(b, path, args.sweeps, args.seconds, args.runs)
        report_latency(page_latency(b, [None, *args.sides], args.updates, warm=2), args.updates)
        report_ingest(results, path, args.sweeps, args.seconds)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--produce":
        produce(sys.argv[2], int(sys.argv[3]))
    else:
        main()

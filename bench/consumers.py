"""Slow and dead consumers: the service's ingest rate, refit time and memory while its consumers never read.

python bench/consumers.py [--size 128] [--sweeps 1000] [--rounds 3] [--conditions abcde] [--subscribers 8]
                          [--clients 400] [--pin-hwm 64 100] [--publish-hwm N] [--quick]

1. The publisher alone. A ``ZmqPublisher`` in a process of its own publishes the documents of
   a 512 x 512 acquisition (status, mean image, clusters, each with arrays of its own) in batches
   of ``PUBLISH_HWM``, with nobody subscribed, then with a SUB that never reads: the resident
   memory such a subscriber holds, as the publisher is and with the high-water marks
   ``--pin-hwm``.

2. The service. It runs in a process of its own, built as ``edx-live serve`` builds it (an
   ``App`` on free loopback ports, ``on_free_ports``: PULL in, PUB out, control REP; both
   workflows with quantification), so that its resident memory and CPU are its own. Settings: a
   refit every ``--refit-interval`` s (2), a status document every ``--status-interval`` s (0.02:
   fifty a second, so that the queues of consumers that never read fill within one run), line
   intensities by windows (``--quantify``: the exspy model is built again for every
   acquisition, minutes on two busy cores, and is not what is measured here).
   A producer process PUSHes the synthetic acquisition of bench/ingest.py (``size`` x ``size``
   pixels, 2048 channels, about 20 counts per pixel and sweep in raster order, 8 scan rows per
   message, a HAADF image after each sweep) as fast as the service takes it. Each run is one
   acquisition, the same messages every time (renamed), with one of these attached from before
   its start to after its final refit:

   a. nobody: the baseline;
   b. ``--subscribers`` SUB sockets that subscribe to every topic and never read;
   c. a hung viewer: an ``edx-live view`` process, subscribed, then stopped with SIGSTOP, and a
      SUB with a 4 kB kernel receive buffer (``SO_RCVBUF``) and a receive high-water mark of 1
      that never reads;
   d. control clients that never read: a new REQ socket every ``1 / --client-rate`` s sends
      ``status`` and is kept open, its reply unread, until the run ends (at most ``--clients``);
   e. one DEALER that sends ``status`` requests back to back and never reads a reply.

   Runs go in the order of ``--conditions``, then reversed, and so on: each condition is
   compared with the baseline of its own round (the machine drifts; two shared cores), and the
   median of those ratios is the figure. Per run: the ingest rate (start to stop message, as
   the service's own status documents mark them), the refit times the clusters documents carry,
   the CPU the service process used, and its resident memory (``VmRSS``) before, at the highest
   sampled every 50 ms, and after.

   Conflation: after the runs of (b) and (c), one of the sockets that never read starts reading
   (a subscriber that wakes up): how many old documents it drains before it holds a status
   newer than the acquisition's final one, how old the oldest was, and whether the acquisition's
   final documents reached it.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine  # noqa: E402

CONDITIONS = {"a": "nobody", "b": "SUBs never reading", "c": "hung viewer + tiny-buffer SUB",
              "d": "REQ clients never reading", "e": "DEALER flooding requests, never reading"}
TARGET = 0.90  # rate (and refit time) with / without, at worst
CHANNELS_NOTE = "2048 channels"


# the service process ----------------------------------------------------------------------------
class _Tally:
    """A subscriber inside the service process: per acquisition, when its start and stop came,
    the CPU used meanwhile, its refits, and the seq of the newest document of each topic."""

    def __init__(self, out):
        self.out, self.lock = out, threading.Lock()
        self.acqs: dict[str, dict] = {}
        self.seq: dict[str, int] = {}
        self.published = 0

    def __call__(self, header, arrays) -> None:
        from edx_protocol import topic_for

        now = time.perf_counter()
        with self.lock:
            self.published += 1
            topic = topic_for(header.kind, getattr(header, "workflow", None)).decode()
            self.seq[topic] = header.seq
            aid = header.acquisition_id
            if aid is None:
                return
            a = self.acqs.setdefault(aid, {"acquisition_id": aid, "refits": [], "quantify": []})
            if header.kind == "status":
                # start, stop and final status are emitted on the ingest thread: thread_time is its CPU
                if "t_start" not in a:
                    a.update(t_start=now, cpu_start=time.process_time(), thread_start=time.thread_time(),
                             docs_start=self.published)
                if header.state == "stopped" and "t_stop" not in a:
                    a.update(t_stop=now, cpu_stop=time.process_time(), thread_stop=time.thread_time(),
                             counts=header.counts, messages=header.messages, frames=header.frames,
                             missing=header.gaps.count, rejected=sum(header.rejected.values()))
                if header.final:
                    a.update(t_final=now, cpu_final=time.process_time(), docs=self.published - a["docs_start"],
                             seq=dict(self.seq))
                    print("report", json.dumps(self.acqs.pop(aid)), file=self.out, flush=True)
            elif header.kind == "clusters":
                a["refits"].append([header.workflow, header.refit, header.refit_s, header.final, header.seq])
            elif header.kind == "composition":
                a["quantify"].append([header.workflow, header.quantify_s, header.final, header.seq])


def serve(options: dict) -> None:
    """The service process: an App on free ports; prints its endpoints, then a report per acquisition."""
    import warnings

    warnings.filterwarnings("ignore")
    from edx_live.config import load_settings
    from edx_live.core.kernels import warm_up as warm_up_kernels
    from edx_live.logs import configure
    from edx_live.segment import warm_up
    from edx_live.shell import sockets
    from edx_live.shell.app import App, on_free_ports

    configure(level="error")
    import faulthandler

    faulthandler.register(signal.SIGUSR1)  # kill -USR1 PID: every thread's stack on stderr
    if options.get("publish_hwm"):  # an experiment: the result PUB socket's queue per subscriber
        sockets.PUBLISH_HWM = int(options["publish_hwm"])
    warm_up_kernels()
    settings = load_settings(overrides={"refit": {"interval_s": options["refit_interval"]},
                                        "output": {"status_interval_s": options["status_interval"]},
                                        "quantify": {"intensities": options["quantify"]}})
    tally = _Tally(sys.stdout)
    app = App(on_free_ports(settings), subscribers=[tally], warm_up=warm_up)
    signal.signal(signal.SIGTERM, lambda *_: app.stop())

    def say_warm() -> None:  # the bench times nothing before UMAP's code is compiled
        while any(t.name == "edx-live-warm-up" for t in threading.enumerate()) or not app.alive:
            time.sleep(0.1)
        print("warm", flush=True)

    def orphaned() -> None:  # the bench's end of stdin closes when the bench ends, however it ends
        sys.stdin.read()
        app.stop()

    print("ready", app.input_endpoint, app.output_endpoint, app.control_endpoint, flush=True)
    app.start()
    threading.Thread(target=say_warm, daemon=True).start()
    threading.Thread(target=orphaned, daemon=True).start()
    try:
        while app.alive:
            app._thread.join(0.5)
    finally:
        app.close()


# the producer process ---------------------------------------------------------------------------
def produce(folder: str, rows: int) -> None:
    """For every ``run ID SWEEPS`` line: start, SWEEPS sweeps of the same events, stop; as fast as taken."""
    import msgpack
    import zmq
    from edx_protocol import EventsFrame, Image, Stop, describe, encode
    from ingest import _start, payload_arrays

    data = np.load(Path(folder) / "sweep.npz")
    pixel, channel = data["pixel"], data["channel"]
    n, channels = int(data["n_rows"]), int(data["channels"])
    step = rows * n
    bounds = np.searchsorted(pixel, np.arange(0, n * n + step, step))
    parts = []
    for i in range(len(bounds) - 1):
        arrays, _ = payload_arrays("events", pixel[bounds[i]:bounds[i + 1]], channel[bounds[i]:bounds[i + 1]],
                                   i * step, min((i + 1) * step, n * n), channels)
        header = EventsFrame(acquisition_id="x", seq=1, frame_index=0, arrays=describe(arrays))
        frames = encode(header, arrays)
        parts.append((header.model_dump(mode="json"), frames[1:]))
    image = np.random.default_rng(0).random((n, n), dtype=np.float32)  # a HAADF image after each sweep
    image_header = Image(acquisition_id="x", seq=1, frame_index=0, detector="HAADF", first_row=0,
                         arrays=describe({"image": image}))
    parts.append((image_header.model_dump(mode="json"), encode(image_header, {"image": image})[1:]))
    context = zmq.Context()
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] != "run":
            break
        endpoint, aid, sweeps = words[1], words[2], int(words[3])
        socket = context.socket(zmq.PUSH)
        socket.setsockopt(zmq.LINGER, -1)
        socket.connect(endpoint)
        t0 = time.perf_counter()
        start = _start(n, channels, sweeps).model_copy(update={
            "acquisition_id": aid, "elements": list(data["elements"]), "xray_lines": list(data["xray_lines"])})
        socket.send_multipart(encode(start))
        seq = 1
        for sweep in range(sweeps):
            for doc, buffers in parts:
                doc = {**doc, "acquisition_id": aid, "seq": seq, "frame_index": sweep}
                socket.send_multipart([msgpack.packb(doc, use_bin_type=True), *buffers], copy=False)
                seq += 1
        socket.send_multipart(encode(Stop(acquisition_id=aid, seq=seq, frames=sweeps)))
        socket.close()
        print(f"sent {aid} {seq + 1} {time.perf_counter() - t0:.3f}", flush=True)
    context.term()


# the publisher alone: what a subscriber that never reads holds in memory ------------------------
def documents_512():
    """A status, a mean image and a clusters document as a 512 x 512 acquisition publishes them (2 x 2 binned)."""
    from edx_protocol import describe
    from edx_protocol.examples import result_examples

    golden = {e.name: e for e in result_examples()}
    rng = np.random.default_rng(0)
    image = {"image": rng.random((512, 512), dtype=np.float32)}
    image_header = golden["mean_image"].header.model_copy(update={"arrays": describe(image)})
    labels = rng.integers(0, 2, (256, 256)).astype("<u2")
    clusters = {"labels": labels, "spectra": np.zeros((2, 2048), "<u8"),
                "confidence": rng.random((256, 256), dtype=np.float32)}
    infos = [c.model_copy(update={"pixels": int((labels == c.label).sum()), "counts": 0})
             for c in golden["clusters"].header.clusters]
    clusters_header = golden["clusters"].header.model_copy(update={"clusters": infos, "noise_pixels": 0, "counts": 0,
                                                                  "arrays": describe(clusters)})
    return [(golden["status"].header, {}), (image_header, image), (clusters_header, clusters)]


def pin(hwm: int | None, batches: int = 3) -> None:
    """In a process of its own: resident memory of a ZmqPublisher with a subscriber that never reads, after
    each batch of PUBLISH_HWM documents (each with arrays of its own, as the service makes them)."""
    import zmq

    from edx_live.shell import sockets

    if hwm:
        sockets.PUBLISH_HWM = hwm
    from edx_live.shell.publish import ZmqPublisher

    def rss() -> int:
        return rss_of(os.getpid())

    docs = documents_512()
    context = zmq.Context()
    publisher = ZmqPublisher("tcp://127.0.0.1:*", sockets=sockets.Sockets(context))
    mean_bytes = np.mean([sum(a.nbytes for a in arrays.values()) for _, arrays in docs])
    out = {"hwm": sockets.PUBLISH_HWM, "document_mib": mean_bytes / 2**20}
    for attached in (False, True):
        dead = None
        if attached:
            dead = context.socket(zmq.SUB)
            dead.setsockopt(zmq.RCVHWM, 1)
            dead.setsockopt(zmq.RCVBUF, 4096)
            dead.setsockopt(zmq.SUBSCRIBE, b"")
            dead.connect(publisher.endpoint)
            time.sleep(0.5)  # it subscribes
        before, grown, seq = rss(), [], 0
        for _ in range(batches):
            for _ in range(sockets.PUBLISH_HWM):
                header, arrays = docs[seq % len(docs)]
                publisher(header.model_copy(update={"seq": seq}), {k: v.copy() for k, v in arrays.items()})
                seq += 1
            grown.append((rss() - before) / 2**20)
        out["dead" if attached else "none"] = grown
        if dead is not None:
            dead.close(linger=0)
    publisher.close()
    print("pinned", json.dumps(out), flush=True)


# the bench's side -------------------------------------------------------------------------------
def rss_of(pid: int) -> int:
    """Resident bytes of process ``pid`` (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class PeakRss:
    """Samples another process's resident memory every ``interval_s`` on a thread; ``peak`` is the highest."""

    def __init__(self, pid: int, interval_s: float = 0.05):
        self.pid, self.interval_s, self.peak = pid, interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_of(self.pid))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakRss":
        self.peak = rss_of(self.pid)
        self._thread.start()
        return self

    def _flood(self) -> None:
        """One DEALER sends ``status`` requests back to back and never reads a reply."""
        import zmq
        from edx_protocol.control import encode_request

        request = [b"", encode_request("status")]  # a REP peer reads an empty delimiter, then the request
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 100)
        sock.connect(self.control)
        self.requests.append(sock)
        self.sent = 0
        while not self._stop.is_set():
            try:
                sock.send_multipart(request)
                self.sent += 1
            except zmq.Again:
                pass

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Child:
    """A process of this script, its stdout lines in a queue (read on a thread)."""

    def __init__(self, args: list[str], **popen):
        self.proc = subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, **popen)
        self.lines: queue.Queue = queue.Queue()
        self._early: list[list[str]] = []  # lines that came before the one expected
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.split(maxsplit=1))
        self.lines.put(["eof", ""])

    def expect(self, word: str, timeout_s: float = 600.0) -> str:
        """The rest of the next line starting with ``word`` (others are kept for a later call)."""
        for i, got in enumerate(self._early):
            if got[0] == word:
                del self._early[i]
                return got[1].strip() if len(got) > 1 else ""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                got = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no {word!r} from {self.proc.args[2]} within {timeout_s:g} s") from None
            if got[0] == word:
                return got[1].strip() if len(got) > 1 else ""
            if got[0] == "eof":
                raise RuntimeError(f"{self.proc.args[2]} ended (exit {self.proc.wait()}) before saying {word!r}")
            self._early.append(got)

    def tell(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def edx_live_command() -> list[str]:
    script = Path(sys.executable).parent / "edx-live"
    return [str(script)] if script.exists() else [sys.executable, "-m", "edx_live.cli"]


class Consumers:
    """What one condition attaches to the service: set up before a run, torn down after it."""

    def __init__(self, condition: str, context, output: str, control: str, args):
        self.condition, self.context, self.output, self.control, self.args = condition, context, output, control, args
        self.subs: list = []
        self.viewer: subprocess.Popen | None = None
        self.requests: list = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.late = None  # the socket that starts reading after the run
        self.sent = 0  # requests the flood sent

    def __enter__(self) -> "Consumers":
        if self.condition == "b":
            for _ in range(self.args.subscribers):
                self.subs.append(self._sub())
            self.late = self.subs[0]
        elif self.condition == "c":
            self.viewer = self._hung_viewer()
            tiny = self._sub(rcvbuf=4096, rcvhwm=1)
            self.subs.append(tiny)
            self.late = tiny
        elif self.condition in "de":
            target = self._requests if self.condition == "d" else self._flood
            self._thread = threading.Thread(target=target, daemon=True)
            self._thread.start()
        time.sleep(0.5)  # subscriptions reach the PUB socket (a SUB joins asynchronously)
        return self

    def _sub(self, rcvbuf: int | None = None, rcvhwm: int | None = None):
        import zmq

        sock = self.context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        if rcvbuf is not None:
            sock.setsockopt(zmq.RCVBUF, rcvbuf)
        if rcvhwm is not None:
            sock.setsockopt(zmq.RCVHWM, rcvhwm)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self.output)
        return sock

    def _hung_viewer(self) -> subprocess.Popen:
        """``edx-live view`` subscribed to the service, then stopped (SIGSTOP) as a hung process is."""
        log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        proc = subprocess.Popen(edx_live_command() + ["view", "--connect", self.output, "--port", "0",
                                                      "--log-level", "info"],
                                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while "view_subscribed" not in Path(log.name).read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the viewer did not subscribe: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.05)
        time.sleep(1.0)  # its first documents arrive: it is a viewer in use that hangs
        proc.send_signal(signal.SIGSTOP)
        os.unlink(log.name)
        return proc

    def _requests(self) -> None:
        import zmq
        from edx_protocol.control import encode_request

        request = encode_request("status")
        while not self._stop.is_set() and len(self.requests) < self.args.clients:
            sock = self.context.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.control)
            sock.send(request)
            self.requests.append(sock)  # kept open, its reply never read
            self._stop.wait(1.0 / self.args.client_rate)

    def _flood(self) -> None:
        """One DEALER sends ``status`` requests back to back and never reads a reply."""
        import zmq
        from edx_protocol.control import encode_request

        request = [b"", encode_request("status")]  # a REP peer reads an empty delimiter, then the request
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 100)
        sock.connect(self.control)
        self.requests.append(sock)
        self.sent = 0
        while not self._stop.is_set():
            try:
                sock.send_multipart(request)
                self.sent += 1
            except zmq.Again:
                pass

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for sock in self.subs + self.requests:
            sock.close(linger=0)
        if self.viewer is not None:
            self.viewer.send_signal(signal.SIGCONT)
            self.viewer.terminate()
            try:
                self.viewer.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.viewer.kill()


def late_reader(sock, report: dict, timeout_s: float = 60.0) -> dict:
    """A socket that never read starts reading: drain until a status newer than the acquisition's final one."""
    import zmq
    from edx_protocol import decode_result

    final_status = report["seq"]["status"]
    finals = {topic: seq for topic, seq in report["seq"].items() if topic != "status"}
    t0 = time.perf_counter()
    drained, first_status, got_final = 0, None, set()
    deadline = t0 + timeout_s
    while time.perf_counter() < deadline:
        if not sock.poll(100):
            continue
        frames = sock.recv_multipart(copy=False)
        header, _ = decode_result(frames[1:])
        topic = bytes(frames[0].bytes).decode()
        drained += 1
        if finals.get(topic) == header.seq and header.acquisition_id == report["acquisition_id"]:
            got_final.add(topic)
        if header.kind == "status":
            if first_status is None:
                first_status = header.seq
            if header.seq == final_status:
                got_final.add("status")
            if header.seq > final_status:
                return {"drained": drained, "seconds": time.perf_counter() - t0, "caught_up": True,
                        "oldest_status_behind": final_status - first_status, "finals": len(got_final),
                        "final_topics": len(finals) + 1}
    return {"drained": drained, "seconds": timeout_s, "caught_up": False,
            "oldest_status_behind": None if first_status is None else final_status - first_status,
            "finals": len(got_final), "final_topics": len(finals) + 1}


def run_one(service: Child, producer: Child, endpoint: str, aid: str, sweeps: int) -> dict:
    producer.tell(f"run {endpoint} {aid} {sweeps}")
    sent = producer.expect("sent").split()
    report = json.loads(service.expect("report", timeout_s=1800))  # a cold start on two busy cores is slow
    if report["acquisition_id"] != aid:
        raise RuntimeError(f"report of {report['acquisition_id']}, expected {aid}")
    report["sent_messages"] = int(sent[1])
    return report


def summarise(report: dict, events: int) -> dict:
    """Rates and times of one run from the service's report."""
    wall = report["t_stop"] - report["t_start"]
    refits = {}
    for workflow, _, seconds, final, _ in report["refits"]:
        refits.setdefault(workflow, []).append(seconds)
    return {"wall": wall, "rate": events / wall, "messages_rate": report["messages"] / wall,
            "cpu": report["cpu_stop"] - report["cpu_start"],
            "ingest_cpu": report["thread_stop"] - report["thread_start"],
            "refit": {w: float(np.median(v)) for w, v in refits.items()}, "n_refits": len(report["refits"]),
            "final_s": report["t_final"] - report["t_stop"], "docs": report["docs"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="scan side in pixels")
    parser.add_argument("--sweeps", type=int, default=1000, help="sweeps per acquisition (one run)")
    parser.add_argument("--rows", type=int, default=8, help="scan rows per message")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the conditions")
    parser.add_argument("--subscribers", type=int, default=8, help="SUB sockets that never read, condition b")
    parser.add_argument("--clients", type=int, default=400, help="REQ sockets that never read, condition d")
    parser.add_argument("--client-rate", type=float, default=25.0, help="new REQ sockets per second, condition d")
    parser.add_argument("--conditions", default="abcde", help="which, in the order of the first round (a first)")
    parser.add_argument("--refit-interval", type=float, default=2.0, help="seconds between refits")
    parser.add_argument("--status-interval", type=float, default=0.02, help="seconds between status documents")
    parser.add_argument("--quantify", choices=["windows", "model"], default="windows",
                        help="line intensities (windows: no exspy model to build for every acquisition, which "
                             "takes minutes on two busy cores and is not what this bench measures)")
    parser.add_argument("--publish-hwm", type=int, default=None,
                        help="experiment: the result PUB socket's queue per subscriber (sockets.PUBLISH_HWM)")
    parser.add_argument("--pin-hwm", type=int, nargs="*", default=[64],
                        help="publisher alone: also with these high-water marks (the publisher as it is comes first)")
    parser.add_argument("--quick", action="store_true", help="1 round of 300 sweeps")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.sweeps = 1, 300
    import zmq
    from ingest import sweep_events

    print(f"machine: {machine()}", flush=True)
    from edx_adapters.synthetic import make_phantom

    pixel, channel, channels = sweep_events(args.size, 20.0)
    phantom = make_phantom((args.size, args.size))  # the elements and lines its start names
    options = {"refit_interval": args.refit_interval, "status_interval": args.status_interval,
               "publish_hwm": args.publish_hwm, "quantify": args.quantify}
    pinned = []
    for hwm in dict.fromkeys([0] + args.pin_hwm):  # 0: the publisher as it is
        child = Child(["--pin", str(hwm)])
        pinned.append(json.loads(child.expect("pinned", timeout_s=600)))
        child.end()
    report_pinned(pinned)
    context = zmq.Context()
    context.set(zmq.MAX_SOCKETS, 4 * args.clients + 64)
    rows, lates = [], []
    with tempfile.TemporaryDirectory() as folder:
        np.savez(Path(folder) / "sweep.npz", pixel=pixel, channel=channel, n_rows=args.size, channels=channels,
                 elements=np.array(phantom.elements), xray_lines=np.array(phantom.xray_lines))
        service = Child(["--serve", json.dumps(options)])
        producer = Child(["--produce", folder, str(args.rows)])
        try:
            endpoints = service.expect("ready").split()
            producer.expect("ready")
            pid = service.proc.pid
            inp, out, ctl = endpoints
            run_one(service, producer, inp, "warm-0", 20)  # the first refits run cold
            service.expect("warm", timeout_s=1800)
            run_one(service, producer, inp, "warm-1", max(20, args.sweeps // 4))
            rss_start = rss_of(pid)
            order = []
            for r in range(args.rounds):
                order += [(r, c) for c in (args.conditions if r % 2 == 0 else args.conditions[::-1])]
            for i, (r, condition) in enumerate(order):
                aid = f"run-{i}-{condition}"
                with Consumers(condition, context, out, ctl, args) as attached:
                    before = rss_of(pid)
                    with PeakRss(pid) as peak:
                        report = run_one(service, producer, inp, aid, args.sweeps)
                    after = rss_of(pid)
                    if attached.late is not None:
                        time.sleep(1.0)
                        lates.append((condition, late_reader(attached.late, report)))
                    clients = attached.sent if condition == "e" else len(attached.requests)
                s = summarise(report, args.sweeps * pixel.size)
                s.update(round=r, condition=condition, rss_before=before, rss_after=after, rss_peak=peak.peak,
                         clients=clients, missing=report["missing"], rejected=report["rejected"],
                         sent=report["sent_messages"], messages=report["messages"])
                rows.append(s)
                print(f"  {aid}: {s['rate'] / 1e6:.1f} M events/s, refits {s['refit']}, "
                      f"RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MiB (peak {peak.peak / 2**20:.0f})",
                      flush=True)
            rss_end = rss_of(pid)
        finally:
            producer.tell("end")
            producer.end()
            service.end()
    report_all(rows, lates, args, channels, rss_start, rss_end)


def report_pinned(pinned: list[dict]) -> None:
    print("\n## The publisher alone: resident memory a subscriber that never reads holds")
    print("A ZmqPublisher in a process of its own publishes status, mean image (512 x 512 float32) and clusters "
          "(256 x 256 binned labels and confidence) documents in turn, each with arrays of its own, in batches of "
          "PUBLISH_HWM documents; without a subscriber, then with a SUB (RCVHWM 1, 4 kB SO_RCVBUF) that never reads. "
          "Growth of its resident memory after each batch:")
    print("| PUBLISH_HWM | mean document | nobody subscribed | a SUB that never reads |")
    print("|---|---|---|---|")
    for p in pinned:
        def cells(v):
            return " / ".join(f"{g:+.0f}" for g in v) + " MiB"

        print(f"| {p['hwm']} | {p['document_mib']:.2f} MiB | {cells(p['none'])} | {cells(p['dead'])} |", flush=True)


def report_all(rows, lates, args, channels, rss_start, rss_end) -> None:
    n = args.size
    print(f"\n## Slow and dead consumers: {n}x{n} pixels x {channels} channels, {args.sweeps} sweeps per run, "
          f"{args.rows} rows per message and an image per sweep, refit every {args.refit_interval:g} s, status every "
          f"{args.status_interval:g} s, quantification by {args.quantify}")
    print(f"b: {args.subscribers} SUBs never reading; c: a viewer process stopped with SIGSTOP and a SUB with a "
          f"4 kB receive buffer and RCVHWM 1; d: a new REQ socket every {1 / args.client_rate:g} s sends status "
          f"and keeps its reply unread (at most {args.clients}); e: one DEALER sends status requests back to back "
          f"and never reads")
    if args.publish_hwm:
        print(f"Experiment: the result PUB socket's high-water mark set to {args.publish_hwm}.")
    print("| round | condition | M events/s | messages/s | refits | pca-gmm refit, median | umap-hdbscan refit, "
          "median | final refit after stop | CPU-s service | CPU-s ingest thread | documents | requests | "
          "RSS before | RSS peak | RSS after | accepted / sent | missing |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in rows:
        print(f"| {s['round'] + 1} | {s['condition']}: {CONDITIONS[s['condition']]} | {s['rate'] / 1e6:.1f} | "
              f"{s['messages_rate']:,.0f} | {s['n_refits']} | {s['refit'].get('pca-gmm', float('nan')):.2f} s | "
              f"{s['refit'].get('umap-hdbscan', float('nan')):.2f} s | {s['final_s']:.2f} s | {s['cpu']:.1f} | "
              f"{s['ingest_cpu']:.1f} | {s['docs']:,} | {s['clients'] or '-'} | {s['rss_before'] / 2**20:.0f} MiB | "
              f"{s['rss_peak'] / 2**20:.0f} MiB | {s['rss_after'] / 2**20:.0f} MiB | {s['messages']:,} / "
              f"{s['sent']:,} | {s['missing']} |")
    base = {s["round"]: s for s in rows if s["condition"] == "a"}
    print("\nRatio to the baseline (a) of the same round, median [min, max] over rounds:")
    print("| condition | ingest rate | pca-gmm refit time | umap-hdbscan refit time | RSS after - before "
          "(median) | RSS peak - before (max) | within 10 % |")
    print("|---|---|---|---|---|---|---|")
    for c in args.conditions.replace("a", ""):
        mine = [s for s in rows if s["condition"] == c]
        rate = [s["rate"] / base[s["round"]]["rate"] for s in mine]
        refit = {w: [s["refit"][w] / base[s["round"]]["refit"][w] for s in mine
                     if w in s["refit"] and w in base[s["round"]]["refit"]] for w in ("pca-gmm", "umap-hdbscan")}
        grow = float(np.median([s["rss_after"] - s["rss_before"] for s in mine]))
        peak = max(s["rss_peak"] - s["rss_before"] for s in mine)
        met = np.median(rate) >= TARGET and all(not v or np.median(v) <= 1 / TARGET for v in refit.values())

        def cell(v):
            return f"x{np.median(v):.3f} [{min(v):.2f}, {max(v):.2f}]" if v else "-"

        print(f"| {c}: {CONDITIONS[c]} | {cell(rate)} | {cell(refit['pca-gmm'])} | {cell(refit['umap-hdbscan'])} | "
              f"{grow / 2**20:+.0f} MiB | {peak / 2**20:+.0f} MiB | {'met' if met else 'missed'} |")
    a_rss = [s["rss_after"] - s["rss_before"] for s in rows if s["condition"] == "a"]
    print(f"\nBaseline (a) RSS after - before: median {np.median(a_rss) / 2**20:+.0f} MiB. Service RSS before the "
          f"first timed run {rss_start / 2**20:.0f} MiB, after the last {rss_end / 2**20:.0f} MiB.")
    if lates:
        print("\nA socket that never read starts reading 1 s after the acquisition's final status: documents it "
              "drains until it holds a status newer than that final one, how many status documents behind the "
              "oldest was, and how many of the acquisition's final documents (newest of each topic) reached it.")
        print("| condition | documents drained | oldest status, documents behind | seconds to catch up | "
              "final documents received |")
        print("|---|---|---|---|---|")
        for c, late in lates:
            print(f"| {c}: {CONDITIONS[c]} | {late['drained']:,} | {late['oldest_status_behind']} | "
                  f"{late['seconds']:.2f}{'' if late['caught_up'] else ' (not caught up)'} | "
                  f"{late['finals']} of {late['final_topics']} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--pin":
        pin(int(sys.argv[2]) or None)
    elif len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(json.loads(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--produce":
        produce(sys.argv[2], int(sys.argv[3]))
    else:
        main()

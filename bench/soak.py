"""Soak: acquisitions in a row at 10x real pace for 20 minutes, recording and viewer on; memory and every count.

python bench/soak.py [--minutes 20] [--speed 10] [--size 128] [--sweeps 300] [--counts 5] [--dwell-us 50]
                     [--chunk-pixels 1024] [--file FILE] [--no-browser] [--out docs/soak_rss]

The service runs as deployed: ``edx-live serve`` in a process of its own with a configuration
file (every socket on a free loopback port, recording on: ``[record] dir``, with a checkpoint
of each acquisition beside its recording; a session folder per acquisition: ``[output]
sessions_dir``; both in a temporary folder; everything else default: refit every 5 s, both
workflows with quantification). ``edx-live view`` subscribes to it from a process of its own
(``edx_live.view.server.ViewerProcess``, as the demo runs it), with a page open in headless
chromium unless ``--no-browser``.

A producer process replays acquisitions one after the other through the adapters
(``edx_adapters.producer.send_replay`` over PUSH): the synthetic phantom (``edx_adapters.synthetic``,
``--size`` x ``--size`` pixels, 2048 channels, ``--counts`` counts per pixel and sweep, with its
HAADF image after each sweep), or ``--file`` (``edx_adapters.replay.open_replay``), in messages
of ``--chunk-pixels`` pixels (1024: 8 scan rows at 128 x 128; 0: one row each). A real
sweep takes ``dwell x pixels`` (``--dwell-us`` 50: 0.82 s at 128 x 128, 100 k counts/s at 5
counts per pixel, a Super-X on a thin specimen); the producer holds ``--speed`` times that
pace, on a fixed schedule. Sixteen distinct sweeps are drawn once and cycled (renumbered), so
that drawing them does not set the pace.

Every ``--sample-s`` (2) s the resident memory (``VmRSS`` of ``/proc/PID/status``) of the service
and of the viewer is sampled; the curve is written as CSV and PNG (``--out``). A subscriber in
this process collects every acquisition's final status. At the end every count is accounted
for, per acquisition and in sum: the X-rays and messages the producer sent against the counts
and messages accumulated plus those reported lost (``gaps.count``) or rejected, and the same
from ``edx-live ctl list``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
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

REPO = HERE.parent
POOL_SWEEPS = 16


# the producer process ---------------------------------------------------------------------------
class Cycled:
    """A replay (``start`` and ``messages()``, what ``send_replay`` reads) of ``sweeps`` sweeps, cycling a pool.

    The pool's messages are re-numbered (``seq``, ``frame_index``) and re-named (``acquisition_id``).
    """

    def __init__(self, start, pool: list[list[tuple]], sweeps: int, aid: str):
        self.start = start.model_copy(update={"acquisition_id": aid, "expected_frames": sweeps})
        self.pool, self.sweeps, self.aid = pool, sweeps, aid

    def messages(self):
        from edx_protocol import Stop

        seq = 0
        for index in range(self.sweeps):
            for header, arrays in self.pool[index % len(self.pool)]:
                seq += 1
                yield header.model_copy(update={"acquisition_id": self.aid, "seq": seq,
                                                "frame_index": index}), arrays
        yield Stop(acquisition_id=self.aid, seq=seq + 1, frames=self.sweeps), {}


def pool_of(args) -> tuple[object, list[list[tuple]], int]:
    """The start, ``POOL_SWEEPS`` sweeps of messages, and the pixels of a sweep."""
    from edx_protocol import Stop

    if args.file:
        from edx_adapters.replay import open_replay

        replay = open_replay(args.file, frames=POOL_SWEEPS)
    else:
        from edx_adapters.synthetic import make_phantom, synthetic_replay

        phantom = make_phantom((args.size, args.size))
        replay = synthetic_replay(phantom, dose=args.counts * POOL_SWEEPS, frames=POOL_SWEEPS, seed=0)
    if args.chunk_pixels:
        replay = replay.rechunk(args.chunk_pixels)
    pool: list[list[tuple]] = [[] for _ in range(POOL_SWEEPS)]
    for header, arrays in replay.messages():
        if not isinstance(header, Stop):
            pool[header.frame_index % POOL_SWEEPS].append((header, arrays))
    pool = [sweep for sweep in pool if sweep]
    rows, columns = replay.start.scan_shape
    return replay.start, pool, rows * columns


def produce(args) -> None:
    """For every ``run ENDPOINT ID SWEEPS`` line, one acquisition at ``speed`` x real pace; prints what was sent."""
    import warnings

    import zmq
    from edx_adapters.producer import make_socket, send_replay

    warnings.filterwarnings("ignore")
    start, pool, pixels = pool_of(args)
    sweep_s = args.dwell_us * 1e-6 * pixels / args.speed
    print(f"ready {sweep_s:.6f}", flush=True)
    context = zmq.Context()
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] != "run":
            break
        endpoint, aid, sweeps = words[1], words[2], int(words[3])
        sock = make_socket(endpoint, "push", context=context)
        t0 = time.monotonic()
        late = [0.0]

        def pace(done) -> None:  # a fixed schedule: sweep k ends at t0 + (k + 1) x sweep time
            due = t0 + (done.frame_index + 1) * sweep_s
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            else:
                late[0] = max(late[0], -wait)

        sent = send_replay(Cycled(start, pool, sweeps, aid), sock, interval_s=0.0, on_sweep=pace)
        sock.close()  # linger: everything queued is delivered
        print("sent", json.dumps({"acquisition_id": aid, **sent._asdict(), "seconds": time.monotonic() - t0,
                                  "late_s": late[0]}), flush=True)
    context.term()


# the bench's side -------------------------------------------------------------------------------
def rss_mib(pid: int | None) -> float | None:
    """Resident memory of ``pid`` in MiB (VmRSS), None when it is gone."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Sampler:
    """Resident memory of the service and the viewer every ``interval_s`` on a thread of its own."""

    def __init__(self, pids: tuple[int, int], interval_s: float, finished, counts):
        self.pids, self.interval_s, self.finished, self.counts = pids, interval_s, finished, counts
        self.samples: list[tuple] = []
        self._stop = threading.Event()
        self.t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic() - self.t0, rss_mib(self.pids[0]), rss_mib(self.pids[1]),
                                 self.finished(), self.counts()))
            if self._stop.wait(self.interval_s):
                return

    def close(self) -> list[tuple]:
        self._stop.set()
        self._thread.join()
        return self.samples


class Statuses:
    """A result subscriber on a thread: the final status of every acquisition, and documents missed (seq jumps)."""

    def __init__(self, endpoint: str):
        import zmq

        from edx_live.shell.sockets import Sockets

        self.sock = Sockets(zmq.Context.instance()).subscriber(endpoint, (b"status",), high_water_mark=10_000)
        self.finals: dict[str, object] = {}
        self.latest = None
        self.received = self.skipped = 0
        self._last_seq: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from edx_protocol import decode_result

        while not self._stop.is_set():
            if not self.sock.poll(100):
                continue
            header, _ = decode_result(self.sock.recv_multipart()[1:])
            with self._lock:
                self.received += 1
                if self._last_seq is not None and header.seq > self._last_seq + 1:
                    self.skipped += header.seq - self._last_seq - 1
                self._last_seq = header.seq
                self.latest = header
                if header.final and header.acquisition_id is not None:
                    self.finals[header.acquisition_id] = header

    def final(self, aid: str):
        with self._lock:
            return self.finals.get(aid)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close(linger=0)


class Producer:
    """The producer process: ``run`` one acquisition, read what it sent."""

    def __init__(self, args):
        cmd = [sys.executable, __file__, "--produce", "--speed", str(args.speed), "--size", str(args.size),
               "--counts", str(args.counts), "--dwell-us", str(args.dwell_us),
               "--chunk-pixels", str(args.chunk_pixels or 0)]
        cmd += ["--file", args.file] if args.file else []
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.sweep_s = float(self._expect("ready"))

    def _expect(self, word: str) -> str:
        for line in self.proc.stdout:
            if line.startswith(word):
                return line[len(word):].strip()
        raise RuntimeError(f"the producer process ended (exit {self.proc.wait()}) before saying {word!r}")

    def run(self, endpoint: str, aid: str, sweeps: int) -> None:
        self.proc.stdin.write(f"run {endpoint} {aid} {sweeps}\n")
        self.proc.stdin.flush()

    def sent(self) -> dict:
        return json.loads(self._expect("sent"))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("end\n")
                self.proc.stdin.flush()
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def edx_live() -> list[str]:
    script = Path(sys.executable).parent / "edx-live"
    return [str(script)] if script.exists() else [sys.executable, "-m", "edx_live.cli"]


def start_service(folder: Path) -> tuple[subprocess.Popen, dict, Path]:
    """``edx-live serve`` with recording and session folders under ``folder``; its process, endpoints and log."""
    config = folder / "edx-live.toml"
    config.write_text(f"""[input]
address = "tcp://127.0.0.1:*"
[output]
address = "tcp://127.0.0.1:*"
sessions_dir = "{folder / 'sessions'}"
[control]
address = "tcp://127.0.0.1:*"
[record]
dir = "{folder / 'recordings'}"
""")
    log = folder / "service.log"
    proc = subprocess.Popen(edx_live() + ["serve", "--config", str(config), "--log-format", "json",
                                          "--log-level", "info"],
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"), cwd=folder, preexec_fn=_die_with_parent)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if '"serving"' in line:
                entry = json.loads(line)
                return proc, {k: entry[k] for k in ("input", "output", "control")}, log
        if proc.poll() is not None:
            raise RuntimeError(f"edx-live serve ended (exit {proc.returncode}): {log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise TimeoutError("edx-live serve did not start serving within 600 s")


def _die_with_parent() -> None:
    """In a child before it runs: SIGTERM when this bench ends, however it ends (Linux)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def ctl(command: str, control: str) -> object:
    out = subprocess.run(edx_live() + ["ctl", command, "--connect", control, "--timeout", "30"], capture_output=True,
                         text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"edx-live ctl {command}: exit {out.returncode}: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def open_browser(url: str):
    """A headless chromium page on the viewer (the system's chromium); None when there is none."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return None
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1200, "height": 1900})
    page.goto(url)
    page.wait_for_selector("text=edx_live: live STEM-EDX phases", timeout=60000)
    return playwright, browser, page


def soak(args) -> None:
    from edx_live.view.server import ViewerProcess

    print(f"machine: {machine()}", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="edx-live-soak-", dir=args.tmp))
    acquisitions, deleted = [], {"recording_bytes": 0, "session_bytes": 0}
    service = viewer = producer = statuses = browser = sampler = None
    try:
        service, endpoints, log = start_service(folder)
        viewer = ViewerProcess(endpoints["output"], port=0).start()
        viewer_pid = viewer._proc.pid
        browser = None if args.no_browser else open_browser(viewer.url)
        statuses = Statuses(endpoints["output"])
        producer = Producer(args)
        sampler = Sampler((service.pid, viewer_pid), args.sample_s, lambda: len(acquisitions),
                          lambda: statuses.latest.counts if statuses.latest is not None else 0)
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        next_look = t0
        i, running = 0, None
        print(f"service pid {service.pid}, viewer pid {viewer_pid} at {viewer.url}, browser "
              f"{'on' if browser else 'off'}; a sweep every {producer.sweep_s:.3f} s ({args.speed:g}x real pace)",
              flush=True)
        while True:
            now = time.monotonic()
            if running is None and now < end:
                running = f"soak-{i:03d}"
                producer.run(endpoints["input"], running, args.sweeps)
                i += 1
            if browser is not None and now >= next_look:
                browser[2].title()  # lets Playwright read the browser's events
                next_look = now + args.sample_s
            if running is not None and statuses.final(running) is not None:
                sent = producer.sent()
                acquisitions.append((sent, statuses.final(running)))
                tidy(folder, deleted)
                s = acquisitions[-1][1]
                print(f"  {running}: {s.frames} sweeps, {s.counts:,} counts, {s.messages} messages, missing "
                      f"{s.gaps.count}; sent {sent['xrays']:,} X-rays in {sent['seconds']:.1f} s; service "
                      f"{rss_mib(service.pid):.0f} MiB, viewer {rss_mib(viewer_pid):.0f} MiB", flush=True)
                running = None
                if now >= end:
                    break
            if service.poll() is not None:
                raise RuntimeError(f"edx-live serve ended (exit {service.returncode}): {log.read_text()[-3000:]}")
            time.sleep(0.05)
        deadline = time.monotonic() + 300  # the last session folder is written, its checkpoint removed
        while any((folder / "recordings").glob("*.ckpt")) and time.monotonic() < deadline:
            time.sleep(0.2)
        tidy(folder, deleted)
        listing = ctl("list", endpoints["control"])
        status = ctl("status", endpoints["control"])
        errors = [json.loads(line) for line in log.read_text().splitlines()
                  if '"level": "error"' in line or '"level": "critical"' in line]
        leftovers = sorted(str(p.relative_to(folder)) for p in (folder / "recordings").rglob("*") if p.is_file())
        samples = sampler.close()
    finally:
        for closer in (lambda: browser and (browser[1].close(), browser[0].stop()),
                       lambda: producer and producer.close(), lambda: statuses and statuses.close(),
                       lambda: sampler and sampler.close(), lambda: viewer and viewer.stop(),
                       lambda: service and stop(service)):
            try:
                closer()
            except Exception as exc:  # the rest still closes
                print(f"closing: {exc}", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    report(args, samples, acquisitions, listing, status, errors, leftovers, deleted, statuses)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()


def tidy(folder: Path, deleted: dict) -> None:
    """Remove finished acquisitions' session folders and recordings (an operator moves them off the disk)."""
    for summary in (folder / "sessions").glob("*/summary.json"):
        session = summary.parent
        deleted["session_bytes"] += sum(p.stat().st_size for p in session.rglob("*") if p.is_file())
        deleted.setdefault("sessions", 0)
        deleted["sessions"] += 1
        shutil.rmtree(session, ignore_errors=True)
    # a recording is finished once its checkpoint is gone (removed when its session folder is written)
    for path in (folder / "recordings").glob("*.edxrec"):
        if Path(str(path) + ".ckpt").exists():
            continue
        deleted["recording_bytes"] += path.stat().st_size
        deleted.setdefault("recordings", 0)
        deleted["recordings"] += 1
        path.unlink()


def report(args, samples, acquisitions, listing, status, errors, leftovers, deleted, statuses) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "service_rss_mib", "viewer_rss_mib", "acquisitions_finished", "counts_current"])
        for row in samples:
            w.writerow([f"{row[0]:.1f}", f"{row[1]:.1f}" if row[1] else "", f"{row[2]:.1f}" if row[2] else "",
                        row[3], row[4]])
    plot(samples, acquisitions, args, out.with_suffix(".png"))
    t = np.array([s[0] for s in samples])
    svc = np.array([s[1] or np.nan for s in samples])
    view = np.array([s[2] or np.nan for s in samples])
    sent_x = sum(s["xrays"] for s, _ in acquisitions)
    sent_m = sum(s["messages"] for s, _ in acquisitions)
    got_x = sum(f.counts for _, f in acquisitions)
    got_m = sum(f.messages for _, f in acquisitions)
    lost_m = sum(f.gaps.count for _, f in acquisitions)
    rejected = sum(sum(f.acquisition_rejected.values()) for _, f in acquisitions)
    by_id = {a["acquisition_id"]: a for a in listing}
    listed = [by_id.get(s["acquisition_id"]) for s, _ in acquisitions]
    list_x = sum(a["counts"] for a in listed if a is not None)
    mismatched = [s["acquisition_id"] for s, f in acquisitions if s["xrays"] != f.counts
                  or s["messages"] != f.messages + f.gaps.count + sum(f.acquisition_rejected.values())]
    minutes = t[-1] / 60 if len(t) else 0
    print(f"\n## Soak: {len(acquisitions)} acquisitions in a row in {minutes:.1f} min at {args.speed:g}x real pace "
          f"({'file ' + Path(args.file).name if args.file else f'synthetic {args.size}x{args.size} x 2048 channels'}, "
          f"{args.sweeps} sweeps each, {args.counts:g} counts per pixel and sweep, "
          f"{args.chunk_pixels or 'one row of'} pixels per message); recording, checkpoints, session "
          f"folders and the viewer{' with a browser page' if not args.no_browser else ''} on")
    settle = t > min(t[-1] / 4, 300) if len(t) else t  # after the first acquisitions (first refits, compilation)
    for name, series in (("service", svc), ("viewer", view)):
        if not np.isfinite(series).any():
            continue
        s = series[settle & np.isfinite(series)]
        ts = t[settle & np.isfinite(series)]
        slope = np.polyfit(ts / 60, s, 1)[0] if len(s) > 2 else float("nan")
        print(f"- {name} resident memory: start {series[np.isfinite(series)][0]:.0f} MiB, max "
              f"{np.nanmax(series):.0f} MiB, end {series[np.isfinite(series)][-1]:.0f} MiB; from minute "
              f"{ts[0] / 60:.1f} on: {s.min():.0f} to {s.max():.0f} MiB, trend {slope:+.2f} MiB/min")
    print(f"- counts: sent {sent_x:,} X-rays in {sent_m:,} messages; accumulated {got_x:,} in {got_m:,} messages, "
          f"reported lost {lost_m:,} messages, rejected {rejected}; `edx-live ctl list`: {list_x:,} counts over "
          f"{sum(a is not None for a in listed)} of them; acquisitions not accounted for: {mismatched or 'none'}")
    print(f"- status documents received by a reading subscriber: {statuses.received:,}, skipped (seq jumps) "
          f"{statuses.skipped}; service errors logged: {len(errors)}; service status at the end: "
          f"{status.get('state')}, rejected {status.get('rejected')}, refit errors {status.get('refit_errors')}")
    print(f"- removed during the run (an operator moving data off): {deleted.get('sessions', 0)} session folders "
          f"({deleted['session_bytes'] / 2**30:.2f} GiB), {deleted.get('recordings', 0)} recordings "
          f"({deleted['recording_bytes'] / 2**30:.2f} GiB); left in the recording folder: {len(leftovers)} files")
    late = [s["late_s"] for s, _ in acquisitions]
    if late:
        print(f"- pace: the producer's sweeps were at most {late[0]:.2f} s behind their schedule in the first "
              f"acquisition (compilation, first refits), {max(late[1:], default=0.0):.2f} s in the others")
    print(f"- curve: {out.with_suffix('.png')}, {out.with_suffix('.csv')}")


def plot(samples, acquisitions, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([s[0] for s in samples]) / 60
    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    ax.plot(t, [s[1] or np.nan for s in samples], label="service (edx-live serve)", color="tab:blue")
    ax.plot(t, [s[2] or np.nan for s in samples], label="viewer (edx-live view)", color="tab:orange")
    finished = [s[0] / 60 for prev, s in zip(samples, samples[1:]) if s[3] > prev[3]]
    for x in finished:
        ax.axvline(x, color="0.85", lw=0.6, zorder=0)
    ax.set_xlabel("minutes")
    ax.set_ylabel("resident memory, MiB")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Soak: {len(acquisitions)} acquisitions at {args.speed:g}x real pace, recording and viewer on "
                 "(grey: an acquisition finished)", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="how long acquisitions keep starting")
    parser.add_argument("--speed", type=float, default=10.0, help="times the real pace")
    parser.add_argument("--size", type=int, default=128, help="synthetic scan side in pixels")
    parser.add_argument("--sweeps", type=int, default=300, help="sweeps per acquisition")
    parser.add_argument("--counts", type=float, default=5.0, help="synthetic counts per pixel and sweep")
    parser.add_argument("--dwell-us", type=float, default=50.0, help="real dwell time per pixel and sweep, in us")
    parser.add_argument("--file", help="replay this file instead of the synthetic phantom")
    parser.add_argument("--chunk-pixels", type=int, default=1024,
                        help="pixels per message (default 1024: 8 rows at 128 x 128; 0: one scan row, the adapters' "
                             "default)")
    parser.add_argument("--sample-s", type=float, default=2.0, help="seconds between memory samples")
    parser.add_argument("--no-browser", action="store_true", help="no browser page on the viewer")
    parser.add_argument("--out", default=str(REPO / "docs" / "soak_rss"), help="CSV and PNG path, without suffix")
    parser.add_argument("--tmp", help="folder for the recordings and session folders (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--produce", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.produce:
        produce(args)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the children are stopped on the way out
        soak(args)


if __name__ == "__main__":
    main()

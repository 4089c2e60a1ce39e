"""Latency, and resident memory, of a live acquisition at the default refit cadence.

python bench/latency.py [--sizes 64 256 512] [--seconds 30] [--rate 2e6]

A producer process sends the synthetic acquisition (2048 channels, events in raster
order) over loopback TCP at a detector's pace (default 2 million counts per second,
a Super-X at its peak), one message per about 10,000 counts, and notes when each
message left. The service runs as deployed (PULL in, PUB out, both workflows,
quantification, default settings: a refit every 5 s, 2x2 binning) after its
kernels are compiled, and a subscriber notes when each document arrives.

Latency of a message: from when it left the producer to the first published
document whose counts include it (documents carry the counts they hold, and
messages are applied in order). Reported for the first cluster map of either
workflow, for each workflow's map and composition, and for the status document;
beside the reference measured in the same run: the refit cadence plus the
refit's own duration, which bounds the latency of a service that keeps up.

Resident memory of the service process is sampled during every run and set
against the accumulated spectrum image (rows x columns x channels x 4 bytes).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RssSampler, gib, machine, wait_for  # noqa: E402

EVENTS_PER_MESSAGE = 10_000


# the producer process ---------------------------------------------------------------------------
def produce(endpoint: str, size: int, rate: float, seconds: float, counts: float, out: str) -> None:
    """Send a paced acquisition; write when each message left and the counts sent up to it."""
    import zmq
    from edx_protocol import EventsFrame, Start, Stop, describe, encode

    from edx_adapters.synthetic import make_phantom

    phantom = make_phantom((size, size))
    n_sweeps = int(np.ceil(rate * seconds / (size * size * counts))) + 1
    # Independent Poisson sweeps, drawn before timing starts (repeating a few would add up their noise)
    sweeps = list(phantom.frames(counts * n_sweeps, n_sweeps, seed=1))
    rows = max(1, int(round(EVENTS_PER_MESSAGE / (size * counts))))
    step = rows * size
    bounds = [np.searchsorted(s["pixel"], np.arange(0, size * size + step, step)) for s in sweeps]
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.setsockopt(zmq.LINGER, -1)
    socket.connect(endpoint)
    socket.send_multipart(encode(Start(acquisition_id="bench-latency", seq=0, **phantom.start_fields())))
    print("ready", flush=True)
    sys.stdin.readline()
    sent, cumulative, total, seq, frame = [], [], 0, 1, 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds and frame < n_sweeps:
        events, edges = sweeps[frame], bounds[frame]
        for lo, hi in zip(edges[:-1], edges[1:]):
            arrays = {"pixel": events["pixel"][lo:hi], "channel": events["channel"][lo:hi]}
            due = t0 + (total + hi - lo) / rate  # the detector has counted these by then
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            socket.send_multipart(encode(EventsFrame(acquisition_id="bench-latency", seq=seq, frame_index=frame,
                                                     arrays=describe(arrays)), arrays), copy=False)
            total += int(hi - lo)
            sent.append(time.monotonic())
            cumulative.append(total)
            seq += 1
        frame += 1
    socket.send_multipart(encode(Stop(acquisition_id="bench-latency", seq=seq, frames=frame)))
    socket.close()
    context.term()
    np.savez(out, sent=np.array(sent), cumulative=np.array(cumulative), frames=frame)
    print("done", flush=True)


# the service side -------------------------------------------------------------------------------
def _subscribe(endpoint: str, received: list, stop: threading.Event, context) -> threading.Thread:
    """A thread that notes (arrival time, kind, workflow, counts, final, last_refit_s) of every document."""
    import zmq
    from edx_protocol import decode_result

    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)

    def run():
        try:
            while not stop.is_set():
                if not sub.poll(100):
                    continue
                frames = sub.recv_multipart(copy=False)
                t = time.monotonic()
                header, _ = decode_result(frames[1:])
                received.append((t, header.kind, getattr(header, "workflow", None), header.counts,
                                 bool(getattr(header, "final", False)), getattr(header, "last_refit_s", None)))
        finally:
            sub.close(linger=0)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def run_size(size: int, rate: float, seconds: float, counts: float) -> dict:
    """One live acquisition through the real service; latencies and memory."""
    import zmq

    from edx_live.config import load_settings
    from edx_live.shell.app import App, on_free_ports

    context = zmq.Context.instance()
    app = App(on_free_ports(load_settings()))
    service, settings = app.service, app.settings
    received, stop = [], threading.Event()
    listener = _subscribe(app.output_endpoint, received, stop, context)
    worker = threading.Thread(target=service.run, kwargs={"stop_after": 1}, daemon=True)
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "sent.npz")
        producer = subprocess.Popen([sys.executable, __file__, "--produce", app.input_endpoint, str(size),
                                     str(rate), str(seconds), str(counts), out],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            if producer.stdout.readline().strip() != "ready":
                raise RuntimeError("the producer process failed; run it alone to see why")
            with RssSampler(0.02) as memory:
                baseline = memory.peak
                worker.start()
                wait_for(lambda: any(r[1] == "status" for r in received))  # the subscription is live
                producer.stdin.write("go\n")
                producer.stdin.flush()
                if producer.stdout.readline().strip() != "done":
                    raise RuntimeError("the producer process failed; run it alone to see why")
                worker.join(timeout=600)
            sent = np.load(out)
        finally:
            producer.kill()
            stop.set()
            listener.join()
            app.close()
    if worker.is_alive():
        raise RuntimeError("the service did not finish the acquisition")
    acq = service.ingest.current
    cube_bytes = size * size * acq.accumulator.selection.channels * acq.accumulator._flat.itemsize
    return {"size": size, "sent": sent["sent"], "cumulative": sent["cumulative"], "frames": int(sent["frames"]),
            "received": received, "rss_peak": memory.peak, "rss_before": baseline, "cube_bytes": cube_bytes,
            "refits": service.refits, "interval_s": settings.refit.interval_s,
            "rejected": dict(service.ingest.rejected)}


def latencies(run: dict, select) -> np.ndarray:
    """Per message: seconds until the first selected document holding its counts (NaN if none did)."""
    docs = sorted((r[0], r[3]) for r in run["received"] if select(r))
    times = np.array([d[0] for d in docs])
    counts = np.maximum.accumulate(np.array([d[1] for d in docs])) if docs else np.array([])
    index = np.searchsorted(counts, run["cumulative"], side="left")  # first document with enough counts
    out = np.full(run["sent"].size, np.nan)
    ok = index < times.size
    out[ok] = times[index[ok]] - run["sent"][ok]
    return out


def report(run: dict) -> None:
    live = [r[5] for r in run["received"] if r[1] == "status" and r[5] is not None and not r[4]]
    refit = float(np.median(live)) if live else float("nan")
    bound = run["interval_s"] + refit
    n = run["size"]
    print(f"\n### {n}x{n} scan pixels ({n // 2}x{n // 2} binned) x 2048 channels: {run['frames']} sweeps, "
          f"{run['cumulative'][-1] / 1e6:.1f} M counts in {run['sent'][-1] - run['sent'][0]:.0f} s, "
          f"{run['refits']} refits, median refit {refit:.2f} s; reference = cadence {run['interval_s']:g} s + refit "
          f"= {bound:.2f} s; rejected {run['rejected'] or 'none'}")
    print("| first update holding a message | median | 95th percentile | max | max / reference |")
    print("|---|---|---|---|---|")
    rows = [("status (counts only)", lambda r: r[1] == "status"),
            ("cluster map, either workflow", lambda r: r[1] == "clusters"),
            ("pca-gmm cluster map", lambda r: r[1] == "clusters" and r[2] == "pca-gmm"),
            ("pca-gmm composition", lambda r: r[1] == "composition" and r[2] == "pca-gmm"),
            ("umap-hdbscan cluster map", lambda r: r[1] == "clusters" and r[2] == "umap-hdbscan"),
            ("umap-hdbscan composition", lambda r: r[1] == "composition" and r[2] == "umap-hdbscan")]
    for name, select in rows:
        lat = latencies(run, select)
        if np.isnan(lat).any():
            print(f"| {name} | {np.isnan(lat).sum()} messages never published |  |  |  |")
            continue
        print(f"| {name} | {np.median(lat):.2f} s | {np.percentile(lat, 95):.2f} s | {lat.max():.2f} s | "
              f"x{lat.max() / bound:.2f} |")
    limit = 1.5 * run["cube_bytes"] + 1e9
    print(f"Resident memory: peak {gib(run['rss_peak'])} (before the acquisition {gib(run['rss_before'])}); "
          f"spectrum image {gib(run['cube_bytes'])}; peak / image = x{run['rss_peak'] / run['cube_bytes']:.2f}; "
          f"target 1.5 x image + 1 GB = {gib(limit)}: {'met' if run['rss_peak'] <= limit else 'missed'}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--seconds", type=float, default=30.0, help="acquisition time per size")
    parser.add_argument("--rate", type=float, default=2e6, help="detector counts per second")
    parser.add_argument("--counts", type=float, default=20.0, help="counts per pixel and sweep")
    args = parser.parse_args(argv)
    from edx_live.core.kernels import warm_up as warm_up_kernels
    from edx_live.segment import warm_up

    print(f"machine: {machine()}")
    print(f"\n## Latency at the default refit cadence, detector at {args.rate / 1e6:g} M counts/s, "
          f"{args.seconds:g} s per acquisition")
    warm_up_kernels()
    warm_up()
    for size in args.sizes:
        report(run_size(size, args.rate, args.seconds, args.counts))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--produce":
        endpoint, size, rate, seconds, counts, out = sys.argv[2:8]
        produce(endpoint, int(size), float(rate), float(seconds), float(counts), out)
    else:
        main()

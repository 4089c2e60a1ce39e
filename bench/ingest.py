"""Ingest throughput: events per second through the service's whole receive path, per payload type.

python bench/ingest.py [--size 512] [--sweeps 9] [--rows 1 8 64]

The synthetic acquisition (512 x 512 pixels, 2048 channels, about 20 counts per pixel
and sweep, events in raster order as a scanning detector delivers them) is sent as
event lists, as Velox SpectrumStream chunks and as dense blocks, with ``rows`` scan rows
per message. Each is measured, in the same run, as:

1. ``np.add.at``: a plain numpy accumulate of the same events (dense: of the same blocks);
2. accumulate alone: ``Accumulator.add_*`` on the decoded arrays in memory, the machine's
   limit for this step;
3. decode + validate + accumulate: ``Ingest.receive`` on the encoded messages in memory;
4. the service: a producer process PUSHes the messages over loopback TCP to the real
   ``Service`` loop (PULL socket, poll, decode, validate, accumulate, status documents).
   Wall time from the start message's status document to the stop's; the rate per
   CPU-second of the receiving process (its ZeroMQ I/O thread included) says what one
   core sustains when the producer is not sharing it.
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
from edx_protocol import VELOX_NEXT_PIXEL

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_of, machine, wait_for  # noqa: E402

PAYLOADS = ("events", "velox", "dense")
TARGET = 50e6


# messages ---------------------------------------------------------------------------------------
def _start(n_rows: int, channels: int, sweeps: int):
    from edx_protocol import Detector, EnergyAxis, Start

    return Start(acquisition_id="bench-ingest", seq=0, scan_shape=(n_rows, n_rows), beam_energy_kev=200.0,
                 energy_axis=EnergyAxis(offset_kev=0.0, scale_kev=0.01, channels=channels),
                 detectors=[Detector(elevation_deg=18.0, azimuth_deg=45.0)], expected_frames=sweeps)


def payload_arrays(payload: str, pixel: np.ndarray, channel: np.ndarray, p0: int, p1: int,
                   channels: int) -> tuple[dict, dict]:
    """Arrays and header fields of one message holding pixels [p0, p1) of a sweep in raster order."""
    if payload == "events":
        return {"pixel": pixel, "channel": channel}, {}
    local = pixel.astype(np.int64) - p0
    if payload == "velox":  # each pixel's channels, then the marker
        stream = np.empty(pixel.size + (p1 - p0), np.uint16)
        ends = np.searchsorted(local, np.arange(p1 - p0), side="right") + np.arange(p1 - p0)
        stream[ends] = VELOX_NEXT_PIXEL
        mask = np.ones(stream.size, bool)
        mask[ends] = False
        stream[mask] = channel
        return {"stream": stream}, {"pixel_start": p0}
    block = np.bincount(local * channels + channel, minlength=(p1 - p0) * channels)
    return {"counts": block.reshape(p1 - p0, channels).astype(np.uint8)}, {"pixel_start": p0}


def messages(payload: str, pixel: np.ndarray, channel: np.ndarray, n_rows: int, channels: int,
             rows: int, sweeps: int) -> tuple[list[list], list[dict]]:
    """Encoded messages (start, frames, stop) and the decoded arrays of the frames."""
    from edx_protocol import DenseFrame, EventsFrame, Stop, VeloxFrame, describe, encode

    cls = {"events": EventsFrame, "velox": VeloxFrame, "dense": DenseFrame}[payload]
    step = rows * n_rows
    bounds = np.searchsorted(pixel, np.arange(0, n_rows * n_rows + step, step))
    parts = []
    for i in range(len(bounds) - 1):
        lo, hi = bounds[i], bounds[i + 1]
        p0 = i * step
        parts.append(payload_arrays(payload, pixel[lo:hi], channel[lo:hi], p0, min(p0 + step, n_rows ** 2),
                                    channels))
    out, decoded, seq = [encode(_start(n_rows, channels, sweeps))], [], 1
    for sweep in range(sweeps):
        for arrays, fields in parts:
            header = cls(acquisition_id="bench-ingest", seq=seq, frame_index=sweep, arrays=describe(arrays),
                         **fields)
            out.append(encode(header, arrays))
            decoded.append(arrays)
            seq += 1
    out.append(encode(Stop(acquisition_id="bench-ingest", seq=seq, frames=sweeps)))
    return out, decoded


def event_count(arrays: dict) -> int:
    """X-ray events in one message's arrays, whatever the payload."""
    if "pixel" in arrays:
        return arrays["pixel"].size
    if "stream" in arrays:
        return int(np.count_nonzero(arrays["stream"] != VELOX_NEXT_PIXEL))
    return int(arrays["counts"].sum())


def first_sweep_end(n_frames: int, sweeps: int) -> int:
    """Index of the first message after the start and the first sweep, in ``messages()``' list."""
    return 1 + (n_frames - 2) // sweeps


def sweep_events(n_rows: int, counts_per_pixel: float) -> tuple[np.ndarray, np.ndarray, int]:
    """One sweep of the synthetic acquisition: pixel (raster order), channel, channels."""
    from edx_adapters.synthetic import make_phantom

    phantom = make_phantom((n_rows, n_rows))
    events = next(iter(phantom.frames(counts_per_pixel, 1, seed=0)))
    return events["pixel"], events["channel"], phantom.spectra.shape[1]


# the producer process ---------------------------------------------------------------------------
def produce(endpoint: str, folder: str, payload: str, rows: int, sweeps: int) -> None:
    """Connect a PUSH socket; send the start and the first sweep, then the rest when told ``go``."""
    import zmq

    data = np.load(Path(folder) / "sweep.npz")
    n_rows, channels = int(data["n_rows"]), int(data["channels"])
    frames, _ = messages(payload, data["pixel"], data["channel"], n_rows, channels, rows, sweeps)
    first = first_sweep_end(len(frames), sweeps)
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.setsockopt(zmq.LINGER, -1)
    socket.connect(endpoint)
    for message in frames[:first]:
        socket.send_multipart(message, copy=False)
    print("first sweep sent", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    for message in frames[first:]:
        socket.send_multipart(message, copy=False)
    socket.close()
    context.term()  # waits until everything is delivered: the buffers are sent without a copy
    print(f"sent {time.perf_counter() - t0:.4f}", flush=True)


# the receiving side -----------------------------------------------------------------------------
class _StopClock:
    """A subscriber that notes wall time and the CPU time of the process and of the ingest thread at the stop."""

    def __init__(self):
        self.mark: tuple[float, float, float] | None = None

    def __call__(self, header, arrays) -> None:
        if header.kind == "status" and header.state == "stopped" and self.mark is None:
            self.mark = (time.perf_counter(), time.process_time(), time.thread_time())


def through_service(folder: str, payload: str, rows: int, sweeps: int,
                    sweep_events: int) -> tuple[float, float, float, int, float]:
    """Sweeps 2..N from a producer process through a real Service, the cube already in memory.

    Returns (wall s, process CPU s, ingest-thread CPU s, events, seconds from the start to
    the first sweep accumulated and the cube's pages populated).
    """
    from edx_live.config import load_settings
    from edx_live.core import kernels
    from edx_live.shell.app import App, on_free_ports

    kernels.warm_up()
    settings = load_settings(overrides={"refit": {"interval_s": 1e9}, "output": {"status_interval_s": 3600},
                                        "input": {"high_water_mark": 100_000}})
    clock = _StopClock()
    app = App(on_free_ports(settings), publish=False, control=False, subscribers=[clock],
              analyze=lambda snapshot, record: [])
    service = app.service
    worker = threading.Thread(target=service.run, kwargs={"stop_after": 1, "poll_s": 0.01})
    producer = subprocess.Popen([sys.executable, __file__, "--produce", app.input_endpoint, folder, payload,
                                 str(rows), str(sweeps)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        t_start = time.perf_counter()
        worker.start()
        if producer.stdout.readline().strip() != "first sweep sent":
            raise RuntimeError("the producer process failed; run it alone to see why")
        wait_for(lambda: service.ingest.current is not None
                  and service.ingest.current.accumulator.events >= sweep_events)
        for thread in threading.enumerate():
            if thread.name == "edx-live-populate":
                thread.join()
        warm = time.perf_counter() - t_start
        ingest_clock = time.pthread_getcpuclockid(worker.ident)
        w0, c0, t0 = time.perf_counter(), time.process_time(), time.clock_gettime(ingest_clock)
        producer.stdin.write("go\n")
        producer.stdin.flush()
        worker.join()
        producer.wait(timeout=60)
    finally:
        producer.kill()
        app.close()
    w1, c1, t1 = clock.mark
    if sum(service.ingest.rejected.values()):
        raise RuntimeError(f"messages rejected: {dict(service.ingest.rejected)}")
    return w1 - w0, c1 - c0, t1 - t0, service.ingest.current.accumulator.events - sweep_events, warm


def in_memory(frames: list, decoded: list, payload: str, n_rows: int, channels: int,
              sweeps: int) -> dict[str, float]:
    """Seconds per event for np.add.at, the accumulate alone, and decode + validate + accumulate.

    All on the same messages in memory, on a cube whose pages are already in memory
    (the state of an acquisition from its second sweep on).
    """
    from edx_protocol import decode

    from edx_live.core.accumulator import Accumulator, EnergySelection
    from edx_live.core.ingest import Ingest
    from edx_live.core.memory import populate

    selection = EnergySelection.from_range(0.0, 0.01, channels)
    acc = Accumulator((n_rows, n_rows), channels, selection)
    populate(acc._flat)
    add = {"events": lambda a, f: acc.add_events(a["pixel"], a["channel"]),
           "velox": lambda a, f: acc.add_velox(a["stream"], f),
           "dense": lambda a, f: acc.add_dense(a["counts"], f)}[payload]
    starts = [0] * len(decoded)
    if payload != "events":
        starts = [decode(m).header.pixel_start for m in frames[1:-1]]
    cube = acc._flat

    sample = max(1, len(decoded) // sweeps // 4)  # np.add.at is slow: a quarter of a sweep is enough

    def numpy_add_at():
        for arrays, p0 in zip(decoded[:sample], starts[:sample]):
            if payload == "events":
                np.add.at(cube, (arrays["pixel"], arrays["channel"]), 1)
            elif payload == "velox":
                s = arrays["stream"]
                marker = s == VELOX_NEXT_PIXEL
                np.add.at(cube, (p0 + np.cumsum(marker)[~marker], s[~marker]), 1)
            else:
                c = arrays["counts"]
                np.add.at(cube, slice(p0, p0 + c.shape[0]), c)

    def accumulate():
        for arrays, p0 in zip(decoded, starts):
            add(arrays, p0)

    first = first_sweep_end(len(frames), sweeps)

    def receive() -> float:
        ingest = Ingest()
        for message in frames[:first]:
            ingest.receive(message)
        populate(ingest.current.accumulator._flat)
        t0 = time.perf_counter()
        for message in frames[first:]:
            outcome = ingest.receive(message)
            if outcome.kind == "rejected":
                raise RuntimeError(f"{outcome.reason}: {outcome.detail}")
        return time.perf_counter() - t0

    events = sum(event_count(a) for a in decoded)
    sampled = sum(event_count(a) for a in decoded[:sample])
    per_sweep = events / sweeps
    return {"np.add.at": best_of(numpy_add_at, 1) / sampled, "accumulate": best_of(accumulate) / events,
            "receive": min(receive() for _ in range(2)) / (per_sweep * (sweeps - 1))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="scan side in pixels")
    parser.add_argument("--sweeps", type=int, default=9, help="sweeps sent per measurement (the first warms)")
    parser.add_argument("--counts", type=float, default=20.0, help="counts per pixel and sweep")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 64], help="scan rows per message")
    parser.add_argument("--payloads", nargs="+", default=list(PAYLOADS), choices=PAYLOADS)
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    pixel, channel, channels = sweep_events(args.size, args.counts)
    n = args.size
    print(f"\n## Ingest, {n}x{n} pixels x {channels} channels, {pixel.size / n / n:.1f} counts per pixel and "
          f"sweep in raster order; {args.sweeps} sweeps per measurement, the last {args.sweeps - 1} timed "
          f"({(args.sweeps - 1) * pixel.size / 1e6:.1f} M events)")
    print("M events/s, and in brackets the ratio to the accumulate alone in the same run. Service: wall time, "
          "then per CPU-second of the receiving process (its ZeroMQ I/O thread included) and of its ingest "
          "thread alone.")
    print("| payload | rows per message | events per message | MB per message | np.add.at | accumulate alone | "
          "decode + validate + accumulate | service, wall | service, per process CPU-second | "
          "service, per ingest-thread CPU-second | start to first sweep in, cube populated |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rates = {}
    with tempfile.TemporaryDirectory() as folder:
        np.savez(Path(folder) / "sweep.npz", pixel=pixel, channel=channel, n_rows=n, channels=channels)
        for payload in args.payloads:
            for rows in args.rows:
                frames, decoded = messages(payload, pixel, channel, n, channels, rows, args.sweeps)
                nbytes = sum(a.nbytes for d in decoded for a in d.values()) / len(decoded)
                per_event = in_memory(frames, decoded, payload, n, channels, args.sweeps)
                del frames, decoded
                wall, cpu, thread_cpu, received, warm = through_service(folder, payload, rows, args.sweeps,
                                                                        pixel.size)
                if received != (args.sweeps - 1) * pixel.size:
                    raise RuntimeError(f"the service accumulated {received} timed events of "
                                       f"{(args.sweeps - 1) * pixel.size}")
                limit = 1 / per_event["accumulate"]

                def cell(rate):
                    return f"{rate / 1e6:.3g} (x{rate / limit:.2g})"

                rates[payload, rows] = received / wall
                print(f"| {payload} | {rows} | {pixel.size * rows // n:,} | {nbytes / 1e6:.2f} | "
                      f"{cell(1 / per_event['np.add.at'])} | {limit / 1e6:.0f} | {cell(1 / per_event['receive'])} | "
                      f"{cell(received / wall)} | {cell(received / cpu)} | {cell(received / thread_cpu)} | "
                      f"{warm:.2f} s |", flush=True)
    events_rates = [r for (payload, _), r in rates.items() if payload == "events"]
    if events_rates:
        print(f"\nTarget, event lists in raster order through the service: {TARGET / 1e6:.0f} M events/s; "
              f"measured {min(events_rates) / 1e6:.0f} to {max(events_rates) / 1e6:.0f} M events/s wall "
              f"({'met' if min(events_rates) >= TARGET else 'missed'}), "
              f"{min(events_rates) / 2e6:.0f}x to {max(events_rates) / 2e6:.0f}x a Super-X at 2 M counts/s.")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--produce":
        endpoint, folder, payload, rows, sweeps = sys.argv[2:7]
        produce(endpoint, folder, payload, int(rows), int(sweeps))
    else:
        main()

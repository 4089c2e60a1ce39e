"""``edx-live-replay``: send a recorded spectrum image to edx_live as if it were being acquired.

Example::

    edx-live-replay core_shell.hspy --frames 20 --interval 2
    edx-live-replay "Test SI 16x16 215 kx.emd" --socket pub --address tcp://127.0.0.1:5556
    edx-live-replay recordings/run-20250101T120000.edxrec --speed 10
    edx-live-replay core_shell.hspy --curve-secret-key keys/producer.key_secret --curve-server-key keys/server.key

A recorded session (``.edxrec``, written by ``edx-live serve --record DIR``) is sent byte for
byte, every message as the service received it, at the recorded pace times ``--speed``.

It reports each sweep on stderr, under a progress bar over the sweeps when stderr
is a terminal; piped or redirected, stderr gets the report lines alone.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from contextlib import contextmanager

import zmq
from tqdm import tqdm

from edx_protocol.container import SUFFIX as RECORDING_SUFFIX
from edx_protocol.container import read_recording
from edx_protocol.endpoints import DEFAULT_INPUT

from .producer import SOCKET_KINDS, SweepDone, make_socket, send_replay, wait_for_subscriber
from .recording import send_recording
from .replay import FORMATS, open_replay

#: Options that shape a spectrum image file's messages; a recording's messages are fixed.
_FILE_ONLY = ("frames", "interval", "chunk_pixels", "seed", "acquisition_id")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``edx-live-replay``."""
    p = argparse.ArgumentParser(prog="edx-live-replay", description=__doc__.splitlines()[0],
                                epilog=f"Supported files: {', '.join(sorted(FORMATS))}, and recorded "
                                       f"sessions ({RECORDING_SUFFIX}).")
    p.add_argument("file", help=f"spectrum image file or recorded session ({RECORDING_SUFFIX}) to replay")
    p.add_argument("--address", default=DEFAULT_INPUT, help="ZeroMQ endpoint (default %(default)s)")
    p.add_argument("--socket", choices=sorted(SOCKET_KINDS), default="push",
                   help="push: to the service's PULL (default); pub: for SUB receivers")
    side = p.add_mutually_exclusive_group()
    side.add_argument("--bind", action="store_true", default=None, help="bind (default for pub)")
    side.add_argument("--connect", dest="bind", action="store_false", help="connect (default for push)")
    p.add_argument("--frames", type=_positive_int, help="sweeps: split dense files into N (default 10); "
                                                        "recorded sweeps: send only the first N")
    p.add_argument("--interval", type=_non_negative, help="seconds between sweeps (default 0)")
    p.add_argument("--chunk-pixels", type=_positive_int, help="pixels per message (default one scan row)")
    p.add_argument("--seed", type=int, help="seed of the dense split (default 0)")
    p.add_argument("--acquisition-id", help="default: file name plus a random suffix")
    p.add_argument("--wait-subscribers", type=_non_negative, default=10.0, metavar="SECONDS",
                   help="pub: wait this long for a subscriber before sending (default %(default)s; 0: do not wait)")
    p.add_argument("--speed", type=_non_negative,
                   help=f"{RECORDING_SUFFIX} only: 1 the recorded pace (default), 10 ten times faster, "
                        "0 as fast as the receiver takes them")
    curve = p.add_argument_group("CurveZMQ (a service with [security] curve = true; keys from edx-live keys)")
    curve.add_argument("--curve-secret-key", metavar="FILE", help="this producer's secret key file (NAME.key_secret)")
    curve.add_argument("--curve-server-key", metavar="FILE",
                       help="connecting (push): the service's public key file (server.key)")
    curve.add_argument("--curve-authorized", metavar="DIR",
                       help="binding (pub): folder of the public keys (*.key) of the services allowed to subscribe")
    return p


def _curve_keys(args: argparse.Namespace):
    """The producer's CurveZMQ keys from the --curve-* options; None without them (plain ZeroMQ)."""
    secret, server, folder = args.curve_secret_key, args.curve_server_key, args.curve_authorized
    if secret is None and server is None and folder is None:
        return None
    from edx_protocol.security import load_client_keys, load_server_keys

    if secret is None:
        raise ValueError("--curve-server-key and --curve-authorized need --curve-secret-key (this producer's "
                         "NAME.key_secret)")
    if (server is None) == (folder is None):
        raise ValueError("--curve-secret-key needs --curve-server-key (the socket connects: push, the default) "
                         "or --curve-authorized (it binds: pub), one of them")
    return load_client_keys(secret, server) if server is not None else load_server_keys(secret, folder)


def _say(text: str) -> None:
    with tqdm.external_write_mode(file=sys.stderr):  # above the progress bar, not through it
        print(text, file=sys.stderr, flush=True)


def _progress_bar(total: int) -> tqdm:
    """A bar over the sweeps sent, on stderr when it is a terminal; it shows nothing when piped or redirected."""
    return tqdm(total=total, unit="sweep", desc="sent", file=sys.stderr, disable=None, leave=False,
                dynamic_ncols=True)


@contextmanager
def _stop_on_interrupt(event: threading.Event):
    """Ctrl-C sets ``event`` so the replay ends with an 'aborted' stop message instead of nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda *_: event.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _sweep_printer(total: int, bar: tqdm):
    def report(done: SweepDone) -> None:
        bar.update()  # first: the line below redraws the bar, so it shows this sweep however fast they come
        _say(f"sweep {done.frame_index + 1}/{total}: {done.messages} messages, "
             f"{done.xrays} X-rays, {done.nbytes / 1e6:.2f} MB")
    return report


def _is_recording(path: str) -> bool:
    return path.lower().endswith(RECORDING_SUFFIX)


def _check_options(args: argparse.Namespace) -> None:
    """Refuse options that do not apply to the kind of file given."""
    if _is_recording(args.file):
        given = [f"--{name.replace('_', '-')}" for name in _FILE_ONLY if getattr(args, name) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} shape a spectrum image file's messages; a recording is "
                             "sent as recorded (use --speed for its pace)")
    elif args.speed is not None:
        raise ValueError(f"--speed applies to recorded sessions ({RECORDING_SUFFIX}); use --interval for "
                         "the pause between sweeps of a spectrum image file")


def _open_socket(args: argparse.Namespace) -> zmq.Socket | None:
    """The producer's socket, with a subscriber already there for pub; None (said why) if none came."""
    socket = make_socket(args.address, args.socket, args.bind, keys=_curve_keys(args))
    if args.socket == "pub" and args.wait_subscribers > 0 and not wait_for_subscriber(socket, args.wait_subscribers):
        _say(f"edx-live-replay: error: no subscriber within {args.wait_subscribers:g} s; start the "
             "receiver first or raise --wait-subscribers")
        socket.close()
        return None
    return socket


def _run_recording(args: argparse.Namespace) -> int:
    recording = read_recording(args.file)
    speed = 1.0 if args.speed is None else args.speed
    header = recording.header
    _say(f"{args.file}: recorded {header.get('created')} from {header.get('source') or 'an unknown source'}, "
         f"acquisition {header.get('acquisition_id')}; speed {'as fast as possible' if speed == 0 else f'x{speed:g}'}"
         f" -> {args.socket} {args.address}")
    socket = _open_socket(args)
    if socket is None:
        return 1
    nbytes = [0]

    def count(index: int, frames) -> None:
        nbytes[0] += sum(len(f) for f in frames)
        bar.update()

    stop = threading.Event()
    try:
        with _stop_on_interrupt(stop), tqdm(unit="message", desc="sent", file=sys.stderr, disable=None,
                                            leave=False, dynamic_ncols=True) as bar:
            sent = send_recording(recording, socket, speed, on_message=count, stop_event=stop)
    finally:
        socket.close()
    if recording.truncated:
        _say(f"warning: the recording ends early ({recording.problem}); every message before that was sent")
    _say(f"{'aborted' if stop.is_set() else 'complete'}: {sent} messages, {nbytes[0] / 1e6:.2f} MB")
    return 130 if stop.is_set() else 0


def _run(args: argparse.Namespace) -> int:
    _check_options(args)
    if _is_recording(args.file):
        return _run_recording(args)
    replay = open_replay(args.file, frames=args.frames, chunk_pixels=args.chunk_pixels,
                         seed=0 if args.seed is None else args.seed, acquisition_id=args.acquisition_id)
    start = replay.start
    _say(f"{start.acquisition_id}: {start.scan_shape[0]}x{start.scan_shape[1]} pixels, "
         f"{start.energy_axis.channels} channels, {len(start.detectors)} detector(s), {replay.frames} sweeps "
         f"-> {args.socket} {args.address}")
    socket = _open_socket(args)
    if socket is None:
        return 1
    try:
        stop = threading.Event()
        with _stop_on_interrupt(stop), _progress_bar(replay.frames) as bar:
            sent = send_replay(replay, socket, args.interval or 0.0, stop,
                               on_sweep=_sweep_printer(replay.frames, bar))
    finally:
        socket.close()
    state = "aborted" if sent.aborted else "complete"
    _say(f"{state}: {sent.messages} messages, {sent.sweeps} sweeps, {sent.xrays} X-rays, {sent.nbytes / 1e6:.2f} MB")
    return 130 if sent.aborted else 0


def main(argv: list[str] | None = None) -> int:
    """Run ``edx-live-replay``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (FileNotFoundError, ValueError) as exc:
        _say(f"edx-live-replay: error: {exc}")
        return 2
    except zmq.ZMQError as exc:  # address in use, malformed endpoint: no traceback needed
        _say(f"edx-live-replay: error: {args.address}: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())

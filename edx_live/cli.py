"""``edx-live``: serve, process a file or a recording offline, view or control a running service, replay a
recording, run the demo, or create CurveZMQ keys.

Every analysis option can also come from the configuration file (``--config``)
or the environment (``EDX_LIVE_*``); the command line wins.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import warnings

from edx_protocol.control import COMMANDS as CTL_COMMANDS
from edx_protocol.endpoints import DEFAULT_CONTROL, DEFAULT_INPUT, DEFAULT_OUTPUT


def _kv(text: str) -> str:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected LINE=VALUE such as Fe_Ka=1.45, got {text!r}")
    return text


def _analysis_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("analysis (override the configuration file)")
    g.add_argument("--config", help="TOML configuration file (see deploy/edx-live.toml)")
    g.add_argument("--kfactor", action="append", type=_kv, default=[], metavar="LINE=K",
                   help="Cliff-Lorimer k-factor, repeatable: --kfactor Fe_Ka=1.450226")
    g.add_argument("--kfactor-table", metavar="CSV", help="k-factor table, rows LINE,VALUE (--kfactor wins)")
    g.add_argument("--intensities", choices=["model", "windows"], help="line intensities: model fit (default) "
                   "or background-subtracted windows")
    g.add_argument("--thickness", type=float, metavar="NM", help="absorption correction for a film this thick")
    g.add_argument("--element", action="append", default=[], help="element to quantify, repeatable")
    g.add_argument("--workflow", action="append", choices=["pca-gmm", "umap-hdbscan"],
                   help="run only these workflows (repeatable; default both)")
    g.add_argument("--spatial-bin", type=int, help="pixels per side summed before segmentation (2)")
    g.add_argument("--energy-min", type=float, metavar="KEV", help="drop channels below this energy")
    g.add_argument("--energy-max", type=float, metavar="KEV", help="drop channels above this energy")
    g.add_argument("--energy-rebin", type=int, help="detector channels summed per channel (1)")
    g.add_argument("--n-clusters", type=int, help="pca-gmm: fixed number of clusters (default: lowest BIC)")
    g.add_argument("--n-components", type=int, help="pca-gmm: fixed PCA components (default: scree change point)")
    g.add_argument("--min-cluster-size", type=int, help="umap-hdbscan: smallest feature, in binned pixels")
    g.add_argument("--log-format", choices=["console", "json"])
    g.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def _scale_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("several inputs: Dask (override [scale]; README: Many sessions on a Dask cluster)")
    g.add_argument("--workers", type=int, metavar="N", help="local cluster: worker processes (default: cores)")
    g.add_argument("--threads-per-worker", type=int, metavar="N", help="local cluster: threads per worker (1)")
    g.add_argument("--dashboard", metavar="ADDR", help="local cluster: dashboard address, e.g. 127.0.0.1:8787 "
                   "(default: none)")
    g.add_argument("--scheduler", metavar="ADDRESS", help="run on this Dask scheduler (tcp://HOST:8786, "
                   "tls://HOST:8786) instead of a local cluster on 127.0.0.1")
    g.add_argument("--tls-ca-file", metavar="PEM", help="tls:// scheduler: the CA that signed its certificate")
    g.add_argument("--tls-cert", metavar="PEM", help="tls:// scheduler: this client's certificate")
    g.add_argument("--tls-key", metavar="PEM", help="tls:// scheduler: this client's key (if not in --tls-cert)")
    g.add_argument("--force", action="store_true", help="process inputs already done by an earlier run again")


def _overrides(args: argparse.Namespace) -> dict:
    """Command-line values as a nested settings dict, leaving out what was not given."""
    get = lambda name: getattr(args, name, None)  # noqa: E731
    tree = {
        "input": {"address": get("input"), "socket": get("input_socket"), "bind": get("bind")},
        "output": {"address": get("output"), "sessions_dir": get("sessions")},
        "control": {"address": get("control")},
        "record": {"dir": get("record")},
        "accumulate": {"spatial_bin": get("spatial_bin"), "energy_min_kev": get("energy_min"),
                       "energy_max_kev": get("energy_max"), "energy_rebin": get("energy_rebin")},
        "refit": {"interval_s": get("refit_interval"), "every_frames": get("refit_every_frames"),
                  "workflows": get("workflow")},
        "pca_gmm": {"n_clusters": get("n_clusters"), "n_components": get("n_components")},
        "umap_hdbscan": {"min_cluster_size": get("min_cluster_size")},
        "quantify": {"kfactors": list(get("kfactor") or []) or None, "elements": get("element") or None,
                     "kfactor_table": get("kfactor_table"), "intensities": get("intensities"),
                     "absorption_thickness_nm": get("thickness")},
        "scale": {"scheduler": get("scheduler"), "workers": get("workers"),
                  "threads_per_worker": get("threads_per_worker"), "dashboard": get("dashboard"),
                  "tls_ca_file": get("tls_ca_file"), "tls_cert": get("tls_cert"), "tls_key": get("tls_key")},
        "log_format": get("log_format"), "log_level": get("log_level"),
    }
    prune = lambda d: {k: prune(v) if isinstance(v, dict) else v for k, v in d.items()  # noqa: E731
                       if v is not None and (not isinstance(v, dict) or prune(v))}
    return prune(tree)


def _client_keys_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("CurveZMQ (a service with [security] curve = true; README: Security)")
    g.add_argument("--curve-secret-key", metavar="FILE",
                   help="this client's secret key file (NAME.key_secret, from edx-live keys)")
    g.add_argument("--curve-server-key", metavar="FILE", help="the service's public key file (server.key)")
    g.add_argument("--config", help="or: a TOML configuration file whose [security] client_secret_key and "
                   "server_public_key are used")


KEYS_HELP = """Writes into DIR (mode 700): the service's pair server.key (public) and server.key_secret (secret,
mode 600), a pair NAME.key / NAME.key_secret per --client, and DIR/authorized/ (mode 700) holding
the public key of every client allowed in. Run it again to add clients; the server pair is kept.

The service's configuration:            [security] curve = true
                                         server_secret_key = "DIR/server.key_secret"
                                         authorized_keys = "DIR/authorized"
Each client gets its NAME.key_secret and server.key (copy them over a trusted channel):
  producer   edx-live-replay ... --curve-secret-key NAME.key_secret --curve-server-key server.key
  viewer     edx-live view   ... --curve-secret-key NAME.key_secret --curve-server-key server.key
  control    edx-live ctl    ... --curve-secret-key NAME.key_secret --curve-server-key server.key
A client's public key made elsewhere (its NAME.key) is authorised by copying it into DIR/authorized.

Rotation: --replace NAME writes a new pair (the old one stops working), --revoke NAME removes
DIR/authorized/NAME.key. The service re-reads DIR/authorized every [security] reload_s (2 s): new
connections follow the folder; a client already connected stays until it disconnects, so restart
the service to cut a revoked client off at once. --new-server replaces the server pair (restart
the service, give every client the new server.key)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edx-live", description=" ".join(__doc__.split("\n\n")[0].split()))
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="receive frames over ZeroMQ and publish results")
    serve.add_argument("--input", help=f"input endpoint ({DEFAULT_INPUT})")
    serve.add_argument("--input-socket", choices=["pull", "sub"], help="PULL (default) or SUB")
    serve.add_argument("--bind", action=argparse.BooleanOptionalAction, default=None,
                       help="bind the input socket (default: PULL binds, SUB connects)")
    serve.add_argument("--output", help=f"result PUB endpoint ({DEFAULT_OUTPUT})")
    serve.add_argument("--refit-interval", type=float, metavar="S", help="seconds between refits (5)")
    serve.add_argument("--refit-every-frames", type=int, metavar="N", help="also refit every N sweeps")
    serve.add_argument("--acquisitions", type=int, metavar="N", help="exit after N acquisitions")
    serve.add_argument("--sessions", metavar="DIR", help="write a session folder per acquisition under DIR "
                       "(default ./sessions)")
    serve.add_argument("--no-sessions", action="store_true", help="write no session folders")
    serve.add_argument("--record", metavar="DIR", help="record every message received under DIR, a file per "
                       "acquisition ([record] dir)")
    serve.add_argument("--control", metavar="ADDR", help=f"control REP endpoint ({DEFAULT_CONTROL})")
    _analysis_options(serve)
    proc = sub.add_parser("process", help="run the pipeline over files or recordings and write results")
    proc.add_argument("inputs", nargs="+", metavar="INPUT",
                      help=".hspy, .bcf, .pts or .emd spectrum image, or an .edxrec recording (analysed exactly "
                      "as the live service did); several, or a quoted glob ('data/**/*.hspy'): each is a Dask task")
    proc.add_argument("--out", required=True, help="output folder: the session folder of one input; with several, "
                      "a folder holding a session folder per input, index.json and index.csv")
    proc.add_argument("--frames", type=int, help="sweeps to replay (dense files are split by thinning)")
    proc.add_argument("--chunk-pixels", type=int, help="pixels per message")
    proc.add_argument("--refit-every-frames", type=int, metavar="N", help="also refit every N sweeps")
    proc.add_argument("--out-of-core", action="store_true",
                      help="read and segment the file chunk by chunk (scans larger than memory)")
    proc.add_argument("--chunk-mb", type=int, metavar="N", help="--out-of-core: megabytes per chunk")
    _scale_options(proc)
    _analysis_options(proc)
    view = sub.add_parser("view", help="web page of a running service's results (needs edx-live[viewer])")
    view.add_argument("--connect", default=DEFAULT_OUTPUT, metavar="ADDR",
                      help=f"the service's result PUB endpoint (default {DEFAULT_OUTPUT})")
    view.add_argument("--address", default="127.0.0.1",
                      help="address the page is served on (default 127.0.0.1: this PC only)")
    view.add_argument("--port", type=int, default=5006, help="port of the page (default 5006; 0 = any free)")
    view.add_argument("--allow-origin", action="append", default=[], metavar="HOST[:PORT]",
                      help="another name a browser reaches the page by (repeatable)")
    view.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="warning")
    _client_keys_options(view)
    ctl = sub.add_parser("ctl", help="send a command to a running service (exit 0 only on success)")
    ctl.add_argument("ctl_command", metavar="COMMAND", choices=list(CTL_COMMANDS),
                     help=", ".join(CTL_COMMANDS))
    ctl.add_argument("values", nargs="*", metavar="NAME=VALUE",
                     help="set: refit.interval_s=2 ...; export: folder=DIR acquisition_id=ID")
    ctl.add_argument("--connect", default=DEFAULT_CONTROL, metavar="ADDR",
                     help=f"the service's control endpoint (default {DEFAULT_CONTROL})")
    ctl.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds to wait for the reply (5)")
    _client_keys_options(ctl)
    rep = sub.add_parser("replay", help="send a recording again, byte for byte, to a service")
    rep.add_argument("recording", help=".edxrec file written by serve --record")
    rep.add_argument("--to", default=DEFAULT_INPUT, metavar="ADDR",
                     help=f"the service's input endpoint, PUSH connects (default {DEFAULT_INPUT})")
    rep.add_argument("--speed", type=float, default=1.0,
                     help="1 = the original pace, 10 = ten times faster, 0 = as fast as possible")
    demo = sub.add_parser("demo", help="live loop over loopback sockets on the bundled FePt dataset")
    demo.add_argument("--frames", type=int, default=20)
    demo.add_argument("--interval", type=float, help="seconds between sweeps (1 in a terminal, else 0.5)")
    demo.add_argument("--view-port", type=int, default=5006, help="port of the web page on 127.0.0.1 (5006)")
    demo.add_argument("--no-view", action="store_true", help="no web page")
    keys = sub.add_parser("keys", help="create CurveZMQ key pairs for the service and its clients",
                          description="Create CurveZMQ key pairs for the service and its clients ([security]).",
                          epilog=KEYS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    keys.add_argument("folder", metavar="DIR", help="key folder (created with mode 700; an existing one must "
                      "not be open to other users)")
    keys.add_argument("--client", action="append", default=[], metavar="NAME",
                      help="write and authorise a client pair NAME (repeatable): producer, viewer, ctl...")
    keys.add_argument("--replace", action="store_true", help="write new pairs for --client names that exist")
    keys.add_argument("--revoke", action="append", default=[], metavar="NAME",
                      help="remove NAME's public key from DIR/authorized (repeatable)")
    keys.add_argument("--new-server", action="store_true", help="replace the server pair as well")
    return parser


def _client_security(args):
    """The client keys of ``view`` and ``ctl``: the two --curve-* files, else --config's [security]; None: plain.

    A ValueError (ConfigError, SecurityError) says what is wrong.
    """
    secret, server = args.curve_secret_key, args.curve_server_key
    if (secret is None) != (server is None):
        raise ValueError("--curve-secret-key and --curve-server-key go together: give both or neither")
    if secret is not None:
        from edx_protocol.security import Security, load_client_keys

        return Security(client=load_client_keys(secret, server))
    if args.config:
        from edx_live.config import load_settings

        return load_settings(args.config).security.load("client")
    return None


def _keys(args) -> int:
    from edx_protocol.security import SecurityError, create_keys

    try:
        made = create_keys(args.folder, args.client, replace=args.replace, new_server=args.new_server,
                           revoke=args.revoke)
    except (SecurityError, OSError) as exc:
        print(f"edx-live keys: error: {exc}", file=sys.stderr)
        return 2
    admitted = sorted(p.name for p in made.authorized.glob("*.key"))
    print(f"edx-live keys: {made.folder} (mode 700){': wrote ' + ', '.join(made.created) if made.created else ''}"
          f"{'; revoked ' + ', '.join(args.revoke) if args.revoke else ''}")
    print(f"  service:  server.key_secret stays on the service's PC; in its configuration:\n"
          f"              [security]\n              curve = true\n"
          f"              server_secret_key = \"{made.server_secret}\"\n"
          f"              authorized_keys = \"{made.authorized}\"")
    print(f"  admitted: {', '.join(admitted) or 'no client yet'} (public keys in {made.authorized}; "
          "copy another client's NAME.key there to admit it, delete it to revoke)")
    for name, secret in made.clients.items():
        if name in made.created:
            print(f"  client {name}: give it {secret} and {made.server_public} (--curve-secret-key, "
                  "--curve-server-key); keep the secret file private")
    return 0


def _ctl(args) -> int:
    from edx_live.shell.ctl import call, parse_values
    from edx_live.shell.sockets import Sockets

    try:
        fields = parse_values(args.ctl_command, args.values)
        sockets = Sockets(security=_client_security(args))
        reply = call(args.connect, args.ctl_command, timeout_s=args.timeout, sockets=sockets, **fields)
    except (ValueError, TimeoutError, OSError) as exc:
        print(f"edx-live ctl: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(reply.result if reply.ok else {"error": reply.error}, indent=2))
    return 0 if reply.ok else 1


def _replay(args) -> int:
    """``edx-live replay``: the adapters' ``edx-live-replay`` for a recording (one implementation of both)."""
    from edx_adapters.cli import main as replay_main
    from edx_protocol.container import SUFFIX

    if not str(args.recording).endswith(SUFFIX):
        print(f"edx-live replay: error: {args.recording} is not a recording ({SUFFIX}); edx-live-replay sends "
              "spectrum-image files", file=sys.stderr)
        return 2
    return replay_main([str(args.recording), "--address", args.to, "--speed", str(args.speed)])


class StartupError(Exception):
    """A problem found before any work starts: the message says what to fix."""


def _serve(settings, args) -> int:
    from edx_live.core.kernels import warm_up as warm_up_kernels
    from edx_live.logs import get_logger
    from edx_live.segment import warm_up
    from edx_live.shell.app import App
    from edx_live.shell.sockets import Sockets

    # Keys are read and checked before anything binds: a bad path stops here (ConfigError).
    sockets = Sockets(security=settings.security.load("server"), log=get_logger("security"))
    try:
        try:
            app = App(settings, sessions=not args.no_sessions, warm_up=warm_up, sockets=sockets)
        except OSError as exc:
            raise StartupError(str(exc)) from None
        with app:
            warm_up_kernels()
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, lambda *_: app.stop())
            app.run(stop_after=args.acquisitions)
    finally:
        sockets.close()  # after the app's sockets: the ZAP handler stops last
    return 0


def _process(settings, args) -> int:
    from edx_live.scale.batch import is_glob

    if len(args.inputs) > 1 or is_glob(args.inputs[0]):
        return _process_many(settings, args)
    return _process_one(settings, args, args.inputs[0])


def _process_one(settings, args, path) -> int:
    from edx_adapters.replay import open_replay

    from edx_protocol.container import SUFFIX as RECORDING_SUFFIX

    from edx_live.shell.offline import process_recording, process_replay
    from edx_live.shell.publish import ConsolePrinter

    try:
        if args.out_of_core:
            from edx_live.scale.lazy import process_out_of_core

            summary = process_out_of_core(path, args.out, settings, chunk_mb=args.chunk_mb)
        elif str(path).endswith(RECORDING_SUFFIX):
            summary = process_recording(path, args.out, settings, subscribers=[ConsolePrinter()])
        else:
            replay = open_replay(path, frames=args.frames, chunk_pixels=args.chunk_pixels)
            summary = process_replay(replay, args.out, settings, refit_every=args.refit_every_frames,
                                     subscribers=[ConsolePrinter()])
    except (FileNotFoundError, ValueError) as exc:  # RecordingError is a ValueError
        raise StartupError(str(exc)) from None
    report = " (report.png)" if "report.png" in summary["files"] else " (no report: see the log)"
    print(f"wrote the session folder {args.out}: summary.json and {len(summary['files'])} files{report} "
          f"in {summary['timings']['total_s']:.1f} s")
    return 0


def _print_result(r: dict) -> None:
    seconds = "" if r["seconds"] is None else f" in {r['seconds']:.1f} s"
    error = f": {r['error']}" if r["error"] else ""
    print(f"{r['status']:<7} {r['input']} -> {r['session'] or '-'}{seconds}{error}", flush=True)


def _process_many(settings, args) -> int:
    """Several inputs (or a glob): a session folder each under --out, as Dask tasks; 1 if any failed."""
    from edx_live.scale.batch import Options, process_many

    options = Options(frames=args.frames, chunk_pixels=args.chunk_pixels, refit_every=args.refit_every_frames,
                      out_of_core=args.out_of_core, chunk_mb=args.chunk_mb)
    t0 = time.perf_counter()
    try:
        results = process_many(args.inputs, args.out, settings, options, force=args.force, on_result=_print_result)
    except (OSError, ValueError) as exc:  # a folder that cannot be written, TLS files, a scheduler not answering
        raise StartupError(str(exc)) from None
    counts = {s: sum(r["status"] == s for r in results) for s in ("done", "skipped", "failed")}
    print(f"processed {len(results)} inputs in {time.perf_counter() - t0:.1f} s: {counts['done']} done, "
          f"{counts['skipped']} skipped, {counts['failed']} failed; index {args.out}/index.json and index.csv")
    return 1 if counts["failed"] else 0


def _demo(args) -> int:
    from edx_live.shell.demo import run_demo

    from edx_live.logs import configure

    configure("console", "warning")
    seconds = run_demo(frames=args.frames, interval_s=args.interval, view=not args.no_view,
                       view_port=args.view_port)
    print(f"demo finished in {seconds:.1f} s")
    return 0


def _view(args) -> int:
    try:
        from edx_live.view.server import serve
    except ImportError as exc:
        print(f"edx-live view: error: {exc.name or exc} is not installed; install the viewer with "
              "pip install 'edx-live[viewer]'", file=sys.stderr)
        return 2
    from edx_live.logs import configure

    configure("console", args.log_level)
    try:
        security = _client_security(args)
    except ValueError as exc:
        print(f"edx-live view: error: {exc}", file=sys.stderr)
        return 2
    try:
        serve(args.connect, args.address, args.port, args.allow_origin,
              keys=security.client if security is not None else None)
    except OSError as exc:
        print(f"edx-live view: error: cannot serve on {args.address}:{args.port}: {exc.strerror or exc}; "
              "choose another --port or --address", file=sys.stderr)
        return 2
    return 0


#: HyperSpy 2.x warns about its own internal imports when exspy loads; nothing a user can act on.
def main(argv=None) -> int:
    from edx_live.logs import QUIET_WARNINGS

    warnings.filterwarnings("ignore", message=QUIET_WARNINGS)
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    if args.command == "view":
        return _view(args)
    if args.command == "ctl":
        return _ctl(args)
    if args.command == "replay":
        return _replay(args)
    if args.command == "keys":
        return _keys(args)
    from edx_live.config import ConfigError, load_settings
    from edx_live.logs import configure

    try:
        settings = load_settings(args.config, _overrides(args))
        configure(settings.log_format, settings.log_level)
        return _serve(settings, args) if args.command == "serve" else _process(settings, args)
    except (ConfigError, StartupError) as exc:
        print(f"edx-live {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

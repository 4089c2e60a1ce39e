"""Every control command, valid and invalid, through a real REQ socket against the real service."""

from __future__ import annotations

import time

import msgpack
import pytest
import zmq
from conftest import free_port, until
from edx_adapters.replay import open_replay
from edx_protocol import encode
from edx_protocol.control import decode_reply, encode_request

from edx_live.cli import main
from edx_live.config import load_settings
from edx_live.shell.app import App, on_free_ports
from edx_live.shell.ctl import call, parse_values
from edx_live.shell.demo import DEMO_KFACTORS, bundled_dataset

SWEEPS = 6



@pytest.fixture(scope="module")
def replay():
    return open_replay(bundled_dataset(), frames=SWEEPS, acquisition_id="ctl-1")


@pytest.fixture(scope="module")
def sweeps(replay):
    """The replay's messages grouped by sweep (index -1: the start), encoded."""
    groups: dict[int, list] = {-1: [encode(replay.start)]}
    for header, arrays in replay.messages():
        groups.setdefault(getattr(header, "frame_index", SWEEPS), []).append(encode(header, arrays))
    return groups


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    settings = load_settings(overrides={"refit": {"interval_s": 3600, "workflows": ["pca-gmm"]},
                                        "output": {"status_interval_s": 0.1},
                                        "quantify": {"kfactors": DEMO_KFACTORS, "replicas": 4, "bootstrap": 4}})
    sessions = tmp_path_factory.mktemp("sessions")
    application = App(on_free_ports(settings, sessions_dir=sessions)).start()
    yield application
    application.close()


@pytest.fixture(scope="module")
def push(app):
    sock = app.sockets.context.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 30_000)
    sock.connect(app.input_endpoint)
    yield sock
    sock.close()


def ctl(app, command, **args):
    return call(app.control_endpoint, command, timeout_s=30, **args)


def raw(app, frames: list[bytes]):
    """Send arbitrary frames as a request; return the decoded reply."""
    sock = app.sockets.request(app.control_endpoint, 30)
    try:
        sock.send_multipart(frames)
        return decode_reply(sock.recv())
    finally:
        sock.close(linger=0)


def send(push, messages):
    for frames in messages:
        push.send_multipart(frames, copy=False)


# ---- before any acquisition -------------------------------------------------------------------------------

def test_status_when_idle(app):
    reply = ctl(app, "status")
    assert reply.ok and reply.command == "status" and reply.error is None
    assert reply.result["state"] == "idle" and reply.result["counts"] == 0 and reply.result["refit_running"] is False


@pytest.mark.parametrize("frames, error", [
    ([encode_request("launch")], "unknown command 'launch'"),
    ([b"\xc1 not msgpack"], "not msgpack"),
    ([msgpack.packb([1, 2])], "must be a map"),
    ([encode_request("status"), b"x"], "one frame"),
    ([encode_request("status", verbose=True)], "verbose"),
    ([msgpack.packb({"protocol": 2, "command": "status", "args": {}})], "protocol 2"),
    ([encode_request("export", folder=7)], "folder"),
    ([encode_request("set")], "values"),
    ([encode_request("set", values={})], "values"),
])
def test_a_malformed_request_is_refused_with_a_reason(app, frames, error):
    reply = raw(app, frames)
    assert reply.ok is False and reply.result is None
    assert error in reply.error
    assert ctl(app, "status").ok  # and the service still answers


def test_commands_that_need_an_acquisition_say_so(app):
    for command in ("refit", "reset"):
        reply = ctl(app, command)
        assert not reply.ok and "no acquisition is acquiring" in reply.error
    reply = ctl(app, "export")
    assert not reply.ok and "no acquisition" in reply.error


def test_set_validates_every_value_and_applies_all_or_none(app):
    service = app.service
    reply = ctl(app, "set", values={"refit.interval_s": 1800.0, "pca_gmm.max_clusters": 6})
    assert reply.ok and reply.result["applied"] == "now"
    assert service.settings.refit.interval_s == 1800.0 and service.settings.pca_gmm.max_clusters == 6
    assert app.analyzer.settings.pca_gmm.max_clusters == 6  # the next refit uses them
    refused = {
        (("refit.interval_s", -1),): "greater than 0",
        (("refit.interval_s", "soon"),): "valid number",
        (("refit.nope", 1),): "refit.nope is not a setting",
        (("input.address", "tcp://0.0.0.0:1"),): "needs a restart",
        (("nosuch.key", 1),): "nosuch.key is not a setting",
        (("refit.interval_s", 7.0), ("refit.min_counts", -5)): "min_counts",
    }
    for pairs, error in refused.items():
        reply = ctl(app, "set", values=dict(pairs))
        assert not reply.ok and error in reply.error, reply.error
    assert service.settings.refit.interval_s == 1800.0  # the refused batch changed nothing
    assert ctl(app, "set", values={"refit.interval_s": 3600.0}).ok


def test_targets_before_any_refit(app):
    reply = ctl(app, "targets")
    assert not reply.ok and "no targets yet" in reply.error


# ---- during an acquisition --------------------------------------------------------------------------------

def test_refit_list_export_reset_and_targets_while_acquiring(app, push, sweeps, tmp_path):
    service = app.service
    send(push, sweeps[-1] + sweeps[0] + sweeps[1])
    counts_01 = sum(_counts(m) for m in sweeps[0] + sweeps[1])
    status = until(lambda: (r := ctl(app, "status").result)["counts"] == counts_01 and r, what="two sweeps")
    assert status["state"] == "acquiring" and status["acquisition_id"] == "ctl-1"

    listing = ctl(app, "list")
    assert listing.ok and [a["acquisition_id"] for a in listing.result] == ["ctl-1"]
    assert listing.result[0]["state"] == "acquiring" and listing.result[0]["refits"] == 0

    refits = service.refits
    assert ctl(app, "refit").result == {"acquisition_id": "ctl-1", "queued": True}
    until(lambda: service.refits > refits, what="the refit asked for")
    assert ctl(app, "list").result[0]["refits"] == 1

    targets = ctl(app, "targets")
    assert targets.ok and targets.result["kind"] == "targets" and targets.result["acquisition_id"] == "ctl-1"

    outside = ctl(app, "export", folder=str(tmp_path / "exported"))  # a client writes in the sessions folder only
    assert not outside.ok and "not inside the sessions folder" in outside.error
    assert not ctl(app, "export", folder="../escaped").ok
    folder = (app.sessions.root / "exported").resolve()
    reply = ctl(app, "export", folder="exported")
    assert reply.ok and reply.result == {"acquisition_id": "ctl-1", "folder": str(folder)}
    app.sessions.join(120)
    assert (folder / "spectrum_image.hspy").is_file() and (folder / "summary.json").is_file()
    again = ctl(app, "export", folder=str(folder))  # absolute, inside the sessions folder
    assert not again.ok and "exists already" in again.error
    unknown = ctl(app, "export", acquisition_id="nope")
    assert not unknown.ok and "no acquisition 'nope'" in unknown.error

    reply = ctl(app, "reset")
    assert reply.ok and reply.result["acquisition_id"] == "ctl-1"
    until(lambda: ctl(app, "status").result["counts"] == 0, what="the reset")
    assert ctl(app, "list").result[0]["refits"] == 0
    # Counting goes on from zero: exactly the sweeps sent after the reset.
    rest = [m for i in range(2, SWEEPS) for m in sweeps[i]]
    send(push, rest)
    expected = sum(_counts(m) for m in rest)
    until(lambda: ctl(app, "status").result["counts"] == expected, what="the sweeps after the reset")
    cube = service.ingest.current.accumulator.cube
    assert int(cube.sum()) == expected

    send(push, sweeps[SWEEPS])  # the stop
    until(lambda: service.finished == 1, what="the final refit")
    finished = ctl(app, "list").result
    assert finished[-1]["acquisition_id"] == "ctl-1" and finished[-1]["state"] == "stopped"
    assert ctl(app, "targets").result["final"] is True


def _counts(frames) -> int:
    """X-rays in one encoded message (0 for start, stop, image)."""
    from edx_protocol import decode

    header, arrays = decode(frames)
    if "counts" in arrays:
        return int(arrays["counts"].sum())
    if "pixel" in arrays:
        return int(arrays["pixel"].size)
    return 0


# ---- the command-line client --------------------------------------------------------------------------------

def test_ctl_command_line_exit_codes(app, capsys):
    assert main(["ctl", "status", "--connect", app.control_endpoint]) == 0
    assert '"state"' in capsys.readouterr().out
    assert main(["ctl", "set", "refit.interval_s=3000", "--connect", app.control_endpoint]) == 0
    assert app.service.settings.refit.interval_s == 3000
    assert main(["ctl", "set", "refit.interval_s=0", "--connect", app.control_endpoint]) == 1
    assert "greater than 0" in capsys.readouterr().out
    assert main(["ctl", "set", "--connect", app.control_endpoint]) == 2
    assert "at least one NAME=VALUE" in capsys.readouterr().err


def test_ctl_without_a_service_fails_quickly():
    ctx = zmq.Context.instance()
    probe = ctx.socket(zmq.REP)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)  # a port nobody answers on
    t0 = time.monotonic()
    assert main(["ctl", "status", "--connect", f"tcp://127.0.0.1:{port}", "--timeout", "0.5"]) == 2
    assert time.monotonic() - t0 < 5


def test_parse_values():
    assert parse_values("set", ["refit.interval_s=2", "refit.workflows=[\"pca-gmm\"]", "x=abc"]) == {
        "values": {"refit.interval_s": 2, "refit.workflows": ["pca-gmm"], "x": "abc"}}
    assert parse_values("export", ["folder=/tmp/a"]) == {"folder": "/tmp/a"}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_values("set", ["novalue"])
    with pytest.raises(ValueError, match="unknown command"):
        parse_values("launch", [])


def test_the_golden_control_messages_are_what_the_service_sends_and_takes(app):
    """SPEC section 11's examples: each request is taken, and each reply is the one the service gives."""
    import json

    import jsonschema
    from edx_protocol.generate import PROTOCOL_DIR, unpack_container

    golden = PROTOCOL_DIR / "golden"
    schema = json.loads((PROTOCOL_DIR / "schema" / "control.schema.json").read_text())
    messages = {}
    for path in sorted(golden.glob("control_*.bin")):
        (frame,) = unpack_container(path.read_bytes())
        body = msgpack.unpackb(frame, raw=False)
        jsonschema.validate(body, schema)
        assert body == json.loads(path.with_suffix(".json").read_text())["message"]
        messages[path.stem.removeprefix("control_")] = frame
    assert raw(app, [messages["status_request"]]).ok
    before = app.service.settings.refit.interval_s
    assert raw(app, [messages["set_request"]]) == decode_reply(messages["set_reply"])
    refused = encode_request("set", values={"refit.interval_s": -1})
    assert raw(app, [refused]) == decode_reply(messages["set_refused"])
    assert ctl(app, "set", values={"refit.interval_s": before}).ok



def test_serve_as_a_user_runs_it(tmp_path):
    """``edx-live serve`` with control, recording and session folders, fed by ``edx-live-replay``: the health
    check answers, and once the one acquisition asked for is finished the process exits with its session
    folder and its recording complete on disk."""
    import subprocess
    import sys

    from edx_protocol.container import read_recording

    ports = {name: free_port() for name in ("input", "output", "control")}
    address = {name: f"tcp://127.0.0.1:{port}" for name, port in ports.items()}
    serve = subprocess.Popen(
        [sys.executable, "-m", "edx_live.cli", "serve", "--input", address["input"], "--output", address["output"],
         "--control", address["control"], "--record", str(tmp_path / "rec"), "--sessions", str(tmp_path / "ses"),
         "--acquisitions", "1", "--workflow", "pca-gmm", "--kfactor", "Fe_Ka=1.450226", "--kfactor",
         "Pt_La=5.075602", "--log-format", "json"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        def health():
            try:
                return call(address["control"], "status", timeout_s=2)
            except TimeoutError:  # not listening yet: what a health check sees while the service starts
                return None

        status = until(health, timeout_s=120, what="the health check")
        assert status.result["state"] == "idle"
        replay = subprocess.run([sys.executable, "-m", "edx_adapters.cli", str(bundled_dataset()), "--frames", "3",
                                 "--address", address["input"], "--acquisition-id", "served-1"],
                                capture_output=True, text=True, timeout=120)
        assert replay.returncode == 0, replay.stderr
        out, _ = serve.communicate(timeout=300)
    finally:
        serve.kill()
    assert serve.returncode == 0, out[-3000:]
    folder = tmp_path / "ses" / "served-1"
    assert (folder / "spectrum_image.hspy").is_file() and (folder / "report.png").is_file(), out[-3000:]
    (recording,) = (tmp_path / "rec").glob("served-1-*.edxrec")
    entries = list(read_recording(recording))
    assert sum(e.kind == "message" for e in entries) == 3 * 64 + 2  # the start, 64 messages a sweep, the stop
    assert [e.fields["final"] for e in entries if e.kind == "marker"][-1] is True


def test_the_client_needs_only_the_protocol_and_pyzmq():
    """``edx-live ctl`` as a health check: no analysis stack, no logging library, no configuration."""
    import subprocess
    import sys

    code = ("import sys; from edx_live.cli import _parser; from edx_live.shell.ctl import call; "
            "heavy = {'sklearn', 'hyperspy', 'exspy', 'umap', 'hdbscan', 'numba', 'structlog', 'edx_live.config'}; "
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_command_budget_is_a_share_of_the_time_with_a_bounded_burst():
    from edx_live.shell.control import Budget

    now = [0.0]
    budget = Budget(share=0.05, burst_s=0.02, clock=lambda: now[0])
    assert budget.wait_s() == 0
    budget.spend(0.03)  # one slow command: 10 ms over what was saved
    assert budget.wait_s() == pytest.approx(0.01 / 0.05)
    now[0] += 0.1
    assert budget.wait_s() == pytest.approx(0.005 / 0.05)  # half of it earned back
    now[0] += 0.1
    assert budget.wait_s() == 0
    now[0] += 3600  # a long idle time saves no more than the burst
    assert budget.wait_s() == 0
    budget.spend(0.02)
    assert budget.wait_s() == pytest.approx(0.0)
    budget.spend(0.001)
    assert budget.wait_s() == pytest.approx(0.001 / 0.05)

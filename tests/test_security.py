"""CurveZMQ through real sockets on free loopback ports: only authorised keys get in or get results.

Every refusal is observed, not waited for: the refused client's socket monitor reports the failed
handshake (ZAP said no, wrong server key, or no CURVE at all), and only then is "nothing got
through" checked, against a service that meanwhile served an authorised client.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import zmq
from conftest import ServedApp, until
from edx_adapters.producer import make_socket, send_replay, wait_for_subscriber
from edx_adapters.replay import open_replay
from edx_protocol import encode
from edx_protocol.security import (
    Security,
    SecurityError,
    create_keys,
    load_client_keys,
    load_public,
    load_secret,
    load_server_keys,
    stop_authorizer,
)
from zmq.utils.monitor import recv_monitor_message

from edx_live.cli import main
from edx_live.config import ConfigError, load_settings
from edx_live.shell.app import App, on_free_ports
from edx_live.shell.ctl import call
from edx_live.shell.sockets import Sockets
from edx_live.shell.transport import ZmqConnection
from edx_live.view.feed import Feed

FAILED = {zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused by ZAP", zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "wrong server key",
          zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "mechanism mismatch"}
#: The clients that must get nothing: a key not in the folder, the wrong server key, no CURVE at all.
INTRUDERS = ["unknown-key", "wrong-server-key", "no-curve"]



class WatchedContext(zmq.Context):
    """A context whose sockets are monitored from birth, before they connect: a refused client may try
    once only (ZeroMQ does not retry after a ZAP refusal), and that one handshake must be seen."""

    def socket(self, socket_type, **kwargs):
        sock = super().socket(socket_type, **kwargs)
        if socket_type != zmq.PAIR:  # the monitors themselves
            sock.get_monitor_socket()
        return sock


@pytest.fixture
def watched():
    """The context of the clients that must be refused."""
    ctx = WatchedContext()
    yield ctx
    ctx.destroy(linger=0)


def refused(sock: zmq.Socket, timeout_s: float = 20.0) -> str:
    """Watch ``sock`` (from :class:`WatchedContext`) until a handshake fails; fail the test if one succeeds
    or none ends in ``timeout_s``."""
    monitor = sock.get_monitor_socket()  # the one made at its birth
    deadline = time.monotonic() + timeout_s
    try:
        while monitor.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            event = recv_monitor_message(monitor)["event"]
            assert event != zmq.EVENT_HANDSHAKE_SUCCEEDED, "an unauthorised client completed the handshake"
            if event in FAILED:
                return FAILED[event]
        raise AssertionError(f"no handshake ended within {timeout_s} s")
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A key folder with producer, viewer and ctl admitted, and another whose keys are admitted nowhere."""
    root = tmp_path_factory.mktemp("curve")
    made = create_keys(root / "keys", ["producer", "viewer", "ctl"])
    other = create_keys(root / "other", ["intruder"])
    client = {name: load_client_keys(made.clients[name], made.server_public) for name in made.clients}
    intruders = {"unknown-key": load_client_keys(other.clients["intruder"], made.server_public),
                 "wrong-server-key": load_client_keys(made.clients["producer"], other.server_public),
                 "no-curve": None}
    server = Security(server=load_server_keys(made.server_secret, made.authorized, reload_s=0.05))
    return SimpleNamespace(made=made, other=other, client=client, intruders=intruders, server=server)


def client_security(keys) -> Security | None:
    return Security(client=keys) if keys is not None else None


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    stop_authorizer(ctx)
    ctx.destroy(linger=0)


@contextmanager
def served(security: Security, context: zmq.Context, **overrides):
    """The service with every socket (input, PUB, control) a CURVE server, on free loopback ports."""
    settings = load_settings(overrides={"refit": {"interval_s": 3600}, "output": {"status_interval_s": 0.05},
                                        **overrides})
    sockets = Sockets(context, security=security)
    app = App(on_free_ports(settings), publish=True, control=True, sessions=False, record=False,
              analyze=lambda snapshot, record: [], sockets=sockets).start()
    try:
        yield app
    finally:
        app.close()
        sockets.close()


@pytest.fixture(scope="module")
def service(keys):
    ctx = zmq.Context()
    with served(keys.server, ctx) as app:
        yield app
    ctx.destroy(linger=0)


# ---- edx-live keys ------------------------------------------------------------------------------------------

def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_keys_command_writes_private_pairs_and_the_authorised_folder(tmp_path, capsys):
    folder = tmp_path / "keys"
    assert main(["keys", str(folder), "--client", "producer", "--client", "viewer"]) == 0
    out = capsys.readouterr().out
    authorized = folder / "authorized"
    assert _mode(folder) == 0o700 and _mode(authorized) == 0o700
    for name in ("server", "producer", "viewer"):
        assert _mode(folder / f"{name}.key_secret") == 0o600
        public, _ = load_secret(folder / f"{name}.key_secret")
        assert load_public(folder / f"{name}.key") == public
    assert sorted(p.name for p in authorized.iterdir()) == ["producer.key", "viewer.key"]
    assert load_public(authorized / "producer.key") == load_public(folder / "producer.key")
    # It says what goes in the service's configuration and what each client gets.
    assert f'authorized_keys = "{authorized.resolve()}"' in out
    assert f'server_secret_key = "{(folder / "server.key_secret").resolve()}"' in out
    assert "client producer: give it" in out

    server = load_public(folder / "server.key")
    old = load_public(folder / "producer.key")
    assert main(["keys", str(folder), "--client", "producer"]) == 2  # never overwritten silently
    assert "exist already" in capsys.readouterr().err
    assert main(["keys", str(folder), "--client", "producer", "--replace", "--revoke", "viewer"]) == 0
    assert load_public(folder / "producer.key") != old  # rotated ...
    assert load_public(authorized / "producer.key") == load_public(folder / "producer.key")  # ... and admitted
    assert sorted(p.name for p in authorized.iterdir()) == ["producer.key"]  # viewer revoked
    assert load_public(folder / "server.key") == server  # the server pair is kept

    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    assert main(["keys", str(shared), "--client", "x"]) == 2
    assert "chmod 700" in capsys.readouterr().err
    assert main(["keys", str(folder), "--client", "server"]) == 2


def test_keys_help_says_where_keys_go_and_how_to_rotate(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["keys", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for words in ("authorized", "server_secret_key", "--curve-secret-key", "Rotation", "--revoke", "reload_s"):
        assert words in text


# ---- producers ---------------------------------------------------------------------------------------------

def _replay(data_dir, acquisition_id):
    return open_replay(data_dir / "test_TEM.bcf", frames=2, acquisition_id=acquisition_id)


@contextmanager
def served_input(keys, context):
    """The service with a CURVE PULL input on a free loopback port (the conftest harness), closed in any case."""
    sockets = Sockets(context, security=keys.server)
    connection = ZmqConnection("tcp://127.0.0.1:*", sockets=sockets)
    server = ServedApp(load_settings(overrides={"refit": {"interval_s": 3600}}), context, connection=connection)
    try:
        yield server.start(), sockets
    finally:
        server.app.close()
        sockets.close()


def offer(sock: zmq.Socket, replay) -> int:
    """Queue the replay's messages on ``sock`` as far as it takes them without waiting; how many it took."""
    taken = 0
    for header, arrays in [(replay.start, {})] + list(replay.messages()):
        try:
            sock.send_multipart(encode(header, arrays), zmq.NOBLOCK)
        except zmq.Again:
            break
        taken += 1
    return taken


def test_an_authorised_producer_is_accepted(keys, context, data_dir):
    with served_input(keys, context) as (server, sockets):
        push = make_socket(server.endpoint, "push", context=context, keys=keys.client["producer"])
        sent = send_replay(_replay(data_dir, "admitted"), push)
        ingest = server.finish()
        push.close()
    acq = ingest.current
    assert acq.acquisition_id == "admitted" and acq.state == "stopped"
    assert not ingest.rejected and ingest.accepted == acq.messages == sent.messages
    assert acq.accumulator.counts == sent.xrays


@pytest.mark.parametrize("intruder", INTRUDERS)
def test_an_unauthorised_producer_injects_nothing(keys, context, watched, data_dir, intruder):
    with served_input(keys, context) as (server, sockets):
        bad = make_socket(server.endpoint, "push", context=watched, linger_ms=0, keys=keys.intruders[intruder])
        offer(bad, _replay(data_dir, "intruder"))  # queued on its side: its connection never completes
        why = refused(bad)
        ingest = server.service.ingest
        assert ingest.accepted == 0 and not ingest.rejected and ingest.current is None
        if intruder == "unknown-key":
            assert why == "refused by ZAP" and sockets.authorizer.refused >= 1

        # Meanwhile the service goes on: an authorised producer's acquisition is the only one it saw.
        good = make_socket(server.endpoint, "push", context=context, keys=keys.client["producer"])
        sent = send_replay(_replay(data_dir, "admitted"), good)
        server.finish()
        good.close()
        bad.close()
    assert ingest.current.acquisition_id == "admitted" and not ingest.pending
    assert ingest.accepted == sent.messages and not ingest.rejected
    assert [a["acquisition_id"] for a in server.service.state.listing()] == ["admitted"]


def test_the_service_subscribes_to_a_curve_producer(tmp_path, data_dir):
    """Input SUB connecting: the service is the client of a producer's XPUB, which admits its key."""
    made = create_keys(tmp_path / "producer-keys", ["service"])
    producer_ctx, service_ctx = zmq.Context(), zmq.Context()
    try:
        pub = make_socket("tcp://127.0.0.1:*", "pub", context=producer_ctx, linger_ms=0,
                          keys=load_server_keys(made.server_secret, made.authorized))
        endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
        sockets = Sockets(service_ctx, security=Security(client=load_client_keys(made.clients["service"],
                                                                                 made.server_public)))
        server = ServedApp(load_settings(overrides={"refit": {"interval_s": 3600}}), service_ctx,
                           connection=ZmqConnection(endpoint, "sub", bind=False, sockets=sockets)).start()
        assert wait_for_subscriber(pub, 30.0)
        sent = send_replay(_replay(data_dir, "published"), pub)
        ingest = server.finish()
        pub.close()
        assert ingest.current.acquisition_id == "published" and ingest.accepted == sent.messages
    finally:
        stop_authorizer(producer_ctx)
        producer_ctx.destroy(linger=0)
        service_ctx.destroy(linger=0)


# ---- result subscribers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("intruder", INTRUDERS)
def test_only_an_authorised_subscriber_receives_results(keys, service, context, watched, intruder):
    good = Feed(service.output_endpoint, context, keys=keys.client["viewer"]).start()
    bad_feed = Feed(service.output_endpoint, context, keys=keys.intruders[intruder]).start()
    bad = Sockets(watched, security=client_security(keys.intruders[intruder])).subscriber(service.output_endpoint)
    try:
        until(lambda: good.snapshot().received > 0, what="the authorised viewer's first status")
        refused(bad)
        seen = good.snapshot().received
        until(lambda: good.snapshot().received >= seen + 3, what="three more statuses")  # published after the refusal
        assert bad.poll(0) == 0
        with pytest.raises(zmq.Again):
            bad.recv_multipart(zmq.NOBLOCK)
        assert bad_feed.snapshot().received == 0 and bad_feed.snapshot().status is None
        assert good.snapshot().status.kind == "status"
    finally:
        bad.close(linger=0)
        good.stop()
        bad_feed.stop()


# ---- control --------------------------------------------------------------------------------------------

def test_only_an_authorised_control_client_gets_a_reply(keys, service, context):
    ctl = Sockets(context, security=Security(client=keys.client["ctl"]))
    reply = call(service.control_endpoint, "status", timeout_s=20, sockets=ctl)
    assert reply.ok and reply.result["state"] in ("idle", "acquiring", "stopped")
    for intruder in INTRUDERS:  # each waits its whole timeout: the service never answers it
        sockets = Sockets(context, security=client_security(keys.intruders[intruder]))
        with pytest.raises(TimeoutError, match="no reply"):
            call(service.control_endpoint, "status", timeout_s=1.0, sockets=sockets)
    # The service is unharmed: the authorised client is still answered.
    assert call(service.control_endpoint, "status", timeout_s=20, sockets=ctl).ok


def test_ctl_command_line_with_keys(keys, service, capsys):
    made = keys.made
    with_keys = ["--curve-secret-key", str(made.clients["ctl"]), "--curve-server-key", str(made.server_public)]
    assert main(["ctl", "status", "--connect", service.control_endpoint, *with_keys]) == 0
    assert '"state"' in capsys.readouterr().out
    assert main(["ctl", "status", "--connect", service.control_endpoint, "--timeout", "1"]) == 2
    assert "CurveZMQ keys" in capsys.readouterr().err
    assert main(["ctl", "status", "--connect", service.control_endpoint, with_keys[0], with_keys[1]]) == 2
    assert "go together" in capsys.readouterr().err
    assert main(["ctl", "status", "--connect", service.control_endpoint, "--curve-secret-key", "nope.key_secret",
                 "--curve-server-key", str(made.server_public)]) == 2
    assert "nope.key_secret does not exist" in capsys.readouterr().err


def test_set_refuses_values_outside_their_range_and_changes_nothing(keys, service, context):
    ctl = Sockets(context, security=Security(client=keys.client["ctl"]))
    before = service.service.settings
    dump = before.model_dump()
    refused = {
        "refit.interval_s": (-1, "greater than 0"),
        "pca_gmm.max_clusters": (10**9, "less than or equal to 32"),
        "pca_gmm.n_components": (10**6, "less than or equal to 64"),
        "umap_hdbscan.n_neighbors": (10**6, "less than or equal to 500"),
        "quantify.replicas": (10**7, "less than or equal to 4096"),
        "pca_gmm.random_state": (-1, "greater than or equal to 0"),
        "output.status_interval_s": (0, "greater than or equal to 0.01"),
        "security.curve": (False, "needs a restart"),
        "security.authorized_keys": ("/tmp", "needs a restart"),
        "control.address": ("tcp://0.0.0.0:5558", "needs a restart"),
    }
    for name, (value, error) in refused.items():
        reply = call(service.control_endpoint, "set", timeout_s=20, sockets=ctl, values={name: value})
        assert not reply.ok and reply.error.startswith("set refused") and error in reply.error, (name, reply.error)
        assert name in reply.error
    reply = call(service.control_endpoint, "set", timeout_s=20, sockets=ctl, values={"refit.interval_s": "fast"})
    assert not reply.ok and "refit.interval_s" in reply.error and "valid number" in reply.error
    # All or none: one bad value in a batch refuses the good one too.
    reply = call(service.control_endpoint, "set", timeout_s=20, sockets=ctl,
                 values={"refit.interval_s": 7.0, "pca_gmm.max_clusters": 33})
    assert not reply.ok and "max_clusters" in reply.error
    assert service.service.settings is before and service.service.settings.model_dump() == dump


# ---- key rotation --------------------------------------------------------------------------------------------

def test_a_key_added_to_or_removed_from_the_folder_counts_for_new_connections(tmp_path, context):
    made = create_keys(tmp_path / "keys", ["ctl"])
    late = create_keys(tmp_path / "elsewhere", ["late"])
    security = Security(server=load_server_keys(made.server_secret, made.authorized, reload_s=0.05))
    late_ctl = Sockets(context, security=Security(client=load_client_keys(late.clients["late"], made.server_public)))

    def answered() -> bool:
        try:
            return call(app.control_endpoint, "status", timeout_s=0.5, sockets=late_ctl).ok
        except TimeoutError:
            return False

    with served(security, context) as app:
        assert not answered()
        shutil.copyfile(tmp_path / "elsewhere" / "late.key", made.authorized / "late.key")
        until(answered, what="the added key being admitted")
        (made.authorized / "late.key").unlink()
        until(lambda: not answered(), what="the removed key being refused")


# ---- configuration --------------------------------------------------------------------------------------

def test_curve_is_off_by_default():
    settings = load_settings()
    assert settings.security.curve is False and settings.security.load("server") is None


def test_incomplete_security_settings_are_refused():
    with pytest.raises(ConfigError, match="curve = true needs keys"):
        load_settings(overrides={"security": {"curve": True}})
    with pytest.raises(ConfigError, match="go together"):
        load_settings(overrides={"security": {"server_secret_key": "server.key_secret"}})
    client_only = load_settings(overrides={"security": {"curve": True, "client_secret_key": "a",
                                                        "server_public_key": "b"}})
    with pytest.raises(ConfigError, match="this program needs server_secret_key and authorized_keys"):
        client_only.security.load("server")


def _security_toml(path, **values) -> str:
    body = "\n".join(f'{k} = "{v}"' for k, v in values.items())
    path.write_text(f'[input]\naddress = "tcp://127.0.0.1:*"\n[output]\naddress = "tcp://127.0.0.1:*"\n'
                    f'sessions_dir = "{path.parent / "sessions"}"\n[control]\naddress = "tcp://127.0.0.1:*"\n'
                    f"[security]\ncurve = true\n{body}\n")
    return str(path)


def test_bad_key_paths_stop_serve_at_start_up(tmp_path, capsys):
    made = create_keys(tmp_path / "keys", ["producer"])
    readable = tmp_path / "readable.key_secret"
    shutil.copyfile(made.server_secret, readable)
    os.chmod(readable, 0o644)
    cases = {
        "missing secret": (dict(server_secret_key=tmp_path / "nope.key_secret", authorized_keys=made.authorized),
                           ["nope.key_secret does not exist", "edx-live keys"]),
        "public key as secret": (dict(server_secret_key=made.server_public, authorized_keys=made.authorized),
                                 ["holds a public key only", ".key_secret"]),
        "readable by others": (dict(server_secret_key=readable, authorized_keys=made.authorized),
                               ["can be read by other users", "chmod 600"]),
        "missing folder": (dict(server_secret_key=made.server_secret, authorized_keys=tmp_path / "nowhere"),
                           ["nowhere does not exist", "edx-live keys"]),
    }
    for case, (values, words) in cases.items():
        assert main(["serve", "--config", _security_toml(tmp_path / "edx.toml", **values)]) == 2, case
        err = capsys.readouterr().err
        assert err.startswith("edx-live serve: error: [security]"), err
        for word in words:
            assert word in err, (case, err)
    assert not (tmp_path / "sessions").exists()  # stopped before anything started


def test_a_bad_file_in_the_authorised_folder_is_named(tmp_path):
    made = create_keys(tmp_path / "keys", ["producer"])
    (made.authorized / "broken.key").write_text("curve\n    public-key = \"short\"\n")
    with pytest.raises(SecurityError, match="broken.key holds no valid CURVE key"):
        load_server_keys(made.server_secret, made.authorized)
    os.chmod(made.authorized, 0o777)
    with pytest.raises(SecurityError, match="can be written by other users"):
        load_server_keys(made.server_secret, made.authorized)


def test_a_client_socket_without_client_keys_is_refused_with_a_clear_error(keys, context):
    from edx_live.shell.sockets import SocketError

    with pytest.raises(SocketError, match="connects, so it is a CURVE client"):
        Sockets(context, security=keys.server).request("tcp://127.0.0.1:5", 1)
    with pytest.raises(SocketError, match="binds, so it is a CURVE server"):
        Sockets(context, security=Security(client=keys.client["ctl"])).publisher("tcp://127.0.0.1:*")


def test_secret_keys_stay_out_of_reprs(keys):
    for value in (keys.server, keys.client["ctl"]):
        text = repr(value)
        assert "secret_key" not in text and keys.client["ctl"].secret_key.decode() not in text

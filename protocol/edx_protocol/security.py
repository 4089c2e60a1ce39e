"""CurveZMQ keys for every socket of edx_live: create them, load them, set them, authorise clients.

Optional (off by default). With it, every connection is encrypted, and a server socket (one that
binds: the service's PULL input, PUB results and REP control, or a producer's PUB) accepts only
clients whose public key is a file in its *authorised folder*. The checking is pyzmq's own ZAP
handler (``zmq.auth.thread.ThreadAuthenticator`` with ``configure_curve``), one per ZeroMQ context;
key files are ``zmq.auth`` certificates (``create_certificates``, ``load_certificate``).

pyzmq and the standard library only: producers, the viewer and ``edx-live ctl`` use it without the
analysis stack. protocol/SPEC.md section 1.3 describes what a client in another language does.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

#: File names of a key pair, as ``zmq.auth.create_certificates`` writes them.
PUBLIC_SUFFIX, SECRET_SUFFIX = ".key", ".key_secret"
#: Name of the service's key pair in a key folder.
SERVER_NAME = "server"
#: Sub-folder of a key folder that the service reads the authorised client public keys from.
AUTHORIZED_DIR = "authorized"
#: Seconds between two looks at the authorised folder (a key added or removed counts for new connections).
RELOAD_S = 2.0

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PRIVATE = os.name == "posix"  # modes mean something: secrets must not be readable by others


class SecurityError(ValueError):
    """A key file or folder that cannot be used; the message says which and what to do."""


class _StdlibLog:
    """The fallback log of the authoriser: stdlib logging, with structlog's call shape."""

    def __init__(self, name: str = "edx_protocol.security"):
        self._log = logging.getLogger(name)

    def info(self, event: str, **fields) -> None:
        self._log.info("%s %s", event, fields)

    def warning(self, event: str, **fields) -> None:
        self._log.warning("%s %s", event, fields)


@dataclass(frozen=True)
class ServerKeys:
    """What a socket that binds needs: its key pair and the folder of authorised client public keys.

    ``reload_s``: seconds between looks at the folder; ``None`` reads it only at start-up.
    """

    public_key: bytes
    secret_key: bytes
    authorized: Path
    reload_s: float | None = RELOAD_S

    def __repr__(self) -> str:  # never print a secret key in a log or a traceback
        return f"ServerKeys(public_key={self.public_key!r}, authorized={str(self.authorized)!r})"


@dataclass(frozen=True)
class ClientKeys:
    """What a socket that connects needs: its key pair and the public key of the server it connects to."""

    public_key: bytes
    secret_key: bytes
    server_key: bytes

    def __repr__(self) -> str:
        return f"ClientKeys(public_key={self.public_key!r}, server_key={self.server_key!r})"


@dataclass(frozen=True)
class Security:
    """The keys of one program: ``server`` for the sockets it binds, ``client`` for those it connects."""

    server: ServerKeys | None = None
    client: ClientKeys | None = None


# loading --------------------------------------------------------------------------------------------
def _check_key(key: bytes | None, path: Path, what: str) -> bytes:
    try:
        if key is None or len(key) != 40 or len(z85.decode(key)) != 32:
            raise ValueError
    except (ValueError, KeyError, TypeError, IndexError):
        raise SecurityError(f"{what} {path} holds no valid CURVE key (40 Z85 characters); "
                            "create key files with `edx-live keys DIR`") from None
    return key


def _read(path, what: str) -> tuple[bytes, bytes | None]:
    path = Path(path)
    if not path.is_file():
        raise SecurityError(f"{what} {path} does not exist or is not a file; create key files with "
                            "`edx-live keys DIR` and give the path of the right one")
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise SecurityError(f"{what} {path} cannot be read as a ZeroMQ certificate: {exc}") from None


def load_secret(path, what: str = "secret key file") -> tuple[bytes, bytes]:
    """The ``(public, secret)`` key pair of a ``.key_secret`` file, checked: readable by its owner only,
    both keys valid and belonging together."""
    path = Path(path)
    public, secret = _read(path, what)
    if secret is None:
        raise SecurityError(f"{what} {path} holds a public key only: give the {SECRET_SUFFIX} file of the pair")
    public, secret = _check_key(public, path, what), _check_key(secret, path, what)
    if zmq.curve_public(secret) != public:
        raise SecurityError(f"{what} {path}: its public and secret keys do not belong together; "
                            "create a new pair with `edx-live keys DIR`")
    if _PRIVATE:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise SecurityError(f"{what} {path} can be read by other users (mode {mode:o}): "
                                f"run `chmod 600 {path}`")
    return public, secret


def load_public(path, what: str = "public key file") -> bytes:
    """The public key of a ``.key`` file (a ``.key_secret`` file works too), checked."""
    public, _ = _read(path, what)
    return _check_key(public, Path(path), what)


def authorized_keys(folder) -> dict[str, bytes]:
    """The public keys of an authorised folder by file name, each checked (what ``configure_curve`` reads:
    every ``*.key`` file). SecurityError names a folder or a file that cannot be used."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SecurityError(f"authorised keys folder {folder} does not exist or is not a folder; create it "
                            f"with `edx-live keys DIR --client NAME` (DIR/{AUTHORIZED_DIR})")
    if _PRIVATE:
        mode = stat.S_IMODE(folder.stat().st_mode)
        if mode & 0o022:
            raise SecurityError(f"authorised keys folder {folder} can be written by other users (mode {mode:o}), "
                                f"who could authorise themselves: run `chmod 700 {folder}`")
    return {p.name: load_public(p, "authorised key file") for p in sorted(folder.glob("*" + PUBLIC_SUFFIX))}


def load_server_keys(secret_file, authorized, reload_s: float | None = RELOAD_S) -> ServerKeys:
    """The keys of a program that binds: its ``.key_secret`` file and the authorised folder, both checked."""
    public, secret = load_secret(secret_file, "server secret key file")
    authorized_keys(authorized)
    return ServerKeys(public, secret, Path(authorized).resolve(), reload_s)


def load_client_keys(secret_file, server_public_file) -> ClientKeys:
    """The keys of a program that connects: its ``.key_secret`` file and the server's ``.key`` file."""
    public, secret = load_secret(secret_file, "client secret key file")
    return ClientKeys(public, secret, load_public(server_public_file, "server public key file"))


# sockets --------------------------------------------------------------------------------------------
def set_client(sock: zmq.Socket, keys: ClientKeys) -> None:
    """Make ``sock`` a CURVE client of the server whose public key ``keys`` names (before connect)."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_key)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public_key)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret_key)


def set_server(sock: zmq.Socket, keys: ServerKeys, log=None) -> "Authorizer":
    """Make ``sock`` a CURVE server (before bind), with its context's ZAP handler running first.

    Returns the context's :class:`Authorizer`; call its ``release`` once the socket is closed.
    """
    auth = authorizer(sock.context, keys, log)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret_key)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public_key)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    return auth


def apply_keys(sock: zmq.Socket, security: Security, bind: bool, role: str = "socket", log=None):
    """Set the side of ``security`` that ``sock`` plays: server when it binds, client when it connects.

    Returns the :class:`Authorizer` a server socket started or shares (release it after closing), else None.
    """
    if bind:
        if security.server is None:
            raise SecurityError(f"the {role} socket binds, so it is a CURVE server: it needs a server secret key "
                                "and an authorised keys folder ([security] server_secret_key, authorized_keys)")
        return set_server(sock, security.server, log)
    if security.client is None:
        raise SecurityError(f"the {role} socket connects, so it is a CURVE client: it needs a client secret key "
                            "and the server's public key ([security] client_secret_key, server_public_key)")
    set_client(sock, security.client)
    return None


# the ZAP handler ------------------------------------------------------------------------------------
class _Authenticator(ThreadAuthenticator):
    """pyzmq's ZAP handler, reporting each refused client key (pyzmq logs refusals at debug level only)."""

    def __init__(self, context: zmq.Context, on_refused):
        super().__init__(context, log=logging.getLogger("zmq.auth"))
        self._on_refused = on_refused

    async def _authenticate_curve(self, domain, client_key):
        allowed, reason = await super()._authenticate_curve(domain, client_key)
        if not allowed:
            self._on_refused(z85.encode(client_key).decode("ascii"), reason.decode("ascii", "replace"))
        return allowed, reason


def _listing(folder: Path) -> list[tuple]:
    try:
        return sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.glob("*" + PUBLIC_SUFFIX))
    except OSError:
        return []


class Authorizer:
    """The ZAP handler of one ZeroMQ context, allowing the client keys of one folder (any ZAP domain).

    Made by :func:`authorizer`, shared by every server socket of the context, stopped when its
    last user calls :meth:`release`. Every ``reload_s`` it looks at the folder and, when a
    ``*.key`` file was added, removed or changed, calls ``configure_curve`` again: new
    connections see the change; connections already made stay until they close.
    """

    def __init__(self, context: zmq.Context, folder: Path, reload_s: float | None, log=None):
        self.context, self.folder, self.reload_s = context, Path(folder), reload_s
        self.log = log or _StdlibLog()
        self.refused = 0  # client keys refused since start
        self._users = 0
        self._auth = _Authenticator(context, self._refused)
        self._seen: list = []
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def keys(self) -> int:
        """How many client keys are allowed now."""
        return len(self._auth.certs.get("*", {}))

    def _start(self) -> None:
        authorized_keys(self.folder)  # a bad folder or file stops here, before any socket binds
        self._auth.start()
        self._load()
        if self.reload_s:
            self._watcher = threading.Thread(target=self._watch, name="edx-live-authorized-keys", daemon=True)
            self._watcher.start()

    def _load(self) -> None:
        self._seen = _listing(self.folder)
        self._auth.configure_curve(domain="*", location=str(self.folder))
        self.log.info("curve_authorized_keys", folder=str(self.folder), keys=self.keys)

    def _watch(self) -> None:
        while not self._stop.wait(self.reload_s):
            if _listing(self.folder) == self._seen:
                continue
            try:
                authorized_keys(self.folder)
            except SecurityError as exc:  # keep the keys allowed so far; say why the new ones are not
                self._seen = _listing(self.folder)
                self.log.warning("curve_authorized_keys_not_reloaded", error=str(exc))
                continue
            self._load()

    def _refused(self, client_key: str, reason: str) -> None:
        self.refused += 1
        self.log.warning("curve_client_refused", client_key=client_key, reason=reason, folder=str(self.folder))

    def release(self) -> None:
        """One user fewer; the last one stops the handler (before the context is terminated)."""
        with _LOCK:
            self._users -= 1
            if self._users > 0:
                return
            _REGISTRY.pop(id(self.context), None)
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)
        self._auth.stop()


_REGISTRY: dict[int, Authorizer] = {}
_LOCK = threading.Lock()


def authorizer(context: zmq.Context, keys: ServerKeys, log=None) -> Authorizer:
    """The context's :class:`Authorizer` for ``keys.authorized``: started on first use, shared after.

    ZeroMQ allows one ZAP handler per context, so every server socket of a context must use the
    same authorised folder. Each call adds a user; call :meth:`Authorizer.release` once per call.
    """
    folder = Path(keys.authorized).resolve()
    with _LOCK:
        auth = _REGISTRY.get(id(context))
        if auth is None:
            auth = Authorizer(context, folder, keys.reload_s, log)
            auth._start()
            _REGISTRY[id(context)] = auth
        elif auth.folder != folder:
            raise SecurityError(f"this ZeroMQ context already authorises the keys of {auth.folder}; one context "
                                f"has one authorised folder, not also {folder}")
        auth._users += 1
        return auth


def stop_authorizer(context: zmq.Context) -> None:
    """Stop the context's ZAP handler whatever its users (a producer's, before its context is terminated)."""
    with _LOCK:
        auth = _REGISTRY.get(id(context))
        if auth is None:
            return
        auth._users = 1
    auth.release()


# key folders ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyFolder:
    """What :func:`create_keys` left in a key folder (paths)."""

    folder: Path
    server_public: Path
    server_secret: Path
    authorized: Path
    created: tuple[str, ...]   # names of the pairs written this time ("server" among them when new)
    clients: dict             # client name -> its secret key file, for every client pair in the folder


def _private_dir(path: Path) -> None:
    """Create ``path`` with mode 700, or check that an existing one is not open to other users."""
    if not path.exists():
        path.mkdir(mode=0o700, parents=True)
        os.chmod(path, 0o700)  # mkdir's mode is cut by the umask, never widened: set it exactly
    elif not path.is_dir():
        raise SecurityError(f"{path} exists and is not a folder; name a new folder for the keys")
    elif _PRIVATE and stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise SecurityError(f"{path} is open to other users (mode {stat.S_IMODE(path.stat().st_mode):o}); "
                            f"run `chmod 700 {path}` or name a new folder")


def _new_pair(folder: Path, name: str) -> tuple[Path, Path]:
    public, secret = (Path(p) for p in zmq.auth.create_certificates(folder, name))
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return public, secret


def create_keys(folder, clients=(), replace: bool = False, new_server: bool = False, revoke=()) -> KeyFolder:
    """Write the service's key pair (once) and a pair per client into ``folder``; authorise the clients.

    ``folder`` and ``folder/authorized`` get mode 700, secret key files mode 600. Each client's public
    key is copied into ``authorized``, the folder the service reads ([security] authorized_keys).

    Parameters
    ----------
    folder : path
    clients : sequence of str
        Names of client pairs to write (``producer``, ``viewer``...); an existing name is an error unless
        ``replace`` (its old key then stops working).
    replace : bool
        Write new pairs for clients that exist already (key rotation).
    new_server : bool
        Write a new server pair even when one exists (every client then needs the new ``server.key``).
    revoke : sequence of str
        Clients whose public key is removed from ``authorized`` (their pair files are left).
    """
    folder = Path(folder)
    clients, revoke = list(clients), list(revoke)
    for name in clients + revoke:
        if not _NAME.match(name) or name == SERVER_NAME or name.endswith(PUBLIC_SUFFIX):
            raise SecurityError(f"client name {name!r} is not allowed: use letters, digits, '-', '_' or '.', "
                                f"not {SERVER_NAME!r}")
    if len(set(clients)) != len(clients) or set(clients) & set(revoke):
        raise SecurityError("name each client once, and not both to create and to revoke")
    _private_dir(folder)
    authorized = folder / AUTHORIZED_DIR
    _private_dir(authorized)
    existing = [n for n in clients if (folder / (n + SECRET_SUFFIX)).exists()]
    if existing and not replace:
        raise SecurityError(f"client keys {', '.join(existing)} exist already in {folder}: pass --replace to "
                            "write new ones (the old ones then stop working), or choose other names")
    created = []
    server_public, server_secret = folder / (SERVER_NAME + PUBLIC_SUFFIX), folder / (SERVER_NAME + SECRET_SUFFIX)
    if new_server or not server_secret.exists():
        _new_pair(folder, SERVER_NAME)
        created.append(SERVER_NAME)
    for name in clients:
        public, _ = _new_pair(folder, name)
        shutil.copyfile(public, authorized / public.name)
        os.chmod(authorized / public.name, 0o644)
        created.append(name)
    for name in revoke:
        target = authorized / (name + PUBLIC_SUFFIX)
        if not target.exists():
            raise SecurityError(f"{target} does not exist: client {name!r} is not authorised")
        target.unlink()
    pairs = {p.name[:-len(SECRET_SUFFIX)]: p for p in sorted(folder.glob("*" + SECRET_SUFFIX))}
    pairs.pop(SERVER_NAME, None)
    return KeyFolder(folder.resolve(), server_public.resolve(), server_secret.resolve(), authorized.resolve(),
                     tuple(created), {n: p.resolve() for n, p in pairs.items()})

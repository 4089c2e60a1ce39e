"""deploy/: the example configuration, the systemd units, the cleaning rules and the container image.

The example configuration lists every setting (a new one fails here until it is added), shows the
defaults except the deployment choices marked as such, and binds nothing but loopback. The units are
checked for the keys the facility relies on and, where systemd's tools exist, verified by them. The
image build runs with ``-m slow`` when a container builder works on this machine.
"""

from __future__ import annotations

import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
EXAMPLE = DEPLOY / "edx-live.toml"
UNIT = DEPLOY / "edx-live.service"
HEALTH = DEPLOY / "edx-live-health.service"
TIMER = DEPLOY / "edx-live-health.timer"
RESTART = DEPLOY / "edx-live-restart.service"
CONTAINERFILE = DEPLOY / "Containerfile"
UNITS = (UNIT, HEALTH, TIMER, RESTART)

#: Values of the example that differ from the defaults on purpose (each marked "deployment" in the file).
DEPLOYMENT_CHOICES = {"log_format", "output.sessions_dir", "record.dir", "quantify.kfactors"}
#: Commented examples not validated: the validator reads the file the example names.
READS_A_FILE = {"quantify.kfactor_table"}
#: Where the units and the image read the configuration.
INSTALLED_CONFIG = "/etc/edx-live/edx-live.toml"
#: A setting shown commented out: "# key = value" with one space (prose comments indent more).
COMMENTED_KEY = re.compile(r"^# ([a-z_]+) = (.*)$")
HEADER = re.compile(r"^\[([a-z_.]+)\]")


@pytest.fixture
def no_env(monkeypatch):
    """No EDX_LIVE_* variable of the machine running the tests leaks into the settings."""
    for name in list(os.environ):
        if name.startswith("EDX_LIVE_"):
            monkeypatch.delenv(name)


def _commented_settings(text: str) -> dict[str, str]:
    """``{"section.key": value text}`` of the settings shown commented out (top level: ``"key"``)."""
    found, section = {}, ""
    for line in text.splitlines():
        header = HEADER.match(line)
        if header:
            section = header.group(1)
        match = COMMENTED_KEY.match(line)
        if match:
            found[f"{section}.{match.group(1)}" if section else match.group(1)] = match.group(2)
    return found


def _sections() -> dict[str, type]:
    """The sections of :class:`edx_live.config.Settings` by name, with their models."""
    from pydantic import BaseModel

    from edx_live.config import Settings

    return {key: field.default_factory for key, field in Settings.model_fields.items()
            if isinstance(field.default_factory, type) and issubclass(field.default_factory, BaseModel)}


def _given_settings(tree: dict) -> set[str]:
    """Dotted names of the settings the TOML gives values (a table inside a section counts as its key)."""
    sections = _sections()
    return {f"{key}.{sub}" if key in sections else key
            for key, value in tree.items() for sub in (value if key in sections else [None])}


def _settings_names() -> set[str]:
    """Every setting of :class:`edx_live.config.Settings`, as dotted names."""
    from edx_live.config import Settings

    sections = _sections()
    return {f"{key}.{sub}" if key in sections else key
            for key in Settings.model_fields for sub in (sections[key].model_fields if key in sections else [None])}


def _value(settings, dotted: str):
    for part in dotted.split("."):
        settings = getattr(settings, part)
    return settings


# The example configuration ----------------------------------------------------------------------------

def test_example_configuration_loads(no_env):
    from edx_live.config import load_settings

    s = load_settings(EXAMPLE)
    assert s.output.sessions_dir == Path("/var/lib/edx-live/sessions")
    assert s.record.dir == Path("/var/lib/edx-live/recordings")


def test_every_setting_is_in_the_example_and_nothing_else():
    text = EXAMPLE.read_text()
    shown = _given_settings(tomllib.loads(text)) | set(_commented_settings(text))
    expected = _settings_names()
    assert not expected - shown, f"settings missing from {EXAMPLE.name}: {sorted(expected - shown)}"
    assert not shown - expected, f"{EXAMPLE.name} names settings that do not exist: {sorted(shown - expected)}"


def test_example_shows_the_defaults_except_marked_deployment_choices(no_env):
    from edx_live.config import Settings, load_settings

    text = EXAMPLE.read_text()
    example, defaults = load_settings(EXAMPLE), Settings()
    for name in _given_settings(tomllib.loads(text)):
        if name in DEPLOYMENT_CHOICES:
            assert _value(example, name) != _value(defaults, name), f"{name} is the default: not a choice"
        else:
            assert _value(example, name) == _value(defaults, name), f"{name} in {EXAMPLE.name} is not the default"
    for name in DEPLOYMENT_CHOICES:
        key = name.rpartition(".")[2]
        lines = [line for line in text.splitlines() if re.match(rf"^(\[{re.escape(name)}\]|{key}\s*=)", line)]
        assert lines and all("deployment" in line for line in lines), f"{name}: say it is a deployment choice"
    for name in _commented_settings(text):
        assert _value(defaults, name) is None, f"{name} has a default TOML can spell: show it uncommented"


def test_commented_examples_are_valid_values(no_env):
    from edx_live.config import Settings

    tree = {}
    for name, value in _commented_settings(EXAMPLE.read_text()).items():
        if name in READS_A_FILE:
            continue
        section, _, key = name.rpartition(".")
        parsed = tomllib.loads(f"v = {value}")["v"]
        (tree.setdefault(section, {}) if section else tree)[key] = parsed
    Settings.model_validate(tree)  # raises, naming the key, if an example is not a valid value


# Loopback by default ----------------------------------------------------------------------------------

ALL_INTERFACES = re.compile(r"0\.0\.0\.0|tcp://\*|\[::\]|tcp://::|--address\s+::")


def test_nothing_in_deploy_binds_all_interfaces(no_env):
    from edx_live.config import load_settings

    for path in sorted(DEPLOY.iterdir()):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not ALL_INTERFACES.search(line), f"{path.name}:{number} binds every interface: {line.strip()}"
    s = load_settings(EXAMPLE)
    for address in (s.input.address, s.output.address, s.control.address):
        assert address.startswith("tcp://127.0.0.1:"), address


def test_an_interface_is_bound_by_name():
    """What the example's comment promises: tcp://NAME:PORT binds that interface's address."""
    zmq = pytest.importorskip("zmq")
    if not Path("/sys/class/net/lo").exists():
        pytest.skip("no interface named lo on this machine")
    sock = zmq.Context.instance().socket(zmq.PULL)
    try:
        sock.bind("tcp://lo:*")
        assert sock.getsockopt_string(zmq.LAST_ENDPOINT).startswith("tcp://127.0.0.1:")
    finally:
        sock.close(linger=0)


# systemd ----------------------------------------------------------------------------------------------

def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as ``{section: {key: [values in order]}}`` (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _words(values: list[str]) -> list[str]:
    return [word for value in values for word in shlex.split(value)]


def test_service_unit_has_what_the_facility_relies_on(no_env):
    from edx_live.config import load_settings

    unit = _unit(UNIT)
    s = unit["Service"]
    assert s["Restart"] == ["on-failure"]
    assert s.get("User") or s.get("DynamicUser") == ["yes"]
    for key, value in {"ProtectSystem": "strict", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
                       "UMask": "0077"}.items():
        assert s.get(key) == [value], key
    for key in ("MemoryMax", "LimitNOFILE", "TasksMax"):
        assert s.get(key), key
    assert s.get("CPUQuota") or s.get("CPUWeight")
    state = _words(s["StateDirectory"])
    assert "edx-live" in state
    config = _words(s["ExecStart"])
    assert config[config.index("--config") + 1] == INSTALLED_CONFIG
    # every folder the example configuration writes is writable in the sandbox
    writable = {w.lstrip("-") for w in _words(s.get("ReadWritePaths", []))}
    example = load_settings(EXAMPLE)
    for folder in (example.output.sessions_dir, example.record.dir):
        assert str(folder) in writable, f"{folder} needs ReadWritePaths="
        assert str(folder).removeprefix("/var/lib/") in state, f"{folder} should be a StateDirectory="
    # ready when the control socket answers; the health check runs with the service
    assert any("ctl status" in line for line in s["ExecStartPost"])
    assert "edx-live-health.timer" in _words(unit["Unit"]["Wants"])


def test_health_check_restarts_the_service_when_ctl_status_fails():
    health, timer, restart = _unit(HEALTH), _unit(TIMER), _unit(RESTART)
    assert health["Service"]["Type"] == ["oneshot"]
    assert any("ctl status" in line for line in health["Service"]["ExecStart"])
    assert health["Unit"]["Requisite"] == ["edx-live.service"]
    assert health["Unit"]["OnFailure"] == [RESTART.name]
    assert timer["Unit"]["PartOf"] == ["edx-live.service"] and timer["Timer"]["OnUnitActiveSec"]
    assert _words(restart["Service"]["ExecStart"])[-2:] == ["try-restart", "edx-live.service"]


def test_ctl_arguments_reach_the_configured_control_socket(no_env):
    from edx_live.config import load_settings

    env = dict(line.split("=", 1) for line in (DEPLOY / "edx-live-ctl.env").read_text().splitlines()
               if line and not line.startswith("#"))
    args = shlex.split(env["CTL_ARGS"])
    assert args[args.index("--connect") + 1] == load_settings(EXAMPLE).control.address


def test_units_pass_systemd_analyze_verify(tmp_path):
    """systemd's own check: unknown keys, bad values, missing units; edx-live is this environment's."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    edx_live = Path(sys.executable).with_name("edx-live")
    if not edx_live.is_file():
        pytest.skip(f"no edx-live command beside {sys.executable}")
    for path in UNITS:  # the units name the installed /opt/edx-live; verify needs an executable there
        (tmp_path / path.name).write_text(path.read_text().replace("/opt/edx-live/bin/edx-live", str(edx_live)))
    done = subprocess.run([analyze, "verify", *(str(tmp_path / p.name) for p in UNITS)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    ours = [line for line in (done.stdout + done.stderr).splitlines()
            if any(p.name in line for p in UNITS) or str(tmp_path) in line]
    assert done.returncode == 0 and not ours, done.stdout + done.stderr


def test_tmpfiles_cleans_by_modification_age(tmp_path):
    tmpfiles = shutil.which("systemd-tmpfiles")
    if tmpfiles is None:
        pytest.skip("systemd-tmpfiles is not installed (Debian package systemd)")
    state = tmp_path / "var/lib/edx-live"
    old_recording, new_recording = state / "recordings/old.edxrec", state / "recordings/new.edxrec"
    old_session, new_session = state / "sessions/old", state / "sessions/new"
    for path in (old_recording, new_recording, old_session / "report.png", new_session / "report.png"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    day = 86400
    for path, days in ((old_recording, 31), (old_session / "report.png", 91), (old_session, 91),
                       (new_session / "report.png", 60)):
        os.utime(path, (time.time() - days * day,) * 2)
    done = subprocess.run([tmpfiles, "--clean", f"--root={tmp_path}", str(DEPLOY / "edx-live.tmpfiles.conf")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not old_recording.exists() and not old_session.exists()
    assert new_recording.exists() and (new_session / "report.png").exists()


def test_sysusers_creates_the_service_user(tmp_path):
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is None:
        pytest.skip("systemd-sysusers is not installed (Debian package systemd)")
    (tmp_path / "etc").mkdir()
    done = subprocess.run([sysusers, f"--root={tmp_path}", str(DEPLOY / "edx-live.sysusers.conf")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    entry = next(line for line in (tmp_path / "etc/passwd").read_text().splitlines()
                 if line.startswith(_unit(UNIT)["Service"]["User"][0] + ":"))
    assert entry.split(":")[5] == "/var/lib/edx-live" and entry.split(":")[6].endswith("nologin")


def test_nftables_rules_parse():
    nft = shutil.which("nft")
    if nft is None:
        pytest.skip("nft is not installed (Debian package nftables)")
    done = subprocess.run([nft, "-c", "-f", str(DEPLOY / "edx-live.nft")], capture_output=True, text=True,
                          timeout=60)
    if done.returncode and "Operation not permitted" in done.stderr:
        pytest.skip(f"nft -c needs CAP_NET_ADMIN: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr


# The container image ----------------------------------------------------------------------------------

def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_containerfile_runs_unprivileged_and_exposes_nothing():
    steps = _instructions()
    kinds = [kind for kind, _ in steps]
    assert "EXPOSE" not in kinds  # `-P` would publish every exposed port on all the host's interfaces
    user = [arg for kind, arg in steps if kind == "USER"]
    assert user and user[-1] not in ("root", "0") and kinds.index("USER") > kinds.index("FROM", 1)
    assert any(kind == "COPY" and arg.split() == ["deploy/edx-live.toml", INSTALLED_CONFIG] for kind, arg in steps)
    assert any(kind == "HEALTHCHECK" and '"ctl", "status"' in arg for kind, arg in steps)
    assert [arg for kind, arg in steps if kind == "CMD"][-1].count(INSTALLED_CONFIG) == 1


def test_the_build_context_holds_every_file_the_containerfile_copies():
    allowed = {line[1:].strip() for line in (DEPLOY / "Containerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")}
    for kind, arg in _instructions():
        if kind == "COPY" and not arg.startswith("--from"):
            for source in arg.split()[:-1]:
                assert source in allowed, f"{source} is copied but left out of the build context"
                assert (REPO / source).exists(), source


def _try(command: list[str], timeout: float = 120) -> subprocess.CompletedProcess | str:
    """The finished command, or why it could not run (a string)."""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)


def _ok(done) -> bool:
    return not isinstance(done, str) and done.returncode == 0


def _failure(done) -> str:
    return done if isinstance(done, str) else (done.stderr or done.stdout).strip()[-400:]


def _limits(rlimit: int, name: str, cap: int) -> list[str]:
    """``--ulimit NAME=SOFT:HARD`` no higher than this process's own limits, nor ``cap``."""
    soft, hard = resource.getrlimit(rlimit)
    hard = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    soft = hard if soft == resource.RLIM_INFINITY else min(soft, hard)
    return ["--ulimit", f"{name}={soft}:{hard}"]


def _container_engine():
    """``(command, global options, run options, base image)`` of a builder that runs a container here.

    Tries podman, then docker. The base image is EDX_LIVE_CONTAINER_BASE or the Containerfile's, pulled
    if need be, else one deploy/debian-base.sh makes from a Debian mirror. Skips, with every reason, when
    nothing works.
    """
    default_base = re.search(r"^ARG BASE=(\S+)", CONTAINERFILE.read_text(), re.M).group(1)
    reasons = []
    for name in ("podman", "docker"):
        exe = shutil.which(name)
        if exe is None:
            reasons.append(f"{name}: not installed")
            continue
        info = _try([exe, "info"])
        if not _ok(info):
            reasons.append(f"{name} info: {_failure(info)}")
            continue
        base = os.environ.get("EDX_LIVE_CONTAINER_BASE", default_base)
        if not _ok(_try([exe, "image", "inspect", base])):
            pulled = _try([exe, "pull", base], timeout=600)
            if not _ok(pulled):
                reasons.append(f"{name} pull {base}: {_failure(pulled)}")
                base = "localhost/edx-live-base:bookworm"
                if not _ok(_try([exe, "image", "inspect", base])):
                    if shutil.which("mmdebstrap") is None:
                        reasons.append("no base image, and no mmdebstrap to make one (deploy/debian-base.sh)")
                        continue
                    made = _try([str(DEPLOY / "debian-base.sh"), base], timeout=1200)
                    if not _ok(made):
                        reasons.append(f"deploy/debian-base.sh: {_failure(made)}")
                        continue
        # Some hosts (a sandbox, a CI runner) refuse the runtime's default limits or cgroup set-up:
        # the first of a few settings that runs a container wins.
        limits = [_limits(resource.RLIMIT_NOFILE, "nofile", 2**20) + _limits(resource.RLIMIT_NPROC, "nproc", cap)
                  for cap in (2**20, 16384, 4096)]
        runtimes = [[]] + ([["--runtime", "runc"]] if name == "podman" and shutil.which("runc") else [])
        for runtime in runtimes:
            for run_options in [[]] + limits:
                ran = _try([exe, *runtime, "run", "--rm", *run_options, base, "true"])
                if _ok(ran):
                    return exe, runtime, run_options, base
                reasons.append(f"{name} {' '.join(runtime + run_options)} run: {_failure(ran)}")
    pytest.skip("no container builder works here: " + " | ".join(reasons))


@pytest.mark.slow
def test_container_image_builds_and_serves():
    exe, runtime, run_options, base = _container_engine()
    podman = Path(exe).name == "podman"
    tag = "localhost/edx-live:deploy-test"
    build = [exe, *runtime, "build", "-f", str(CONTAINERFILE), "--build-arg", f"BASE={base}", "-t", tag,
             *run_options]
    if podman:
        build += ["--ignorefile", str(DEPLOY / "Containerfile.dockerignore"), "--format", "docker"]
    cert = os.environ.get("PIP_CERT")  # pip's trust on this machine (a TLS-inspecting proxy), for the build only
    if cert and Path(cert).is_file():
        build += ["--secret", f"id=pip_cert,src={cert}"]
    if os.environ.get("PIP_INDEX_URL"):
        build += ["--build-arg", f"PIP_INDEX_URL={os.environ['PIP_INDEX_URL']}"]
    built = subprocess.run([*build, str(REPO)], capture_output=True, text=True, timeout=3600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    try:
        run = [exe, *runtime, "run", "--rm", *run_options, "--network", "none"]
        if podman:
            run.append("--no-healthcheck")  # its timers need a systemd this test does not assume
        uid = subprocess.run([*run, "--entrypoint", "id", tag, "-u"], capture_output=True, text=True, timeout=120)
        assert uid.returncode == 0 and uid.stdout.strip() not in ("", "0"), uid.stdout + uid.stderr
        # the default command's configuration: it starts, binds loopback, answers edx-live ctl status
        script = (f"edx-live serve --config {INSTALLED_CONFIG} >/tmp/serve.log 2>&1 & "
                  "edx-live ctl status --timeout 300; rc=$?; kill -TERM $!; wait $!; "
                  "[ $rc -eq 0 ] || tail -20 /tmp/serve.log; exit $rc")
        served = subprocess.run([*run, "--entrypoint", "sh", tag, "-c", script], capture_output=True, text=True,
                                timeout=600)
        assert served.returncode == 0 and '"kind": "status"' in served.stdout, served.stdout + served.stderr
        config = subprocess.run([exe, "image", "inspect", "--format", "{{json .Config.ExposedPorts}}", tag],
                                capture_output=True, text=True, timeout=60)
        assert config.stdout.strip() in ("null", "{}", "map[]", ""), config.stdout
    finally:
        subprocess.run([exe, "rmi", "-f", tag], capture_output=True, timeout=300)

#!/usr/bin/env python3
"""Set up and run edx_live with nothing but python3.

    python3 make.py demo    # create .venv, install, run the live demo on the bundled dataset
    python3 make.py test    # create .venv, install, run the test suite
    python3 make.py bench   # create .venv, install, run the benchmarks (or: bench ingest latency)

The virtual environment is (re)installed when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".edx-live-installed"


def _python() -> str:
    return str(BIN / "python")


def ensure_environment() -> None:
    """Create .venv and install the package with its test extras, unless already current."""
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        print("make.py: creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("make.py: installing edx-live and its dependencies into .venv (a few minutes the first time)",
          flush=True)
    subprocess.run([_python(), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([_python(), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(wanted)


COMMANDS = {
    "demo": lambda extra: [str(BIN / "edx-live"), "demo", *extra],
    "test": lambda extra: [_python(), "-m", "pytest", "-q", *extra],
    "bench": lambda extra: [_python(), str(ROOT / "bench" / "run.py"), *extra],
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    ensure_environment()
    return subprocess.run(COMMANDS[argv[0]](argv[1:]), cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

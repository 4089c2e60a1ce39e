"""``edx-live-replay``'s progress bar: drawn in a terminal, absent from piped or captured stderr.

The command runs as a process against a PULL socket on a random loopback port,
once with stderr piped and once with stderr on a pseudo-terminal.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading

import pytest
import zmq
from edx_protocol import Stop, decode

from edx_adapters.cli import main

FILE = "core_shell.hspy"  # dense: split into --frames 5 sweeps of 64 row messages
#: What tqdm draws and the report lines never contain: carriage returns, the bar's edge, its count and rate.
BAR_MARKS = ("\r", "%|", "/5 [", "sweep/s", "s/sweep")
BAR = re.compile(r"sent: +\d+%\|.*\| +[0-5]/5 \[")


@pytest.fixture
def receiver():
    """A PULL socket on a random loopback port and the address a producer connects to."""
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    yield pull, f"tcp://127.0.0.1:{port}"
    context.destroy(linger=0)


def receive_until_stop(pull: zmq.Socket, timeout_ms: int = 30_000) -> list:
    headers = []
    while not headers or not isinstance(headers[-1], Stop):
        assert pull.poll(timeout_ms, zmq.POLLIN), f"no message within {timeout_ms} ms after {len(headers)}"
        headers.append(decode(pull.recv_multipart(copy=False)).header)
    return headers


def replay_args(data_dir, address: str) -> list[str]:
    return [str(data_dir / FILE), "--frames", "5", "--address", address]


def replay_command(data_dir, address: str) -> list[str]:
    return [sys.executable, "-m", "edx_adapters.cli", *replay_args(data_dir, address)]


def assert_replayed(headers: list, err: str) -> None:
    assert headers[-1].reason == "complete" and headers[-1].frames == 5
    assert "sweep 5/5:" in err and "complete:" in err, err


def test_piped_stderr_gets_the_report_lines_without_a_bar(receiver, data_dir):
    pull, address = receiver
    process = subprocess.Popen(replay_command(data_dir, address), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        headers = receive_until_stop(pull)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert_replayed(headers, err)
    assert not [mark for mark in BAR_MARKS if mark in err], err


def test_a_terminal_gets_a_bar_over_the_sweeps(receiver, data_dir):
    pull, address = receiver
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    chunks: list[bytes] = []

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the command has exited and closed its end
                return
            if not chunk:
                return
            chunks.append(chunk)

    try:
        process = subprocess.Popen(replay_command(data_dir, address), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        slave = None
        reader = threading.Thread(target=read_terminal, daemon=True)
        reader.start()  # read as it comes, so that a full terminal buffer cannot block the command
        try:
            headers = receive_until_stop(pull)
            process.wait(timeout=60)
        finally:
            process.kill()
        reader.join(10)
    finally:
        os.close(master)
        if slave is not None:
            os.close(slave)
    err = b"".join(chunks).decode(errors="replace")
    assert process.returncode == 0, err
    assert_replayed(headers, err)
    assert BAR.search(err), err
    assert "5/5 [" in err, "the bar counts every sweep"


def test_no_bar_under_pytest_capture(receiver, data_dir, capfd):
    pull, address = receiver
    assert main(replay_args(data_dir, address)) == 0
    headers = receive_until_stop(pull)
    err = capfd.readouterr().err
    assert_replayed(headers, err)
    assert not [mark for mark in BAR_MARKS if mark in err], err

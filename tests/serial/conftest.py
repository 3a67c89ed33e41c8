"""Real kernel ptys for the serial tests, and a server fixture that full-session tests reuse:

    def test_sign_on_over_serial(serial_server):
        path = serial_server(host_handler)            # the host serves a fresh pty
        with SerialChannel(path) as channel: ...      # the terminal opens its other side
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from protocol.link import LinkOptions, encode_frame
from protocol.transport.serial import SerialLinkError, start_serial_server

WAIT = 5.0
"""Upper bound on any wait in these tests: a hang fails in seconds, not at the suite timeout."""

FAST = LinkOptions(ack_timeout=0.3, inter_byte_timeout=0.1)
"""Short timers so that retry and timeout tests take a second, not ten."""


@dataclass
class RawPeer:
    """The far end of a pty driven byte by byte: a device that misbehaves on cue."""

    fd: int
    path: str
    closed: bool = False

    def close(self) -> None:
        """Hangs up: the other side sees its port vanish, as when a cable is pulled."""
        if not self.closed:
            self.closed = True
            os.close(self.fd)

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def read(self, size: int, timeout: float = WAIT) -> bytes:
        """Exactly `size` bytes, or fewer when the line stays quiet for `timeout`."""
        data = b""
        deadline = time.monotonic() + timeout
        while len(data) < size:
            ready, _, _ = select.select([self.fd], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                break
            data += os.read(self.fd, size - len(data))
        return data

    def expect(self, data: bytes, timeout: float = WAIT) -> None:
        assert self.read(len(data), timeout).hex(" ") == data.hex(" ")

    def expect_frame(self, payload: bytes, options: LinkOptions = FAST) -> None:
        self.expect(encode_frame(payload, options))


@pytest.fixture
def raw_pty() -> Iterator[RawPeer]:
    """A fresh pty: the code under test opens `path`, the test speaks on the master side."""
    master, slave = os.openpty()
    path = os.ttyname(slave)
    os.close(slave)  # the code under test opens its own; the master alone keeps the pty alive
    peer = RawPeer(master, path)
    yield peer
    peer.close()


@pytest.fixture
def socat_pair(tmp_path: Path) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """Two ptys joined by socat (as scripts/vserial makes), and socat itself, to kill."""
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed (scripts/_setup.sh installs it)")
    a, b = str(tmp_path / "ttyA"), str(tmp_path / "ttyB")
    proc = subprocess.Popen(["socat", "-d", "-d", f"pty,raw,echo=0,link={a}",
                             f"pty,raw,echo=0,link={b}"], stderr=subprocess.PIPE)
    assert proc.stderr is not None
    deadline = time.monotonic() + WAIT
    log = b""
    while b"starting data transfer loop" not in log:
        ready, _, _ = select.select([proc.stderr], [], [], max(deadline - time.monotonic(), 0))
        assert ready, f"socat did not start: {log!r}"
        log += os.read(proc.stderr.fileno(), 4096)
    yield a, b, proc
    proc.terminate()
    proc.wait(WAIT)
    proc.stderr.close()


ServerFactory = Callable[..., str]


@pytest.fixture
def serial_server() -> Iterator[ServerFactory]:
    """`serial_server(handle, spec="pty", **serve_options) -> path` starts `serve_serial` in a
    thread and waits until its port is open; every server is stopped and joined at teardown."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(handle: Callable[[bytes], bytes | None], spec: str = "pty", **options: object) -> str:
        ready: list[str] = []
        errors: list[SerialLinkError] = []
        opened = threading.Event()

        def on_ready(name: str) -> None:
            ready.append(name)
            opened.set()

        def on_error(error: SerialLinkError) -> None:
            errors.append(error)
            opened.set()

        threads.append(start_serial_server(spec, handle, stop=stop, on_ready=on_ready,
                                           on_error=on_error, **options))
        assert opened.wait(WAIT), "the serial server did not open its port"
        assert not errors, errors
        return ready[0]

    yield start
    stop.set()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()

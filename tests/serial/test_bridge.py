"""The bridge between a serial client on a real pty and a TCP host on 127.0.0.1."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from subprocess import Popen

import pytest

from protocol.framing import FrameReader, length_prefixed
from protocol.transport.bridge import run_bridge
from protocol.transport.serial import SerialChannel, SerialLinkError, SerialTimeout
from tests.serial.conftest import FAST, WAIT


class ReversingHost:
    """A tiny TCP host: answers each 2-byte-length frame with its payload reversed."""

    def __init__(self, hang_up_after_each: bool = False, then: bytes = b""):
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._hang_up = hang_up_after_each
        self._then = then  # bytes sent right behind each answer, in the same write
        self.connections = 0
        self._conn: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, name="reversing host")
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # the listener was closed: the test is over
                return
            self.connections += 1
            self._conn = conn
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        reader = FrameReader()
        while data := conn.recv(4096):
            for payload in reader.feed(data):
                conn.sendall(length_prefixed(payload[::-1]) + self._then)
                if self._hang_up:
                    return

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        if self._conn is not None:
            with contextlib.suppress(OSError):  # the bridge may have hung up first
                self._conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(WAIT)
        assert not self._thread.is_alive()


BridgeFactory = Callable[..., str]


@pytest.fixture
def bridge() -> Iterator[BridgeFactory]:
    """`bridge(tcp_port, serial_spec="pty") -> serial path`, the bridge running in a thread."""
    stop = threading.Event()
    threads: list[threading.Thread] = []
    results: list[SerialLinkError | None] = []

    def start(tcp_port: int, serial_spec: str = "pty") -> str:
        ready: list[str] = []
        opened = threading.Event()

        def on_ready(name: str) -> None:
            ready.append(name)
            opened.set()

        thread = threading.Thread(target=lambda: results.append(run_bridge(
            serial_spec, "127.0.0.1", tcp_port, link_options=FAST, stop=stop,
            on_ready=on_ready, connect_timeout=1.0)))
        threads.append(thread)
        thread.start()
        assert opened.wait(WAIT)
        return ready[0]

    yield start
    stop.set()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    assert results == [None] * len(threads)  # stopped, not failed


@pytest.fixture
def host() -> Iterator[ReversingHost]:
    server = ReversingHost()
    yield server
    server.close()


def test_bridge_carries_payloads_both_ways(bridge: BridgeFactory, host: ReversingHost) -> None:
    with SerialChannel(bridge(host.port), FAST) as channel:
        assert channel.exchange(b"\x60\x00\x01\x00\x00 purchase", WAIT) == \
            b"esahcrup \x00\x00\x01\x00\x60"
        assert channel.exchange(b"\x02\x03\x06\x15\x10" * 100, WAIT) == \
            b"\x10\x15\x06\x03\x02" * 100
    assert host.connections == 1


def test_bridge_over_a_socat_pair(socat_pair: tuple[str, str, Popen[bytes]],
                                  bridge: BridgeFactory, host: ReversingHost) -> None:
    a, b, _ = socat_pair
    bridge(host.port, a)
    with SerialChannel(b, FAST) as channel:
        assert channel.exchange(b"sign-on", WAIT) == b"no-ngis"


def test_bridge_dials_again_after_the_host_hangs_up(bridge: BridgeFactory) -> None:
    host = ReversingHost(hang_up_after_each=True)
    try:
        with SerialChannel(bridge(host.port), FAST) as channel:
            for n in range(3):
                assert channel.exchange(f"txn {n}".encode(), WAIT) == f"{n} nxt".encode()
    finally:
        host.close()
    assert host.connections == 3


def test_an_unreachable_host_costs_the_message_not_the_bridge(
        bridge: BridgeFactory, caplog: pytest.LogCaptureFixture) -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]  # nothing listens here once the with block ends
    with caplog.at_level(logging.ERROR), SerialChannel(bridge(port), FAST) as channel, \
            pytest.raises(SerialTimeout):  # the ACK came; no answer can
        channel.exchange(b"hello", 0.5)
    assert f"TCP host 127.0.0.1:{port} unreachable" in caplog.text
    # ...and the bridge fixture checks at teardown that the bridge was still running.


def test_an_answer_ahead_of_a_bad_length_still_reaches_the_terminal(
        bridge: BridgeFactory, caplog: pytest.LogCaptureFixture) -> None:
    host = ReversingHost(hang_up_after_each=True, then=b"\x00\x00")
    try:
        with caplog.at_level(logging.ERROR), SerialChannel(bridge(host.port), FAST) as channel:
            assert channel.exchange(b"approved?", WAIT) == b"?devorppa"
    finally:
        host.close()
    assert "bad frame" in caplog.text and "zero-length" in caplog.text

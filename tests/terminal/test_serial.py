"""The same terminal over a serial line: pos-terminal --serial on a pseudo-terminal, relayed to
the real pos-host over TCP, so the serial path is end-to-end too."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import pytest

from protocol.transport.serial import start_serial_server
from protocol.transport.tcp import TcpChannel, parse_endpoint
from tests.terminal.conftest import PIN, Host, Rig, run_terminal


@pytest.fixture
def serial_port(host: Host) -> Iterator[str]:
    """A pty served by a relay that passes each payload to the host over TCP."""
    endpoint = parse_endpoint(host.url)

    def relay(payload: bytes) -> bytes:
        with TcpChannel(endpoint, 5, 5) as channel:
            return channel.exchange(payload)

    names: queue.Queue[str] = queue.Queue()
    stop = threading.Event()
    thread = start_serial_server("pty", relay, stop=stop, on_ready=names.put)
    try:
        yield names.get(timeout=10)
    finally:
        stop.set()
        thread.join(10)


def test_signon_and_purchase_over_serial(ready: Rig, serial_port: str) -> None:
    base = ("--data", str(ready.folder), "--serial", serial_port, "--timeout", "5")
    signon = run_terminal("signon", *base, "--json")
    assert signon.code == 0, signon.out + signon.err
    sale = run_terminal("purchase", "--amount", "3.00", "--pan", "6212345678901234",
                        "--expiry", "2812", "--pin", PIN, *base)
    assert sale.code == 0 and "APPROVED" in sale.out


def test_a_serial_port_that_does_not_exist(ready: Rig) -> None:
    run = run_terminal("echo", "--data", str(ready.folder), "--serial", "/dev/nonexistent-tty")
    assert run.code == 3 and "Traceback" not in run.err and "nonexistent" in run.err

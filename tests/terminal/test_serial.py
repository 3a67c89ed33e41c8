"""Whole sessions over serial, on real kernel ptys, against real pos-host processes.

- `pos-host serve --serial pty` and `pos-terminal --serial /dev/pts/N`: sign-on and a purchase;
- `pos-host bridge --serial pty --tcp HOST:PORT`: a terminal on serial reaching a TCP host;
- a line nobody answers: after the retry limit the user sees a link error, and the keys the
  terminal held are untouched.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import RunningHost, add_card, host_command, init_host, start_host
from tests.support import _env as host_env
from tests.terminal.conftest import EXPIRY, PAN, PIN, Host, Rig, new_rig, run_terminal

STX = 0x02


@pytest.fixture
def serial_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Host, str]]:
    data = init_host(tmp_path_factory.mktemp("serialhost") / "data")
    add_card(data, PAN, expiry=EXPIRY, pin=PIN, balance="100.00")
    running = start_host(data, "--serial", "pty")
    try:
        line = running.next_line()
        assert line.startswith("listening serial /dev/"), line
        yield Host(running, data, "iso87"), line.split()[2]
    finally:
        assert running.stop() == 0


def over_serial(rig: Rig, port: str, command: str, *args: str) -> tuple[int, str, str]:
    run = run_terminal(command, "--data", str(rig.folder), "--serial", port, "--baud", "9600",
                       "--bytesize", "8", "--parity", "N", "--stopbits", "1", "--timeout", "10",
                       *args)
    return run.code, run.out, run.err


def test_signon_and_a_pin_purchase_over_a_served_pty(serial_host: tuple[Host, str],
                                                     tmp_path: Path) -> None:
    host, port = serial_host
    rig = new_rig(host, tmp_path)
    assert rig.init().code == 0 and rig.load_tmk().code == 0
    code, out, err = over_serial(rig, port, "signon")
    assert code == 0, out + err
    code, out, err = over_serial(rig, port, "purchase", "--amount", "3.00", "--pan", PAN,
                                 "--expiry", EXPIRY, "--pin", PIN)
    assert code == 0 and "APPROVED" in out, out + err
    log = host.running.log_text()
    assert PAN not in log and "serial" in log


def test_the_bridge_carries_a_whole_session_to_a_tcp_host(host: Host, tmp_path: Path) -> None:
    bridge = subprocess.Popen(
        [*host_command(), "--data", str(host.data), "bridge", "--serial", "pty",
         "--tcp", host.running.endpoint, "--ack-timeout", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=host_env(),
    )
    relay = RunningHost(bridge, host.data, tmp_path / "bridge.log")
    try:
        line = relay.next_line()
        assert line.startswith("bridging serial /dev/"), line
        port = line.split()[2]
        rig = new_rig(host, tmp_path)
        assert rig.init().code == 0 and rig.load_tmk().code == 0
        for command, extra in (
            ("echo", ()),
            ("signon", ()),
            ("purchase", ("--amount", "1.00", "--pan", PAN, "--expiry", EXPIRY, "--pin", PIN)),
            ("signoff", ()),
        ):
            code, out, err = over_serial(rig, port, command, *extra)
            assert code == 0, f"{command}: {out}{err}"
        # After the sign-off the host has no working keys for this terminal: K1, over the bridge.
        code, out, _ = over_serial(rig, port, "purchase", "--amount", "1.00", "--pan", PAN,
                                   "--expiry", EXPIRY, "--pin", PIN)
        assert code != 0 and "K1" in out
    finally:
        assert relay.stop() == 0


def _line_bytes(master: int, seconds: float) -> bytes:
    """What the terminal wrote to the line, read for at most `seconds`, never answered."""
    seen = b""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([master], [], [], left)
        if ready:
            try:
                seen += os.read(master, 4096)
            except OSError:
                break
    return seen


def test_after_the_retry_limit_a_link_error_and_the_keys_untouched(ready: Rig) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    port = os.ttyname(slave)
    try:
        before = ready.keys()
        assert before["MAK"]["present"]
        started = time.monotonic()
        code, out, err = over_serial(ready, port, "signon", "--ack-timeout", "0.6",
                                     "--retries", "3")
        elapsed = time.monotonic() - started
        assert code == 3, out + err
        assert "no ACK after 4 transmissions" in err
        assert "Traceback" not in err
        assert elapsed < 8
        line = _line_bytes(master, 0.3)
        frame = line[: len(line) // 4]
        assert frame[0] == STX and line == frame * 4, "the same frame, sent four times"
        assert ready.keys() == before
        # The same keys still transact over TCP.
        assert ready.purchase("--pin", PIN).code == 0
    finally:
        os.close(master)
        os.close(slave)


def test_a_serial_port_that_does_not_exist(ready: Rig) -> None:
    run = run_terminal("echo", "--data", str(ready.folder), "--serial", "/dev/nonexistent-tty")
    assert run.code == 3 and "Traceback" not in run.err and "nonexistent" in run.err


def test_a_bad_port_setting_is_named(ready: Rig) -> None:
    code, _, err = over_serial(ready, "/dev/null", "echo", "--parity", "X")
    assert code == 3 and "parity" in err and "Traceback" not in err

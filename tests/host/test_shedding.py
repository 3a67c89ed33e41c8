"""A host that sheds load instead of falling over (docs/host.md, "Shedding load"): real
`pos-host serve` processes on 127.0.0.1, some under `prlimit --nofile`, and real sockets that
idle, dribble, half-send frames or pipeline requests without reading a single answer."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.host.client import ClientTerminal, Link, tmk_from_ceremony
from tests.support import RunningHost, init_host, provision_terminal, start_host

MID = "M00000000000001"
TID = "T0000001"
WAIT = 15.0  # the longest any socket here waits for the host


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict]]:
    data = init_host(tmp_path_factory.mktemp("shed") / "host")
    yield data, provision_terminal(data, TID, MID)


@contextmanager
def host(data: Path, *args: str, nofile: int | None = None,
         stderr: Path | None = None) -> Iterator[RunningHost]:
    wrapper = ("prlimit", f"--nofile={nofile}") if nofile else ()
    running = start_host(data, *args, wrapper=wrapper, stderr_path=stderr)
    try:
        yield running
    finally:
        assert running.stop() == 0


def echo_ok(endpoint: str, ceremony: dict) -> bool:
    """A terminal's echo test (0820) on a new connection is answered 00."""
    terminal = ClientTerminal(TID, MID, tmk_from_ceremony(ceremony))
    with Link(endpoint, terminal, timeout=WAIT) as link:
        reply, _ = link.exchange(terminal.network_request())
    return reply[39] == "00"


def idle(port: int, stack: ExitStack) -> socket.socket:
    sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=WAIT))
    return sock


def closed_by_host(sock: socket.socket) -> bool:
    """True once the host closes (EOF or reset) within WAIT; False if it is still open."""
    sock.settimeout(WAIT)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.setblocking(True)


def shed(host: RunningHost, reason: str) -> int:
    return sum(line.get("count", 0) for line in host.log_lines()
               if line.get("event") == "connection shed" and line.get("reason") == reason)


def test_out_of_descriptors_is_one_counted_log_line_and_the_host_recovers(
        data: tuple[Path, dict], tmp_path: Path) -> None:
    """Issue 10, 3: with the cap above the descriptor limit, accept() fails (EMFILE): no
    traceback, a log line with a count, the host keeps serving and accepts again once
    descriptors are free."""
    path, ceremony = data
    stderr = tmp_path / "stderr"
    with host(path, "--max-connections", "100000", nofile=96, stderr=stderr) as h, \
            ExitStack() as stack:
        sockets = [idle(h.port, stack) for _ in range(200)]  # queued past the limit
        time.sleep(1.5)  # the host retries accept() many times meanwhile
        for sock in sockets[:120]:
            sock.close()
        assert echo_ok(h.endpoint, ceremony)  # queued behind the rest, accepted once freed
    failed = [line for line in h.log_lines() if line.get("event") == "accept failed"]
    assert stderr.stat().st_size < 1000, stderr.read_text()[:2000]
    assert failed and all(line["reason"] == "EMFILE" for line in failed)
    assert len(failed) <= 3 and sum(line["count"] for line in failed) > len(failed)


def test_at_the_descriptor_cap_the_connection_idle_longest_makes_room(
        data: tuple[Path, dict], tmp_path: Path) -> None:
    """Issue 10, 3 and 4: more idle connections than descriptors; the default cap sits below
    the limit, so each new connection closes the one idle longest and a terminal is served."""
    path, ceremony = data
    stderr = tmp_path / "stderr"
    with host(path, nofile=160, stderr=stderr) as h, ExitStack() as stack:
        sockets = [idle(h.port, stack) for _ in range(300)]
        assert echo_ok(h.endpoint, ceremony)
        assert closed_by_host(sockets[0])
        assert still_open(sockets[-1])
    assert stderr.stat().st_size == 0, stderr.read_text()[:2000]
    assert shed(h, "connection cap") >= 300 - 160


def test_the_cap_spares_connections_that_spoke_recently(data: tuple[Path, dict]) -> None:
    path, ceremony = data
    terminal = ClientTerminal(TID, MID, tmk_from_ceremony(ceremony))
    with host(path, "--max-connections", "3") as h, ExitStack() as stack:
        first = idle(h.port, stack)
        talker = stack.enter_context(Link(h.endpoint, terminal, timeout=WAIT))
        third = idle(h.port, stack)
        assert talker.exchange(terminal.network_request())[0][39] == "00"  # now first is oldest
        fourth = idle(h.port, stack)
        assert closed_by_host(first)
        assert talker.exchange(terminal.network_request())[0][39] == "00"
        assert still_open(third) and still_open(fourth)


def test_idle_slowloris_and_half_sent_frames_are_closed(data: tuple[Path, dict]) -> None:
    """Issue 10, 4: an idle socket, one dribbling a byte at a time and one that sent half of
    an 8 KB frame are closed by the timeouts; a terminal that talks meanwhile is not."""
    path, ceremony = data
    terminal = ClientTerminal(TID, MID, tmk_from_ceremony(ceremony))
    with host(path, "--idle-timeout", "2", "--frame-timeout", "1") as h, ExitStack() as stack:
        silent, dribbler, half = (idle(h.port, stack) for _ in range(3))
        half.sendall((8000).to_bytes(2, "big") + bytes(4000))
        talker = stack.enter_context(Link(h.endpoint, terminal, timeout=WAIT))
        frame = (60).to_bytes(2, "big") + bytes(60)
        dribbled_closed = False
        for byte in frame[:30]:  # at most 30 bytes, 0.1 s apart: never idle, never a frame
            try:
                dribbler.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                dribbled_closed = True
                break
            assert talker.exchange(terminal.network_request())[0][39] == "00"
            time.sleep(0.1)
        assert dribbled_closed or closed_by_host(dribbler)
        assert closed_by_host(half)
        assert closed_by_host(silent)
        assert talker.exchange(terminal.network_request())[0][39] == "00"
    log = h.log_lines()
    reasons = {line["reason"] for line in log if line.get("event") == "connection shed"}
    assert reasons == {"idle timeout", "frame timeout"}


def rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


def test_a_peer_that_never_reads_its_answers_stops_being_read(data: tuple[Path, dict]) -> None:
    """Issue 10, 5: one socket pipelines echo requests and never reads; the host stops reading
    it (the socket stalls), its memory stays put, and another terminal is still answered."""
    path, ceremony = data
    terminal = ClientTerminal(TID, MID, tmk_from_ceremony(ceremony))
    request = terminal.payload(terminal.network_request())
    chunk = (len(request).to_bytes(2, "big") + request) * 20_000  # about 1.4 MB
    with host(path) as h:
        assert echo_ok(h.endpoint, ceremony)
        before = rss_kb(h.process.pid)
        flood = socket.socket()
        flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        flood.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        with flood:
            flood.connect(("127.0.0.1", h.port))
            flood.settimeout(3.0)
            sent, stalled = 0, False
            while sent < 40 * len(chunk) and not stalled:  # at most 56 MB
                try:
                    flood.sendall(chunk)
                    sent += len(chunk)
                except TimeoutError:
                    stalled = True
            grown_kb = rss_kb(h.process.pid) - before
            assert echo_ok(h.endpoint, ceremony)
    assert stalled, f"the host read all {sent} bytes"
    assert grown_kb < 8 * 1024

"""Durable approvals (issue 10, 11): an answer that moves money leaves the host only after its
group commit is fsynced. The real host runs under strace; the order of its system calls is the
evidence: the purchase read, then fdatasync/fsync of the WAL, then the answer sent."""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.host.client import Card, ClientTerminal, Link, tmk_from_ceremony
from tests.support import add_card, init_host, provision_terminal, start_host

MID = "M00000000000001"
TID = "T0000001"
CARD = Card("6212345678901234", "2812", "1234")
SYNC = re.compile(r"\b(?:fdatasync|fsync)\(\d+<[^>]*host\.db-wal>\)")
SOCKET = re.compile(r"\b(recvfrom|sendto)\(\d+<TCP:")


@pytest.fixture
def data(tmp_path: Path) -> Iterator[tuple[Path, dict]]:
    data = init_host(tmp_path / "host")
    ceremony = provision_terminal(data, TID, MID)
    add_card(data, CARD.pan, CARD.expiry, CARD.pin, "100.00")
    yield data, ceremony


def stop_traced(strace_pid: int) -> None:
    """SIGTERM to the host itself: strace does not pass its own on."""
    children = Path(f"/proc/{strace_pid}/task/{strace_pid}/children")
    for pid in children.read_text().split() if children.exists() else ():
        os.kill(int(pid), signal.SIGTERM)


def traced_purchase(data: Path, ceremony: dict, trace: Path, *serve: str) -> list[str]:
    """Sign on, mark the trace, make one approved purchase; the host's socket and WAL sync
    calls from the purchase's request onwards."""
    if shutil.which("strace") is None:
        pytest.fail("strace is not installed (scripts/_setup.sh installs it)")
    wrapper = ("strace", "-f", "-qq", "-yy", "-o", str(trace),
               "-e", "trace=recvfrom,sendto,fdatasync,fsync")
    host = start_host(data, *serve, wrapper=wrapper)
    try:
        terminal = ClientTerminal(TID, MID, tmk_from_ceremony(ceremony))
        with Link(host.endpoint, terminal) as link:
            assert link.sign_on()[39] == "00"
            mark = len(trace.read_text().splitlines())
            reply, _ = link.exchange(terminal.purchase(CARD, 1000))
            assert reply[39] == "00"
    finally:
        stop_traced(host.process.pid)
        host.stop()
    lines = trace.read_text().splitlines()[mark:]
    calls = []
    for line in lines:
        if SYNC.search(line):
            calls.append("sync")
        elif (match := SOCKET.search(line)) and "EAGAIN" not in line:
            calls.append(match.group(1))
    return calls


def test_an_approval_is_sent_only_after_its_commit_is_fsynced(
        data: tuple[Path, dict], tmp_path: Path) -> None:
    calls = traced_purchase(*data, tmp_path / "trace")
    assert "recvfrom" in calls and "sendto" in calls, calls
    request, answer = calls.index("recvfrom"), calls.index("sendto")
    assert "sync" in calls[request:answer], calls


def test_sync_normal_sends_the_approval_without_an_fsync(
        data: tuple[Path, dict], tmp_path: Path) -> None:
    """The same trace of `--sync normal` (the old behaviour) has no fsync before the answer:
    the test above can tell the two apart."""
    calls = traced_purchase(*data, tmp_path / "trace", "--sync", "normal")
    request, answer = calls.index("recvfrom"), calls.index("sendto")
    assert "sync" not in calls[request:answer], calls

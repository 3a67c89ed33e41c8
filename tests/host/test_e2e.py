"""Real pos-host processes on 127.0.0.1, provisioned through the CLI and driven over TCP by a
client built from the protocol package (tests/host/client.py)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.codes import KeyErrorReason
from protocol.framing import FrameReader, length_prefixed
from protocol.message import Message
from protocol.transport.serial import SerialChannel
from tests.host.client import Card, ClientTerminal, Link, tmk_from_ceremony
from tests.support import (
    RunningHost,
    add_card,
    init_host,
    pos_host,
    provision_terminal,
    running_host,
    start_host,
)

MID = "M00000000000001"
CARD = Card("6212345678901234", "2812", "1234")
POOR = Card("6200000000000002", "2812", "1234")
TERMINALS = ["T0PAY001", "T0REVOKE", "T0EXPIRE", "T0ROTATE", "T0TAMPER", "T0TMKREV", "T0DUPLIC",
             "T0STEADY", "T0MALFOR", "T0SIGOFF"]


class Site:
    def __init__(self, data: Path, host: RunningHost, ceremonies: dict[str, dict]) -> None:
        self.data = data
        self.host = host
        self.ceremonies = ceremonies
        self.terminals: dict[str, ClientTerminal] = {}

    def terminal(self, tid: str) -> ClientTerminal:
        """One client per terminal for the whole module: its STANs never repeat."""
        if tid not in self.terminals:
            self.terminals[tid] = ClientTerminal(tid, MID, tmk_from_ceremony(self.ceremonies[tid]))
        return self.terminals[tid]

    def link(self, tid: str) -> Link:
        return Link(self.host.endpoint, self.terminal(tid))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    data = init_host(tmp_path_factory.mktemp("e2e") / "host")
    ceremonies = {tid: provision_terminal(data, tid, MID) for tid in TERMINALS}
    add_card(data, CARD.pan, CARD.expiry, CARD.pin, "100000.00")
    add_card(data, POOR.pan, POOR.expiry, POOR.pin, "1.00")
    host = start_host(data)
    try:
        yield Site(data, host, ceremonies)
    finally:
        assert host.stop() == 0


def signed_on(site: Site, tid: str, key_set: str = "003") -> Link:
    link = site.link(tid)
    reply = link.sign_on(key_set)
    assert reply[39] == "00", reply.fields
    return link


def key_error(reply: Message) -> str:
    assert reply[39] == "14" and 64 not in reply.fields
    parsed = KeyErrorReason.parse(reply.text(44))
    assert parsed is not None
    return parsed.field44()


@pytest.mark.parametrize("key_set", ["001", "003", "004"])
def test_sign_on_keys_verify_and_a_pin_purchase_is_approved_with_a_valid_mac(
    site: Site, key_set: str,
) -> None:
    with signed_on(site, "T0PAY001", key_set) as link:  # install() checks every KCV
        reply, raw = link.exchange(link.terminal.purchase(CARD, 1250))
        assert (reply.mti, reply[39]) == ("0210", "00")
        assert reply.text(38) and link.terminal.response_mac_ok(raw)


def test_each_sign_on_is_a_new_generation_and_keys_show_has_no_material(site: Site) -> None:
    before = pos_host(site.data, "keys", "show", "T0PAY001")
    signed_on(site, "T0PAY001").close()
    after = pos_host(site.data, "keys", "show", "T0PAY001")
    newest = max(k["generation"] for k in after["keys"] if k["usage"] == "MAK")
    assert newest == max((k["generation"] for k in before["keys"] if k["usage"] == "MAK"),
                         default=0) + 1
    states = {k["state"] for k in after["keys"] if k["usage"] != "TMK"}
    assert states <= {"active", "retired"}
    for row in after["keys"]:
        assert set(row) == {"usage", "generation", "key_set", "kcv", "state", "age_s",
                            "lifetime_s", "stale"}


def test_keys_revoke_gives_k1_and_a_sign_on_fixes_it(site: Site) -> None:
    with signed_on(site, "T0REVOKE") as link:
        pos_host(site.data, "keys", "revoke", "T0REVOKE")
        reply, _ = link.exchange(link.terminal.purchase(CARD, 100))
        assert key_error(reply).startswith("K1 WK")
        assert link.sign_on()[39] == "00"
        assert link.exchange(link.terminal.purchase(CARD, 100))[0][39] == "00"


def test_keys_expire_gives_k2_wk(site: Site) -> None:
    with signed_on(site, "T0EXPIRE") as link:
        pos_host(site.data, "keys", "expire", "T0EXPIRE")
        reply, _ = link.exchange(link.terminal.purchase(CARD, 100))
        assert key_error(reply) == "K2 WK expired"
        assert link.sign_on()[39] == "00"
        assert link.exchange(link.terminal.purchase(CARD, 100))[0][39] == "00"


def test_keys_rotate_gives_k2_missed_rotation(site: Site) -> None:
    with signed_on(site, "T0ROTATE") as link:
        pos_host(site.data, "keys", "rotate", "T0ROTATE")
        reply, _ = link.exchange(link.terminal.purchase(CARD, 100))
        assert key_error(reply) == "K2 MAK missed rotation"


def test_keys_tamper_gives_k3_mak(site: Site) -> None:
    with signed_on(site, "T0TAMPER") as link:
        pos_host(site.data, "keys", "tamper", "T0TAMPER")
        reply, _ = link.exchange(link.terminal.purchase(CARD, 100))
        assert key_error(reply) == "K3 MAK mismatch"


def test_a_revoked_tmk_survives_sign_on_until_a_new_key_ceremony(site: Site) -> None:
    with signed_on(site, "T0TMKREV") as link:
        pos_host(site.data, "keys", "revoke", "T0TMKREV", "--tmk")
        reply, _ = link.exchange(link.terminal.purchase(CARD, 100))
        assert key_error(reply) == "K1 TMK revoked"
        assert key_error(link.sign_on()) == "K1 TMK not active"
    ceremony = pos_host(site.data, "terminal", "rekey", "T0TMKREV")
    site.terminal("T0TMKREV").tmk = tmk_from_ceremony(ceremony)
    with signed_on(site, "T0TMKREV") as link:
        assert link.exchange(link.terminal.purchase(CARD, 100))[0][39] == "00"


def test_an_unknown_terminal_gets_03(site: Site) -> None:
    stranger = ClientTerminal("T0NOBODY", MID, tmk_from_ceremony(site.ceremonies["T0PAY001"]))
    with Link(site.host.endpoint, stranger) as link:
        assert link.sign_on()[39] == "03"


def test_a_wrong_pin_gets_55_and_no_funds_51(site: Site) -> None:
    with signed_on(site, "T0PAY001") as link:
        reply, raw = link.exchange(link.terminal.purchase(CARD, 100, pin="9999"))
        assert reply[39] == "55" and link.terminal.response_mac_ok(raw)
        reply, raw = link.exchange(link.terminal.purchase(POOR, 101))
        assert reply[39] == "51" and link.terminal.response_mac_ok(raw)


def test_duplicates_same_bytes_get_the_original_other_bytes_94(site: Site) -> None:
    with signed_on(site, "T0DUPLIC") as link:
        request = link.terminal.purchase(CARD, 300, stan="000500")
        first, first_raw = link.exchange(request)
        _, again_raw = link.exchange(request)
        assert first[39] == "00" and again_raw == first_raw
        other, other_raw = link.exchange(link.terminal.purchase(CARD, 999, stan="000500"))
        assert other[39] == "94" and link.terminal.response_mac_ok(other_raw)


def _steady_purchases(site: Site, stop: threading.Event, results: list[str]) -> None:
    """Purchases one after another until `stop` (at most 3,000 or 60 s): the other terminal."""
    deadline = time.monotonic() + 60
    with signed_on(site, "T0STEADY") as link:
        while not stop.is_set() and len(results) < 3000 and time.monotonic() < deadline:
            request = link.terminal.purchase(CARD, 1)
            sent = link.terminal.codec.decode(request)[11]
            reply, _ = link.exchange(request)
            results.append("ok" if reply[11] == sent and reply[39] == "00" else "wrong")


def _wait_for(results: list[str], count: int) -> None:
    deadline = time.monotonic() + 30
    while len(results) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(results) >= count, "the steady terminal made no progress"


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def test_malformed_frames_get_30_or_close_only_their_own_connection(site: Site) -> None:
    results: list[str] = []
    stop = threading.Event()
    steady = threading.Thread(target=_steady_purchases, args=(site, stop, results))
    steady.start()
    _wait_for(results, 5)  # the other terminal is transacting before the bad input starts...
    terminal = site.terminal("T0MALFOR")
    with signed_on(site, "T0MALFOR") as link:
        good = terminal.purchase(CARD, 100)
        reply, _ = link.exchange(good[:-5])  # the MTI decodes, the rest does not: 30
        assert (reply.mti, reply[39]) == ("0210", "30")
        assert link.exchange(terminal.codec.encode(Message("0600", {11: "000001"})))[0][39] \
            == "12"
    for garbage in (b"\x00\x04ABCD", b"\x00\x00", b"\xff\xff" + b"x" * 10):
        with socket.create_connection((site.host.host, site.host.port), timeout=5) as sock:
            sock.sendall(garbage)
            assert _closed(sock)
    with socket.create_connection((site.host.host, site.host.port), timeout=5) as sock:
        sock.sendall(length_prefixed(b"0210" + bytes(8)))  # a response MTI: ignored, kept open
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(100)
    during = len(results)
    _wait_for(results, during + 5)  # ... and goes on after it
    stop.set()
    steady.join(60)
    assert results == ["ok"] * len(results)


def test_frames_before_a_bad_length_in_the_same_bytes_are_answered_then_it_closes(
    site: Site,
) -> None:
    terminal = site.terminal("T0MALFOR")
    echoes = [terminal.network_request() for _ in range(2)]
    with socket.create_connection((site.host.host, site.host.port), timeout=5) as sock:
        sock.sendall(b"".join(length_prefixed(terminal.payload(e)) for e in echoes) + b"\x00\x00")
        reader = FrameReader()
        answers: list[bytes] = []
        while len(answers) < 2:
            chunk = sock.recv(4096)
            assert chunk, f"closed after {len(answers)} answer(s)"
            answers += reader.feed(chunk)
        stans = [terminal.codec.decode(terminal.unpayload(a)).text(11) for a in answers]
        assert stans == [terminal.codec.decode(e).text(11) for e in echoes]
        assert _closed(sock)


def test_sign_off_then_purchase_is_k1_and_echo_answers(site: Site) -> None:
    with signed_on(site, "T0SIGOFF") as link:
        assert link.exchange(link.terminal.network_request("301"))[0][39] == "00"
        reply, _ = link.exchange(link.terminal.network_request("002"))
        assert (reply.mti, reply[39]) == ("0830", "00")
        assert key_error(link.exchange(link.terminal.purchase(CARD, 1))[0]).startswith("K1 WK")


def test_the_log_has_one_masked_line_per_message(site: Site) -> None:
    lines = [line for line in site.host.log_lines() if "mti" in line]
    assert lines and all("rc" in line or "note" in line for line in lines)
    pans = {line["pan"] for line in lines if "pan" in line}
    assert pans and all("******" in pan for pan in pans)


@pytest.fixture
def fresh(tmp_path: Path) -> tuple[Path, dict]:
    data = init_host(tmp_path / "host")
    ceremony = provision_terminal(data, "T0000001", MID, components=3)
    add_card(data, CARD.pan, CARD.expiry, CARD.pin, "100.00")
    return data, ceremony


def test_the_cup_dialect_end_to_end_and_another_key_error_code(fresh: tuple[Path, dict]) -> None:
    data, ceremony = fresh
    host = start_host(data, "--dialect", "cup", "--key-error-code", "A0")
    try:
        terminal = ClientTerminal("T0000001", MID, tmk_from_ceremony(ceremony), "cup")
        with Link(host.endpoint, terminal) as link:
            assert link.sign_on("004")[39] == "00"
            reply, raw = link.exchange(terminal.purchase(CARD, 100))
            assert reply[39] == "00" and terminal.response_mac_ok(raw)
            pos_host(data, "keys", "rotate", "T0000001")
            reply, _ = link.exchange(terminal.purchase(CARD, 100))
            assert reply[39] == "A0" and reply.text(44) == "K2 MAK missed rotation"
    finally:
        assert host.stop() == 0


def test_sigterm_answers_what_is_in_flight_and_exits_0(fresh: tuple[Path, dict]) -> None:
    data, ceremony = fresh
    host = start_host(data)
    terminal = ClientTerminal("T0000001", MID, tmk_from_ceremony(ceremony))
    with Link(host.endpoint, terminal) as link:
        assert link.sign_on()[39] == "00"
        link.channel.send(link.terminal.payload(terminal.purchase(CARD, 100)))
        reply = terminal.codec.decode(link.channel.receive())
        assert reply[39] == "00"
        assert host.stop() == 0
    assert any(line.get("event") == "stopped" for line in host.log_lines())
    listing = pos_host(data, "card", "list")
    assert listing == [{"pan": "621234******1234", "expiry": "2812", "balance": "99.00",
                        "currency": "156"}]


def test_a_serial_port_is_served_by_the_same_handlers(fresh: tuple[Path, dict]) -> None:
    data, ceremony = fresh
    host = start_host(data, "--serial", "pty")
    try:
        line = host.next_line()
        assert line.startswith("listening serial /dev/")
        terminal = ClientTerminal("T0000001", MID, tmk_from_ceremony(ceremony))
        with SerialChannel(line.split()[2]) as channel:
            reply = terminal.codec.decode(channel.exchange(terminal.sign_on_request(), 10.0))
            assert reply[39] == "00"
            terminal.install(reply, "003")
            raw = channel.exchange(terminal.purchase(CARD, 100), 10.0)
            assert terminal.codec.decode(raw)[39] == "00" and terminal.response_mac_ok(raw)
    finally:
        assert host.stop() == 0


def test_duplicates_are_recognised_after_a_restart(fresh: tuple[Path, dict]) -> None:
    data, ceremony = fresh
    terminal = ClientTerminal("T0000001", MID, tmk_from_ceremony(ceremony))
    request = b""
    with running_host(data) as host, Link(host.endpoint, terminal) as link:
        assert link.sign_on()[39] == "00"
        request = terminal.purchase(CARD, 100)
        _, first = link.exchange(request)
    with running_host(data) as host, Link(host.endpoint, terminal) as link:
        assert link.exchange(request)[1] == first
        stan = terminal.codec.decode(request)[11]
        assert link.exchange(terminal.purchase(CARD, 5, stan=stan))[0][39] == "94"

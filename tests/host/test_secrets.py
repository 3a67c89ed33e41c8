"""No clear key, component, PAN or PIN reaches the database (and its WAL), the log or a trace.

The host runs with --trace, signs a terminal on with every key set, makes purchases with a PIN
(approved, declined, duplicated), and goes through rotate and tamper. Then every secret it
used, in every form it could take (hex in either case, raw bytes, BCD), is searched for.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from host.datadir import DB_FILE, open_data
from protocol.clock import system_rng
from tests.host.client import Card, ClientTerminal, Link, tmk_from_ceremony
from tests.support import add_card, host_command, init_host, pos_host, provision_terminal, start_host

MID = "M00000000000001"
CARD = Card("6212345678901234", "2812", "739152846071")


def forms(secret: bytes | str) -> set[bytes]:
    """Every shape a secret could be written in."""
    if isinstance(secret, str):  # digits: a PAN or a PIN
        out = {secret.encode()}
        padded = secret + "0" * (len(secret) % 2)
        out.add(bytes.fromhex(padded))
        return out
    return {secret, secret.hex().upper().encode(), secret.hex().lower().encode()}


def test_no_secret_in_the_database_wal_log_or_trace(tmp_path: Path) -> None:
    data = init_host(tmp_path / "host")
    ceremony = provision_terminal(data, "T0000001", MID, components=3)
    add_card(data, CARD.pan, CARD.expiry, CARD.pin, "500.00")
    secrets: set[bytes] = set()
    for component in ceremony["components"]:
        secrets |= forms(bytes.fromhex(component["component"]))
    log = tmp_path / "trace.log"
    host = start_host(data, "--trace", log_path=log)
    try:
        terminal = ClientTerminal("T0000001", MID, tmk_from_ceremony(ceremony))
        secrets |= forms(terminal.tmk.material)
        with Link(host.endpoint, terminal) as link:
            for key_set in ("001", "004", "003"):
                assert link.sign_on(key_set)[39] == "00"
                for key in terminal.keys.values():
                    secrets |= forms(key.material)
                request = terminal.purchase(CARD, 100)
                assert link.exchange(request)[0][39] == "00"
                assert link.exchange(request)[0][39] == "00"  # the original again
                assert link.exchange(terminal.purchase(CARD, 100, pin="0000"))[0][39] == "55"
                swiped = terminal.purchase(CARD, 100, swiped=True)
                assert link.exchange(swiped)[0][39] == "00"
            pos_host(data, "keys", "rotate", "T0000001")
            pos_host(data, "keys", "tamper", "T0000001")
            assert link.exchange(terminal.purchase(CARD, 100))[0][39] == "14"
        wal_while_serving = (data / f"{DB_FILE}-wal").read_bytes()
    finally:
        assert host.stop() == 0

    db = open_data(data, system_rng)  # every key the host ever stored, unwrapped
    try:
        keys = db.load_terminal("T0000001")
        assert keys is not None and keys.tmk is not None
        for working in keys.working:
            for key in (working.pik, working.mak, working.tdk):
                if key is not None:
                    secrets |= forms(key.material)
        secrets |= forms(db.vault.lmk)
    finally:
        db.close()
    secrets |= forms(CARD.pan) | forms(CARD.pin)

    haystacks = {"wal while serving": wal_while_serving, "log and trace": log.read_bytes()}
    for path in data.iterdir():
        if path.name != "lmk.key":
            haystacks[path.name] = path.read_bytes()
    assert len(wal_while_serving) > 4096  # the WAL held this run's writes
    assert forms(db.vault.lmk) & {(data / "lmk.key").read_bytes()}  # the search can find things
    assert b"request_fields" in haystacks["log and trace"]  # the trace did run
    assert b"621234******1234" in haystacks["log and trace"]
    for name, haystack in haystacks.items():
        found = [s for s in secrets if s in haystack]
        assert not found, f"{len(found)} secret(s) found in {name}"


def test_a_refused_card_never_shows_its_pin_or_full_pan(tmp_path: Path) -> None:
    data = init_host(tmp_path / "host")
    cases = [
        ("6225880212345671", "12345678901234", "12345678901234"),  # PIN too long
        ("62258802123456789012", "1234", "62258802123456789012"),  # PAN too long
        ("6225880212345671", "12a4", "12a4"),  # PIN not digits
    ]
    for pan, pin, secret in cases:
        for json_flag in ((), ("--json",)):
            done = subprocess.run(
                [*host_command(), "--data", str(data), *json_flag, "card", "add", pan,
                 "--expiry", "2712", "--pin", pin, "--balance", "1.00"],
                capture_output=True, text=True, timeout=30, check=False,
            )
            assert done.returncode == 2  # a usage error
            said = done.stdout + done.stderr
            assert "not valid" in said and secret not in said


def test_a_ceremony_whose_injection_file_cannot_be_written_registers_nothing(tmp_path: Path) -> None:
    data = init_host(tmp_path / "host")
    refused = pos_host(data, "terminal", "add", "TX000001", "--merchant", "M1",
                       "--out", str(tmp_path / "missing" / "tmk.json"), check=False)
    assert refused["returncode"] == 2 and "--out" in refused["error"]
    assert pos_host(data, "terminal", "list") == []

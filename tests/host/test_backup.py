"""Backups proven to restore: one MACed file, keys still sealed, consistent while the host
serves; `backup verify` fails loudly on a flipped byte, a truncated file or the wrong LMK; a
host restored from a backup serves the same terminals with the same keys."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from host.datadir import LMK_FILE
from tests.host.client import Card, ClientTerminal, Link, tmk_from_ceremony
from tests.host.test_secrets import forms
from tests.support import add_card, init_host, pos_host, provision_terminal, running_host

MID = "M00000000000001"
CARD = Card("6212345678901234", "2812", "739152846071")


def site(tmp_path: Path) -> tuple[Path, dict, ClientTerminal]:
    data = init_host(tmp_path / "host")
    ceremony = provision_terminal(data, "T0000001", MID, components=3)
    add_card(data, CARD.pan, CARD.expiry, CARD.pin, "100.00")
    return data, ceremony, ClientTerminal("T0000001", MID, tmk_from_ceremony(ceremony))


def test_backup_verify_restore_end_to_end(tmp_path: Path) -> None:
    """Signed on against the first host; its backup restored into a second folder; a second
    host process from it approves the terminal's purchase with no new sign-on."""
    data, ceremony, terminal = site(tmp_path)
    backup = tmp_path / "host.backup"
    with running_host(data) as host, Link(host.endpoint, terminal) as link:
        assert link.sign_on("004")[39] == "00"
        assert link.exchange(terminal.purchase(CARD, 1000))[0][39] == "00"
        made = pos_host(data, "backup", "--out", str(backup))  # while serving
    assert made["terminals"] == 1 and made["keys"] == 4 and made["cards"] == 1 and made["txns"] == 1
    assert backup.stat().st_mode & 0o077 == 0
    verified = pos_host(data, "backup", "verify", str(backup))
    assert verified["keys_opened"] == 4 and verified["verified"]
    # the secrets scan: no clear key, component, PAN or PIN anywhere in the file
    body = backup.read_bytes()
    secrets = forms((data / LMK_FILE).read_bytes()) | forms(terminal.tmk.material) \
        | forms(CARD.pan) | forms(CARD.pin)
    for key in terminal.keys.values():
        secrets |= forms(key.material)
    for component in ceremony["components"]:
        secrets |= forms(bytes.fromhex(component["component"]))
    assert not [s for s in secrets if s in body]
    assert forms(terminal.tmk.material) & {terminal.tmk.material}  # the scan can find things
    restored = tmp_path / "restored"
    out = pos_host(restored, "restore", str(backup), "--lmk", str(data / LMK_FILE))
    assert out["keys_opened"] == 4
    kcvs = [[k["kcv"] for k in pos_host(d, "keys", "show", "T0000001")["keys"]]
            for d in (data, restored)]
    assert kcvs[0] == kcvs[1]
    with running_host(restored) as host, Link(host.endpoint, terminal) as link:
        assert link.exchange(terminal.purchase(CARD, 1000))[0][39] == "00"  # no sign-on
        assert link.exchange(terminal.purchase(CARD, 100, pin="0000"))[0][39] == "55"
    assert pos_host(restored, "card", "list")[0]["balance"] == "80.00"


@pytest.mark.parametrize("where", ["magic", "header", "image-start", "image-middle", "keys", "mac"])
def test_a_flipped_byte_fails_verify_loudly(tmp_path: Path, where: str) -> None:
    data, _, _ = site(tmp_path)
    backup = tmp_path / "b"
    pos_host(data, "backup", "--out", str(backup))
    body = bytearray(backup.read_bytes())
    header_end = body.index(b"\n", 16)
    block_at = body.find(b"D0", header_end)  # a TR-31 block in the keys table
    offsets = {"magic": 3, "header": 20, "image-start": header_end + 30,
               "image-middle": header_end + (len(body) - header_end) // 2, "keys": block_at + 40,
               "mac": len(body) - 5}
    body[offsets[where]] ^= 0x01
    backup.write_bytes(bytes(body))
    failed = pos_host(data, "backup", "verify", str(backup), check=False)
    assert failed["returncode"] == 1 and failed["error"].startswith("pos-host: ")
    assert "\n" not in failed["error"]
    refused = pos_host(tmp_path / "r", "restore", str(backup), "--lmk", str(data / LMK_FILE),
                       check=False)
    assert refused["returncode"] != 0 and not (tmp_path / "r" / "host.db").exists()


@pytest.mark.parametrize("keep", [0, 10, 200, -32, -1])
def test_a_truncated_backup_fails_verify(tmp_path: Path, keep: int) -> None:
    data, _, _ = site(tmp_path)
    backup = tmp_path / "b"
    pos_host(data, "backup", "--out", str(backup))
    backup.write_bytes(backup.read_bytes()[:keep])
    failed = pos_host(data, "backup", "verify", str(backup), check=False)
    assert failed["returncode"] == 1
    assert "truncated" in failed["error"] or "not a posemu backup" in failed["error"]


def test_the_wrong_lmk_fails_verify_and_restore(tmp_path: Path) -> None:
    data, _, _ = site(tmp_path)
    other = init_host(tmp_path / "other")
    backup = tmp_path / "b"
    pos_host(data, "backup", "--out", str(backup))
    failed = pos_host(other, "backup", "verify", str(backup), check=False)
    assert "made under another LMK" in failed["error"]
    refused = pos_host(tmp_path / "r", "restore", str(backup), "--lmk", str(other / LMK_FILE),
                       check=False)
    assert "another LMK" in refused["error"] and not (tmp_path / "r" / "host.db").exists()
    exists = pos_host(data, "backup", "--out", str(backup), check=False)
    assert "already exists" in exists["error"]
    into = pos_host(data, "restore", str(backup), check=False)
    assert "already has a host database" in into["error"]


def test_a_backup_taken_during_purchases_is_consistent(tmp_path: Path) -> None:
    data, _, terminal = site(tmp_path)
    stop = threading.Event()
    approved: list[str] = []
    with running_host(data) as host:
        with Link(host.endpoint, terminal) as link:
            assert link.sign_on()[39] == "00"

        def buy() -> None:
            with Link(host.endpoint, terminal) as link:
                for _ in range(300):
                    if stop.is_set():
                        return
                    approved.append(link.exchange(terminal.purchase(CARD, 1))[0][39])
        buyer = threading.Thread(target=buy)
        buyer.start()
        try:
            backups = [tmp_path / f"b{n}" for n in range(3)]
            for backup in backups:
                pos_host(data, "backup", "--out", str(backup))
        finally:
            stop.set()
            buyer.join(30)
    assert approved and set(approved) == {"00"}
    for backup in backups:
        verified = pos_host(data, "backup", "verify", str(backup))
        restored = tmp_path / f"r-{backup.name}"
        pos_host(restored, "restore", str(backup), "--lmk", str(data / LMK_FILE))
        balance = pos_host(restored, "card", "list")[0]["balance"]
        # a snapshot between commits: its balance matches its own transaction count
        assert f"{100 - verified['txns'] / 100:.2f}" == balance

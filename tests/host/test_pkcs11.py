"""The LMK inside a PKCS#11 token (SoftHSM2): init, sealing by the token, the faults a real HSM
has, and a serving host that loses its token, answers 96, and recovers when it is back."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from tests.host.client import Card, ClientTerminal, Link, tmk_from_ceremony
from tests.host.softhsm import PIN, Token, open_session, token
from tests.support import (
    add_card,
    kill_points,
    pos_host,
    provision_terminal,
    rotate_killed_after,
    running_host,
)

__all__ = ["token"]  # the fixture, imported for pytest
MID = "M00000000000001"
CARD = Card("6212345678901234", "2812", "1234")


def token_host(tmp_path: Path, tok: Token) -> Path:
    data = tmp_path / "host"
    result = pos_host(data, *tok.init_args())
    assert result["hsm"] == "pkcs11" and result["lmk_kcv"].startswith("T")
    return data


def test_init_puts_the_lmk_in_the_token_and_the_token_seals_every_key(tmp_path: Path,
                                                                       token: Token) -> None:
    data = token_host(tmp_path, token)
    assert not (data / "lmk.key").exists()
    config = json.loads((data / "hsm.json").read_text())
    assert config == {"module": token.module, "token": token.label, "pin_env": "POSEMU_HSM_PIN",
                      "label": "posemu-lmk-1"}
    assert PIN not in (data / "hsm.json").read_text()
    ceremony = provision_terminal(data, "T0000001", MID)
    conn = sqlite3.connect(data / "host.db")
    blocks = [b for b, in conn.execute("SELECT block FROM keys")]
    meta = dict(conn.execute("SELECT name, value FROM meta"))
    conn.close()
    assert blocks and all(b.startswith("KWP1") for b in blocks)
    assert meta["root"].startswith("KWP1") and meta["lmk_label"] == "posemu-lmk-1"
    shown = pos_host(data, "keys", "show", "T0000001")
    assert shown["keys"][0]["kcv"] == ceremony["tmk_kcv"]
    # the LMK cannot leave the token: no components
    refused = pos_host(data, "lmk", "components", "--components", "2", "--out",
                       str(tmp_path / "c"), check=False)
    assert refused["returncode"] == 2 and "token's own means" in refused["error"]
    assert not (tmp_path / "c").exists()


def test_the_token_lmk_is_sensitive_and_not_extractable(tmp_path: Path, token: Token) -> None:
    token_host(tmp_path, token)
    import pkcs11

    with open_session(token) as session:
        key = session.get_key(label="posemu-lmk-1")
        assert key[pkcs11.Attribute.SENSITIVE] and not key[pkcs11.Attribute.EXTRACTABLE]
        assert key[pkcs11.Attribute.NEVER_EXTRACTABLE]
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            key[pkcs11.Attribute.VALUE]


def test_token_faults_are_one_line_errors(tmp_path: Path, token: Token,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    data = token_host(tmp_path, token)
    monkeypatch.setenv("POSEMU_HSM_PIN", "000000")
    wrong = pos_host(data, "terminal", "list", check=False)
    assert wrong["returncode"] == 1 and "refused the PIN" in wrong["error"]
    assert "000000" not in wrong["error"] and "\n" not in wrong["error"]
    monkeypatch.delenv("POSEMU_HSM_PIN")
    nopin = pos_host(data, "terminal", "list", check=False)
    assert "set $POSEMU_HSM_PIN" in nopin["error"]
    monkeypatch.setenv("POSEMU_HSM_PIN", PIN)
    token.object_dir().rename(tmp_path / "away")
    absent = pos_host(data, "terminal", "list", check=False)
    assert absent["returncode"] == 1 and "not present" in absent["error"]
    other = pos_host(tmp_path / "other", "init", "--hsm", "pkcs11", "--module", token.module,
                     "--token", "no-such-token", check=False)
    assert "not present" in other["error"] and not (tmp_path / "other" / "host.db").exists()
    # the PIN is never an argument
    argv = pos_host(tmp_path / "x", *token.init_args(), "--pin", PIN, check=False)
    assert argv["returncode"] == 2


def test_init_refuses_a_token_that_already_holds_a_hosts_lmk(tmp_path: Path, token: Token) -> None:
    token_host(tmp_path, token)
    again = pos_host(tmp_path / "second", *token.init_args(), check=False)
    assert "already has an LMK" in again["error"]
    assert not (tmp_path / "second" / "host.db").exists()


def test_a_serving_host_that_loses_its_token_answers_96_and_recovers(tmp_path: Path,
                                                                     token: Token) -> None:
    """SoftHSM2 honours its token folder going away: the next operation fails (the session's
    objects are gone), and C_Initialize again finds the token once the folder is back."""
    data = token_host(tmp_path, token)
    ceremonies = {tid: provision_terminal(data, tid, MID) for tid in ("T0000001", "T0000002")}
    add_card(data, CARD.pan, CARD.expiry, CARD.pin, "1000.00")
    one, two = (ClientTerminal(tid, MID, tmk_from_ceremony(c)) for tid, c in ceremonies.items())
    with running_host(data) as host:
        with Link(host.endpoint, one) as link:
            assert link.sign_on()[39] == "00"
            assert link.exchange(one.purchase(CARD, 100))[0][39] == "00"
        objects = token.object_dir()
        objects.rename(tmp_path / "away")
        with Link(host.endpoint, two) as link:
            assert link.sign_on()[39] == "96"  # its new keys cannot be sealed
        with Link(host.endpoint, one) as link:
            # keys already unwrapped are used from memory: no purchase crosses the boundary
            assert link.exchange(one.purchase(CARD, 100))[0][39] == "00"
        (tmp_path / "away").rename(objects)
        with Link(host.endpoint, two) as link:
            assert link.sign_on()[39] == "00"
            assert link.exchange(two.purchase(CARD, 100))[0][39] == "00"
        with Link(host.endpoint, one) as link:
            assert link.exchange(one.purchase(CARD, 100))[0][39] == "00"
        assert host.returncode is None
        log = host.log_text()
    assert PIN not in log
    cards = pos_host(data, "card", "list")
    assert cards[0]["balance"] == "996.00"  # nothing lost: all 4 approvals were kept


def test_backup_and_restore_with_the_token(tmp_path: Path, token: Token) -> None:
    data = token_host(tmp_path, token)
    provision_terminal(data, "T0000001", MID)
    backup = tmp_path / "host.backup"
    pos_host(data, "backup", "--out", str(backup))
    verified = pos_host(data, "backup", "verify", str(backup))
    assert verified["keys_opened"] == 1 and verified["hsm"]
    unnamed = pos_host(tmp_path / "restored", "restore", str(backup), check=False)
    assert "give --module PATH" in unnamed["error"]
    restored = pos_host(tmp_path / "restored", "restore", str(backup), "--module", token.module)
    assert restored["terminals"] == 1
    kcvs = [[k["kcv"] for k in pos_host(d, "keys", "show", "T0000001")["keys"]]
            for d in (data, tmp_path / "restored")]
    assert kcvs[0] == kcvs[1] and len(kcvs[0]) == 1
    assert os.stat(tmp_path / "restored" / "host.db").st_mode & 0o077 == 0


def test_rotate_makes_a_new_token_lmk_and_destroys_the_old(tmp_path: Path, token: Token) -> None:
    data = token_host(tmp_path, token)
    ceremony = provision_terminal(data, "T0000001", MID)
    add_card(data, CARD.pan, CARD.expiry, CARD.pin, "10.00")
    rotated = pos_host(data, "lmk", "rotate")
    assert rotated["keys_resealed"] == 1 and rotated["lmk_kcv"] != rotated["old_lmk_kcv"]
    conn = sqlite3.connect(data / "host.db")
    assert conn.execute("SELECT value FROM meta WHERE name='lmk_label'").fetchone()[0] == "posemu-lmk-2"
    conn.close()
    assert pos_host(data, "keys", "show", "T0000001")["keys"][0]["kcv"] == ceremony["tmk_kcv"]
    terminal = ClientTerminal("T0000001", MID, tmk_from_ceremony(ceremony))
    with running_host(data) as host, Link(host.endpoint, terminal) as link:
        assert link.sign_on()[39] == "00"
        assert link.exchange(terminal.purchase(CARD, 100))[0][39] == "00"
    import pkcs11

    with open_session(token) as session:
        labels = {k.label for k in session.get_objects({pkcs11.Attribute.CLASS:
                                                        pkcs11.ObjectClass.SECRET_KEY})}
    assert labels == {"posemu-lmk-2"}


def test_token_rotation_killed_at_any_point_leaves_the_old_set_or_the_new(tmp_path: Path,
                                                                           token: Token) -> None:
    data = token_host(tmp_path, token)
    for n in range(30):
        provision_terminal(data, f"T{n:07d}", MID)
    kcvs = [k["kcv"] for k in pos_host(data, "keys", "show", "T0000007")["keys"]]
    seen = [pos_host(data, "backup", "--out", str(tmp_path / "b0"))["lmk_kcv"]]
    points = kill_points([0.2, 0.4, 0.6, 0.8, 1.0, 1.5, 3.0], lambda: len(set(seen)) > 1)
    for n, delay in enumerate(points, start=1):
        rotate_killed_after(data, delay)
        backup = tmp_path / f"b{n}"
        pos_host(data, "backup", "--out", str(backup))
        verified = pos_host(data, "backup", "verify", str(backup))  # every key opens, KCVs match
        assert verified["keys_opened"] == 30
        assert verified["lmk_kcv"] == seen[-1] or verified["lmk_kcv"] not in seen
        seen.append(verified["lmk_kcv"])
        assert [k["kcv"] for k in pos_host(data, "keys", "show", "T0000007")["keys"]] == kcvs
    assert len(set(seen)) > 1  # some kills came after a commit

"""The LMK's lifecycle: clear components for custodians and back, and `lmk rotate`, atomic
under real SIGKILLs: the old set or the new one, never a mix."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from host.admin import add_card, add_terminal, rotate_lmk
from host.datadir import LMK_FILE, NEW_LMK_FILE, init_data, open_data
from host.hsm import unseal
from host.lmk import check_value, load_lmk
from protocol.clock import system_rng
from tests.host.client import Card, ClientTerminal, Link, tmk_from_ceremony
from tests.support import add_card as cli_add_card
from tests.support import (
    init_host,
    kill_points,
    pos_host,
    provision_terminal,
    rotate_killed_after,
    running_host,
)

MID = "M00000000000001"
CARD = Card("6212345678901234", "2812", "1234")


@pytest.mark.parametrize("count", [2, 3])
def test_components_rebuild_the_same_lmk(tmp_path: Path, count: int) -> None:
    data = init_host(tmp_path / "host")
    out = tmp_path / "components"
    result = pos_host(data, "lmk", "components", "--components", str(count), "--out", str(out))
    files = sorted(out.iterdir())
    assert len(files) == count and all(f.stat().st_mode & 0o077 == 0 for f in files)
    lmk = (data / LMK_FILE).read_bytes()
    assert result["lmk_kcv"] == check_value(lmk)
    assert lmk.hex().upper() not in "".join(f.read_text() for f in files)
    rebuilt = pos_host(tmp_path / "rebuilt", "init", "--lmk-components", *map(str, files))
    assert rebuilt["lmk_kcv"] == result["lmk_kcv"]
    assert (tmp_path / "rebuilt" / LMK_FILE).read_bytes() == lmk
    # a folder of components works as well
    assert pos_host(tmp_path / "again", "init", "--lmk-components", str(out))["lmk_kcv"] == \
        result["lmk_kcv"]


def test_a_mistyped_or_missing_component_is_refused(tmp_path: Path) -> None:
    data = init_host(tmp_path / "host")
    out = tmp_path / "c"
    pos_host(data, "lmk", "components", "--components", "3", "--out", str(out))
    files = sorted(out.iterdir())
    missing = pos_host(tmp_path / "a", "init", "--lmk-components", *map(str, files[:2]), check=False)
    assert "all 3 are needed" in missing["error"] and not (tmp_path / "a" / "host.db").exists()
    doc = json.loads(files[1].read_text())
    typo = doc["component"]
    doc["component"] = ("0" if typo[0] != "0" else "1") + typo[1:]
    files[1].write_text(json.dumps(doc))
    wrong = pos_host(tmp_path / "b", "init", "--lmk-components", *map(str, files), check=False)
    assert "component 2 fails its check value" in wrong["error"]
    assert typo not in wrong["error"] and doc["component"] not in wrong["error"]
    assert not (tmp_path / "b" / "host.db").exists()


def test_rotate_reseals_every_key_and_the_terminal_and_cards_keep_working(tmp_path: Path) -> None:
    data = init_host(tmp_path / "host")
    ceremony = provision_terminal(data, "T0000001", MID)
    cli_add_card(data, CARD.pan, CARD.expiry, CARD.pin, "100.00")
    terminal = ClientTerminal("T0000001", MID, tmk_from_ceremony(ceremony))
    with running_host(data) as host:
        with Link(host.endpoint, terminal) as link:
            assert link.sign_on()[39] == "00"
        refused = pos_host(data, "lmk", "rotate", check=False)
        assert "a host is serving" in refused["error"]
    before = [k["kcv"] for k in pos_host(data, "keys", "show", "T0000001")["keys"]]
    old_lmk = (data / LMK_FILE).read_bytes()
    rotated = pos_host(data, "lmk", "rotate")
    assert rotated["keys_resealed"] == 3 and rotated["old_lmk_kcv"] != rotated["lmk_kcv"]
    assert (data / LMK_FILE).read_bytes() != old_lmk and not (data / NEW_LMK_FILE).exists()
    assert [k["kcv"] for k in pos_host(data, "keys", "show", "T0000001")["keys"]] == before
    with running_host(data) as host, Link(host.endpoint, terminal) as link:
        # the same working keys, no new sign-on; the card found by its PAN and its PIN checked
        assert link.exchange(terminal.purchase(CARD, 100))[0][39] == "00"
        assert link.exchange(terminal.purchase(CARD, 100, pin="9999"))[0][39] == "55"


def _keys_open(data: Path) -> str:
    """Every key opens under the LMK the folder now has and has its stored check value; the
    LMK's check value (so the caller sees which set it is)."""
    db = open_data(data, system_rng)
    try:
        rows = db.conn.execute("SELECT usage, block, kcv FROM keys").fetchall()
        for usage, block, kcv in rows:
            assert unseal(db.vault.lmk, usage, block).kcv_hex == kcv
        assert len(rows) == TERMINALS
        assert db.card(db.vault.pan_ref(CARD.pan)) is not None  # derived keys survive too
        return db.vault.check_value
    finally:
        db.close()


TERMINALS = 400


def test_rotation_killed_at_any_point_leaves_the_old_set_or_the_new(tmp_path: Path) -> None:
    data = tmp_path / "host"
    init_data(data, system_rng)
    db = open_data(data, system_rng)
    for n in range(TERMINALS):
        add_terminal(db, f"T{n:07d}", MID, 2, 0.0, system_rng)
    add_card(db, CARD.pan, CARD.expiry, CARD.pin, "10.00")
    db.close()
    seen: list[str] = [_keys_open(data)]
    outcomes = {"old": 0, "new": 0}
    for delay in kill_points([0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5],
                             lambda: outcomes["new"] > 0):
        rotate_killed_after(data, delay)
        now = _keys_open(data)
        assert now == seen[-1] or now not in seen  # the previous set, or a brand-new one
        outcomes["old" if now == seen[-1] else "new"] += 1
        seen.append(now)
    assert outcomes["old"] and outcomes["new"], outcomes  # kills landed both before and after


def test_settling_an_interrupted_rotation(tmp_path: Path) -> None:
    """The two states a kill can leave between the database's commit and the file rename."""
    data = tmp_path / "host"
    init_data(data, system_rng)
    old = load_lmk(data / LMK_FILE)
    # killed before the commit: lmk.key.new written, the database still under the old LMK
    (data / NEW_LMK_FILE).write_bytes(bytes(range(32)))
    (data / NEW_LMK_FILE).chmod(0o600)
    open_data(data, system_rng).close()
    assert not (data / NEW_LMK_FILE).exists() and load_lmk(data / LMK_FILE) == old
    # killed after the commit, before the rename: both files, the database under the new one
    rotate_lmk(data, system_rng)
    new = load_lmk(data / LMK_FILE)
    (data / LMK_FILE).rename(data / NEW_LMK_FILE)
    (data / LMK_FILE).write_bytes(old)
    (data / LMK_FILE).chmod(0o600)
    open_data(data, system_rng).close()
    assert load_lmk(data / LMK_FILE) == new and not (data / NEW_LMK_FILE).exists()
    conn = sqlite3.connect(data / "host.db")
    assert conn.execute("SELECT value FROM meta WHERE name='lmk_kcv'").fetchone()[0] == check_value(new)
    conn.close()

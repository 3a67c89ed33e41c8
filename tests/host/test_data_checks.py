"""The host's data is checked before it is used (issue 10, items 7, 8, 10 and the host part of
12), each reproduction run as real `pos-host` processes on real files: a wrong LMK, a missing,
empty, foreign or newer database, `init` over a host, `--out` over a file, and odd arguments are
refused at start, in one line, with every file in the data folder byte for byte as it was."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from host.keydb import APPLICATION_ID, SCHEMA_VERSION, UPGRADES_FROM
from tests.support import (
    REPO,
    add_card,
    host_command,
    init_host,
    pos_host,
    provision_terminal,
    running_host,
)

TID, MID = "T0000001", "M00000000000001"
PAN = "6212345678901234"
SERVE_TIMEOUT = 15.0  # a host that wrongly starts is stopped here, and the test fails


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under the folder, by name, with its bytes: what "changed nothing" compares."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(data: Path, *args: str) -> str:
    """Run a command that must be refused; its one stderr line."""
    result = pos_host(data, *args, check=False)
    assert "returncode" in result, f"pos-host {' '.join(args)} succeeded: {result}"
    assert result["returncode"] != 0
    lines = result["error"].splitlines()
    assert len(lines) == 1 and "Traceback" not in result["error"], result["error"]
    return lines[0]


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`pos-host ARGV` as a process that must exit by itself (e.g. a refused `serve`)."""
    env = {k: v for k, v in os.environ.items() if k != "POSEMU_HOST_DATA"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    try:
        return subprocess.run([*host_command(), *argv], capture_output=True, text=True,
                              timeout=SERVE_TIMEOUT, env=env, check=False, cwd=cwd)
    except subprocess.TimeoutExpired:
        pytest.fail(f"pos-host {' '.join(argv)} kept running instead of refusing to start")


def serve(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(["--data", str(data), "serve", *args])


def refused_start(data: Path, *args: str) -> str:
    done = serve(data, *args)
    lines = done.stderr.splitlines()
    assert done.returncode != 0 and len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A provisioned host: one terminal, one card."""
    data = init_host(tmp_path / "host")
    provision_terminal(data, TID, MID)
    add_card(data, PAN, expiry="2812", pin="1234", balance="100.00")
    return data


def wrong_lmk(data: Path) -> None:
    lmk = data / "lmk.key"
    lmk.write_bytes(bytes(b ^ 0x5A for b in lmk.read_bytes()))


# --- item 7: a wrong lmk.key -------------------------------------------------------------------


def test_a_wrong_lmk_is_refused_at_start_by_serve_and_by_card_add(host: Path) -> None:
    wrong_lmk(host)
    before = snapshot(host)
    assert "LMK" in refused_start(host, "--tcp", "127.0.0.1:0")
    line = refused(host, "card", "add", "6212345678905678", "--expiry", "2812", "--pin", "1234",
                   "--balance", "1.00")
    assert "wrong lmk.key" in line
    for command in (["terminal", "add", "T0000002", "--merchant", MID], ["keys", "show", TID],
                    ["terminal", "rekey", TID], ["card", "list"]):
        assert "wrong lmk.key" in refused(host, *command)
    assert snapshot(host) == before


def _as_version_2(db: Path) -> None:
    """The database as the previous posemu left it: no check value, no application id."""
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE meta")
        conn.execute("PRAGMA application_id=0")
        conn.execute(f"PRAGMA user_version={UPGRADES_FROM}")
    conn.close()


def test_a_version_2_database_is_upgraded_only_under_the_lmk_that_opens_its_keys(
    host: Path,
) -> None:
    db = host / "host.db"
    _as_version_2(db)
    good_lmk = (host / "lmk.key").read_bytes()
    wrong_lmk(host)
    before = snapshot(host)
    assert "does not open the keys" in refused(host, "terminal", "list")
    assert snapshot(host) == before  # nothing was written under the wrong LMK

    (host / "lmk.key").write_bytes(good_lmk)
    assert [t["tid"] for t in pos_host(host, "terminal", "list")] == [TID]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("SELECT name FROM meta").fetchall() == [("lmk_kcv",)]
    conn.close()
    wrong_lmk(host)  # ...and from now on a wrong LMK is refused by its check value
    assert "check value" in refused(host, "terminal", "list")


# --- item 8: only init makes a database; foreign or newer ones are refused unchanged ----------


@pytest.mark.parametrize("damage", ["missing", "empty"])
def test_a_missing_or_empty_database_is_refused_not_recreated(host: Path, damage: str) -> None:
    db = host / "host.db"
    db.unlink()
    if damage == "empty":
        db.touch(mode=0o600)
    before = snapshot(host)
    assert "pos-host init" in refused_start(host, "--tcp", "127.0.0.1:0")
    for command in (["terminal", "list"], ["keys", "show", TID], ["card", "list"]):
        assert "pos-host init" in refused(host, *command)
    assert snapshot(host) == before


def _foreign(db: Path, wal: bool) -> None:
    db.unlink()
    with sqlite3.connect(db) as conn:
        if wal:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE notes (text TEXT)")
        conn.execute("INSERT INTO notes VALUES ('mine')")
    conn.close()


@pytest.mark.parametrize("damage", ["foreign", "foreign-wal", "newer", "other-app", "truncated"])
def test_a_foreign_newer_or_damaged_database_is_refused_before_anything_is_written(
    host: Path, damage: str,
) -> None:
    db = host / "host.db"
    if damage.startswith("foreign"):
        _foreign(db, wal=damage == "foreign-wal")
    elif damage == "truncated":
        db.write_bytes(db.read_bytes()[:1000])
    else:
        with sqlite3.connect(db) as conn:
            pragma = "user_version=99" if damage == "newer" else "application_id=7"
            conn.execute(f"PRAGMA {pragma}")
        conn.close()
    before = snapshot(host)
    assert "host database" in refused_start(host, "--tcp", "127.0.0.1:0")
    assert "host database" in refused(host, "terminal", "list")
    assert snapshot(host) == before  # same bytes; no -wal or -shm appeared either


def test_init_over_an_existing_host_fails_and_changes_nothing(host: Path) -> None:
    before = snapshot(host)
    assert "never replaces" in refused(host, "init")
    (host / "host.db").unlink()  # part of a host is still a host
    before = snapshot(host)
    assert "never replaces" in refused(host, "init")
    assert snapshot(host) == before


# --- item 10: --out never overwrites -----------------------------------------------------------


def test_terminal_add_out_never_overwrites_and_changes_nothing(host: Path, tmp_path: Path) -> None:
    out = tmp_path / "T0000001.tmk"
    provision_terminal(host, "T0000002", MID, out=out)
    other_tmk = out.read_bytes()
    before = snapshot(host)
    assert "already exists" in refused(host, "terminal", "add", "T0000003", "--merchant", MID,
                                       "--out", str(out))
    assert "already exists" in refused(host, "terminal", "rekey", TID, "--out", str(out))
    assert out.read_bytes() == other_tmk
    assert snapshot(host) == before
    assert [t["tid"] for t in pos_host(host, "terminal", "list")] == [TID, "T0000002"]


def test_a_refused_ceremony_leaves_no_out_file(host: Path, tmp_path: Path) -> None:
    out = tmp_path / "new.tmk"
    assert "already exists" in refused(host, "terminal", "add", TID, "--merchant", MID,
                                       "--out", str(out))
    assert not out.exists()


# --- item 12 (host): every input checked before any state is touched --------------------------


ODD_COMMANDS = [
    ["terminal", "add", "TÉRM0001", "--merchant", MID],
    ["terminal", "add", "../../x1", "--merchant", MID],
    ["terminal", "add", "T\n000001", "--merchant", MID],
    ["terminal", "add", "T0000009", "--merchant", "M" * 16],
    ["terminal", "add", "T0000009", "--merchant", MID, "--tmk-lifetime", "inf"],
    ["terminal", "add", "T0000009", "--merchant", MID, "--tmk-lifetime", "9" * 400],
    ["terminal", "add", "T0000009", "--merchant", MID, "--tmk-lifetime", "١٢d"],
    ["keys", "rotate", TID, "--key-lifetime", "1e400"],
    ["keys", "show", "a/b"],
    ["terminal", "remove", "x" * 9],
    *(["card", "add", "6212345678905678", "--expiry", "2812", "--pin", "1234", "--balance", b]
      for b in ("nan", "inf", "-inf", "1e400", "１２", "١٢.٠٠", "", "1.234", "-1")),
    ["card", "add", "62123456789056７8", "--expiry", "2812", "--pin", "1234", "--balance", "1"],
    ["card", "add", "6212345678905678", "--expiry", "2813", "--pin", "1234", "--balance", "1"],
    ["card", "add", "6212345678905678", "--expiry", "2812", "--pin", "12", "--balance", "1"],
    ["card", "add", PAN, "--expiry", "2812", "--pin", "1234", "--balance", "1.00"],  # duplicate
]


@pytest.mark.parametrize("command", ODD_COMMANDS, ids=lambda c: " ".join(c[:2] + c[-2:]))
def test_odd_arguments_are_refused_in_one_line_and_change_nothing(
    host: Path, command: list[str],
) -> None:
    before = snapshot(host)
    refused(host, *command)
    assert snapshot(host) == before


def test_an_empty_data_folder_name_is_refused(tmp_path: Path) -> None:
    for command in (["init"], ["terminal", "list"]):
        done = run(["--data", "", *command], cwd=tmp_path)  # not the default .posemu/host
        assert done.returncode != 0 and len(done.stderr.splitlines()) == 1, done.stderr
        assert "not a folder name" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_serve_with_a_missing_serial_device_fails_at_start(host: Path, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    line = refused_start(host, "--serial", "/dev/ttyNOPE0", "--log", str(log))
    assert "/dev/ttyNOPE0" in line
    assert not log.exists()  # refused before the log was made


def test_the_serve_log_is_created_mode_0600(host: Path, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with running_host(host, log_path=log):
        assert stat.S_IMODE(log.stat().st_mode) == 0o600


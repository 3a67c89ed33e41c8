"""The terminal's files are evidence, not a single point of failure; bad input changes nothing.

Each reproduction is a real `pos-terminal` process against a real `pos-host` process, on real
files: a damaged journal never turns an answered purchase into a failure, lost counters never
rewind the STAN (the host would take the fresh purchase for a retransmission and answer it with
the old approval: no money moves), a damaged byte anywhere in the keystore is K1, and a refused
command changes no file and uses no STAN.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from terminal.keystore import Keystore, KeystoreError
from tests.terminal.conftest import EXPIRY, MERCHANT, PAN, PIN, Host, Rig
from tests.terminal.processes import assert_refused, pos_terminal, snapshot
from tests.terminal.test_keystore import keyset_for

AMOUNT = "2.00"


def balance(host: Host) -> Decimal:
    cards = host.admin("card", "list")
    return Decimal(next(card["balance"] for card in cards if card["pan"].endswith(PAN[-4:])))


def process(rig: Rig, *argv: str) -> object:
    return pos_terminal(*argv, "--data", str(rig.folder), "--host", rig.host.url, "--timeout", "10")


def buy(rig: Rig, *extra: str) -> object:
    return process(rig, "purchase", "--amount", AMOUNT, "--pan", PAN, "--expiry", EXPIRY,
                   "--pin", PIN, *extra)


# --- 1. a damaged journal ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        b"\xff\n",  # the reproduction: one byte that is not UTF-8
        b'{"at": 1.0, "command": "purch',  # a line cut short, no newline
        b"not json at all\n",
        b'["a", "list"]\n',  # JSON of the wrong shape
        b'{"at": "yesterday", "command": "purchase", "outcome": "approved"}\n',
        b'{"at": 1.0, "command": "purchase", "outcome": "approved", "stan": "12"}\n',
        b'{"at": 1.0, "command": "purchase", "outcome": "ok", "extra": 1}\n',
    ],
)
def test_a_damaged_journal_never_hides_an_approved_purchase(ready: Rig, damage: bytes) -> None:
    journal = ready.folder / "journal.jsonl"
    with journal.open("ab") as out:
        out.write(damage)
    before = balance(ready.host)
    sale = buy(ready, "--json")
    assert sale.code == 0, sale.err
    assert sale.json["outcome"] == "approved" and "Traceback" not in sale.err
    assert balance(ready.host) == before - Decimal(AMOUNT), "the host debited the card"
    status = process(ready, "status", "--json")
    assert status.code == 0, status.err
    damaged = status.json["journal"]["damaged_lines"]
    assert len(damaged) == 1 and status.json["last"]["outcome"] == "approved"
    text = process(ready, "status")
    assert f"1 damaged line skipped (line {damaged[0]})" in text.out
    diagnosis = process(ready, "diagnose")
    assert diagnosis.code == 0 and "Traceback" not in diagnosis.err


def test_a_journal_that_is_all_damage_is_still_no_failure(ready: Rig) -> None:
    (ready.folder / "journal.jsonl").write_bytes(os.urandom(3000).replace(b"\n", b"\x00") + b"\n" * 3)
    assert buy(ready).code == 0
    assert process(ready, "diagnose").code == 0
    assert process(ready, "status", "--json").json["journal"]["damaged_lines"] == [1]


# --- 2. lost or damaged counters ----------------------------------------------------------------


def test_lost_counters_refuse_instead_of_rewinding_the_stan(ready: Rig) -> None:
    """The issue's reproduction: two purchases, `rm counters.json`, the same two purchases.
    Before, both printed APPROVED from the host's retransmission answers and no money moved."""
    first = [buy(ready, "--json").json["stan"] for _ in range(2)]
    (ready.folder / "counters.json").unlink()
    before_money, before_files = balance(ready.host), snapshot(ready.folder)
    again = buy(ready)
    assert_refused(again, before_files, ready.folder)
    assert "pos-terminal counters recover" in again.err
    assert balance(ready.host) == before_money
    status = process(ready, "status", "--json")
    assert status.code == 0 and "counters recover" in status.json["counters"]

    recovered = process(ready, "counters", "recover", "--json")
    assert recovered.code == 0, recovered.err
    assert recovered.json["next_stan"] == int(first[-1]) + 1000 + 1
    assert recovered.json["batch"] == 2, "a new batch: what the lost one held is unknown"
    for _ in range(2):
        sale = buy(ready, "--json")
        assert sale.code == 0 and int(sale.json["stan"]) > int(first[-1]) + 1000
    assert balance(ready.host) == before_money - 2 * Decimal(AMOUNT), "both purchases moved money"


@pytest.mark.parametrize(
    "content",
    [b'{"stan": "5", "batch": 1}', b'{"stan": 5, "batch": "x"}', b"\xff\xfe", b"[]", b"",
     b'{"stan": -3, "batch": 1}', b'{"stan": 5}garbage', b'{"stan": 5, "batch": 1, "x": 2}',
     b'{"stan": true, "batch": 1}', b'{"stan": 1e400, "batch": 1}'],
)
def test_damaged_counters_are_one_line_naming_the_recovery(ready: Rig, content: bytes) -> None:
    (ready.folder / "counters.json").write_bytes(content)
    before = snapshot(ready.folder)
    run = buy(ready)
    assert_refused(run, before, ready.folder)
    assert "counters.json" in run.err and "pos-terminal counters recover" in run.err
    assert process(ready, "status").code == 0


def test_recover_with_an_explicit_stan_never_goes_back(ready: Rig) -> None:
    last = int(buy(ready, "--json").json["stan"])
    (ready.folder / "counters.json").unlink()
    before = snapshot(ready.folder)
    assert_refused(process(ready, "counters", "recover", "--stan", str(last)), before, ready.folder)
    assert process(ready, "counters", "recover", "--stan", str(last + 5)).code == 0
    assert buy(ready, "--json").json["stan"] == f"{last + 5:06d}"


def test_lost_journal_and_counters_after_a_signon_still_refuse(ready: Rig) -> None:
    """The keystore's serial shows a sign-on happened: with nothing to recover from, a STAN
    must be given by hand."""
    (ready.folder / "counters.json").unlink()
    (ready.folder / "journal.jsonl").unlink()
    before = snapshot(ready.folder)
    assert_refused(buy(ready), before, ready.folder)
    refused = process(ready, "counters", "recover")
    assert_refused(refused, before, ready.folder)
    assert "--stan" in refused.err


def test_a_fresh_terminal_starts_at_stan_1(fresh: Rig) -> None:
    assert not (fresh.folder / "counters.json").exists()
    assert process(fresh, *["load-tmk", *fresh.component_args()]).code == 0
    signon = process(fresh, "signon", "--json")
    assert signon.code == 0 and signon.json["stan"] == "000001"


# --- 9. a damaged keystore is K1 -----------------------------------------------------------------


@pytest.mark.parametrize("byte", [b"\xff", b"\xc3\xa9", b"Z", b"\x00"])
def test_a_bad_byte_in_the_integrity_line_is_k1(ready: Rig, byte: bytes) -> None:
    """The issue's reproduction: one non-ASCII byte in the MAC line crashed every command with
    a TypeError."""
    path = ready.folder / "keystore.json"
    line, mac, _ = path.read_bytes().split(b"\n")
    path.write_bytes(line + b"\n" + mac[:10] + byte + mac[11:] + b"\n")
    for argv in (("purchase", "--amount", AMOUNT, "--pan", PAN, "--expiry", EXPIRY), ("signon",)):
        run = process(ready, *argv, "--json")
        assert run.code == 1 and run.json["reason"] == "K1 TMK keystore corrupt", run.err
        assert "Traceback" not in run.err
    status = process(ready, "status")
    assert status.code == 0 and "UNUSABLE" in status.out
    assert process(ready, "diagnose").code == 0


# --- 12. bad input refused in one line, changing nothing ------------------------------------------


def bad_command_lines(rig: Rig) -> list[list[str]]:
    data = ["--data", str(rig.folder)]
    new = ["--data", str(rig.folder.parent / "new")]
    sale = ["purchase", *data, "--pan", PAN, "--expiry", EXPIRY]
    order = ["purchase", *data, "--amount", "1.00"]
    return [
        [*sale, "--amount", "１２.００"],
        [*sale, "--amount", "١٢"],
        [*sale, "--amount", "nan"],
        [*sale, "--amount", "1e400"],
        [*order, "--pan", "６２１２３４５６７８９０１２３４", "--expiry", EXPIRY],
        [*order, "--pan", PAN, "--expiry", "２８１２"],
        [*sale, "--amount", "1.00", "--pin", "１２３４"],
        [*sale, "--amount", "1.00", "--pin-env", "POSEMU_NO_SUCH_VARIABLE"],
        [*sale, "--amount", "1.00", "--timeout", "inf"],
        [*sale, "--amount", "1.00", "--timeout", "nan"],
        [*sale, "--amount", "1.00", "--timeout", "-1"],
        [*sale, "--amount", "1.00", "--timeout", "0"],
        [*sale, "--amount", "1.00", "--connect-timeout", "1e9"],
        [*sale, "--amount", "1.00", "--host", "tcp://127.0.0.1:0"],
        [*sale, "--amount", "1.00", "--host", "tcp://127.0.0.1:99999"],
        [*sale, "--amount", "1.00", "--host", "http://x:1"],
        ["echo", *data, "--host", "tcp://999.0.0.1:5000"],
        ["echo", *data, "--dialect", "nope"],
        ["echo", *data, "--dialect", str(rig.folder / "journal.jsonl.json")],
        ["signon", "--data", ""],
        ["status", "--tid", "../../x1"],
        ["status", "--tid", "T١"],
        ["counters", "recover", *data, "--stan", "0"],
        ["counters", "recover", *data, "--stan", "１"],
        ["counters", "fix", *data],
        ["init", "T0000001", "--merchant", MERCHANT, *data],
        ["init", "TÉ", "--merchant", MERCHANT, *new],
        ["init", "T9", "--merchant", "M 1", *new],
        ["init", "T9", "--merchant", MERCHANT, "--host", "tcp://h:", *new],
        ["init", "T9", "--merchant", MERCHANT, "--operator", "١٢", *new],
        ["init", "T9", "--merchant", MERCHANT, "--wk-lifetime", "0", *new],
        ["init", "T9", "--merchant", MERCHANT, "--dialect", "x", *new],
        ["load-tmk", *data, "--component", "00", "--kcv", "000000"],
        ["load-tmk", *data, "--file", ""],
        ["load-tmk", *data, "--file", str(rig.folder / "nothing.json")],
        ["echo", *data, "--serial", "/dev/null,parity=X"],
    ]


def test_bad_input_is_one_line_and_changes_nothing(ready: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each odd command line from the issue, as a real process: refused (exit 2, or 3 for a
    port spec, a line problem), one line, no traceback, no file in the terminal's folder or
    beside it changed, and so no STAN used."""
    monkeypatch.setenv("POSEMU_TERMINAL_DATA", str(ready.folder.parent))
    stan = ready("status", "--json").json["stan"]
    for argv in bad_command_lines(ready):
        before = snapshot(ready.folder.parent)
        run = pos_terminal(*argv)
        assert run.code in (2, 3), (argv, run.code, run.err)
        assert "Traceback" not in run.err and len(run.err.splitlines()) == 1, (argv, run.err)
        assert snapshot(ready.folder.parent) == before, argv
    assert ready("status", "--json").json["stan"] == stan
    assert ready.purchase().code == 0


def test_init_with_a_path_as_tid_writes_nothing_outside(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "root"
    root.mkdir(parents=True)
    run = pos_terminal("init", "../../x1", "--merchant", MERCHANT, env={"POSEMU_TERMINAL_DATA": str(root)})
    assert_refused(run, {}, tmp_path)
    assert not any(tmp_path.rglob("terminal.json"))


def test_rejected_purchases_use_no_stan(ready: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Input the terminal refuses, and key errors it finds itself, send nothing: no STAN."""
    stan = ready("status", "--json").json["stan"]
    assert ready.purchase(amount="0").code == 2
    assert ready.purchase("--pin", "12").code == 2
    monkeypatch.setenv("POSEMU_TERMINAL_CLOCK_OFFSET", str(3 * 24 * 3600))
    assert ready.purchase("--json").json["reason"] == "K2 WK lifetime over"
    monkeypatch.setenv("POSEMU_TERMINAL_CLOCK_OFFSET", "inf")
    assert ready.purchase().code == 2
    monkeypatch.delenv("POSEMU_TERMINAL_CLOCK_OFFSET")
    assert ready("status", "--json").json["stan"] == stan
    assert ready.purchase("--json").json["stan"] == f"{stan + 1:06d}"


def read_only(folder: Path) -> tuple[str, ...]:
    """A prefix that runs a command with `folder` mounted read-only: root ignores file modes,
    so the folder is made read-only the way a full or failing disk is, by the mount."""
    if os.geteuid() != 0:
        folder.chmod(0o500)
        return ()
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
    prefix = ("unshare", "-m", "sh", "-c", script, str(folder))
    if shutil.which("unshare") is None or subprocess.run(
            [*prefix, "true"], capture_output=True, timeout=30, check=False).returncode != 0:
        pytest.skip("needs unshare and mount (util-linux) and the right to make a mount namespace")
    return prefix


def test_a_read_only_terminal_folder_is_one_line(ready: Rig) -> None:
    prefix = read_only(ready.folder)
    try:
        before = snapshot(ready.folder)
        money = balance(ready.host)
        sale = pos_terminal("purchase", "--amount", AMOUNT, "--pan", PAN, "--expiry", EXPIRY,
                            "--data", str(ready.folder), "--host", ready.host.url, prefix=prefix)
        assert_refused(sale, before, ready.folder)
        assert "counters.json" in sale.err
        assert balance(ready.host) == money, "nothing was sent"
        status = pos_terminal("status", "--data", str(ready.folder), prefix=prefix)
        assert status.code == 0 and "keystore: ok" in status.out, status.err
    finally:
        ready.folder.chmod(0o700)


def test_a_journal_that_cannot_be_written_is_a_warning_beside_the_outcome(ready: Rig) -> None:
    journal = ready.folder / "journal.jsonl"
    journal.unlink()
    journal.mkdir()  # nothing can be renamed over a folder, even by root
    sale = buy(ready, "--json")
    assert sale.code == 0 and sale.json["outcome"] == "approved"
    assert "warning: the journal was not written" in sale.err and len(sale.err.splitlines()) == 1
    status = process(ready, "status", "--json")
    assert status.code == 0 and status.json["journal"]["error"]


def test_json_refusals_are_a_document_and_one_line(ready: Rig) -> None:
    run = process(ready, "purchase", "--amount", "x", "--pan", PAN, "--expiry", EXPIRY, "--json")
    assert run.code == 2 and json.loads(run.out)["error"] == "usage"
    assert len(run.err.splitlines()) == 1


# --- any damaged byte of the keystore, in process for breadth --------------------------------------


@pytest.fixture(scope="module")
def saved_keystore(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """A keystore with every key and its storage key, as bytes."""
    folder = tmp_path_factory.mktemp("keystore")
    store = Keystore(folder / "keystore.json", folder / "storage.key")
    store.create()
    store.save(keyset_for(7))
    return store.path.read_bytes(), store.storage_key_path.read_bytes()


def same_hex(damaged: bytes, original: bytes) -> bool:
    try:
        return bytes.fromhex(damaged.decode("ascii")) == bytes.fromhex(original.decode("ascii"))
    except ValueError:
        return False


@settings(max_examples=400, deadline=None, database=None)
@given(data=st.data())
def test_any_damaged_byte_of_the_keystore_is_a_keystore_error(
        saved_keystore: tuple[bytes, bytes], data: st.DataObject) -> None:
    """Any byte replaced, dropped or added, in the keystore or its storage key: a KeystoreError
    (K1), never another exception, never a key set."""
    keystore, storage_key = saved_keystore
    target = data.draw(st.sampled_from(["keystore", "storage key"]))
    original = keystore if target == "keystore" else storage_key
    at = data.draw(st.integers(0, len(original) - 1))
    how = data.draw(st.sampled_from(["replace", "drop", "insert"]))
    byte = data.draw(st.integers(0, 255).filter(lambda b: how != "replace" or b != original[at]))
    damaged = {"replace": original[:at] + bytes([byte]) + original[at + 1:],
               "drop": original[:at] + original[at + 1:],
               "insert": original[:at] + bytes([byte]) + original[at:]}[how]
    if damaged.rstrip(b"\n") == original.rstrip(b"\n") or (
            target == "storage key" and same_hex(damaged, original)):
        return  # the final newline, or whitespace among the hex digits, is not damage
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        (folder / "keystore.json").write_bytes(damaged if target == "keystore" else keystore)
        (folder / "storage.key").write_bytes(damaged if target == "storage key" else storage_key)
        with pytest.raises(KeystoreError):
            Keystore(folder / "keystore.json", folder / "storage.key").load()

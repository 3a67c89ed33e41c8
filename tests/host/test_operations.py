"""Operators, dual control and the audit trail with real `pos-host` processes and real files
(docs/operations.md). Passwords go through the environment, as an operator's script would give
them; scrypt runs at a test cost (POSEMU_SCRYPT_LOG2N=10) which each hash records."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from host.access import ANY, RULES
from host.operators import ROLES
from protocol.transport.tcp import TransportError
from tests.host.client import Card, ClientTerminal, Link, tmk_from_ceremony
from tests.support import COMMAND_TIMEOUT, REPO, host_command, running_host, start_host

MID = "M00000000000001"
PASSWORDS = {"alice": "alice-admin-1", "carol": "carol-keys-22", "dave": "dave-keys-333",
             "erin": "erin-audits-4"}
STAFF = {"carol": "custodian", "dave": "custodian", "erin": "auditor"}


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("POSEMU_")}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), base.get("PYTHONPATH")]))
    return {**base, "POSEMU_SCRYPT_LOG2N": "10", **extra}


def run(data: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*host_command(), "--data", str(data), *args], capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT, env=env(**extra), check=False,
                          stdin=subprocess.DEVNULL)


def as_(name: str, second: str | None = None) -> dict[str, str]:
    """The environment that logs in `name` (and a second custodian)."""
    extra = {"POSEMU_OPERATOR_PASSWORD": PASSWORDS[name]}
    if second:
        extra["POSEMU_SECOND_PASSWORD"] = PASSWORDS[second]
    return extra


def login(name: str, second: str | None = None) -> list[str]:
    return ["--operator", name, *(["--second-operator", second] if second else [])]


def ok(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.startswith(("{", "[")) else done.stdout


def audit(data: Path, *args: str) -> list[dict[str, Any]]:
    return ok(run(data, "--json", "audit", "show", *login("erin"), *args, **as_("erin")))


@pytest.fixture(scope="module")
def controlled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A host made with access control, an administrator, two custodians and an auditor."""
    data = tmp_path_factory.mktemp("ops") / "host"
    ok(run(data, "init", "--access-control", "--operator", "alice",
           POSEMU_NEW_PASSWORD=PASSWORDS["alice"]))
    for name, role in STAFF.items():
        ok(run(data, "operator", "add", name, "--role", role, *login("alice"), **as_("alice"),
               POSEMU_NEW_PASSWORD=PASSWORDS[name]))
    return data


def test_a_ceremony_needs_two_different_custodians(controlled: Path) -> None:
    alone = run(controlled, "terminal", "add", "T0DUAL01", "--merchant", MID, *login("carol"),
                **as_("carol"))
    twice = run(controlled, "terminal", "add", "T0DUAL01", "--merchant", MID,
                *login("carol", "carol"), **as_("carol", "carol"))
    admin = run(controlled, "terminal", "add", "T0DUAL01", "--merchant", MID,
                *login("alice", "carol"), **as_("alice", "carol"))
    for refused in (alone, twice, admin):
        assert refused.returncode == 1 and refused.stdout == ""
        assert refused.stderr.startswith("pos-host: refused (access control on): ")
        assert refused.stderr.count("\n") == 1
    assert "second key custodian" in alone.stderr
    assert "another person" in twice.stderr
    assert "two different key custodians; alice is administrator" in admin.stderr
    listed = ok(run(controlled, "--json", "terminal", "list", *login("erin"), **as_("erin")))
    assert listed == []  # nothing was made

    made = ok(run(controlled, "--json", "terminal", "add", "T0DUAL01", "--merchant", MID,
                  *login("carol", "dave"), **as_("carol", "dave")))
    assert made["tid"] == "T0DUAL01"
    entries = audit(controlled, "--tid", "T0DUAL01")
    assert [(e["event"], e["operator"], e["detail"].get("second")) for e in entries] == [
        ("ceremony", "carol", "dave")]
    refusals = [e for e in audit(controlled) if e["event"] == "refused"
                and e["detail"]["command"] == "terminal add"]
    assert len(refusals) == 3


def test_an_unknown_name_and_a_wrong_password_are_refused_in_the_same_words(
        controlled: Path) -> None:
    wrong = run(controlled, "keys", "schedule", "--operator", "carol",
                POSEMU_OPERATOR_PASSWORD="not-carols-password")
    unknown = run(controlled, "keys", "schedule", "--operator", "mallory",
                  POSEMU_OPERATOR_PASSWORD="not-carols-password")
    assert wrong.returncode == unknown.returncode == 1
    assert wrong.stderr == unknown.stderr == (
        "pos-host: refused (access control on): operator: unknown name or wrong password\n")
    tried = [e["operator"] for e in audit(controlled) if e["event"] == "refused"
             and e["detail"]["command"] == "keys schedule"]
    assert tried == ["carol", "mallory"]


def test_faults_are_for_an_administrator_and_marked_in_the_trail(controlled: Path) -> None:
    ok(run(controlled, "terminal", "add", "T0FAULT1", "--merchant", MID,
           *login("dave", "carol"), **as_("dave", "carol")))
    refused = run(controlled, "keys", "expire", "T0FAULT1", *login("carol"), **as_("carol"))
    assert "needs administrator; carol is custodian" in refused.stderr
    assert run(controlled, "keys", "revoke", "T0FAULT1", "--tmk", *login("alice"),
               **as_("alice")).returncode == 1  # dual control, whoever asks
    ok(run(controlled, "keys", "revoke", "T0FAULT1", *login("alice"), **as_("alice")))
    events = [(e["event"], e["detail"].get("fault", False)) for e in
              audit(controlled, "--tid", "T0FAULT1")]
    assert events == [("ceremony", False), ("revoked", False)]


def test_access_off_needs_dual_control(controlled: Path) -> None:
    refused = run(controlled, "access", "off", *login("alice"), **as_("alice"))
    assert "dual control" in refused.stderr
    shown = ok(run(controlled, "--json", "access", "show", *login("erin"), **as_("erin")))
    assert shown["access"] == "access control on"


def test_no_password_reaches_the_database_or_the_audit_rows(controlled: Path) -> None:
    ceremony = ok(run(controlled, "--json", "terminal", "add", "T0SECRET", "--merchant", MID,
                      *login("carol", "dave"), **as_("carol", "dave")))
    raw = b"".join(p.read_bytes() for p in controlled.iterdir() if p.name.startswith("host.db"))
    for secret in PASSWORDS.values():
        assert secret.encode() not in raw
    for part in ceremony["components"]:
        assert part["component"].encode() not in raw
        assert part["component"].lower().encode() not in raw
    text = json.dumps(audit(controlled))
    assert all(p not in text for p in PASSWORDS.values())
    assert all(c["component"] not in text for c in ceremony["components"])


def test_the_prompted_password_is_never_on_the_command_line(controlled: Path, tmp_path: Path
                                                            ) -> None:
    """At a terminal the password is asked (getpass): while the command waits for it, its
    /proc/PID/cmdline has the operator's name and no password; typed in, the command runs."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        ["setsid", "--ctty", *host_command(), "--data", str(controlled), "--json", "keys",
         "schedule", "--operator", "erin"], stdin=follower, stdout=subprocess.PIPE,
        stderr=follower, env=env())
    os.close(follower)
    try:
        seen = b""
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while b"password of 'erin':" not in seen and time.monotonic() < deadline:
            if select.select([leader], [], [], 1.0)[0]:
                seen += os.read(leader, 1024)
        assert b"password of 'erin':" in seen
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        assert b"erin" in cmdline and PASSWORDS["erin"].encode() not in cmdline
        os.write(leader, PASSWORDS["erin"].encode() + b"\n")
        out, _ = process.communicate(timeout=COMMAND_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()
        os.close(leader)
    assert process.returncode == 0
    assert isinstance(json.loads(out), list)


def test_the_permission_table_in_the_docs_is_the_one_the_code_reads() -> None:
    text = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text.split("## Roles and what each may do")[1].split("\n## ")[0]
    documented = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            command, who, dual, fault = (cell.strip() for cell in line.strip("|").split("|"))
            documented[command.strip("`")] = (who, dual, fault)
    expected = {}
    for command, rule in RULES.items():
        who = ("two different custodians" if rule.dual else "any role" if rule.roles == ANY
               else ", ".join(r for r in ROLES if r in rule.roles))
        expected[command] = (who, "yes" if rule.dual else "no", "yes" if rule.fault else "no")
    assert documented == expected


# --- the chain ----------------------------------------------------------------------------------


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    """A lab host (no access control) with a short trail: made, two ceremonies, a fault."""
    data = tmp_path / "host"
    ok(run(data, "init"))
    for tid in ("T0CHAIN1", "T0CHAIN2"):
        ok(run(data, "terminal", "add", tid, "--merchant", MID))
    ok(run(data, "keys", "revoke", "T0CHAIN1"))
    return data


def verify(data: Path) -> tuple[int, dict[str, Any]]:
    done = run(data, "--json", "audit", "verify")
    return done.returncode, json.loads(done.stdout)


def edit(data: Path, *statements: str) -> None:
    conn = sqlite3.connect(data / "host.db")
    try:
        for statement in statements:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


def test_a_lab_host_works_as_before_and_audits_as_lab(lab: Path) -> None:
    assert verify(lab) == (0, {"good": True, "entries": 4, "broken_at": None, "problem": None})
    entries = ok(run(lab, "--json", "audit", "show"))
    assert [(e["seq"], e["event"], e["operator"], e["tid"]) for e in entries] == [
        (1, "host created", "lab", None), (2, "ceremony", "lab", "T0CHAIN1"),
        (3, "ceremony", "lab", "T0CHAIN2"), (4, "revoked", "lab", "T0CHAIN1")]
    assert ok(run(lab, "--json", "audit", "show", "--tid", "T0CHAIN2"))[0]["seq"] == 3


BREAKS = {
    "edited": ("UPDATE audit SET operator='mallory' WHERE seq=3", 3),
    "deleted": ("DELETE FROM audit WHERE seq=2", 2),
    "inserted": ("UPDATE audit SET seq=seq+100 WHERE seq>=3; UPDATE audit SET seq=seq-99 WHERE "
                 "seq>=100; INSERT INTO audit SELECT 3, at, event, operator, tid, generation, "
                 "detail, mac FROM audit WHERE seq=2", 3),
    "reordered": ("UPDATE audit SET seq=-seq WHERE seq IN (2, 3); "
                  "UPDATE audit SET seq=CASE seq WHEN -2 THEN 3 ELSE 2 END WHERE seq < 0", 2),
    "cut": ("DELETE FROM audit WHERE seq=4", 4),
}


@pytest.mark.parametrize("damage", list(BREAKS))
def test_audit_verify_names_the_entry_that_was_tampered_with(lab: Path, damage: str) -> None:
    statements, where = BREAKS[damage]
    edit(lab, *statements.split("; "))
    code, verdict = verify(lab)
    assert code == 1 and verdict["good"] is False
    assert verdict["broken_at"] == where, verdict
    text = run(lab, "audit", "verify")
    assert text.returncode == 1 and f"BROKEN at entry {where}" in text.stdout


def test_a_deleted_last_entry_shows_as_a_gap_once_another_is_appended(lab: Path) -> None:
    edit(lab, "DELETE FROM audit WHERE seq=4")
    ok(run(lab, "keys", "revoke", "T0CHAIN2"))
    assert verify(lab)[1]["broken_at"] == 4


def test_an_edited_operator_row_is_no_operator(controlled: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir(mode=0o700)
    for path in controlled.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
        (copy / path.name).chmod(0o600)
    edit(copy, "UPDATE operators SET role='administrator' WHERE name='erin'")
    refused = run(copy, "keys", "tamper", "T0FAULT1", *login("erin"), **as_("erin"))
    assert "operator: unknown name or wrong password" in refused.stderr


# --- kills and sign-ons -------------------------------------------------------------------------


def test_sigkill_during_audited_commands_leaves_a_chain_that_verifies(tmp_path: Path) -> None:
    """Ceremonies killed at staggered moments: each terminal that exists has its ceremony entry
    and the chain verifies (the entry is in the key change's own transaction)."""
    data = tmp_path / "host"
    ok(run(data, "init"))
    for attempt in range(8):
        process = subprocess.Popen(
            [*host_command(), "--data", str(data), "terminal", "add", f"T0KILL{attempt:02d}",
             "--merchant", MID], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
        time.sleep(0.3 + 0.1 * attempt)
        process.send_signal(signal.SIGKILL)
        process.wait(COMMAND_TIMEOUT)
    code, verdict = verify(data)
    assert code == 0, verdict
    made = {t["tid"] for t in ok(run(data, "--json", "terminal", "list"))}
    audited = {e["tid"] for e in ok(run(data, "--json", "audit", "show"))
               if e["event"] == "ceremony"}
    assert made == audited


def test_a_host_killed_among_sign_ons_leaves_one_entry_per_generation(tmp_path: Path) -> None:
    """Sign-ons as fast as one terminal can make them, the serving host SIGKILLed among them:
    every working-key generation in the database has its `issued` entry and the chain holds."""
    data = tmp_path / "host"
    ok(run(data, "init"))
    ceremony = ok(run(data, "--json", "terminal", "add", "T0SIGNON", "--merchant", MID))
    host = start_host(data)
    terminal = ClientTerminal("T0SIGNON", MID, tmk_from_ceremony(ceremony))
    signed: list[int] = []

    def sign_on_until_killed() -> None:
        with Link(host.endpoint, terminal) as link:
            while len(signed) < 500:
                try:
                    link.sign_on()
                except (OSError, TransportError):
                    return
                signed.append(1)

    signer = threading.Thread(target=sign_on_until_killed)
    signer.start()
    try:
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while len(signed) < 20 and signer.is_alive() and time.monotonic() < deadline:
            time.sleep(0.001)
        host.process.send_signal(signal.SIGKILL)  # the next sign-on is already on its way
    finally:
        signer.join(COMMAND_TIMEOUT)
        host.process.wait(COMMAND_TIMEOUT)
        host.stop()
    assert not signer.is_alive()
    assert 20 <= len(signed) < 500
    code, verdict = verify(data)
    assert code == 0, verdict
    shown = ok(run(data, "--json", "keys", "show", "T0SIGNON"))
    generations = sorted(k["generation"] for k in shown["keys"] if k["usage"] == "MAK")
    issued = sorted(e["generation"] for e in ok(run(data, "--json", "audit", "show"))
                    if e["event"] == "issued")
    assert generations == issued and len(issued) >= 20


def test_a_sign_on_is_audited_by_the_serving_host(lab: Path) -> None:
    ceremony = ok(run(lab, "--json", "terminal", "rekey", "T0CHAIN2"))
    with running_host(lab) as host:
        terminal = ClientTerminal("T0CHAIN2", MID, tmk_from_ceremony(ceremony))
        with Link(host.endpoint, terminal) as link:
            assert link.sign_on()[39] == "00"
        assert any(line.get("mode") == "lab mode, no access control"
                   for line in host.log_lines())
    issued = ok(run(lab, "--json", "audit", "show", "--tid", "T0CHAIN2"))[-1]
    assert (issued["event"], issued["operator"], issued["generation"]) == ("issued", "host", 1)
    assert verify(lab)[0] == 0


def test_a_terminal_that_refused_its_new_keys_is_audited_once_from_its_14s(lab: Path) -> None:
    """The terminal signs on twice but keeps the first keys (as when their check values do not
    match): its purchases get 14 K2 MAK missed rotation, and the trail says `kcv refused` for
    the generation it did not take, once however many 14s follow."""
    card = Card("6212345678901234", "2812", "1234")
    ok(run(lab, "card", "add", card.pan, "--expiry", card.expiry, "--pin", card.pin,
           "--balance", "100.00"))
    ceremony = ok(run(lab, "--json", "terminal", "rekey", "T0CHAIN1"))
    with running_host(lab) as host:
        terminal = ClientTerminal("T0CHAIN1", MID, tmk_from_ceremony(ceremony))
        with Link(host.endpoint, terminal) as link:
            assert link.sign_on()[39] == "00"
            assert link.exchange(terminal.sign_on_request())[0][39] == "00"  # not installed
            for _ in range(3):
                reply, _ = link.exchange(terminal.purchase(card, 100))
                assert (reply[39], reply[44]) == ("14", "K2 MAK missed rotation")
    entries = ok(run(lab, "--json", "audit", "show", "--tid", "T0CHAIN1"))
    refused = [e for e in entries if e["event"] == "kcv refused"]
    assert [(e["operator"], e["generation"]) for e in refused] == [("host", 2)]
    assert verify(lab)[0] == 0



def test_a_lab_host_switched_on_by_its_administrator(lab: Path) -> None:
    ok(run(lab, "operator", "add", "alice", "--role", "administrator",
           POSEMU_NEW_PASSWORD=PASSWORDS["alice"]))  # lab mode: no login needed yet
    wrong = run(lab, "access", "on", "--operator", "alice", POSEMU_OPERATOR_PASSWORD="nope-nope")
    assert wrong.stderr == ("pos-host: refused (lab mode, no access control): operator: unknown "
                            "name or wrong password\n")
    ok(run(lab, "access", "on", *login("alice"), **as_("alice")))
    refused = run(lab, "keys", "show", "T0CHAIN1")
    assert refused.stderr.startswith("pos-host: refused (access control on): `keys show` needs "
                                     "--operator NAME")
    ok(run(lab, "operator", "passwd", "alice", *login("alice"), **as_("alice"),
           POSEMU_NEW_PASSWORD="alice-new-pass"))
    assert run(lab, "keys", "show", "T0CHAIN1", *login("alice"), **as_("alice")).returncode == 1
    ok(run(lab, "keys", "show", "T0CHAIN1", "--operator", "alice",
           POSEMU_OPERATOR_PASSWORD="alice-new-pass"))
    events = [e["event"] for e in ok(run(lab, "--json", "audit", "show", "--operator", "alice",
                                         POSEMU_OPERATOR_PASSWORD="alice-new-pass"))]
    assert events[4:] == ["operator added", "refused", "login", "access on", "refused", "login",
                          "password changed", "refused", "login", "login"]

"""`keys schedule`, `keys rotate --all` and `report keys`, against a real host, real terminal
processes, a real SQLite database and the host's real `--log` file; the report's pure core
(host.report) on log lines written here."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from host.keydb import KeyRow
from host.report import key_report, read_events, schedule
from tests.host.support_keys import purchase, set_up, terminal
from tests.support import _env, add_card, host_command, init_host, pos_host, running_host
from tests.terminal.conftest import EXPIRY, PAN, PIN

DAY = 24 * 3600.0


def test_a_day_of_key_errors_reported_with_their_impact(tmp_path: Path) -> None:
    data = init_host(tmp_path / "host")
    add_card(data, PAN, expiry=EXPIRY, pin=PIN, balance="1000.00")
    log = tmp_path / "serve.log"
    busy, idle = tmp_path / "busy", tmp_path / "idle"
    with running_host(data, log_path=log) as host:
        set_up(data, host, "TBUSY001", busy)
        set_up(data, host, "TIDLE001", idle)
        assert purchase(busy, host)["code"] == 0
        pos_host(data, "keys", "expire", "TBUSY001")
        pos_host(data, "keys", "revoke", "TIDLE001")
        blocked = purchase(busy, host, 0, "2.50")
        assert blocked.get("reason") == "K2 WK expired", blocked
        # the 14 left the sale pending: its reversal meets the K2 too, then the sign-on
        # lets it through and the sale goes
        assert purchase(busy, host, 0, "1.00", "--auto-signon")["code"] == 0
        assert purchase(idle, host, 0, "4.00")["reason"] == "K1 WK revoked/signed off"
    report = pos_host(data, "report", "keys", "--log", str(log), "--within", "2h")
    by_tid = {t["tid"]: t for t in report["terminals"]}
    busy_row, idle_row = by_tid["TBUSY001"], by_tid["TIDLE001"]
    assert busy_row["by_reason"] == {"K2 WK expired": 2}  # the sale and its reversal
    assert busy_row["blocked_sales"] == 1 and busy_row["blocked_amount"] == "2.50"
    assert busy_row["first_14_to_approval_s"] > 0 and not busy_row["still_failing"]
    assert busy_row["working_keys"]["generation"] == 2 and busy_row["at_risk"] == []
    assert busy_row["tmk"]["expires_in_s"] > 300 * DAY
    assert idle_row["by_reason"] == {"K1 WK revoked/signed off": 1}
    assert idle_row["blocked_amount"] == "4.00" and idle_row["first_14_to_approval_s"] is None
    assert idle_row["last_sign_on"] is not None
    assert set(idle_row["at_risk"]) == {"no working keys",
                                        "key errors not yet followed by an approval"}
    fleet = report["fleet"]
    assert fleet["at_risk"] == ["TIDLE001"] and fleet["blocked_sales"] == 2
    assert fleet["blocked_amount"] == "6.50"
    assert fleet["most_frequent_causes"][0] == {"reason": "K2 WK expired", "count": 2}
    assert PAN not in json.dumps(report), "no card number in a report"
    text = pos_host_text(data, "report", "keys", "--log", str(log))
    assert "TIDLE001" in text and "most frequent causes: K2 WK expired x2" in text


def pos_host_text(data: Path, *args: str) -> str:
    """The text a person sees (no --json)."""
    done = subprocess.run([*host_command(), "--data", str(data), *args], capture_output=True,
                          text=True, timeout=60, env=_env(), check=True)
    return done.stdout


def test_schedule_and_a_planned_bulk_rotation(tmp_path: Path) -> None:
    data = init_host(tmp_path / "host")
    add_card(data, PAN, expiry=EXPIRY, pin=PIN, balance="1000.00")
    folder = tmp_path / "t"
    with running_host(data, "--key-lifetime", "1h", "--renew-before", "2h") as host:
        set_up(data, host, "TROT0001", folder)
        set_up(data, host, "TNEW0001", tmp_path / "n", sign_on=False)
        due = pos_host(data, "keys", "schedule", "--within", "2h")
        assert [(d["tid"], d["keys"]) for d in due] == [("TROT0001", "WK")]
        assert pos_host(data, "keys", "schedule", "--within", "10m") == []
        assert len(pos_host(data, "keys", "schedule", "--within", "400d")) == 3  # + two TMKs
        rotated = pos_host(data, "keys", "rotate", "--all", "--older-than", "0s", "--grace", "30m")
        assert {r["tid"]: r["action"] for r in rotated} == {"TROT0001": "due", "TNEW0001": "skipped"}
        assert pos_host(data, "keys", "schedule", "--within", "31m")[0]["tid"] == "TROT0001"
        young = pos_host(data, "keys", "rotate", "--all", "--older-than", "20h")
        assert [r["why"] for r in young if r["tid"] == "TROT0001"] == ["younger than --older-than"]
        # the planned rotation reaches the terminal as a renewal, never as a key error
        answer = purchase(folder, host)
        assert answer["code"] == 0 and answer["renewal"][0]["outcome"] == "ok"
        assert terminal(folder, host, 0, "status")["code"] == 0
    refused = pos_host(data, "keys", "rotate", "--all", check=False)
    assert refused["returncode"] == 2 and "--older-than" in refused["error"]


def _row(usage: str, generation: int, created: float, lifetime: float) -> KeyRow:
    return KeyRow(usage, generation, None if usage == "TMK" else "003", "ABCDEF", created,
                  lifetime, "active")


def test_the_report_core_reads_only_message_lines_and_counts_within_since() -> None:
    lines = [
        '{"event":"listening","ts":1}',
        "not json",
        '{"ts":100,"tid":"T1","mti":"0200","amount":"000000001000","rc":"14",'
        '"reason":"K3 MAK mismatch"}',
        '{"ts":200,"tid":"T1","mti":"0200","amount":"000000000500","rc":"14",'
        '"reason":"K3 MAK mismatch","request_fields":{"3":"200000"}}',
        '{"ts":5000,"tid":"T1","mti":"0200","amount":"000000002000","rc":"14",'
        '"reason":"K2 MAK missed rotation"}',
        '{"ts":5100,"tid":"T1","mti":"0200","amount":"000000002000","rc":"00"}',
        '{"ts":5200,"tid":"T1","mti":"0800","rc":"14","reason":"K1 TMK not active"',  # torn
    ]
    events = read_events(lines)
    assert [e.ts for e in events] == [100, 200, 5000, 5100]
    assert [e.sale for e in events] == [True, False, True, True], "a traced void is no sale"
    rows = {"T1": [_row("TMK", 1, 0, 10 * DAY), _row("MAK", 3, 4000, DAY)]}
    whole = key_report(rows, events, now=6000, since=DAY, within=3600)["terminals"][0]
    assert whole["by_reason"] == {"K3 MAK mismatch": 2, "K2 MAK missed rotation": 1}
    assert whole["blocked_sales"] == 2 and whole["blocked_amount"] == "30.00"
    assert whole["first_14_to_approval_s"] == 5000.0 and whole["last_sign_on"] == 4000
    late = key_report(rows, events, now=6000, since=1500, within=3600)["terminals"][0]
    assert late["by_reason"] == {"K2 MAK missed rotation": 1}
    assert late["first_14_to_approval_s"] == 100.0


def test_schedule_lists_the_soonest_first_and_the_expired() -> None:
    rows = {"A": [_row("TMK", 1, 0, DAY), _row("MAK", 2, 0, 100)],
            "B": [_row("TMK", 1, 0, 10 * DAY), _row("MAK", 1, 50, 10_000)]}
    due = schedule(rows, now=200, within=DAY)
    assert [(d["tid"], d["keys"], d["expired"]) for d in due] == [
        ("A", "WK", True), ("B", "WK", False), ("A", "TMK", False)]

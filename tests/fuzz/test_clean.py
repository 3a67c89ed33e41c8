"""Against a correct host the oracles stay quiet: real `pos-host` over TCP (every layer, with a
key-injection file for the session layer) and over a served pty (message, session and link)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fuzz.conftest import MID, SERIAL_LINK, TID, fuzz

PAN = "6212345678901234"


def test_pos_host_over_tcp_has_no_finding(pos_host, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    run = fuzz("--target", f"tcp://{pos_host.running.endpoint}", "--keys", str(pos_host.keys),
               "--merchant", MID, "--layers", "frame,message,session", "--cases", "900",
               "--seconds", "20", "--timeout", "3", "--seed", "7", "--report", str(report),
               "--findings", str(tmp_path / "f"))
    assert run.code == 0, run.out + run.err
    assert run.err == ""  # no status line when stderr is not a terminal
    doc = json.loads(report.read_text())
    assert doc["findings"] == [] and doc["cases"] == 900 and doc["seed"] == 7
    assert doc["cases_per_second"] > 0 and doc["layers"] == ["frame", "message", "session"]
    assert not (tmp_path / "f").exists()
    log = pos_host.running.log_lines()
    codes = {line.get("rc") for line in log}
    assert {"00", "56", "94", "30", "12", "14"} <= codes, codes  # the session reached past the MAC
    assert PAN not in run.out + report.read_text()


def test_pos_host_over_a_pty_has_no_finding(pos_host_serial) -> None:
    host, port = pos_host_serial
    run = fuzz("--serial", SERIAL_LINK.replace("PORT", port), "--keys", str(host.keys),
               "--tid", TID, "--merchant", MID, "--layers", "message,session,link", "--cases", "45",
               "--seconds", "25", "--timeout", "3", "--json")
    assert run.code == 0, run.out + run.err
    assert run.json["findings"] == [] and run.json["cases"] == 45
    assert any(line.get("conn", "").startswith("serial") for line in host.running.log_lines())

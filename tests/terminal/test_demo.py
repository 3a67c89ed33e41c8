"""scripts/demo, run as a developer runs it: each 14 shows its reason, then the diagnosis, then
the recovery, and nothing it started is left running."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXPECTED = {
    "4.": "KEY ERROR 14 K1 WK",
    "5.": "KEY ERROR 14 K2 MAK",
    "6.": "KEY ERROR 14 K2 WK",
    "7.": "KEY ERROR 14 K3 MAK",
    "8.": "KEY ERROR 14 K3 MAK KCV mismatch",
}


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.slow
def test_demo_shows_each_14_with_its_diagnosis_and_recovery(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSEMU_")}
    env["TMPDIR"] = str(tmp_path)  # the demo's work folder, so its processes can be told apart
    done = subprocess.run(["bash", "scripts/demo", "--no-color"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    sections = dict(re.findall(r"^== (\d+\.|done)[^\n]*\n(.*?)(?=^== |\Z)", out, re.M | re.S))
    assert "APPROVED" in sections["3."]
    for number, error in EXPECTED.items():
        text = sections[number]
        assert error in text, f"section {number}"
        positions = [text.index(error), text.index("DIAGNOSIS of 14"),
                     text.index("fix, in this order"), text.rindex("sign-on: OK"),
                     text.rindex("APPROVED")]
        assert positions == sorted(positions), f"section {number} out of order"
        assert "real-world reasons" in text
    assert "keeps its old keys" in sections["8."]
    lost = sections["9."]
    positions = [lost.index("its reversal is pending"), lost.index("pending reversal: purchase"),
                 lost.index("reversal: OK"), lost.rindex("APPROVED")]
    assert positions == sorted(positions), "section 9. out of order"
    balances = [float(b) for b in re.findall(r"balance: ([0-9.]+)", lost)]
    assert len(balances) == 3 and balances[1] == pytest.approx(balances[0] - 12.34)
    assert balances[2] == pytest.approx(balances[0] - 12.34), "the reversal lost or took money"
    printed = [line for line in out.splitlines() if not line.startswith("$ ")]
    assert not [line for line in printed if "6212345678901234" in line], "a PAN in clear"
    assert not processes_mentioning(str(tmp_path)), "the demo left processes running"
    assert not list(tmp_path.iterdir()), "the demo left its work folder behind"

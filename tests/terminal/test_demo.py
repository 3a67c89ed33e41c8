"""scripts/demo, run as a developer runs it: its scenes are catalogue scenarios told as a story;
each 14 shows its reason, then the diagnosis, then the recovery, and nothing it started is left
running."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from terminal.scenario.model import CATALOGUE, demo_scenes

REPO = Path(__file__).resolve().parents[2]
EXPECTED = {  # the scenes of terminal/scenario/demo.toml that show a 14
    "2.": "KEY ERROR 14 K1 WK revoked",
    "3.": "KEY ERROR 14 K2 MAK missed rotation",
    "4.": "KEY ERROR 14 K2 WK expired",
    "5.": "KEY ERROR 14 K3 PIK bad length/parity",
    "6.": "KEY ERROR 14 K3 PIK KCV mismatch",
    "7.": "KEY ERROR 14 K2 MAK missed rotation",
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
    assert "APPROVED" in sections["1."] and "balance: 87.66" in sections["1."]
    assert "$ pos-terminal load-tmk" in sections["1."]  # the setup, shown once
    for number, error in EXPECTED.items():
        text = sections[number]
        assert error in text, f"section {number}"
        positions = [text.index(error), text.index("DIAGNOSIS of 14"),
                     text.index("fix, in this order"), text.rindex("sign-on: OK"),
                     text.rindex("APPROVED")]
        assert positions == sorted(positions), f"section {number} out of order"
        assert "real-world reasons" in text
    assert "POWER CUT" in sections["7."]
    line = sections["6."]
    assert line.index("K3 MAK KCV mismatch") > line.index("K3 PIK KCV mismatch")  # the noisy relay
    assert "keystore ok: TMK generation 1" in line  # the old keys kept
    lost = sections["8."]
    positions = [lost.index("its reversal is pending"), lost.index("pending reversal: purchase"),
                 lost.index("reversal: approved"), lost.rindex("APPROVED")]
    assert positions == sorted(positions), "section 8. out of order"
    balances = [float(b) for b in re.findall(r"balance: ([0-9.]+)", lost)]
    assert len(balances) == 3 and balances[1] == pytest.approx(balances[0] - 12.34)
    assert balances[2] == pytest.approx(balances[0] - 12.34), "the reversal lost or took money"
    assert "8 of 8 scenes showed what they should" in sections["done"]
    assert "NOT AS EXPECTED" not in out
    assert "6212345678901234" not in out, "a PAN in clear"
    assert not processes_mentioning(str(tmp_path)), "the demo left processes running"
    assert not list(tmp_path.iterdir()), "the demo left its work folder behind"


def test_every_scene_is_a_catalogue_scenario() -> None:
    """The demo has no scenes of its own: each is a built-in scenario, found by name."""
    scenes = demo_scenes()
    assert [s.scenario.name for s in scenes][:2] == ["first-purchase", "key-disclosed"]
    assert {s.scenario.path.parent for s in scenes} == {CATALOGUE}
    source = (REPO / "scripts/demo.py").read_text()
    assert "subprocess" not in source and "noisy_line" not in source  # the runner does it all

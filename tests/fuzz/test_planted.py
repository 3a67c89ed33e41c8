"""Each planted bug of the buggy host is found within a bounded number of cases, shrunk, saved
as JSON in --findings, and reproduced by `pos-fuzz replay`; all with real processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fuzz.buggy_host import BUGS
from tests.fuzz.conftest import SERIAL_LINK, fuzz

# bug: (layers, cases) -- the layers that reach it, and the bound within which seed 0 finds it
PLANTED: dict[str, tuple[str, int]] = {
    "crash": ("message", 200),
    "hang": ("message", 200),
    "malformed": ("frame,message", 200),
    "wrong_mti": ("message", 200),
    "echo": ("message", 200),
    "malfunction": ("session", 200),
    "mac": ("session", 200),
    "closed": ("message", 100),
    "latency": ("frame,message", 300),
}
COMMON = ("--timeout", "1", "--shrink-seconds", "1", "--restart-wait", "5", "--seconds", "30")


def test_every_bug_has_its_case() -> None:
    assert set(PLANTED) == set(BUGS)


def findings_of(folder: Path, oracle: str) -> list[dict]:
    docs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    return [d for d in docs if d["oracle"] == oracle]


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_a_planted_bug_is_found_shrunk_saved_and_replayed(bug: str, buggy, buggy_keys: Path,
                                                          tmp_path: Path) -> None:
    layers, cases = PLANTED[bug]
    host = buggy(bug)
    keys = ("--keys", str(buggy_keys)) if "session" in layers else ()
    folder = tmp_path / "findings"
    run = fuzz("--target", host.url, "--layers", layers, "--cases", str(cases), "--findings",
               str(folder), "--json", *keys, *COMMON)
    assert run.code == 1, run.out + run.err
    report = run.json
    assert any(f["oracle"] == bug for f in report["findings"]), report
    assert report["cases"] <= cases
    saved = findings_of(folder, bug)
    assert saved, list(folder.iterdir())
    finding = saved[0]
    assert finding["seed"] == 0 and isinstance(finding["case"], int)
    assert finding["expected"] and finding["got"] is not None
    steps = finding["probe"]["steps"]
    size = sum(len(bytes.fromhex(h)) for s in steps for h in s["payloads"] + s["raw"])
    assert size <= finding["shrunk_from"]
    path = next(p for p in folder.glob("*.json") if json.loads(p.read_text())["oracle"] == bug)
    again = fuzz("replay", str(path), "--target", host.url, "--timeout", "1", "--json", *keys)
    assert again.code == 1, again.out + again.err
    assert again.json["reproduces"] is True


def test_shrinking_cuts_what_the_bug_does_not_need(buggy, tmp_path: Path) -> None:
    """The echo bug needs field 41 only: the shrinker drops the rest of the message."""
    host = buggy("echo")
    folder = tmp_path / "f"
    run = fuzz("--target", host.url, "--layers", "message", "--cases", "200", "--findings",
               str(folder), *COMMON)
    assert run.code == 1, run.out + run.err
    finding = findings_of(folder, "echo")[0]
    assert finding["probe"]["place"].endswith("field 41")
    assert finding["request"].split()[1:] == [finding["request"].split()[1]]  # one field left
    assert finding["request"].split()[1].startswith("41=")
    assert "shrunk_from" in finding and finding["shrunk_from"] > 40


def test_a_bug_over_a_serial_pty(buggy, tmp_path: Path) -> None:
    host = buggy("wrong_mti", serial=True)
    port = SERIAL_LINK.replace("PORT", host.where)
    folder = tmp_path / "f"
    run = fuzz("--serial", port, "--layers", "message", "--cases", "60", "--findings", str(folder),
               "--json", *COMMON)
    assert run.code == 1, run.out + run.err
    assert {f["oracle"] for f in run.json["findings"]} == {"wrong_mti"}
    path = sorted(folder.glob("*.json"))[0]
    again = fuzz("replay", str(path), "--serial", port, "--timeout", "1.5", "--json")
    assert again.code == 1 and again.json["reproduces"], again.out + again.err


def test_replay_says_when_a_finding_no_longer_reproduces(buggy, tmp_path: Path) -> None:
    host = buggy("echo")
    folder = tmp_path / "f"
    assert fuzz("--target", host.url, "--layers", "message", "--cases", "200", "--findings",
                str(folder), *COMMON).code == 1
    fixed = buggy("none")
    again = fuzz("replay", str(sorted(folder.glob("*.json"))[0]), "--target", fixed.url, "--json")
    assert again.code == 0 and again.json["reproduces"] is False, again.out + again.err

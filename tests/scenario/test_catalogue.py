"""The catalogue in CI: `pos-scenario run --all` as a process, as a user runs it. Every row of
ERROR14.md has its scenario; the JUnit XML and the SVG ladders parse; a scenario whose
expectation is wrong fails with what differed and exit 1; a bad file is one clear line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from protocol import ladder
from terminal.scenario.model import ScenarioError, catalogue, load
from tests.support import REPO

CAUSES = ("key generated wrongly", "key stored badly", "key expired", "key not updated in time",
          "hardware fault", "communication fault", "power fluctuation or cut", "key disclosed",
          "software too old for the key scheme")
PAN = "6212345678901234"


def scenario(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "terminal.scenario.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_one_scenario_per_cause_in_error14s_order() -> None:
    built = [s for s in catalogue() if s.cause]  # the others: the demo's happy path, a lost answer
    rows = [s.cause.split(" (")[0] for s in built]
    assert rows[:len(CAUSES)] == list(CAUSES)
    assert set(rows[len(CAUSES):]) <= set(CAUSES)  # more ways to one cause (a serial line)
    assert [s.reason for s in built][:len(CAUSES)] == ["K3", "K1", "K2", "K2", "K1", "K3", "K2",
                                                       "K1", "K3"]
    for s in built:  # each shows the 14, the diagnosis, and a remedy that works
        assert any(step.expect.get("rc") == "14" for step in s.steps), s.name
        assert any(step.value == ("diagnose",) for step in s.steps), s.name
        last = s.steps[-1]
        assert last.remedy and last.expect.get("outcome") == "approved", s.name


def test_the_whole_catalogue_passes_with_junit_and_svg_ladders(tmp_path: Path) -> None:
    junit, svg = tmp_path / "catalogue.xml", tmp_path / "ladder.svg"
    done = scenario("run", "--all", "--jobs", "2", "--json", "--junit", str(junit), "--ladder", str(svg))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    report = json.loads(done.stdout)
    every = len(catalogue())
    assert every > len(CAUSES)
    assert report["passed"] == every and report["failed"] == 0
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == str(every)
    assert suite.get("failures") == "0"
    assert len(suite.findall("testcase")) == every
    for item in report["scenarios"]:
        drawn = ET.parse(tmp_path / f"ladder-{item['name']}.svg").getroot()
        assert drawn.tag.endswith("svg")
        texts = " ".join(t.text or "" for t in drawn.iter("{http://www.w3.org/2000/svg}text"))
        if item["cause"]:
            assert " 14 " in f" {texts} " or "finds 14" in texts, item["name"]
        assert PAN not in texts and PAN not in done.stdout  # masked, like every trace
    assert '"components": [' not in done.stdout  # no clear TMK part in a report
    power = next(s for s in report["scenarios"] if s["name"] == "power-cut-during-key-write")
    marks = [r["label"] for r in power["ladder"] if r["side"]]
    assert any("SIGKILL" in m for m in marks)
    serial = next(s for s in report["scenarios"] if s["name"] == "serial-line-fault")
    lines = [step["output"]["line"] for step in serial["steps"]
             if isinstance(step["output"], dict) and "line" in step["output"]
             and isinstance(step["output"]["line"], dict)]
    assert sum(line["terminal_naks"] for line in lines) == 6  # 1 burst, 4 in a row, 1 on a cut
    assert any("NAKs" in r["label"] for r in serial["ladder"] if r["side"])


def test_a_wrong_expectation_fails_with_what_differed(tmp_path: Path) -> None:
    source = (REPO / "terminal/scenario/catalogue/04-key-not-updated-in-time.toml").read_text()
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(source.replace('reason = "K2 MAK missed rotation"',
                                    'reason = "K3 MAK missed rotation"'))
    junit = tmp_path / "wrong.xml"
    done = scenario("run", str(wrong), "--junit", str(junit))
    assert done.returncode == 1
    assert "reason: expected 'K3 MAK missed rotation', got 'K2 MAK missed rotation'" in done.stdout
    failure = ET.parse(junit).getroot().find("testsuite/testcase/failure")
    assert failure is not None and "K3 MAK missed rotation" in (failure.get("message") or "")


@pytest.mark.parametrize(("text", "where"), [
    ('name = "x"\ncause = "y"\n[[step]]\nterminal = "purchase"\nhost = ["a"]\n', "step[1]"),
    ('name = "x"\ncause = "y"\n[[step]]\nfault = "melt"\n', "step[1].fault"),
    ('name = "x"\ncause = "y"\n[[step]]\nhost = ["a"]\ncrash_at = "rename"\n', "crash_at"),
    ('name = "x"\ncause = 3\n[[step]]\nhost = ["a"]\n', "cause"),
    ('name = "x"\n[[step]]\nline = "flip"\nlink = "radio"\n', "step[1].link"),
    ('name = "x"\n[[step]]\nline = "flip"\nsettings = "baud=9600"\n', "step[1].settings"),
    ('name = "x"\n[[step]]\nline = "flip"\nframes = "all"\n', "step[1].frames"),
    ('name = "x"\ncause = "y"\n[[step]\n', "line 3"),
])
def test_a_bad_scenario_file_names_the_step_and_key(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=re.escape(where)):
        load(path)
    done = scenario("run", str(path))
    assert done.returncode == 2 and where in done.stderr and done.stderr.count("\n") == 1


def test_list_names_the_catalogue() -> None:
    done = scenario("list", "--json")
    assert [row["name"] for row in json.loads(done.stdout)] == [s.name for s in catalogue()]


TRACE = """>> 0800 (61 bytes)
      11 000001
      41 SCEN0001
     hex 0800
<< 0810 (120 bytes)
      11 000001
      39 00
      62 (60 bytes)
>> 0200 (90 bytes)
       2 621234******1234
      11 000002
<< 0210 (70 bytes)
      11 000002
      39 14
      44 K2 MAK missed rotation
"""


def test_a_terminal_trace_draws_as_a_ladder(tmp_path: Path) -> None:
    rungs = ladder.from_terminal_trace(TRACE)
    assert [r.label for r in rungs] == ["0800 STAN 000001", "0810 STAN 000001 00",
                                        "0200 STAN 000002",
                                        "0210 STAN 000002 14 K2 MAK missed rotation"]
    path = tmp_path / "trace.txt"
    path.write_text(TRACE)
    done = scenario("ladder", "--trace", str(path), "--svg", str(tmp_path / "t.svg"))
    assert done.returncode == 0 and "K2 MAK missed rotation" in done.stdout
    assert len(ET.parse(tmp_path / "t.svg").getroot().findall(
        "{http://www.w3.org/2000/svg}line[@class='message']")) == 4

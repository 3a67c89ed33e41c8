"""pos-fuzz's contract at its edges: exit 2 before the first case, bounded runs, masked text."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from tests.fuzz.conftest import fuzz


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_host_is_exit_2_with_one_line() -> None:
    run = fuzz("--target", f"tcp://127.0.0.1:{free_port()}", "--cases", "5")
    assert run.code == 2 and "does not accept connections" in run.err
    assert "Traceback" not in run.err and len(run.err.strip().splitlines()) == 1


def test_usage_errors_are_exit_2(tmp_path: Path) -> None:
    for argv, words in (
        (("--target", "nonsense"), "tcp://"),
        (("--target", "tcp://127.0.0.1:1", "--layers", "nope"), "unknown layer"),
        (("--target", "tcp://127.0.0.1:1", "--layers", "session"), "--keys"),
        (("--target", "tcp://127.0.0.1:1", "--layers", "link"), "--serial"),
        (("--target", "tcp://127.0.0.1:1", "--keys", str(tmp_path / "none.json")), "no such"),
        (("--target", "tcp://127.0.0.1:1", "--dialect", "klingon"), "unknown dialect"),
    ):
        run = fuzz(*argv)
        assert run.code == 2 and words in run.err, (argv, run.err)


def test_replay_of_a_file_that_is_no_finding(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"oracle": "echo"}))
    run = fuzz("replay", str(bad), "--target", "tcp://127.0.0.1:1")
    assert run.code == 2 and "not a pos-fuzz finding" in run.err


def test_bounded_by_cases_and_the_same_for_a_seed(buggy, tmp_path: Path) -> None:
    host = buggy("echo")
    argv = ("--target", host.url, "--layers", "message", "--cases", "150", "--seed", "0", "--json",
            "--shrink-seconds", "5")
    first = fuzz(*argv, "--findings", str(tmp_path / "a"))
    second = fuzz(*argv, "--findings", str(tmp_path / "b"))
    assert first.code == second.code == 1
    assert first.json["cases"] == 150

    def shape(report: dict) -> list:
        return [(f["oracle"], f["layer"], f["kind"], f["place"], f["case"], f["size"])
                for f in report["findings"]]

    assert shape(first.json) == shape(second.json)
    a = sorted(p.read_text() for p in (tmp_path / "a").glob("*.json"))
    b = sorted(p.read_text() for p in (tmp_path / "b").glob("*.json"))
    strip = [json.loads(t)["probe"] for t in a], [json.loads(t)["probe"] for t in b]
    assert strip[0] == strip[1]


def test_bounded_by_seconds(buggy) -> None:
    host = buggy("none")
    run = fuzz("--target", host.url, "--cases", "100000000", "--seconds", "1", "--json")
    assert run.code == 0 and 0 < run.json["cases"] < 100000000 and run.json["seconds"] < 5


def test_finding_texts_are_masked(buggy, buggy_keys: Path, tmp_path: Path) -> None:
    """The MAC bug's finding is about a purchase: its text shows the PAN as 6 + 4 and no MAC."""
    host = buggy("mac")
    folder = tmp_path / "f"
    run = fuzz("--target", host.url, "--keys", str(buggy_keys), "--layers", "session,message",
               "--cases", "200", "--findings", str(folder), "--shrink-seconds", "0.01", "--json")
    assert run.code == 1, run.out + run.err
    pan = "6212345678901234"
    for path in folder.glob("*.json"):
        doc = json.loads(path.read_text())
        shown = json.dumps({k: v for k, v in doc.items() if k != "probe"})
        assert pan not in shown
        if "2=" in doc["request"]:
            assert "621234******1234" in doc["request"]
    assert pan not in run.out

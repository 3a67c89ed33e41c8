"""Every pos-host command, driven with generated odd arguments over good and damaged data folders
(issue 10): never a traceback; a refusal is a non-zero exit with exactly one line on stderr and
leaves every file of the data folder byte for byte as it was.

In-process through `host.cli.main` for breadth (hundreds of command lines in seconds); the
reproductions run as real processes in test_data_checks.py. Arguments never hold NUL, which no
real command line can carry.
"""

from __future__ import annotations

import io
import shutil
import signal
import sqlite3
import tempfile
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host.cli import main
from tests.host.test_data_checks import MID, PAN, TID, snapshot

COMMAND_BOUND = 10.0  # seconds; each command takes milliseconds
SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

# Characters that have broken command lines before: separators, control characters, quotes,
# non-ASCII letters and digits that are not ASCII (full-width, Arabic-Indic), a surrogate as
# Python shows an undecodable argv byte.
ODD = st.text(st.sampled_from([*"T0123456789./\\ -_'\"\n\t\x7fÉ１２٠١٢,=:", "\udcff"]),
              max_size=20)
NUMBERS = st.sampled_from(["nan", "inf", "-inf", "1e400", "9" * 400, "１２", "١٢.٠٠", "", "0",
                           "-1", "1.234", "0x10", "1_000", " 1", "12.34", "100"])
VALID_TID = st.sampled_from([TID, "T0000002"])
TIDS = VALID_TID | ODD
MIDS = st.sampled_from([MID, "M" * 16, ""]) | ODD
DURATIONS = NUMBERS | st.sampled_from(["24h", "7d", "0s", "36500d", "36501d"]) | ODD


def _card_add(d: st.DrawFn) -> list[str]:
    return ["card", "add", d(st.sampled_from([PAN, "6212345678905678", "62123456789056７8"]) | ODD),
            "--expiry", d(st.sampled_from(["2812", "2813", "28", "２８１２"]) | ODD),
            "--pin", d(st.sampled_from(["1234", "12", "１２３４"]) | ODD),
            "--balance", d(NUMBERS | ODD)]


COMMANDS: dict[str, Callable[[st.DrawFn], list[str]]] = {
    "init": lambda d: ["init"],
    "terminal add": lambda d: ["terminal", "add", d(TIDS), "--merchant", d(MIDS),
                               "--tmk-lifetime", d(DURATIONS)],
    "terminal rekey": lambda d: ["terminal", "rekey", d(TIDS), "--components", d(NUMBERS)],
    "terminal list": lambda d: ["terminal", "list"],
    "terminal show": lambda d: ["terminal", "show", d(TIDS)],
    "terminal remove": lambda d: ["terminal", "remove", d(ODD)],
    "keys show": lambda d: ["keys", "show", d(TIDS)],
    "keys expire": lambda d: ["keys", "expire", d(TIDS)],
    "keys rotate": lambda d: ["keys", "rotate", d(TIDS), "--key-lifetime", d(DURATIONS)],
    "keys revoke": lambda d: ["keys", "revoke", d(TIDS)],
    "keys tamper": lambda d: ["keys", "tamper", d(TIDS)],
    "card add": _card_add,
    "card list": lambda d: ["card", "list"],
    # Never a spec that could really serve (pty, a URL, an existing device): each must refuse.
    "serve": lambda d: ["serve", "--serial", "/dev/ttyNOPE" + d(ODD), "--key-lifetime",
                        d(DURATIONS)],
    "stray": lambda d: ["terminal", "list", d(ODD)],
}


def _truncate(data: Path) -> None:
    db = data / "host.db"
    db.write_bytes(db.read_bytes()[:512])


def _foreign(data: Path) -> None:
    (data / "host.db").unlink()
    with sqlite3.connect(data / "host.db") as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    conn.close()


def _newer(data: Path) -> None:
    with sqlite3.connect(data / "host.db") as conn:
        conn.execute("PRAGMA user_version=99")
    conn.close()


def _wrong_lmk(data: Path) -> None:
    lmk = data / "lmk.key"
    lmk.write_bytes(bytes(b ^ 1 for b in lmk.read_bytes()))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated host.db": _truncate,
    "foreign host.db": _foreign,
    "newer host.db": _newer,
    "empty host.db": lambda data: (data / "host.db").write_bytes(b""),
    "no host.db": lambda data: (data / "host.db").unlink(),
    "wrong lmk.key": _wrong_lmk,
    "empty lmk.key": lambda data: (data / "lmk.key").write_bytes(b""),
    "short lmk.key": lambda data: (data / "lmk.key").write_bytes(b"\x00" * 31),
    "lmk.key readable by others": lambda data: (data / "lmk.key").chmod(0o644),
}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A good host (one terminal, one card), copied afresh for every example."""
    data = tmp_path_factory.mktemp("cli") / "host"
    for argv in (["init"], ["terminal", "add", TID, "--merchant", MID],
                 ["card", "add", PAN, "--expiry", "2812", "--pin", "1234", "--balance", "10"]):
        assert run(data, argv)[0] == 0
    return data


def run(data: Path, argv: list[str]) -> tuple[int, str]:
    """`pos-host --data DATA ARGV` in-process: its exit code and stderr. Any exception but
    argparse's exit is a traceback and fails the test."""
    err = io.StringIO()
    previous = signal.signal(signal.SIGALRM, _too_long)
    signal.setitimer(signal.ITIMER_REAL, COMMAND_BOUND)  # a `serve` that started would hang
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            try:
                code = main(["--data", str(data), *argv])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return code, err.getvalue()


def _too_long(signum: int, frame: object) -> None:
    raise AssertionError(f"a command ran for {COMMAND_BOUND} s instead of finishing")


def _assert_refused(code: int, stderr: str, before: dict[str, bytes], data: Path,
                    argv: list[str]) -> None:
    assert code != 0, f"{argv} succeeded"
    assert len(stderr.splitlines()) == 1, f"{argv}: {stderr!r}"
    assert "Traceback" not in stderr
    assert snapshot(data) == before, f"{argv} changed a file in the data folder"


@SETTINGS
@given(st.data(), st.sampled_from(sorted(DAMAGE)), st.sampled_from(sorted(COMMANDS)))
def test_every_command_refuses_a_damaged_data_folder_in_one_line_changing_nothing(
    template: Path, draw: st.DataObject, damage: str, command: str,
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "host"
        shutil.copytree(template, data)
        DAMAGE[damage](data)
        before = snapshot(data)
        argv = COMMANDS[command](draw.draw)
        code, stderr = run(data, [*draw.draw(st.sampled_from([[], ["--json"]])), *argv])
        _assert_refused(code, stderr, before, data, argv)


@SETTINGS
@given(st.data(), st.sampled_from(sorted(COMMANDS)))
def test_odd_arguments_on_a_good_host_succeed_or_are_refused_in_one_line_changing_nothing(
    template: Path, draw: st.DataObject, command: str,
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "host"
        shutil.copytree(template, data)
        before = snapshot(data)
        argv = COMMANDS[command](draw.draw)
        code, stderr = run(data, argv)
        if code != 0:
            _assert_refused(code, stderr, before, data, argv)


"""Every command with generated odd arguments, over a terminal folder with generated damage.

Whatever the arguments and whatever has happened to the files, `pos-terminal` never shows a
traceback; and when it refuses (exit 2) it says so in exactly one line on stderr and leaves
every file of the data folder as it was (bytes and modification times). In-process through
`terminal.cli.main` for breadth, then a sample as real processes.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from terminal import cli
from tests.support import provision_terminal
from tests.terminal.conftest import EXPIRY, MERCHANT, PAN, PIN, Host, Rig, Run
from tests.terminal.processes import pos_terminal, snapshot

ODD = ["", " ", "nan", "inf", "-inf", "-1", "0", "1e400", "１２", "١٢٣٤", "../x1", "..", ".",
       "a/b", "T\u00c9", "tcp://127.0.0.1:0", "tcp://h:99999", "http://h:1", "tcp://[::]:1",
       "0x10", "12.345", "9" * 40, "\u202e", "\x7f", "{}", "--json"]
FILES = ("journal.jsonl", "counters.json", "keystore.json", "storage.key", "terminal.json",
         "ledger.json", "pending.json")


def odd_text() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(ODD), st.text(max_size=10))


@dataclass(frozen=True)
class Case:
    damage: tuple[tuple[str, str, int, bytes], ...]
    argv: tuple[str, ...]


def options(host_url: str, folder: str) -> dict[str, st.SearchStrategy[str]]:
    """Each option with a mix of values that work and values that must be refused."""
    return {
        "--host": st.one_of(st.just(host_url), odd_text()),
        "--timeout": st.one_of(st.sampled_from(["5", "0.01"]), odd_text()),
        "--connect-timeout": st.one_of(st.just("5"), odd_text()),
        "--tid": st.one_of(st.just("P0000001"), odd_text()),
        "--dialect": st.one_of(st.sampled_from(["iso87", "cup"]), odd_text()),
        # Relative only: an odd absolute path that `init` accepts would be made on this machine.
        "--data": st.one_of(st.just(folder), odd_text().map(lambda t: t.lstrip("/") or "x")),
        "--amount": st.one_of(st.sampled_from(["1.00", "0.01"]), odd_text()),
        "--pan": st.one_of(st.just(PAN), odd_text()),
        "--expiry": st.one_of(st.just(EXPIRY), odd_text()),
        "--pin": st.one_of(st.just(PIN), odd_text()),
        "--merchant": st.one_of(st.just(MERCHANT), odd_text()),
        "--operator": st.one_of(st.just("01"), odd_text()),
        "--wk-lifetime": st.one_of(st.just("60"), odd_text()),
        "--key-set": st.one_of(st.sampled_from(["001", "003"]), odd_text()),
        "--component": st.one_of(st.just("0" * 32), odd_text()),
        "--kcv": st.one_of(st.just("000000"), odd_text()),
        "--file": odd_text(),
        "--stan": st.one_of(st.sampled_from(["1", "5000"]), odd_text()),
        "--rrn": st.one_of(st.just("000000000001"), odd_text()),
        "--batch": st.one_of(st.sampled_from(["1", "2"]), odd_text()),
        "--date": st.one_of(st.just("1201"), odd_text()),
    }


COMMANDS: dict[str, tuple[str, ...]] = {
    "init": ("--merchant", "--operator", "--wk-lifetime", "--key-set"),
    "load-tmk": ("--component", "--kcv", "--file"),
    "signon": ("--key-set",),
    "signoff": (),
    "echo": (),
    "purchase": ("--amount", "--pan", "--expiry", "--pin"),
    "status": (),
    "diagnose": (),
    "counters": ("--stan",),
    "inquiry": ("--pan", "--expiry", "--pin"),
    "void": ("--stan", "--rrn", "--batch", "--amount", "--pin"),
    "refund": ("--stan", "--batch", "--date", "--amount", "--pin"),
    "reverse": (),
    "settle": (),
    "batch": ("--batch",),
}
CARD = ("--pan", "--expiry")
REQUIRED = {"purchase": ("--amount", *CARD), "init": ("--merchant",), "inquiry": CARD,
            "void": ("--stan", *CARD), "refund": ("--stan", "--amount", *CARD)}
COMMON = ("--host", "--timeout", "--connect-timeout", "--tid", "--dialect", "--data")


@st.composite
def cases(draw: st.DrawFn, host_url: str, folder: str) -> Case:
    pool = options(host_url, folder)
    command = draw(st.sampled_from(sorted(COMMANDS)))
    argv = [command]
    if command == "init":
        argv.append(draw(st.one_of(st.just("P0000002"), odd_text())))
    if command == "counters":
        argv.append(draw(st.sampled_from(["recover", "recover", "show", ""])))
    names = [*REQUIRED.get(command, ()),
             *draw(st.lists(st.sampled_from(COMMANDS[command] + COMMON), max_size=4))]
    for name in names:
        argv += [name, draw(pool[name])]
    if "--data" not in names and draw(st.booleans()):
        argv += ["--data", folder]
    if draw(st.booleans()):
        argv.append("--json")
    damage = draw(st.lists(
        st.tuples(st.sampled_from(FILES),
                  st.sampled_from(["delete", "flip", "truncate", "append", "replace", "shape"]),
                  st.integers(0, 400), st.binary(max_size=12)),
        max_size=2, unique_by=lambda d: d[0]))
    return Case(tuple(damage), tuple(argv))


def damage(folder: Path, how: tuple[str, str, int, bytes]) -> None:
    name, kind, at, junk = how
    path = folder / name
    data = path.read_bytes() if path.exists() else b""
    if kind == "delete":
        path.unlink(missing_ok=True)
    elif kind == "flip" and data:
        index = at % len(data)
        path.write_bytes(data[:index] + bytes([data[index] ^ (1 << at % 8)]) + data[index + 1 :])
    elif kind == "truncate":
        path.write_bytes(data[: at % (len(data) + 1)])
    elif kind == "append":
        path.write_bytes(data + junk)
    elif kind == "replace":
        path.write_bytes(junk)
    elif kind == "shape":
        path.write_bytes(json.dumps([at, junk.hex(), {"stan": str(at)}]).encode())


def in_process(argv: tuple[str, ...]) -> Run:
    """main() in this process; argparse's exits become exit codes, anything else propagates
    (and fails the test: that would be a traceback)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return Run(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def template(host: Host, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """A terminal that has signed on and bought once: journal, counters and keys all present."""
    base = tmp_path_factory.mktemp("template")
    rig = Rig(host, base / "P0000001", "P0000001")
    rig.ceremony = provision_terminal(host.data, rig.tid, MERCHANT)
    assert rig.init().code == 0 and rig.load_tmk().code == 0 and rig("signon").code == 0
    assert rig.purchase("--pin", PIN).code == 0
    yield rig


_examples = itertools.count()


@contextmanager
def inside(root: Path) -> Iterator[None]:
    """The data root and the working folder are `root` for the duration."""
    old_root, old_cwd = os.environ.get("POSEMU_TERMINAL_DATA"), os.getcwd()
    os.environ["POSEMU_TERMINAL_DATA"] = str(root)
    os.chdir(root)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        if old_root is None:
            os.environ.pop("POSEMU_TERMINAL_DATA")
        else:
            os.environ["POSEMU_TERMINAL_DATA"] = old_root


def check(case: Case, template: Rig, as_process: bool = False) -> None:
    with tempfile.TemporaryDirectory(prefix=f"prop{next(_examples)}-") as scratch:
        # Three levels down, so `--data ../x` is still inside the scratch folder, and watched.
        top = Path(scratch)
        root = top / "a" / "b" / "c"
        folder = root / template.tid
        shutil.copytree(template.folder, folder)
        for how in case.damage:
            damage(folder, how)
        argv = tuple(a.replace("{FOLDER}", str(folder)) for a in case.argv)
        before = snapshot(top)
        # Relative paths (`--data x`, which `init` may well accept) land in the scratch folder.
        with inside(root):
            result = pos_terminal(*argv, cwd=root) if as_process else in_process(argv)
        event(f"{case.argv[0]} exit {result.code}")
        assert "Traceback" not in result.err + result.out, (argv, result.err)
        assert result.code in (0, 1, 2, 3), (argv, result.code, result.err)
        if result.code == 2:
            assert len(result.err.splitlines()) == 1, (argv, case.damage, result.err)
            assert snapshot(top) == before, ("a refused command changed a file", argv, case.damage)


SETTINGS = settings(deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.mark.slow
def test_no_command_line_and_no_damage_gives_a_traceback(template: Rig) -> None:
    @settings(SETTINGS, max_examples=300)
    @given(cases(template.host.url, "{FOLDER}"))
    def prop(case: Case) -> None:
        check(case, template)

    prop()


@pytest.mark.slow
def test_a_sample_as_real_processes(template: Rig) -> None:
    # A NUL cannot reach a real process's argv: such cases stay with the in-process run.
    @settings(SETTINGS, max_examples=25)
    @given(cases(template.host.url, "{FOLDER}").filter(lambda c: not any("\x00" in a for a in c.argv)))
    def prop(case: Case) -> None:
        check(case, template, as_process=True)

    prop()

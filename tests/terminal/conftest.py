"""A real pos-host process per test module, and a freshly provisioned terminal per test.

`pos-terminal` runs in-process through `terminal.cli.main` (the same code the console script
runs, without paying an interpreter start per command); the host is a real process reached over
real TCP, provisioned through its own CLI (tests/support.py).
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from terminal import cli
from tests.support import RunningHost, add_card, init_host, pos_host, provision_terminal, running_host

MERCHANT = "MERCHANT0000001"
PAN = "6212345678901234"
PIN = "1234"
EXPIRY = "2812"
_tids = itertools.count(1)


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Host:
    running: RunningHost
    data: Path
    dialect: str

    @property
    def url(self) -> str:
        return f"tcp://{self.running.endpoint}"

    def admin(self, *args: str) -> Any:
        return pos_host(self.data, *args)


def run_terminal(*argv: str) -> Run:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(list(argv))
    return Run(code, out.getvalue(), err.getvalue())


@dataclass
class Rig:
    """One terminal, provisioned at the host, initialised in its own folder."""

    host: Host
    folder: Path
    tid: str
    ceremony: dict[str, Any] = field(default_factory=dict)

    def __call__(self, command: str, *args: str) -> Run:
        return run_terminal(command, "--data", str(self.folder), "--host", self.host.url,
                            "--timeout", "5", *args)

    def init(self) -> Run:
        return run_terminal("init", self.tid, "--merchant", MERCHANT, "--data", str(self.folder),
                            "--host", self.host.url, "--dialect", self.host.dialect)

    def component_args(self) -> list[str]:
        args = []
        for part in self.ceremony["components"]:
            args += ["--component", part["component"], "--kcv", part["kcv"]]
        return [*args, "--tmk-kcv", self.ceremony["tmk_kcv"]]

    def load_tmk(self) -> Run:
        return self("load-tmk", *self.component_args())

    def purchase(self, *extra: str, amount: str = "12.34") -> Run:
        return self("purchase", "--amount", amount, "--pan", PAN, "--expiry", EXPIRY, *extra)

    def keys(self) -> dict[str, dict[str, Any]]:
        """Each key's status, without its age (which moves between two calls)."""
        rows = self("status", "--json").json["keys"]
        return {row["name"]: {k: v for k, v in row.items() if k != "age_seconds"} for row in rows}


def start(tmp_path_factory: pytest.TempPathFactory, dialect: str, *serve: str) -> Iterator[Host]:
    data = init_host(tmp_path_factory.mktemp("host") / "data")
    add_card(data, PAN, expiry=EXPIRY, pin=PIN, balance="1000.00")
    with running_host(data, "--dialect", dialect, *serve) as running:
        yield Host(running, data, dialect)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    yield from start(tmp_path_factory, "iso87")


def new_rig(host: Host, tmp_path: Path, *, provision: bool = True) -> Rig:
    tid = f"T{next(_tids):07d}"
    rig = Rig(host, tmp_path / tid, tid)
    if provision:
        rig.ceremony = provision_terminal(host.data, tid, MERCHANT)
    return rig


@pytest.fixture
def fresh(host: Host, tmp_path: Path) -> Rig:
    """Provisioned at the host, initialised, no TMK loaded yet."""
    rig = new_rig(host, tmp_path)
    assert rig.init().code == 0
    return rig


@pytest.fixture
def ready(fresh: Rig) -> Rig:
    """TMK loaded and signed on."""
    assert fresh.load_tmk().code == 0
    assert fresh("signon").code == 0
    return fresh

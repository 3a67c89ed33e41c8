"""Real processes for the fuzzer's tests: the buggy host (tests/fuzz/buggy_host.py) on
127.0.0.1 port 0 or a pty, `pos-host` on TCP or a pty, and `pos-fuzz` itself.

    def test_x(buggy, tmp_path):
        host = buggy("echo")                       # python -m tests.fuzz.buggy_host --bug echo
        run = fuzz("--target", host.url, ...)      # pos-fuzz as a process: .code .out .err .json
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from host.admin import claim_injection_file, write_injection_file
from protocol.crypto import generate_key
from tests.support import REPO, RunningHost, _env, _read_line, init_host, provision_terminal, start_host

BUGGY_TID, BUGGY_MID = "BUGGY001", "BUGGYMERCHANT01"
TID, MID = "T0000001", "M00000000000001"
RUN_TIMEOUT = 60.0


@dataclass
class Done:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


def fuzz_command() -> list[str]:
    installed = shutil.which("pos-fuzz", path=str(Path(sys.executable).parent))
    return [installed] if installed else [sys.executable, "-m", "terminal.fuzz.cli"]


def fuzz(*argv: str) -> Done:
    done = subprocess.run([*fuzz_command(), *argv], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, env=_env(), cwd=REPO, check=False)
    return Done(done.returncode, done.stdout, done.stderr)


@dataclass
class Buggy:
    process: subprocess.Popen[bytes]
    where: str

    @property
    def url(self) -> str:
        return f"tcp://{self.where}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        if self.process.stdout:
            self.process.stdout.close()


@pytest.fixture(scope="session")
def buggy_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A key-injection file as `pos-host terminal add --out` writes it, for the buggy host."""
    path = tmp_path_factory.mktemp("buggykeys") / "tmk.json"
    write_injection_file(claim_injection_file(path), BUGGY_TID, BUGGY_MID,
                         generate_key("TDES", 16, "TMK", os.urandom))
    return path


@pytest.fixture
def buggy(buggy_keys: Path) -> Iterator[Callable[..., Buggy]]:
    started: list[Buggy] = []

    def start(bug: str, *, serial: bool = False) -> Buggy:
        argv = [sys.executable, "-m", "tests.fuzz.buggy_host", "--bug", bug, "--keys", str(buggy_keys)]
        process = subprocess.Popen(argv + (["--serial"] if serial else []), stdout=subprocess.PIPE,
                                   env=_env(), cwd=REPO)
        host = Buggy(process, "")
        started.append(host)
        line, _ = _read_line(process, b"", 15.0)
        host.where = line.split()[2]
        return host

    yield start
    for host in started:
        host.stop()


@dataclass
class PosHost:
    running: RunningHost
    keys: Path


@pytest.fixture(scope="module")
def pos_host_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("poshost")
    data = init_host(folder / "data")
    keys = folder / "tmk.json"
    provision_terminal(data, TID, MID, out=keys)
    return data, keys


@pytest.fixture
def pos_host(pos_host_data: tuple[Path, Path]) -> Iterator[PosHost]:
    data, keys = pos_host_data
    running = start_host(data)
    try:
        yield PosHost(running, keys)
    finally:
        assert running.stop() == 0


@pytest.fixture
def pos_host_serial(pos_host_data: tuple[Path, Path]) -> Iterator[tuple[PosHost, str]]:
    data, keys = pos_host_data
    running = start_host(data, "--serial", SERIAL_LINK.replace("PORT", "pty"))
    try:
        line = running.next_line()
        assert line.startswith("listening serial /dev/"), line
        yield PosHost(running, keys), line.split()[2]
    finally:
        assert running.stop() == 0


SERIAL_LINK = "PORT,inter_byte_timeout=0.1,ack_timeout=0.5"
"""Short link timers on both ends (the buggy host's pty uses the same), so link cases are quick."""

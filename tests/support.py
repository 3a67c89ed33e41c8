"""Shared end-to-end helpers: real `pos-host` processes on 127.0.0.1, provisioned through its CLI.

    from tests.support import init_host, provision_terminal, add_card, running_host

    data = init_host(tmp_path / "host")                    # pos-host init
    ceremony = provision_terminal(data, "T0000001", "M00000000000001")
    #   -> {"tid", "merchant", "tmk_kcv", "components": [{"component": HEX, "kcv": HEX6}, ...]}
    #   provision_terminal(..., out=path) also writes a key-injection file (docs/host.md)
    add_card(data, "6212345678901234", expiry="2812", pin="1234", balance="100.00")
    with running_host(data) as host:                       # pos-host serve --tcp 127.0.0.1:0
        host.port, host.endpoint                           # 12345, "127.0.0.1:12345"
        pos_host(data, "keys", "rotate", "T0000001")       # any command, its --json output
        host.log_lines()                                   # the JSON log, one dict per line
    # leaving the block sends SIGTERM and waits; host.returncode is then 0

Every call is bounded by a timeout; a host that fails to start raises with its log attached.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0


def host_command() -> list[str]:
    """The installed `pos-host` beside this interpreter, else the same CLI through -m."""
    installed = shutil.which("pos-host", path=str(Path(sys.executable).parent))
    return [installed] if installed else [sys.executable, "-m", "host.cli"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("POSEMU_HOST_DATA", None)
    return env


def kill_points(fixed: list[float], landed_after: Callable[[], bool]) -> Iterator[float]:
    """Delays after which to kill a command: `fixed` ones, then (on a loaded machine, where
    all of them land before its commit) later ones, doubling up to 48 s, while
    `landed_after()` says none has landed after the commit yet. Bounded; a command that never
    commits still leaves `landed_after()` false for the caller to fail on."""
    yield from fixed
    delay = max(fixed) * 2
    while not landed_after() and delay <= 48.0:
        yield delay
        delay *= 2


def rotate_killed_after(data: Path, delay: float) -> None:
    """`pos-host lmk rotate`, SIGKILLed after `delay` seconds unless it finished first."""
    process = subprocess.Popen([*host_command(), "--data", str(data), "lmk", "rotate"],
                               env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(delay)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait(10)


def pos_host(data: Path, *args: str, check: bool = True) -> Any:
    """Run one `pos-host --data DATA --json ARGS...` command; its JSON output, parsed.

    With check=False a failing command returns `{"error": ..., "returncode": N}` instead of
    raising.
    """
    done = subprocess.run(
        [*host_command(), "--data", str(data), "--json", *args],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT, env=_env(), check=False,
    )
    if done.returncode != 0:
        if check:
            raise RuntimeError(f"pos-host {' '.join(args)} failed ({done.returncode}): "
                               f"{done.stderr.strip()}")
        return {"error": done.stderr.strip(), "returncode": done.returncode}
    return json.loads(done.stdout)


def init_host(data: Path) -> Path:
    pos_host(data, "init")
    return data


def provision_terminal(
    data: Path, tid: str, merchant: str, components: int = 2, out: Path | None = None,
) -> dict[str, Any]:
    """`pos-host terminal add`: the key ceremony, as its --json prints it."""
    extra = ["--out", str(out)] if out else []
    return pos_host(data, "terminal", "add", tid, "--merchant", merchant,
                    "--components", str(components), *extra)


def add_card(data: Path, pan: str, expiry: str, pin: str, balance: str) -> dict[str, Any]:
    return pos_host(data, "card", "add", pan, "--expiry", expiry, "--pin", pin,
                    "--balance", balance)


@dataclass
class RunningHost:
    process: subprocess.Popen[bytes]
    data: Path
    log_path: Path
    host: str = ""
    port: int = 0
    _stdout: bytes = b""

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def next_line(self, timeout: float = START_TIMEOUT) -> str:
        """The next line on the host's stdout, e.g. `listening serial /dev/pts/N`."""
        line, self._stdout = _read_line(self.process, self._stdout, timeout)
        return line

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8") if self.log_path.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_text().splitlines() if line.startswith("{")]

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then wait; SIGKILL (and an error) if it does not stop in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
                raise RuntimeError("pos-host did not stop on SIGTERM") from None
        if self.process.stdout:
            self.process.stdout.close()
        return self.process.returncode


def _read_line(process: subprocess.Popen[bytes], buffer: bytes,
               timeout: float) -> tuple[str, bytes]:
    """One line from stdout, and what was read past it (kept for the next line)."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    while b"\n" not in buffer:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("pos-host printed no listening line in time")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError("pos-host closed its stdout")
            buffer += chunk
    line, rest = buffer.split(b"\n", 1)
    return line.decode(), rest


def start_host(
    data: Path, *args: str, log_path: Path | None = None, timeout: float = START_TIMEOUT,
    wrapper: tuple[str, ...] = (), stderr_path: Path | None = None,
) -> RunningHost:
    """`pos-host serve --tcp 127.0.0.1:0 ARGS...`, returned once it accepts connections.

    The log goes to `log_path` (default: a new file beside the data folder, never inside it),
    so a test can read it and no pipe can fill up and stall the host. `wrapper` runs the host
    under another command (`prlimit --nofile=256`, `strace -f ...`); `stderr_path` keeps its
    stderr apart from stdout.
    """
    log = log_path or data.parent / f"{data.name}-serve-{time.monotonic_ns()}.log"
    stderr = stderr_path.open("wb") if stderr_path else subprocess.STDOUT
    process = subprocess.Popen(
        [*wrapper, *host_command(), "--data", str(data), "serve", "--tcp", "127.0.0.1:0",
         "--log", str(log), *args],
        stdout=subprocess.PIPE, stderr=stderr, env=_env(),
    )
    if stderr_path:
        stderr.close()  # type: ignore[union-attr]  # the host has its own copy
    running = RunningHost(process, data, log)
    try:
        line = running.next_line(timeout)
        words = line.split()
        if words[:2] != ["listening", "tcp"]:
            raise RuntimeError(f"unexpected first line from pos-host: {line!r}")
        host, _, port = words[2].rpartition(":")
        running.host, running.port = host, int(port)
    except BaseException as exc:
        process.kill()
        process.wait(STOP_TIMEOUT)
        rest = process.stdout.read().decode(errors="replace") if process.stdout else ""
        raise RuntimeError(f"pos-host serve failed to start: {exc}\n{rest}\n"
                           f"{running.log_text()}") from exc
    return running


@contextmanager
def running_host(data: Path, *args: str, log_path: Path | None = None) -> Iterator[RunningHost]:
    host = start_host(data, *args, log_path=log_path)
    try:
        yield host
    finally:
        host.stop()

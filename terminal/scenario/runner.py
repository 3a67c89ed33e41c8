"""Running a scenario as a user would: `pos-host` and `pos-terminal` as processes, a host on a
free port of 127.0.0.1, faults done to the files and processes from outside.

The runner never imports the host (ARCHITECTURE.md): it reads the host's command output and its
`--log` file, and the terminal's `--json` output and `--trace` lines, like any operator. Every
process has a timeout; the host is stopped (SIGTERM, then SIGKILL) whatever happens.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from protocol import ladder
from protocol.mask import mask_pan
from protocol.transport.noisy import Damage, flip_bit, noisy_line
from terminal.fsops import CRASH_ENV
from terminal.scenario.model import Scenario, Step
from terminal.scenario.serial_relay import LineFault, SerialRelay

TID, MID = "SCEN0001", "SCENMERCHANT001"
PAN, EXPIRY, PIN, BALANCE = "6212345678901234", "2812", "1234", "100.00"
PIN_ENV = "POSEMU_SCENARIO_PIN"
"""The test card's PIN reaches pos-host and pos-terminal through this variable, not argv."""
SHORTCUTS = {
    "purchase": ("purchase", "--amount", "12.34", "--pan", "{pan}", "--expiry", "{expiry}",
                 "--pin-env", PIN_ENV),
}
COMMAND_TIMEOUT = 30.0
START_TIMEOUT = 15.0
CLOCK_ENV = "POSEMU_TERMINAL_CLOCK_OFFSET"
HOST_CLOCK_ENV = "POSEMU_HOST_CLOCK_OFFSET"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def program(name: str, module: str) -> list[str]:
    """The installed command beside this interpreter, else the same CLI through -m."""
    installed = shutil.which(name, path=str(Path(sys.executable).parent))
    return [installed] if installed else [sys.executable, "-m", module]


@dataclass
class StepResult:
    index: int
    label: str
    kind: str
    passed: bool
    differences: list[str]
    output: Any = None
    exit: int | None = None
    remedy: bool = False
    command: str = ""
    seconds: float = 0.0


@dataclass
class ScenarioResult:
    scenario: Scenario
    steps: list[StepResult] = field(default_factory=list)
    seconds: float = 0.0
    rungs: list[ladder.Rung] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(s.passed for s in self.steps)


def lookup(data: Any, path: str) -> Any:
    """`diagnosis.fixes.0` in a JSON document; a KeyError names the first part not there."""
    for part in path.split("."):
        if isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            raise KeyError(part)
    return data


def differences(step: Step, output: Any, exit_code: int | None) -> list[str]:
    """What differs from the step's expectations, one line each (empty: passed)."""
    found: list[str] = []
    if step.exit is not None and exit_code != step.exit:
        found.append(f"exit: expected {step.exit}, got {exit_code}")
    for path, wanted in step.expect.items():
        try:
            got = lookup(output, path)
        except KeyError:
            found.append(f"{path}: expected {wanted!r}, not there")
            continue
        if got != wanted:
            found.append(f"{path}: expected {wanted!r}, got {got!r}")
    for path, part in step.expect_contains.items():
        try:
            got = lookup(output, path)
        except KeyError:
            found.append(f"{path}: expected something containing {part!r}, not there")
            continue
        if part.lower() not in json.dumps(got).lower():
            found.append(f"{path}: expected something containing {part!r}, got {got!r}")
    return found


def clock_offset(text: str) -> float:
    """`+25h`, `-10m`, `90s`, `0` -> seconds."""
    body = text.strip().lstrip("+")
    unit = body[-1] if body and body[-1] in _UNITS else "s"
    number = body[:-1] if body and body[-1] in _UNITS else body
    return float(number) * _UNITS[unit]


def shown(program_name: str, args: tuple[str, ...]) -> str:
    """A command as a person would type it (folders, `--host` and `--json` are the runner's),
    with the card number masked and the PIN starred: a report is shown around."""
    words = [program_name]
    for before, word in zip(("", *args), args, strict=False):
        if before == "--pan" or (word.isdigit() and len(word) >= 12):
            word = mask_pan(word)
        elif before == "--pin":
            word = "****"
        elif word.startswith("/"):
            word = Path(word).name
        words.append(word)
    return " ".join(words)


class Run:
    """One scenario's processes and folders."""

    def __init__(self, scenario: Scenario, workdir: Path) -> None:
        self.scenario = scenario
        self.work = workdir
        self.host_data = workdir / "host"
        self.terminal_data = workdir / "terminal"
        self.log_path = workdir / "host.log"
        self.rules_path = workdir / "rules.toml"
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("POSEMU_HOST_DATA", "POSEMU_TERMINAL_DATA", CRASH_ENV, CLOCK_ENV,
                                  HOST_CLOCK_ENV)}
        self.env[PIN_ENV] = PIN
        self.host_url = ""
        self.line_url: str | None = None  # a noisy relay in front of the host, while one is on
        self.host_serial: str | None = None  # the host's pty, when it serves one
        self.relay: SerialRelay | None = None  # a serial line between them, while one is on
        self.line_serial: str | None = None  # the terminal's port spec on that line
        self.line = ExitStack()
        self.server: subprocess.Popen[bytes] | None = None
        self.marks: list[ladder.Rung] = []
        self.clock = 0.0
        self.host_clock = 0.0

    # --- processes ---------------------------------------------------------------------------

    def _run(self, argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
        done = subprocess.run(argv, capture_output=True, text=True, env=env or self.env,
                              timeout=COMMAND_TIMEOUT, check=False)
        return done.returncode, done.stdout, done.stderr

    def host(self, *args: str) -> tuple[int, Any]:
        code, out, err = self._run([*program("pos-host", "host.cli"), "--data",
                                    str(self.host_data), "--json", *args])
        return code, _json(out) if out.strip() else {"error": err.strip()}

    def terminal(self, args: tuple[str, ...], crash_at: str | None = None) -> tuple[int, Any]:
        env = dict(self.env)
        if crash_at:
            env[CRASH_ENV] = f"keystore.json:{crash_at}"
        if self.clock:
            env[CLOCK_ENV] = str(self.clock)
        reach = (["--serial", self.line_serial] if self.line_serial
                 else ["--host", self.line_url or self.host_url])
        code, out, err = self._run([*program("pos-terminal", "terminal.cli"), "--data",
                                    str(self.terminal_data), *reach, "--json", *args], env)
        if code == -signal.SIGKILL:
            return code, {"killed": True, "crash_at": crash_at}
        return code, _json(out) if out.strip() else {"error": err.strip()[-300:]}

    def start_host(self) -> None:
        extra = list(self.scenario.host_args)
        # Always served, empty or not: a `rules` step then programs the running host.
        if not self.rules_path.exists():
            self.rules_path.write_text(self.scenario.rules, encoding="utf-8")
        extra += ["--rules", str(self.rules_path)]
        if self.scenario.serial is not None:  # not part of the setup: it changes no host data
            extra += ["--serial", ",".join(p for p in ("pty", self.scenario.serial) if p)]
        env = dict(self.env, **({HOST_CLOCK_ENV: str(self.host_clock)} if self.host_clock else {}))
        self.server = subprocess.Popen(
            [*program("pos-host", "host.cli"), "--data", str(self.host_data), "serve", "--tcp",
             "127.0.0.1:0", "--log", str(self.log_path), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        serial = "--serial" in extra
        lines = _announced(self.server, 1 + serial, START_TIMEOUT)
        tcp = [line for line in lines if line.startswith("listening tcp ")]
        ports = [line for line in lines if line.startswith("listening serial ")]
        if not tcp or len(ports) != serial:
            raise RuntimeError(f"pos-host serve did not start: {' / '.join(lines)!r}")
        self.host_url = f"tcp://{tcp[0].split()[-1]}"
        self.host_serial = ports[0].split()[-1] if ports else None

    def stop_host(self) -> None:
        server = self.server
        if server is None:
            return
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
        if server.stdout:
            server.stdout.close()

    @contextmanager
    def serving(self) -> Iterator[None]:
        try:
            yield
        finally:
            self.line.close()
            self.stop_host()

    # --- setup and steps ---------------------------------------------------------------------

    def setup(self) -> list[StepResult]:
        """Host, terminal provisioned through a key ceremony, a card, signed on: where every
        catalogue scenario starts, shown as steps like the rest."""
        injection = self.work / "tmk.inject"
        results = []
        for label, action in (
            ("pos-host init", lambda: self.host("init")),
            (f"pos-host terminal add {TID}", lambda: self.host(
                "terminal", "add", TID, "--merchant", MID, "--out", str(injection))),
            (f"pos-host card add {mask_pan(PAN)} --balance {BALANCE}", lambda: self.host(
                "card", "add", PAN, "--expiry", EXPIRY, "--pin-env", PIN_ENV, "--balance", BALANCE)),
        ):
            code, output = action()
            output = without_components(output)  # clear key parts never reach a report
            results.append(StepResult(len(results) + 1, f"setup: {label}", "host", code == 0,
                                      [] if code == 0 else [f"exit {code}: {output}"], output, code,
                                      command=label))
        if not all(r.passed for r in results):
            return results
        self.start_host()
        for args in (("init", TID, "--merchant", MID), ("load-tmk", "--file", str(injection)),
                     ("signon",)):
            code, output = self.terminal(args)
            if args[0] == "load-tmk":
                injection.unlink(missing_ok=True)  # as the operator must, once loaded
            command = shown("pos-terminal", args)
            results.append(StepResult(len(results) + 1, f"setup: {command}", "terminal", code == 0,
                                      [] if code == 0 else [f"exit {code}: {output}"], output, code,
                                      command=command))
        return results

    def expand(self, args: tuple[str, ...]) -> tuple[str, ...]:
        if len(args) == 1 and args[0] in SHORTCUTS:
            args = SHORTCUTS[args[0]]
        values = {"tid": TID, "pan": PAN, "expiry": EXPIRY, "pin": PIN, "mid": MID}
        return tuple(a.format(**values) for a in args)

    def step(self, index: int, step: Step) -> StepResult:
        started = time.monotonic()
        code: int | None = None
        output: Any = None
        command = ""
        if step.kind == "terminal":
            args = self.expand(step.value)
            command = shown("pos-terminal", args)
            code, output = self.terminal(args, step.crash_at)
            output = self.line_report(output)
            if step.crash_at:
                self.mark(ladder.TERMINAL, f"power cut: SIGKILL before the keystore {step.crash_at}")
            if isinstance(output, dict) and output.get("found_by") == "terminal":
                self.mark(ladder.TERMINAL, f"terminal finds {output.get('rc')} {output.get('reason')}")
        elif step.kind == "host":
            args = self.expand(step.value)
            command = shown("pos-host", args)
            code, output = self.host(*args)
        elif step.kind == "fault":
            output = self.fault(step)
            code = 0
        elif step.kind == "ceremony":
            command = (f"pos-host terminal rekey {TID} --out rekey.inject; "
                       "pos-terminal load-tmk --file rekey.inject")
            code, output = self.ceremony()
        elif step.kind == "rules":
            self.rules_path.write_text(step.value, encoding="utf-8")
            self.mark(ladder.HOST, "rules file changed")
            code, output = 0, {"rules": str(self.rules_path), "written": step.value}
        elif step.kind == "line":
            code, output = 0, self.set_line(step)
        elif step.kind == "clock":
            self.clock = clock_offset(step.value)
            self.mark(ladder.TERMINAL, f"terminal clock moved {step.value}")
            code, output = 0, {"clock_offset": self.clock}
        elif step.kind == "host_clock":
            code, output = 0, self.move_host_clock(step.value)
        found = differences(step, output, code)
        if step.exit is None and code not in (0, 1) and not step.crash_at:
            found.insert(0, f"exit {code}")
        return StepResult(index, step.label, step.kind, not found, found, output, code, step.remedy,
                          command, time.monotonic() - started)

    def mark(self, side: str, text: str) -> None:
        self.marks.append(ladder.mark(side, text, time.time()))

    def fault(self, step: Step) -> dict[str, Any]:
        """Damage to a terminal file, done as a hex editor or a failing chip would."""
        name = str(step.options.get("file", "keystore.json"))
        path = self.terminal_data / name
        data = path.read_bytes() if path.exists() else b""
        offset = int(step.options.get("offset", len(data) // 2))
        if step.value == "delete":
            path.unlink(missing_ok=True)
        elif step.value == "truncate":
            path.write_bytes(data[:offset])
        else:
            bit = int(step.options.get("bit", 0x04))
            if not 0 <= offset < len(data):
                raise ValueError(f"offset {offset} is outside {name} ({len(data)} bytes)")
            damaged = bytearray(data)
            damaged[offset] ^= bit
            path.write_bytes(bytes(damaged))
        self.mark(ladder.TERMINAL, f"fault: {step.value} {name} at {offset}")
        return {"fault": step.value, "file": name, "offset": offset, "size": len(data)}

    def move_host_clock(self, text: str) -> dict[str, Any]:
        """The host restarted with its clock moved (a serving host reads its clock at start);
        a noisy line in front of it goes, as its port changes."""
        self.line.close()
        self.line_url = self.line_serial = None
        self.relay = None
        self.stop_host()
        self.host_clock = clock_offset(text)
        self.start_host()
        self.mark(ladder.HOST, f"host clock moved {text} (host restarted)")
        return {"host_clock_offset": self.host_clock, "host": self.host_url}

    def set_line(self, step: Step) -> dict[str, Any]:
        """A relay between terminal and host that damages the host's answers from now on: over
        TCP `flip` a bit of every answer counted from the end, `cut` it to half; `clean` is the
        direct line back. With `link = "serial"` the same on a serial line (serial_relay.py):
        `flip` a byte of the answer frames (the first `frames` of them), `cut` the line `offset`
        bytes into the next one; `clean`, a serial line that damages nothing."""
        self.line.close()
        self.line_url = self.line_serial = None
        self.relay = None
        serial = step.options.get("link") == "serial"
        if step.value == "clean" and not serial:
            self.mark(ladder.LINE, "line clean again")
            return {"line": "clean"}
        offset = int(step.options.get("offset", 2))
        bit = int(step.options.get("bit", 0x10))
        if serial:
            return self.serial_line(step, LineFault(step.value, offset, bit, step.options.get("frames")))
        damage: Damage = (flip_bit(offset, bit) if step.value == "flip"
                          else lambda payload: payload[:len(payload) // 2])
        self.line_url = self.line.enter_context(noisy_line(self.host_url, damage))
        self.mark(ladder.LINE, f"line noisy: {step.value} every answer")
        return {"line": step.value}

    def serial_line(self, step: Step, fault: LineFault) -> dict[str, Any]:
        if self.host_serial is None:
            raise ValueError('a serial line needs the host served on a pty: [host] serial = ""')
        relay = SerialRelay(self.host_serial, fault)
        self.line.callback(relay.close)
        self.relay = relay
        settings = str(step.options.get("settings", ""))
        self.line_serial = relay.path + (f",{settings}" if settings else "")
        self.mark(ladder.LINE, f"serial line: {fault.kind}" + (
            f", the first {fault.frames} answer frame(s)" if fault.frames else ""))
        return {"line": fault.kind, "link": "serial"}

    def line_report(self, output: Any) -> Any:
        """What the serial line saw during a terminal step, beside what the terminal said."""
        if self.relay is None:
            return output
        counts, notes = self.relay.take()
        self.marks += [ladder.mark(ladder.LINE, text, at) for at, text in notes]
        return {**output, "line": counts} if isinstance(output, dict) else output

    def ceremony(self) -> tuple[int, Any]:
        """A new key ceremony: the host issues a TMK to an injection file, the terminal loads
        it, the file is deleted (docs/host.md)."""
        injection = self.work / "rekey.inject"
        code, output = self.host("terminal", "rekey", TID, "--out", str(injection))
        if code != 0:
            return code, output
        try:
            code, loaded = self.terminal(("load-tmk", "--file", str(injection)))
        finally:
            injection.unlink(missing_ok=True)
        self.mark(ladder.TERMINAL, "key ceremony: new TMK loaded")
        return code, {"host": without_components(output), "terminal": loaded}

    def rungs(self) -> list[ladder.Rung]:
        entries = []
        if self.log_path.exists():
            for line in self.log_path.read_text(encoding="utf-8").splitlines():
                if line.startswith("{"):
                    try:
                        entries.append(json.loads(line))
                    except ValueError:
                        continue
        return ladder.by_time(ladder.from_host_log(entries, TID), self.marks)


def without_components(output: Any) -> Any:
    """A `terminal add`/`rekey` answer without its clear TMK components (the custodians' parts)."""
    return {k: v for k, v in output.items() if k != "components"} if isinstance(output, dict) else output


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return {"error": "not JSON", "text": text.strip()[-300:]}


def _announced(process: subprocess.Popen[bytes], count: int, timeout: float) -> list[str]:
    """The first `count` lines a server prints (what it listens on), or fewer at the timeout."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    buffer = b""
    deadline = time.monotonic() + timeout
    while buffer.count(b"\n") < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buffer += chunk
    return buffer.decode(errors="replace").splitlines()[:count]


class Setups:
    """The common start, done once per host configuration and copied into each scenario.

    Every scenario starts from the same provisioned pair (the setup's steps are the same
    commands, checked the same way), so a run of several does the seven setup processes once
    for each distinct `[host]` table rather than once per scenario: copying a stopped host's
    data folder and a terminal's folder is what restoring a backup does, and both are read
    only through their command lines afterwards."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.done: dict[tuple[tuple[str, ...], str], tuple[Path, list[StepResult]]] = {}
        self.locks: dict[tuple[tuple[str, ...], str], threading.Lock] = {}
        self.lock = threading.Lock()  # scenarios may run side by side (`run --jobs`)

    def prepare(self, scenario: Scenario) -> tuple[Path, list[StepResult]]:
        key = (scenario.host_args, scenario.rules)
        with self.lock:
            one = self.locks.setdefault(key, threading.Lock())
        with one:
            if key not in self.done:
                folder = self.root / f"setup-{len(self.locks)}-{abs(hash(key))}"
                folder.mkdir(parents=True)
                state = Run(scenario, folder)
                with state.serving():
                    steps = state.setup()
                self.done[key] = (folder, steps)
            return self.done[key]

    def restore(self, state: Run) -> list[StepResult]:
        folder, steps = self.prepare(state.scenario)
        if all(s.passed for s in steps):
            shutil.copytree(folder, state.work, dirs_exist_ok=True)
            state.start_host()
        return [replace(s) for s in steps]


StepHook = Callable[[StepResult], None]


def run(scenario: Scenario, workdir: Path, setups: Setups | None = None,
        on_step: StepHook | None = None) -> ScenarioResult:
    """Setup (or a copy of one already done, from `setups`), then every step in order (a step
    that fails does not stop the ones after it: the report shows everything that differed).
    `on_step` sees each step as it finishes: the demo tells the story as it happens."""
    started = time.monotonic()
    result = ScenarioResult(scenario)
    state = Run(scenario, workdir)
    hook = on_step or (lambda _: None)
    with state.serving():
        try:
            result.steps = setups.restore(state) if setups else state.setup()
            for done in result.steps:
                hook(done)
            if all(s.passed for s in result.steps):
                first = len(result.steps) + 1
                for i, step in enumerate(scenario.steps):
                    result.steps.append(state.step(first + i, step))
                    hook(result.steps[-1])
        except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
            result.error = f"{type(exc).__name__}: {exc}"
    result.rungs = state.rungs()
    result.seconds = time.monotonic() - started
    return result

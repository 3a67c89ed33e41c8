"""The error-14 demo: one run shows key error 14 happen for each cause, explained and fixed.

Started by scripts/demo (which sets up the venv). Everything runs through the real command lines,
`pos-host` and `pos-terminal`, against a host on a free port with a temporary data folder; every
command is printed before its output, so the run doubles as a tutorial.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from protocol.transport.noisy import flip_bit, noisy_line

TID, MID = "DEMO0001", "DEMOMERCHANT001"
PAN, EXPIRY, PIN = "6212345678901234", "2812", "1234"
BOLD, DIM, RED, GREEN, RESET = "\033[1m", "\033[2m", "\033[31m", "\033[32m", "\033[0m"


class Demo:
    """Runs commands, prints them and their output, and remembers what it must stop."""

    def __init__(self, root: Path, color: bool) -> None:
        self.root = root
        self.color = color
        self.env = dict(os.environ, POSEMU_HOST_DATA=str(root / "host"),
                        POSEMU_TERMINAL_DATA=str(root / "terminal"))
        self.host_url = ""
        self.server: subprocess.Popen[bytes] | None = None

    def paint(self, style: str, text: str) -> str:
        return f"{style}{text}{RESET}" if self.color else text

    def title(self, text: str) -> None:
        print()
        print(self.paint(BOLD, f"== {text} =="))

    def say(self, text: str) -> None:
        print(self.paint(DIM, f"# {text}"))

    def run(self, *argv: str, shown: str | None = None, quiet: bool = False,
            expect: tuple[int, ...] = (0, 1)) -> str:
        """Run a command and print it with its output (unless `quiet`: output holding clear
        key components, which the caller summarises instead)."""
        print(self.paint(BOLD, f"$ {shown or ' '.join(argv)}"))
        done = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=60,
                              check=False)
        output = "" if quiet else (done.stdout + done.stderr).rstrip()
        for line in output.splitlines():
            style = RED if "KEY ERROR 14" in line else GREEN if "APPROVED" in line else ""
            print("  " + (self.paint(style, line) if style else line))
        if done.returncode not in expect:
            raise SystemExit(f"demo: `{' '.join(argv)}` failed with status {done.returncode}")
        return done.stdout

    def terminal(self, *args: str, host: str | None = None,
                 expect: tuple[int, ...] = (0, 1)) -> str:
        return self.run("pos-terminal", *args, "--host", host or self.host_url,
                        shown=" ".join(("pos-terminal", *args)), expect=expect)

    def purchase(self, host: str | None = None, expect: tuple[int, ...] = (0, 1)) -> str:
        return self.terminal("purchase", "--amount", "12.34", "--pan", PAN, "--expiry", EXPIRY,
                             "--pin", PIN, host=host, expect=expect)

    def start_host(self) -> None:
        self.server = subprocess.Popen(
            ["pos-host", "serve", "--tcp", "127.0.0.1:0", "--log", str(self.root / "host.log")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env)
        line = _first_line(self.server, 20)
        address = line.split()[-1]
        self.host_url = f"tcp://{address}"
        print(self.paint(BOLD, "$ pos-host serve --tcp 127.0.0.1:0"))
        print(f"  {line}")

    def stop_host(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(10)
        if self.server is not None and self.server.stdout:
            self.server.stdout.close()


def _first_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    assert process.stdout is not None
    buffer = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buffer:
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise SystemExit("demo: pos-host did not start listening in time")
        chunk = os.read(process.stdout.fileno(), 4096)
        if not chunk:
            raise SystemExit("demo: pos-host exited before listening")
        buffer += chunk
    return buffer.split(b"\n", 1)[0].decode()


def scenario(demo: Demo, name: str, cause: str, breakage: Callable[[], object],
             host: str | None = None) -> None:
    demo.title(name)
    demo.say(cause)
    breakage()
    if host is None:
        demo.purchase()
    else:
        demo.terminal("signon", host=host)
    demo.say("what does the terminal make of it?")
    demo.terminal("diagnose")
    demo.say("the recovery: sign on again, then the same purchase")
    demo.terminal("signon")
    demo.purchase()


def drop_answer(payload: bytes) -> bytes:
    """The host's answer is lost on the line: the relay closes the connection instead of
    passing it on (the line's own socket errors end only that connection)."""
    raise ConnectionAbortedError("answer dropped")


def lost_answer(demo: Demo) -> None:
    demo.title("9. a purchase whose answer never arrives, and its reversal")
    demo.say("the line carries the purchase to the host, which debits the card, and loses the "
             "answer; the terminal wrote its reversal down before the request left")
    demo.run("pos-host", "card", "show", PAN)
    with noisy_line(demo.host_url, drop_answer) as lossy:
        demo.purchase(host=lossy, expect=(3,))
    demo.terminal("status")
    demo.run("pos-host", "card", "show", PAN)
    demo.say("the next purchase sends the reversal first: the host gives the money back, then "
             "only the new sale counts")
    demo.purchase()
    demo.run("pos-host", "card", "show", PAN)
    demo.say("12.34 less than before the lost answer: one sale, not two, and none lost")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, help="where to keep data (default: a temp dir)")
    parser.add_argument("--no-color", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="posemu-demo-") as temp:
        demo = Demo(args.workdir or Path(temp), color=sys.stdout.isatty() and not args.no_color)
        try:
            play(demo)
        finally:
            demo.stop_host()
    return 0


def play(demo: Demo) -> None:
    demo.title("1. an acquirer host on a free port, with a test card")
    demo.run("pos-host", "init")
    demo.run("pos-host", "card", "add", PAN, "--expiry", EXPIRY, "--pin", PIN, "--balance",
             "500.00")
    demo.start_host()

    demo.title("2. the key ceremony: a TMK in two components, one per custodian")
    ceremony = json.loads(demo.run("pos-host", "--json", "terminal", "add", TID,
                                   "--merchant", MID, quiet=True))
    print(f"  TMK check value {ceremony['tmk_kcv']}")
    for number, part in enumerate(ceremony["components"], start=1):
        print(f"  component {number}: {part['component'][:4]}… (to custodian {number}), "
              f"check value {part['kcv']}")
    demo.run("pos-terminal", "init", TID, "--merchant", MID, "--host", demo.host_url)
    args: list[str] = []
    shown: list[str] = []
    for part in ceremony["components"]:
        args += ["--component", part["component"], "--kcv", part["kcv"]]
        shown += ["--component", part["component"][:4] + "…", "--kcv", part["kcv"]]
    args += ["--tmk-kcv", ceremony["tmk_kcv"]]
    demo.run("pos-terminal", "load-tmk", *args,
             shown=" ".join(["pos-terminal", "load-tmk", *shown, "--tmk-kcv",
                             ceremony["tmk_kcv"]]))

    demo.title("3. sign on (working keys downloaded under the TMK) and a purchase")
    demo.terminal("signon")
    demo.purchase()

    scenario(demo, "4. key error 14, K1: the working keys were revoked",
             "a key was disclosed, so the host revokes the working keys",
             lambda: demo.run("pos-host", "keys", "revoke", TID))
    scenario(demo, "5. key error 14, K2: the host rotated keys the terminal never fetched",
             "the host rotates the working keys; the terminal misses it",
             lambda: demo.run("pos-host", "keys", "rotate", TID))
    scenario(demo, "6. key error 14, K2: the working keys expired",
             "the keys outlive their lifetime (the host's clock is past it)",
             lambda: demo.run("pos-host", "keys", "expire", TID))
    scenario(demo, "7. key error 14, K3: a tampered key",
             "the MAK the host holds no longer matches the terminal's",
             lambda: demo.run("pos-host", "keys", "tamper", TID))
    with noisy_line(demo.host_url, flip_bit(2)) as noisy:  # field 62 ends the 0810: a KCV byte
        scenario(demo, "8. key error 14, K3: a key download corrupted on the line",
                 "a noisy line flips a bit of the 0810; the terminal checks every check value "
                 "before installing anything, and keeps its old keys",
                 lambda: None, host=noisy)
    lost_answer(demo)
    demo.title("done: status of the terminal's keys (check values only, never key material)")
    demo.terminal("status")


if __name__ == "__main__":
    sys.exit(main())

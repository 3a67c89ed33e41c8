"""The error-14 demo: one run shows key error 14 happen for each cause, explained and fixed.

Started by scripts/demo (which sets up the venv). A narrator only: its scenes are scenarios of
the built-in catalogue (the order and titles in terminal/scenario/demo.toml), run by the same
runner as `pos-scenario run`, which drives `pos-host` and `pos-terminal` as processes against a
host on a free port. Each step is told as it happens: what is done, the command, what it showed.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

from terminal.scenario.model import Scene, catalogue, demo_scenes
from terminal.scenario.runner import Setups, StepResult, run
from terminal.scenario.story import step_lines

BOLD, DIM, RED, GREEN, RESET = "\033[1m", "\033[2m", "\033[31m", "\033[32m", "\033[0m"
STYLES = (("KEY ERROR 14", RED), ("NOT AS EXPECTED", RED), ("POWER CUT", RED),
          ("APPROVED", GREEN), ("sign-on: OK", GREEN))


class Narrator:
    """Prints the story; colour only on a terminal."""

    def __init__(self, color: bool) -> None:
        self.color = color

    def paint(self, style: str, text: str) -> str:
        return f"{style}{text}{RESET}" if self.color else text

    def title(self, text: str) -> None:
        print()
        print(self.paint(BOLD, f"== {text} =="))

    def say(self, text: str) -> None:
        print(self.paint(DIM, f"# {text}"))

    def shown(self, line: str) -> None:
        style = next((s for word, s in STYLES if word in line), "")
        print("  " + (self.paint(style, line) if style else line))

    def step(self, step: StepResult, with_setup: bool) -> None:
        label, command, lines = step_lines(step)
        if label.startswith("setup:"):
            if not with_setup and step.passed:
                return
            if label.startswith("setup: pos-terminal init"):
                print(self.paint(BOLD, "$ pos-host serve --tcp 127.0.0.1:0 --log host.log "
                                       "--rules rules.toml"))
                self.shown("listening on a free port of 127.0.0.1")
        else:
            self.say(label)
        if command:
            print(self.paint(BOLD, f"$ {command}"))
        for line in lines:
            self.shown(line)


def play(narrator: Narrator, scenes: list[Scene], root: Path) -> int:
    setups = Setups(root / "setups")
    failed = []
    for number, scene in enumerate(scenes, 1):
        narrator.title(f"{number}. {scene.title}")
        narrator.say(scene.scenario.summary)
        if number == 1:
            narrator.say("setting up: a host with a test card, a terminal given its TMK through "
                         "a key-injection file, a sign-on")
        else:
            narrator.say("a fresh host and terminal, set up as in scene 1")
        folder = root / scene.scenario.name
        folder.mkdir()
        result = run(scene.scenario, folder, setups,
                     on_step=lambda step, first=number == 1: narrator.step(step, first))
        if result.error:
            narrator.shown(f"NOT AS EXPECTED: {result.error}")
        if not result.passed:
            failed.append(scene.scenario.name)
    narrator.title("done")
    narrator.say(f"{len(scenes) - len(failed)} of {len(scenes)} scenes showed what they should")
    narrator.say("every cause of error 14 in one command: pos-scenario list; "
                 "pos-scenario run --all (scripts/demo --all tells them all)")
    if failed:
        narrator.shown(f"NOT AS EXPECTED: {', '.join(failed)}")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, help="where to keep data (default: a temp dir)")
    parser.add_argument("--no-color", action="store_true")
    parser.add_argument("--all", action="store_true", help="every scenario of the catalogue")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scenes = ([Scene(s, s.cause or s.summary.split(":")[0]) for s in catalogue()] if args.all
              else demo_scenes())
    narrator = Narrator(color=sys.stdout.isatty() and not args.no_color)
    with tempfile.TemporaryDirectory(prefix="posemu-demo-") as temp:
        return play(narrator, scenes, args.workdir or Path(temp))


if __name__ == "__main__":
    sys.exit(main())

"""A scenario as data: a TOML file of steps, each one thing a person would do at a terminal, at
the host's console or to the hardware, with what it must show. Loading checks the whole file
first, so a typo is one clear line naming the step and the key, before anything starts.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CATALOGUE = Path(__file__).with_name("catalogue")
DEMO = Path(__file__).with_name("demo.toml")
KINDS = ("terminal", "host", "fault", "ceremony", "rules", "clock", "host_clock", "line")
FAULTS = ("flip", "truncate", "delete")
LINES = ("flip", "cut", "clean")
LINKS = ("tcp", "serial")
CRASH_STEPS = ("write", "fsync", "rename", "dirsync")
OPTIONS = ("file", "offset", "bit", "link", "settings", "frames")
STEP_KEYS = (*KINDS, "label", "expect", "expect_contains", "exit", "crash_at", *OPTIONS, "remedy")
TOP_KEYS = ("name", "cause", "reason", "summary", "host", "step")


class ScenarioError(ValueError):
    """A scenario file that cannot run: which file, which step, which key, and why."""


@dataclass(frozen=True)
class Step:
    kind: str
    value: Any
    label: str
    expect: dict[str, Any] = field(default_factory=dict)
    expect_contains: dict[str, str] = field(default_factory=dict)
    exit: int | None = None
    crash_at: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    remedy: bool = False


@dataclass(frozen=True)
class Scenario:
    name: str
    cause: str
    reason: str
    summary: str
    path: Path
    steps: tuple[Step, ...]
    host_args: tuple[str, ...] = ()
    rules: str = ""
    serial: str | None = None
    """The host also serves a pty with these settings (`--serial pty,...`), for a serial line."""


def _strings(where: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ScenarioError(f"{where}: a list of strings")
    return tuple(value)


def _step(where: str, data: object) -> Step:
    if not isinstance(data, dict):
        raise ScenarioError(f"{where}: a table")
    unknown = sorted(set(data) - set(STEP_KEYS))
    if unknown:
        raise ScenarioError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(STEP_KEYS)})")
    kinds = [k for k in KINDS if k in data]
    if len(kinds) != 1:
        raise ScenarioError(f"{where}: exactly one of {', '.join(KINDS)}")
    kind = kinds[0]
    value = data[kind]
    if kind in ("terminal", "host"):
        value = (value,) if isinstance(value, str) else _strings(f"{where}.{kind}", value)
    elif kind == "fault" and value not in FAULTS:
        raise ScenarioError(f"{where}.fault: one of {', '.join(FAULTS)}")
    elif kind == "line" and value not in LINES:
        raise ScenarioError(f"{where}.line: one of {', '.join(LINES)}")
    elif kind in ("rules", "clock", "host_clock") and not isinstance(value, str):
        raise ScenarioError(f"{where}.{kind}: a string")
    if data.get("link", "tcp") not in LINKS:
        raise ScenarioError(f"{where}.link: one of {', '.join(LINKS)}")
    if not isinstance(data.get("settings", ""), str) or ("settings" in data
                                                          and data.get("link") != "serial"):
        raise ScenarioError(f"{where}.settings: port settings (text) of a serial link")
    for key in ("offset", "bit", "frames"):
        if key in data and (not isinstance(data[key], int) or data[key] < 0):
            raise ScenarioError(f"{where}.{key}: a whole number")
    crash = data.get("crash_at")
    if crash is not None and (kind != "terminal" or crash not in CRASH_STEPS):
        raise ScenarioError(f"{where}.crash_at: on a terminal step, one of {', '.join(CRASH_STEPS)}")
    for key in ("expect", "expect_contains"):
        if not isinstance(data.get(key, {}), dict):
            raise ScenarioError(f"{where}.{key}: a table of path = value")
    if not all(isinstance(v, str) for v in data.get("expect_contains", {}).values()):
        raise ScenarioError(f"{where}.expect_contains: strings only")
    exit_code = data.get("exit")
    if exit_code is not None and not isinstance(exit_code, int):
        raise ScenarioError(f"{where}.exit: a whole number")
    label = data.get("label") or " ".join(str(v) for v in ((value,) if isinstance(value, str)
                                                              else value))
    options = {k: data[k] for k in OPTIONS if k in data}
    return Step(kind, value, str(label), dict(data.get("expect", {})),
                dict(data.get("expect_contains", {})), exit_code, crash, options,
                bool(data.get("remedy", False)))


def parse(data: dict[str, Any], path: Path) -> Scenario:
    where = str(path)
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise ScenarioError(f"{where}: {unknown[0]}: unknown key (known: {', '.join(TOP_KEYS)})")
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise ScenarioError(f"{where}: name: a non-empty string")
    if not isinstance(data.get("cause", ""), str):
        raise ScenarioError(f"{where}: cause: a string (a row of ERROR14.md, or none)")
    host = data.get("host", {})
    if not isinstance(host, dict) or set(host) - {"args", "rules", "serial"}:
        raise ScenarioError(f"{where}: host: a table of args (list), rules (TOML text) and "
                            "serial (port settings)")
    if not isinstance(host.get("serial", ""), str):
        raise ScenarioError(f"{where}: host.serial: the settings of the host's pty, as text")
    steps = data.get("step", [])
    if not isinstance(steps, list) or not steps:
        raise ScenarioError(f"{where}: step: at least one [[step]]")
    return Scenario(
        name=data["name"], cause=data.get("cause", ""), reason=str(data.get("reason", "")),
        summary=str(data.get("summary", "")), path=path,
        steps=tuple(_step(f"{where}: step[{i}]", s) for i, s in enumerate(steps, 1)),
        host_args=_strings(f"{where}: host.args", host.get("args", [])),
        rules=str(host.get("rules", "")),
        serial=host.get("serial"),
    )


def load(path: Path) -> Scenario:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    return parse(data, path)


def catalogue() -> list[Scenario]:
    """The built-in scenarios, in ERROR14.md's order (their file names are numbered)."""
    return [load(p) for p in sorted(CATALOGUE.glob("*.toml"))]


def find(name_or_path: str) -> Scenario:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return load(path)
    for scenario in catalogue():
        if scenario.name == name_or_path:
            return scenario
    names = ", ".join(s.name for s in catalogue())
    raise ScenarioError(f"no scenario named {name_or_path!r} (built in: {names})")


@dataclass(frozen=True)
class Scene:
    """One scene of the demo: a catalogue scenario and the title the story gives it."""

    scenario: Scenario
    title: str


def demo_scenes(path: Path = DEMO) -> list[Scene]:
    """The demo's scenes, in its order, each a scenario of the catalogue by name."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    built = {s.name: s for s in catalogue()}
    scenes = []
    for i, scene in enumerate(data.get("scene", []), 1):
        name = scene.get("scenario") if isinstance(scene, dict) else None
        if name not in built:
            raise ScenarioError(f"{path}: scene[{i}].scenario: not a built-in scenario: {name!r}")
        scenes.append(Scene(built[name], str(scene.get("title") or name)))
    return scenes

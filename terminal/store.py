"""The terminal's files other than its keys: identity, counters and the journal of exchanges.

Each lives in its own file so that losing one never damages another: above all the STAN and
batch counters are apart from the keystore, so a lost or replaced keystore never rewinds them
(a rewound STAN would make the host answer 94, duplicate, to fresh purchases).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from terminal.fsops import atomic_replace

DEFAULT_ROOT = Path(".posemu/terminal")
ROOT_ENV = "POSEMU_TERMINAL_DATA"
JOURNAL_KEEP = 50
DEFAULT_WK_LIFETIME = 24 * 3600


class StateError(Exception):
    """The terminal's folder is missing or unusable; the message says which and how to fix it."""


@dataclass(frozen=True)
class Layout:
    """Where each file of one terminal lives."""

    folder: Path

    @property
    def config(self) -> Path:
        return self.folder / "terminal.json"

    @property
    def storage_key(self) -> Path:
        return self.folder / "storage.key"

    @property
    def keystore(self) -> Path:
        return self.folder / "keystore.json"

    @property
    def counters(self) -> Path:
        return self.folder / "counters.json"

    @property
    def journal(self) -> Path:
        return self.folder / "journal.jsonl"


@dataclass(frozen=True)
class Config:
    """Who the terminal is and how it talks; written once by `init`, rarely changed."""

    tid: str
    mid: str
    dialect: str = "iso87"
    key_set: str = "003"
    operator: str = "01"
    host: str | None = None
    wk_lifetime: int = DEFAULT_WK_LIFETIME

    def __post_init__(self) -> None:
        """Refuse at init what would only fail later, inside a request (41 is ans8, 42 ans15)."""
        for name, value, size in (("TID", self.tid, 8), ("merchant id", self.mid, 15)):
            if not 0 < len(value) <= size or not value.isascii() or not value.isprintable() \
                    or " " in value:
                raise ValueError(f"{name} must be 1 to {size} printable characters, not {value!r}")
        if len(self.operator) != 2 or not self.operator.isdigit():
            raise ValueError(f"operator must be two digits, not {self.operator!r}")
        if self.wk_lifetime <= 0:
            raise ValueError("the working-key lifetime must be positive")

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Config:
        return cls(**json.loads(data))


@dataclass(frozen=True)
class Counters:
    """STAN (1..999999, wraps) and batch number: they only ever move forward."""

    stan: int = 0
    batch: int = 1

    def next_stan(self) -> Counters:
        return replace(self, stan=self.stan % 999999 + 1)


def root_folder() -> Path:
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def find_terminal(data: Path | None, tid: str | None) -> Layout:
    """Pick the terminal a command acts on: `--data` names its folder; else `--tid` under the
    root; else the only terminal there is."""
    if data is not None:
        layout = Layout(data)
        if not layout.config.exists():
            raise StateError(f"no terminal in {data}: run `pos-terminal init TID --merchant MID`")
        return layout
    root = root_folder()
    if tid is not None:
        layout = Layout(root / tid)
        if not layout.config.exists():
            raise StateError(f"terminal {tid} is not initialised under {root}")
        return layout
    found = sorted(p.parent for p in root.glob("*/terminal.json")) if root.is_dir() else []
    if not found:
        raise StateError(f"no terminal under {root}: run `pos-terminal init TID --merchant MID`")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise StateError(f"several terminals under {root} ({names}): choose one with --tid")
    return Layout(found[0])


def load_config(layout: Layout) -> Config:
    try:
        return Config.from_json(layout.config.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise StateError(f"{layout.config} is unreadable: {exc}") from exc


def save_config(layout: Layout, config: Config) -> None:
    atomic_replace(layout.config, config.to_json())


def load_counters(layout: Layout) -> Counters:
    """A missing counters file means a fresh terminal; an unreadable one is an error, because
    starting again from STAN 1 would collide with purchases already answered."""
    if not layout.counters.exists():
        return Counters()
    try:
        return Counters(**json.loads(layout.counters.read_bytes()))
    except (OSError, ValueError, TypeError) as exc:
        raise StateError(f"{layout.counters} is unreadable: {exc}") from exc


def save_counters(layout: Layout, counters: Counters) -> None:
    atomic_replace(layout.counters, json.dumps(asdict(counters)).encode())


def reserve_stan(layout: Layout) -> int:
    """Take the next STAN and make it durable before the request leaves, so a crash after
    sending can never reuse it."""
    counters = load_counters(layout).next_stan()
    save_counters(layout, counters)
    return counters.stan


@dataclass(frozen=True)
class Record:
    """One line of the journal: what the terminal asked, what came back and what it made of it.

    Only masked values are kept (no PAN, PIN block, key, MAC or track data in clear), so the
    journal can be read by support staff and `diagnose`.
    """

    at: float
    command: str
    outcome: str
    rc: str | None = None
    reason: str | None = None
    source: str | None = None
    stan: int | None = None
    request: dict[str, Any] = field(default_factory=dict)
    response: dict[str, Any] = field(default_factory=dict)
    detail: str | None = None


def append_record(layout: Layout, record: Record) -> None:
    """Keep the last JOURNAL_KEEP records; the journal is advisory, so a plain rewrite will do."""
    lines = read_lines(layout.journal)[-(JOURNAL_KEEP - 1) :]
    lines.append(json.dumps(asdict(record), sort_keys=True))
    atomic_replace(layout.journal, ("\n".join(lines) + "\n").encode())


def read_lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def read_journal(layout: Layout) -> list[Record]:
    """Skip lines that do not parse: a damaged journal must not stop a diagnosis."""
    records = []
    for line in read_lines(layout.journal):
        try:
            records.append(Record(**json.loads(line)))
        except (ValueError, TypeError):
            continue
    return records

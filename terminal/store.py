"""The terminal's files other than its keys: identity, counters and the journal of exchanges.

Each lives in its own file so that losing one never damages another: above all the STAN and
batch counters are apart from the keystore, so a lost or replaced keystore never rewinds them
(a rewound STAN would make the host answer 94, duplicate, to fresh purchases).

Every file is written by atomic replace and read defensively: a damaged journal line is
skipped and counted, counters that are lost (when the terminal has history) or damaged are a
StateError naming `counters recover`, never a silent restart at STAN 1. The rules for what a
TID, a merchant id and a host address may be live here too, beside the Config they guard.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from protocol import passwords
from protocol.fields import Half
from protocol.requests import JournalEntry, batch_totals
from terminal.fsops import atomic_replace

DEFAULT_ROOT = Path(".posemu/terminal")
ROOT_ENV = "POSEMU_TERMINAL_DATA"
JOURNAL_KEEP = 50
DEFAULT_WK_LIFETIME = 24 * 3600
MAX_WK_LIFETIME = 366 * 24 * 3600


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

    @property
    def ledger(self) -> Path:
        return self.folder / "ledger.json"

    @property
    def pending(self) -> Path:
        return self.folder / "pending.json"

    @property
    def supervisor(self) -> Path:
        return self.folder / "supervisor.json"


TID_SIZE = 8
MID_SIZE = 15


ID_CHARS = re.compile(r"[!-\-0-\[\]-~][!-.0-\[\]-~]*", re.ASCII)
"""Printable ASCII but space, `/` and `\\`; the first character not a dot either."""


def check_id(name: str, value: str, size: int) -> str:
    """A TID or merchant id as fields 41 (ans8) and 42 (ans15) carry it, and as a folder name:
    printable ASCII without spaces, never a path (`/`, `\\`) nor a name starting with a dot
    (`.`, `..`, a hidden folder), so `init ../../x1` cannot write outside the data folder."""
    if not isinstance(value, str) or not 0 < len(value) <= size or not ID_CHARS.fullmatch(value):
        raise ValueError(f"{name} must be 1 to {size} printable ASCII characters, without spaces, "
                         f"slashes or a leading dot, not {value!a}")
    return value


HOST_URL = re.compile(r"(?:tcp://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})", re.ASCII)
DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)", re.ASCII)


def check_host(text: str) -> str:
    """`tcp://HOST:PORT` (or `HOST:PORT`) a terminal can connect to: an IPv4 or bracketed IPv6
    address that is not unspecified, multicast or broadcast, or a DNS name, and a port from 1
    to 65535. Checked at `init` too: a host stored wrong would only fail at the first purchase."""
    match = HOST_URL.fullmatch(text)
    problem = "" if match else "expected tcp://HOST:PORT"
    if match:
        host, port = match.group(1), int(match.group(2))
        problem = _host_problem(host.strip("[]"), host.startswith("["))
        if not 0 < port <= 65535:
            problem = f"port {port} is not 1 to 65535"
    if problem:
        raise ValueError(f"host {text!a}: {problem}")
    return text


def _host_problem(host: str, bracketed: bool) -> str:
    if bracketed or host.replace(".", "").isdigit():
        try:
            address = ipaddress.IPv6Address(host) if bracketed else ipaddress.IPv4Address(host)
        except ValueError as exc:
            return str(exc)
        unusable = address.is_unspecified or address.is_multicast \
            or address == ipaddress.IPv4Address("255.255.255.255")
        return f"{address} is not an address a terminal can connect to" if unusable else ""
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(DNS_LABEL.fullmatch(label) for label in labels):
        return f"{host!a} is not a host name"
    return ""


OPERATOR = re.compile(r"[0-9]{2}", re.ASCII)


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
        check_id("TID", self.tid, TID_SIZE)
        check_id("merchant id", self.mid, MID_SIZE)
        for name, value in (("dialect", self.dialect), ("key set", self.key_set)):
            if not isinstance(value, str) or not value.isprintable():
                raise ValueError(f"{name} must be text, not {value!a}")
        if self.host is not None:
            check_host(self.host)
        if not isinstance(self.operator, str) or not OPERATOR.fullmatch(self.operator):
            raise ValueError(f"operator must be two ASCII digits, not {self.operator!r}")
        if type(self.wk_lifetime) is not int or not 0 < self.wk_lifetime <= MAX_WK_LIFETIME:
            raise ValueError(f"the working-key lifetime must be 1 to {MAX_WK_LIFETIME} seconds")

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Config:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        return cls(**doc)


STAN_MAX = 999999
BATCH_MAX = 999999
STAN_MARGIN = 1000
"""How far `counters recover` moves the STAN past the last one the journal shows: the journal
keeps only the last records and may have lost some, and a STAN skipped costs nothing while a
STAN reused is a purchase answered with an old approval (no money moves)."""


@dataclass(frozen=True)
class Counters:
    """STAN (1..999999, wraps) and batch number: they only ever move forward."""

    stan: int = 0
    batch: int = 1

    def __post_init__(self) -> None:
        for name, value, low, high in (("stan", self.stan, 0, STAN_MAX),
                                       ("batch", self.batch, 1, BATCH_MAX)):
            if type(value) is not int or not low <= value <= high:
                raise ValueError(f"{name} must be a whole number from {low} to {high}, not {value!r}")

    def next_stan(self) -> Counters:
        return self.advanced(1)

    def advanced(self, steps: int) -> Counters:
        return replace(self, stan=(self.stan + steps - 1) % STAN_MAX + 1)


def next_batch(batch: int) -> int:
    """The batch after `batch`: 999999 wraps to 1, as the STAN does, rather than staying put
    (a batch that never moves on would count a settled batch's sales again)."""
    return batch % BATCH_MAX + 1


def root_folder() -> Path:
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def find_terminal(data: Path | None, tid: str | None) -> Layout:
    """Pick the terminal a command acts on: `--data` names its folder; else `--tid` under the
    root; else the only terminal there is."""
    if data is not None:
        layout = Layout(data)
        if not layout.config.is_file():
            raise StateError(f"no terminal in {data}: run `pos-terminal init TID --merchant MID`")
        return layout
    root = root_folder()
    if tid is not None:
        layout = Layout(root / check_id("TID", tid, TID_SIZE))
        if not layout.config.is_file():
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


RECOVER = "`pos-terminal counters recover`"


def has_history(layout: Layout) -> bool:
    """Whether this terminal may have used a STAN: its journal shows one (or has lines that
    cannot be read, which might have), or its keystore was replaced more than once (loading
    the TMK is one replace, every sign-on another). The keystore's serial is read without its
    integrity check: it only decides to refuse, never to trust a key."""
    journal = read_journal(layout)
    if journal.last_stan() is not None or journal.damaged or journal.error:
        return True
    try:
        first = layout.keystore.read_bytes().partition(b"\n")[0]
        serial = json.loads(first).get("serial", 0)
    except (OSError, ValueError, AttributeError):
        return False
    return type(serial) is int and serial >= 2


def load_counters(layout: Layout) -> Counters:
    """The counters, or a StateError naming the recovery command.

    A missing file is a fresh terminal only when the terminal has no history; otherwise the
    counters were lost, and starting again from STAN 1 would resend STANs the host already
    answered (it would take them for retransmissions and answer with the old approvals)."""
    try:
        data = layout.counters.read_bytes()
    except FileNotFoundError:
        if has_history(layout):
            raise StateError(f"{layout.counters} is missing but this terminal has exchanged "
                             f"before: run {RECOVER}") from None
        return Counters()
    except OSError as exc:
        raise StateError(f"{layout.counters} is unreadable ({exc.strerror}): run {RECOVER}") from None
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        return Counters(**doc)
    except (ValueError, TypeError) as exc:
        reason = exc.args[0] if isinstance(exc, ValueError) and exc.args else "malformed"
        raise StateError(f"{layout.counters} is damaged ({reason}): run {RECOVER}") from None


def save_counters(layout: Layout, counters: Counters) -> None:
    """Made durable before the request leaves, so a crash after sending can never reuse it."""
    atomic_replace(layout.counters, json.dumps(asdict(counters)).encode())


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


def _number(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]


def _stan(value: object) -> bool:
    return value is None or (type(value) is int and 1 <= value <= STAN_MAX)  # type: ignore[operator]


def _text_or_none(value: object) -> bool:
    return value is None or isinstance(value, str)


def _texts(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


RECORD_SHAPE: dict[str, Callable[[object], bool]] = {
    "at": _number,
    "command": lambda v: isinstance(v, str),
    "outcome": lambda v: isinstance(v, str),
    "rc": _text_or_none,
    "reason": _text_or_none,
    "source": _text_or_none,
    "stan": _stan,
    "request": _texts,
    "response": _texts,
    "detail": _text_or_none,
}
"""What each key of a journal line must hold; a line with anything else is damage."""
REQUIRED = ("at", "command", "outcome")


def parse_record(line: bytes) -> Record | None:
    """A journal line as a Record, or None when any byte of it is not what the terminal wrote."""
    try:
        doc = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or not all(key in doc for key in REQUIRED):
        return None
    if not all(key in RECORD_SHAPE and RECORD_SHAPE[key](value) for key, value in doc.items()):
        return None
    return Record(**doc)


@dataclass(frozen=True)
class Journal:
    """What the journal holds: its lines as they are (damage kept, as evidence, until it ages
    out), the records that parse, and the 1-based numbers of the lines that do not."""

    lines: tuple[bytes, ...] = ()
    records: tuple[Record, ...] = ()
    damaged: tuple[int, ...] = ()
    error: str | None = None

    @property
    def last(self) -> Record | None:
        return self.records[-1] if self.records else None

    def last_stan(self) -> int | None:
        """The STAN of the latest exchange that took one (the journal is in order, so this is
        right across a wrap from 999999 to 1, where the highest would not be)."""
        return next((r.stan for r in reversed(self.records) if r.stan is not None), None)

    def highest_batch(self) -> int | None:
        batches = [batch for r in self.records if (batch := _batch_of(r)) is not None]
        return max(batches, default=None)


def _batch_of(record: Record) -> int | None:
    """60.2 of the request the record keeps (field 60 is never masked)."""
    value = record.request.get("60", "")
    digits = value[2:8]
    return int(digits) if len(digits) == 6 and digits.isascii() and digits.isdigit() else None


def read_journal(layout: Layout) -> Journal:
    """Read as bytes, line by line: a damaged line is skipped and counted, never fatal (the
    journal is evidence, not a single point of failure)."""
    try:
        data = layout.journal.read_bytes()
    except FileNotFoundError:
        return Journal()
    except OSError as exc:
        return Journal(error=f"{layout.journal} is unreadable ({exc.strerror})")
    lines, records, damaged = [], [], []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        lines.append(line)
        record = parse_record(line)
        if record is None:
            damaged.append(len(lines))
        else:
            records.append(record)
    return Journal(tuple(lines), tuple(records), tuple(damaged))


def append_record(layout: Layout, record: Record) -> None:
    """Keep the last JOURNAL_KEEP lines, the new record last; the journal is advisory, so a
    plain rewrite will do (atomically: a crash leaves the old journal or the new one)."""
    kept = list(read_journal(layout).lines[-(JOURNAL_KEEP - 1) :])
    kept.append(json.dumps(asdict(record), sort_keys=True).encode())
    atomic_replace(layout.journal, b"\n".join(kept) + b"\n")


def recover_counters(layout: Layout, stan: int | None) -> Counters:
    """New counters after a loss: past everything the terminal can show it used, never back.

    Without `stan`, the next STAN is the journal's last (or the counters', if still readable)
    plus STAN_MARGIN; with it, the next STAN is `stan`, which must be past both. The batch moves
    to one past the highest seen: what the lost batch held is unknown, so a new one starts.
    """
    journal = read_journal(layout)
    try:
        current: Counters | None = load_counters(layout)
    except StateError:
        current = None
    used = max((n for n in (journal.last_stan(), current and current.stan) if n), default=0)
    batch = next_batch(max((n for n in (journal.highest_batch(), current and current.batch) if n),
                           default=0))
    if stan is None:
        if not used:
            raise StateError("no STAN in the journal or the counters to recover from: give "
                             "`--stan N`, past the last STAN the host has from this terminal")
        return Counters(used, batch).advanced(STAN_MARGIN)
    if not used < stan <= STAN_MAX:
        raise StateError(f"--stan must be from {used + 1} to {STAN_MAX}: this terminal has used "
                         f"STAN {used:06d} already")
    return Counters(stan - 1, batch)


# --- the ledger: what settlement totals come from ---------------------------------------------

LEDGER_FORMAT = 1
LEDGER_BATCHES_KEPT = 10
ENTRY_KINDS = ("purchase", "void", "refund")


@dataclass(frozen=True)
class Entry:
    """One financial transaction of a batch as the terminal believes it happened.

    `state` is approved, voided (an approved purchase later voided: still a debit of its
    batch), pending (sent, answer unknown: a reversal is pending)
    or reversed (its reversal was answered: counted nowhere). `card` is masked; the card
    number a batch upload reports is kept only sealed under the storage key (`sealed_card`).
    """

    batch: int
    stan: int
    kind: str
    amount: int
    state: str
    at: float
    card: str = ""
    rrn: str = ""
    auth: str = ""
    date: str = ""
    original: tuple[int, int] | None = None
    sealed_card: str = ""

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["original"] = list(self.original) if self.original else None
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Entry:
        original = doc.get("original")
        entry = cls(**{**doc, "original": tuple(original) if original else None})
        if not (_stan(entry.stan) and type(entry.batch) is int and type(entry.amount) is int
                and entry.amount >= 0 and entry.kind in ENTRY_KINDS
                and entry.state in ENTRY_STATES):
            raise ValueError("an entry of the wrong shape")
        return entry


ENTRY_STATES = ("approved", "voided", "pending", "reversed")


@dataclass(frozen=True)
class Ledger:
    entries: tuple[Entry, ...] = ()

    def batch(self, number: int) -> tuple[Entry, ...]:
        return tuple(e for e in self.entries if e.batch == number)

    def batches(self) -> list[int]:
        return sorted({e.batch for e in self.entries})

    def find(self, *, stan: int | None = None, rrn: str | None = None,
             batch: int | None = None) -> Entry | None:
        """The latest purchase with that STAN (in `batch` when given) or that RRN."""
        for entry in reversed(self.entries):
            if entry.kind != "purchase" or (batch is not None and entry.batch != batch):
                continue
            if (stan is not None and entry.stan == stan) or (rrn is not None and entry.rrn == rrn):
                return entry
        return None

    def totals(self, number: int) -> Half:
        """Field 48's domestic half (`protocol.requests.batch_totals`, PROTOCOL.md §7): a
        voided purchase is still a debit; a pending one is not (yet) approved."""
        return batch_totals(
            JournalEntry(e.kind, e.amount, approved=e.state in ("approved", "voided", "reversed"),
                         reversed=e.state == "reversed")
            for e in self.batch(number)).domestic

    def put(self, entry: Entry) -> Ledger:
        """`entry` replaces the one of the same batch and STAN, or joins the end; batches older
        than the last LEDGER_BATCHES_KEPT are dropped (they were settled long ago)."""
        kept = [e for e in self.entries if (e.batch, e.stan) != (entry.batch, entry.stan)]
        kept.append(entry)
        recent = sorted({e.batch for e in kept})[-LEDGER_BATCHES_KEPT:]
        return Ledger(tuple(e for e in kept if e.batch in recent))


def read_ledger(layout: Layout) -> Ledger:
    """A damaged ledger is a StateError, never a partial one: settlement totals from half a
    ledger would be a lie the host then has to reconcile."""
    try:
        data = layout.ledger.read_bytes()
    except FileNotFoundError:
        return Ledger()
    except OSError as exc:
        raise StateError(f"{layout.ledger} is unreadable ({exc.strerror})") from None
    try:
        doc = json.loads(data)
        if doc["format"] != LEDGER_FORMAT:
            raise ValueError("unknown format")
        return Ledger(tuple(Entry.from_doc(e) for e in doc["entries"]))
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise StateError(f"{layout.ledger} is damaged ({type(exc).__name__}): the batch totals "
                         "cannot be trusted; compare with `pos-host batch show`") from None


def save_ledger(layout: Layout, ledger: Ledger) -> None:
    doc = {"format": LEDGER_FORMAT, "entries": [e.to_doc() for e in ledger.entries]}
    atomic_replace(layout.ledger, json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n")


def update_ledger(layout: Layout, entry: Entry) -> None:
    save_ledger(layout, read_ledger(layout).put(entry))


# --- the supervisor password ---------------------------------------------------------------

SUPERVISOR_ENV = "POSEMU_SUPERVISOR_PASSWORD"
SUPERVISED = ("load-tmk", "signoff", "counters recover")
"""What a real terminal keeps behind its supervisor password: a new TMK (which resets the
keystore), discarding the working keys, and moving the counters."""


class SupervisorRefused(StateError):
    """A supervised command without the right supervisor password."""


def save_supervisor(layout: Layout, credential: str) -> None:
    """The password's scrypt hash (protocol.passwords), never the password."""
    atomic_replace(layout.supervisor, json.dumps({"credential": credential}).encode() + b"\n")


def supervisor_credential(layout: Layout) -> str | None:
    """The stored hash; None for a terminal made without a supervisor password. A file that is
    there but unreadable refuses (it is not taken for "no password")."""
    try:
        doc = json.loads(layout.supervisor.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SupervisorRefused(f"{layout.supervisor} is unreadable ({type(exc).__name__}): "
                                f"the supervised commands are refused") from None
    credential = doc.get("credential") if isinstance(doc, dict) else None
    if not isinstance(credential, str):
        raise SupervisorRefused(f"{layout.supervisor} holds no credential: the supervised "
                                f"commands are refused")
    return credential


def check_supervisor(layout: Layout, command: str, password: Callable[[], str | None]) -> None:
    """Nothing for a terminal without a supervisor password; else the password must match
    (asked only then), or the command is refused in one line."""
    credential = supervisor_credential(layout)
    if credential is None:
        return
    typed = password()
    if typed is None or not passwords.verify_password(credential, typed):
        raise SupervisorRefused(f"refused: `{command}` needs this terminal's supervisor "
                                f"password (missing or wrong)")

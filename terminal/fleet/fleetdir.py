"""FLEET: the terminal side of a fleet on disk.

    FLEET/fleet.json          dialect, key set, the terminals in order, the next batch number
    FLEET/terminals/TID.json  each terminal's key-injection file (TID, merchant, TMK), mode 0600
    FLEET/cards.json          the cards to buy with (PAN, expiry, PIN), mode 0600

The injection files are the ones `pos-host terminal add --out` writes (and that
`pos-terminal load-tmk --file` reads), so a fleet for another host is made from that host's own
files. Every run claims fresh batch numbers before it sends anything: each terminal starts its
STANs at 1 in a batch no earlier run used, so nothing is ever a duplicate (94) of a past run.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.dialects import get_dialect
from protocol.fields import KEY_SETS
from protocol.injection import InjectionError, encode_injection, read_injection_file
from terminal.fleet.member import STAN_MAX, Card, Identity
from terminal.fsops import FILE_MODE, atomic_replace, exclusive
from terminal.session import check_card as check_entry

FORMAT = "posemu-fleet-1"
BATCHES_PER_RUN = 10  # room for a terminal's STAN to wrap a few times within one run
_TID = re.compile(r"[\x21-\x7e]{1,8}")


class FleetError(Exception):
    """FLEET is missing, damaged or refused; the message names the file and never a secret."""


@dataclass(frozen=True)
class Fleet:
    folder: Path
    dialect: str
    key_set: str
    tids: tuple[str, ...]

    def identities(self, count: int | None = None) -> list[Identity]:
        """The first `count` terminals (all by default), each read from its injection file."""
        tids = self.tids if count is None else self.tids[:count]
        if count is not None and count > len(self.tids):
            raise FleetError(f"{self.folder} holds {len(self.tids)} terminals, not {count}")
        return [read_identity(terminal_file(self.folder, tid)) for tid in tids]

    def cards(self) -> list[Card]:
        return read_cards(self.folder / "cards.json")


def terminal_file(folder: Path, tid: str) -> Path:
    return folder / "terminals" / f"{tid}.json"


def read_identity(path: Path) -> Identity:
    try:
        injection = read_injection_file(path)
        merchant = injection.merchant or ""
    except InjectionError as exc:
        raise FleetError(str(exc)) from None
    if not injection.tid or not merchant:
        raise FleetError(f"{path}: an injection file for a fleet names its tid and merchant")
    return Identity(injection.tid, merchant, injection.tmk)


def check_card(doc: Any, where: str) -> Card:
    if not isinstance(doc, dict):
        raise FleetError(f"{where}: a card is an object with pan, expiry and pin")
    pan, expiry, pin = str(doc.get("pan", "")), str(doc.get("expiry", "")), doc.get("pin")
    try:
        check_entry(pan, expiry, None if pin is None else str(pin))
    except ValueError as exc:
        raise FleetError(f"{where}: {exc}") from None
    return Card(pan, expiry, None if pin is None else str(pin))


def read_cards(path: Path) -> list[Card]:
    try:
        docs = json.loads(path.read_text())
    except FileNotFoundError:
        raise FleetError(f"{path}: no card list") from None
    except (OSError, ValueError) as exc:
        raise FleetError(f"{path}: not a JSON card list ({type(exc).__name__})") from None
    if not isinstance(docs, list) or not docs:
        raise FleetError(f"{path}: a card list is a non-empty JSON list")
    return [check_card(doc, f"{path} card {i + 1}") for i, doc in enumerate(docs)]


def write_secret(path: Path, data: bytes) -> None:
    """Mode 0600 from the first byte, replaced atomically."""
    atomic_replace(path, data)
    os.chmod(path, FILE_MODE)


def create(folder: Path, dialect: str, key_set: str) -> None:
    """An empty FLEET; refuses a folder that already holds one (it would mix two hosts' keys)."""
    try:
        get_dialect(dialect)
    except KeyError:
        raise FleetError(f"unknown dialect {dialect!r}") from None
    if key_set not in KEY_SETS:
        raise FleetError(f"key set {key_set!r}: key sets are {', '.join(KEY_SETS)}")
    if (folder / "fleet.json").exists():
        raise FleetError(f"{folder} already holds a fleet")
    (folder / "terminals").mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    os.chmod(folder / "terminals", 0o700)
    _save(folder, {"format": FORMAT, "dialect": dialect, "key_set": key_set, "terminals": [],
                   "next_batch": 1})


def _save(folder: Path, doc: dict[str, Any]) -> None:
    atomic_replace(folder / "fleet.json", json.dumps(doc, indent=1).encode() + b"\n")


def _load_doc(folder: Path) -> dict[str, Any]:
    try:
        doc = json.loads((folder / "fleet.json").read_text())
    except FileNotFoundError:
        raise FleetError(f"no fleet in {folder}: run `pos-fleet provision` or `import`") from None
    except (OSError, ValueError) as exc:
        raise FleetError(f"{folder}/fleet.json is damaged ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise FleetError(f"{folder}/fleet.json is not a {FORMAT} file")
    return doc


def add_terminals(folder: Path, tids: list[str]) -> None:
    doc = _load_doc(folder)
    known = set(doc["terminals"])
    doc["terminals"] += [t for t in tids if t not in known]
    _save(folder, doc)


def add_identity(folder: Path, identity: Identity) -> None:
    """Write one terminal's injection file (the same format the host writes)."""
    if not _TID.fullmatch(identity.tid):
        raise FleetError(f"terminal id {identity.tid!r} is not 1 to 8 printable characters")
    write_secret(terminal_file(folder, identity.tid),
                 encode_injection(identity.tid, identity.merchant, identity.tmk))


def save_cards(folder: Path, cards: list[Card]) -> None:
    docs = [{"pan": c.pan, "expiry": c.expiry, "pin": c.pin} for c in cards]
    write_secret(folder / "cards.json", json.dumps(docs, indent=1).encode() + b"\n")


def open_fleet(folder: Path) -> Fleet:
    doc = _load_doc(folder)
    if not doc.get("terminals"):
        raise FleetError(f"the fleet in {folder} has no terminals")
    return Fleet(folder, str(doc["dialect"]), str(doc["key_set"]), tuple(doc["terminals"]))


def claim_batch(folder: Path, wait: float = 10.0) -> int:
    """The first of BATCHES_PER_RUN batch numbers no other run has used, written back before
    anything is sent (under a lock: Locust workers claim at the same time)."""
    with exclusive(folder, wait):
        doc = _load_doc(folder)
        batch = int(doc.get("next_batch", 1))
        following = batch + BATCHES_PER_RUN
        doc["next_batch"] = 1 if following > STAN_MAX else following
        _save(folder, doc)
    return batch

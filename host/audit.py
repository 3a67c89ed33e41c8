"""The tamper-evident audit trail: what one entry holds, its MAC, and the check of the chain.

Each entry's MAC (HMAC-SHA256 under a key derived from the LMK's root secret, `Vault.audit_key`)
covers its own content and the MAC of the entry before it, so an entry edited, deleted, inserted
or moved breaks the chain at that entry; the last entry's MAC is kept again, MACed, as the head
(the `audit_head` meta row), so a cut tail is caught too. A copy of the database without the
LMK cannot make an entry that verifies. Entries never hold key material or a clear PAN: only
names, generations, check values and masked PANs (docs/operations.md, The audit trail).

The rows are written by `host.keydb` in the same transaction as the change they record, so a
kill leaves both or neither; this module has no SQL.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

GENESIS = bytes(32)
"""The "previous MAC" of the first entry."""
KEY_ERROR_EVENTS = {"K2 MAK missed rotation": "kcv refused", "K2 WK expired": "expired"}
"""The 14s (field 44) the serving host records, once per generation, and as which event."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One audited event. `operator` is who ran it (`lab` on a host without access control,
    `host` for what the serving host did at a terminal's request); `detail` holds the command,
    a second custodian, `fault`, a refusal's reason: small scalars, never material."""

    seq: int
    at: float
    event: str
    operator: str
    tid: str | None = None
    generation: int | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def content(self) -> bytes:
        """The canonical bytes the MAC covers (sorted keys, no spaces: one encoding only)."""
        return json.dumps([self.seq, self.at, self.event, self.operator, self.tid,
                           self.generation, dict(self.detail)],
                          sort_keys=True, separators=(",", ":")).encode()

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at, "event": self.event, "operator": self.operator,
                "tid": self.tid, "generation": self.generation, "detail": dict(self.detail)}


def entry_mac(key: bytes, previous: bytes, entry: Entry) -> bytes:
    return hmac.digest(key, previous + entry.content(), "sha256")


def head_value(key: bytes, seq: int, mac: bytes) -> str:
    """The head row: the last entry's number and MAC, and a MAC over both (so the head cannot
    be moved back to hide a cut tail). The next entry is chained from here, not from the last
    row found, so a row deleted at the end shows as a gap once another is appended."""
    tag = hmac.digest(key, b"audit head|%d|" % seq + mac, "sha256").hex()
    return f"{seq}:{mac.hex()}:{tag}"


def parse_head(value: str | None) -> tuple[int, bytes]:
    """The last entry's number and MAC from the head row (0 and GENESIS: none yet)."""
    if not value:
        return 0, GENESIS
    try:
        seq, mac, _ = value.split(":")
        return int(seq), bytes.fromhex(mac)
    except ValueError:
        return 0, GENESIS


@dataclass(frozen=True, slots=True)
class Verdict:
    """`audit verify`: good, or the first entry number where the chain breaks and why."""

    entries: int
    broken_at: int | None = None
    problem: str | None = None

    @property
    def good(self) -> bool:
        return self.broken_at is None


def verify(key: bytes, rows: Iterable[tuple[Entry, bytes]], head: str | None) -> Verdict:
    """Walk the chain in stored order: numbers must run 1, 2, 3... and each MAC must be the one
    over this entry and the MAC before it. The first break is named: an edited entry fails its
    own MAC; a deleted one leaves a gap (or, at the end, a head that names a later entry); an
    inserted or moved one fails its MAC or its number."""
    previous, count = GENESIS, 0
    for entry, mac in rows:
        count += 1
        if entry.seq != count:
            what = "missing (deleted?)" if entry.seq > count else "out of order or inserted"
            return Verdict(count, count, f"entry {count} {what}: found entry {entry.seq} there")
        if not hmac.compare_digest(mac, entry_mac(key, previous, entry)):
            return Verdict(count, count, f"entry {count} fails its MAC: edited, inserted or "
                                         f"moved")
        previous = mac
    expected = head_value(key, count, previous) if count else None
    if head is None or expected is None or not hmac.compare_digest(head, expected):
        seq = parse_head(head)[0]
        if seq > count:
            return Verdict(count, count + 1, f"the trail ends at entry {count} but its head "
                                             f"names entry {seq}: entries cut from the end?")
        return Verdict(count, count, f"the head (the last entry's MAC, kept again) does not "
                                     f"match entry {count}: edited?")
    return Verdict(count)

"""What the handlers read (key state, cards, remembered requests) and what they ask to change.

Handlers never touch the database: they get a `HostView` (read-only lookups) and return
`Change` values; the server applies those in one transaction. That split is what lets the same
decision code run under TCP, serial, the load generator and the unit tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

from protocol.crypto import Key

ACTIVE, RETIRED, REVOKED = "active", "retired", "revoked"


@dataclass(frozen=True, slots=True)
class HeldKey:
    """One key generation as the host holds it: unwrapped, with its bookkeeping."""

    usage: str
    generation: int
    key: Key
    created: float
    lifetime: float
    state: str

    def expired(self, now: float) -> bool:
        return now >= self.created + self.lifetime


@dataclass(frozen=True, slots=True)
class WorkingSet:
    """The working keys issued at one sign-on (or one `keys rotate`)."""

    generation: int
    key_set: str
    state: str
    created: float
    lifetime: float
    pik: Key
    mak: Key
    tdk: Key | None = None

    def expired(self, now: float) -> bool:
        return now >= self.created + self.lifetime


@dataclass(frozen=True, slots=True)
class TerminalKeys:
    """A terminal's key state: its newest TMK and its working-key generations, newest first."""

    tid: str
    merchant: str
    tmk: HeldKey | None
    working: tuple[WorkingSet, ...]
    number: int  # the database's permanent number for the terminal (host.keydb.txn_ref)

    @property
    def current(self) -> WorkingSet | None:
        """The working set a terminal must be using: the newest one, if it is active."""
        if self.working and self.working[0].state == ACTIVE:
            return self.working[0]
        return None

    @property
    def next_generation(self) -> int:
        return self.working[0].generation + 1 if self.working else 1


class Card(NamedTuple):
    """A card of the test issuer (a named tuple: a purchase makes a debited copy of it)."""

    pan_ref: str
    pan_masked: str
    expiry: str  # YYMM
    pvv: str
    balance: int  # minor units
    currency: str

    def debited(self, amount: int) -> Card:
        return Card(self.pan_ref, self.pan_masked, self.expiry, self.pvv, self.balance - amount,
                    self.currency)


class Prior(NamedTuple):
    """A 0200 already answered: its fingerprint and the response bytes it got.

    This and the per-purchase changes below (RecordTransaction, Debit) are named tuples:
    immutable like the frozen dataclasses around them, and several times cheaper to build,
    which a host does for every purchase."""

    request_ref: bytes
    response: bytes


class HostView(Protocol):
    """Read-only lookups a handler may make; each answers from one consistent state."""

    def terminal(self, tid: str) -> TerminalKeys | None: ...

    def card(self, pan_ref: str) -> Card | None: ...

    def prior(self, tid: str, batch: str, stan: str) -> Prior | None: ...


# --- changes -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssueWorkingKeys:
    """A new working-key generation becomes active; the previous active one is retired."""

    tid: str
    working: WorkingSet


@dataclass(frozen=True, slots=True)
class RevokeWorkingKeys:
    tid: str


class RecordTransaction(NamedTuple):
    """Remember an answered 0200 for duplicate detection (PROTOCOL.md §3); its code, amount
    and time are in the response."""

    tid: str
    terminal: int  # TerminalKeys.number
    batch: str
    stan: str
    request_ref: bytes
    response: bytes


class Debit(NamedTuple):
    """Take `amount` (minor units) from a card's balance."""

    pan_ref: str
    amount: int


Change = IssueWorkingKeys | RevokeWorkingKeys | RecordTransaction | Debit

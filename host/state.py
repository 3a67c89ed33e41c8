"""What the handlers read (key state, cards, remembered requests) and what they ask to change.

Handlers never touch the database: they get a `HostView` (read-only lookups) and return
`Change` values; the server applies those in one transaction. That split is what lets the same
decision code run under TCP, serial, the load generator and the unit tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, NamedTuple, Protocol, TypeVar

from protocol.crypto import Key

ACTIVE, RETIRED, REVOKED = "active", "retired", "revoked"


class KeyHandle(NamedTuple):
    """A key as everything outside the security module knows it: an opaque number the module
    gave it, and what may be shown of it (check value, generation, usage); never material.

    The same shape would name a key object in a PKCS#11 token (host.hsm.SecurityModule)."""

    id: int
    kcv: str
    generation: int
    usage: str


KeyT = TypeVar("KeyT", Key, KeyHandle)
"""What a key state holds: `Key` between the database and the security module (sealed blocks
just opened, or keys just made and about to be sealed), `KeyHandle` everywhere else. The
handlers, the views and the caches only ever see the handle form (`Terminal`)."""


@dataclass(frozen=True, slots=True)
class HeldKey(Generic[KeyT]):
    """One key generation with its bookkeeping."""

    usage: str
    generation: int
    key: KeyT
    created: float
    lifetime: float
    state: str

    def expired(self, now: float) -> bool:
        return now >= self.created + self.lifetime


@dataclass(frozen=True, slots=True)
class WorkingSet(Generic[KeyT]):
    """The working keys issued at one sign-on (or one `keys rotate`)."""

    generation: int
    key_set: str
    state: str
    created: float
    lifetime: float
    pik: KeyT
    mak: KeyT
    tdk: KeyT | None = None

    def expired(self, now: float) -> bool:
        return now >= self.created + self.lifetime


@dataclass(frozen=True, slots=True)
class TerminalKeys(Generic[KeyT]):
    """A terminal's key state: its newest TMK and its working-key generations, newest first."""

    tid: str
    merchant: str
    tmk: HeldKey[KeyT] | None
    working: tuple[WorkingSet[KeyT], ...]
    number: int  # the database's permanent number for the terminal (host.keydb.txn_ref)

    @property
    def current(self) -> WorkingSet[KeyT] | None:
        """The working set a terminal must be using: the newest one, if it is active."""
        if self.working and self.working[0].state == ACTIVE:
            return self.working[0]
        return None

    @property
    def next_generation(self) -> int:
        return self.working[0].generation + 1 if self.working else 1


Terminal = TerminalKeys[KeyHandle]
"""A terminal's key state as the handlers see it: handles only (`SecurityModule.admit`)."""
StoredWorkingSet = WorkingSet[Key]
"""Working keys on their way to be sealed into the database (`IssueWorkingKeys`)."""


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

    This and the per-purchase change below (`Purchased`) are named tuples:
    immutable like the frozen dataclasses around them, and several times cheaper to build,
    which a host does for every purchase."""

    request_ref: bytes
    response: bytes


class HostView(Protocol):
    """Read-only lookups a handler may make; each answers from one consistent state."""

    def terminal(self, tid: str) -> Terminal | None: ...

    def card(self, pan_ref: str) -> Card | None: ...

    def prior(self, terminal: Terminal, batch: str, stan: str) -> Prior | None:
        """The terminal already looked up (not its id): no second lookup per purchase."""
        ...


# --- changes -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssueWorkingKeys:
    """A new working-key generation becomes active; the previous active one is retired."""

    tid: str
    working: StoredWorkingSet


@dataclass(frozen=True, slots=True)
class RevokeWorkingKeys:
    tid: str


class Purchased(NamedTuple):
    """An answered 0200 to remember for duplicate detection (PROTOCOL.md §3; its code, amount
    and time are in the response), and what it took from the card: one change per purchase,
    so an approval can never be remembered without its debit, nor debited unremembered."""

    tid: str
    terminal: int  # TerminalKeys.number
    batch: str
    stan: str
    request_ref: bytes
    response: bytes
    pan_ref: str | None  # the card found (None: a 56)
    debit: int  # minor units taken from the card: the amount when approved, else 0


Change = IssueWorkingKeys | RevokeWorkingKeys | Purchased

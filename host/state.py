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


Sealed = str
"""A key at rest: its TR-31 block under the LMK (or the token's sealed form), as the database
stores it. Only the security module opens one."""

KeyT = TypeVar("KeyT", Key, KeyHandle, Sealed)
"""What a key state holds: `Sealed` as the database hands it to the security module, `Key`
for keys just made and about to be sealed (and an operator's tools), `KeyHandle` everywhere
else. The handlers, the views and the caches only ever see the handle form (`Terminal`)."""


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
SealedTerminal = TerminalKeys[Sealed]
"""A terminal's key state as the database holds it (`KeyDb.load_sealed`)."""
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
    """A 0200 or 0220 already answered: its fingerprint and the response bytes it got.

    This and the per-request change below (`Answered`) are named tuples:
    immutable like the frozen dataclasses around them, and several times cheaper to build,
    which a host does for every purchase."""

    request_ref: bytes
    response: bytes


# What a remembered 0200/0220 was (PROTOCOL.md §7's table), as the txns table keeps it.
INQUIRY, PURCHASE, VOID, REFUND = "inquiry", "purchase", "void", "refund"


class TxnRecord(NamedTuple):
    """A remembered transaction as a void, refund, reversal or settlement needs to see it."""

    ref: int  # host.keydb.txn_ref of its terminal, batch and STAN
    kind: str | None  # None: remembered before the database kept what it was (version 3)
    rc: str
    pan_ref: str | None
    amount: int
    rrn: str
    auth: str
    date: str  # MMDD of its response's field 13
    reversed: bool


class Original(NamedTuple):
    """A 0200 named by a void, refund or reversal, with what happened to it since."""

    record: TxnRecord
    voided: bool  # an approved void of it stands (not reversed)
    refunded: int  # minor units refunded of it so far
    settled: bool  # its batch has been settled


class BatchState(NamedTuple):
    """Settled: a 0510 answered its settlement. Closed: balanced, or its upload ended."""

    settled: bool = False
    closed: bool = False


class BatchTotals(NamedTuple):
    """The host's own totals for one batch of one terminal (PROTOCOL.md §7, Settlement)."""

    debit_amount: int = 0
    debit_count: int = 0
    credit_amount: int = 0
    credit_count: int = 0


class HostView(Protocol):
    """Read-only lookups a handler may make; each answers from one consistent state."""

    def terminal(self, tid: str) -> Terminal | None: ...

    def card(self, pan_ref: str) -> Card | None: ...

    def prior(self, terminal: Terminal, batch: str, stan: str, mti: str = "0200") -> Prior | None:
        """The terminal already looked up (not its id): no second lookup per purchase.
        Duplicates are matched within one MTI (PROTOCOL.md §7)."""
        ...

    def original(self, terminal: Terminal, batch: str, stan: str) -> Original | None:
        """The 0200 this terminal sent in `batch` with `stan`, if the host remembers one."""
        ...

    def batch_state(self, terminal: Terminal, batch: str) -> BatchState: ...

    def batch_totals(self, terminal: Terminal, batch: str) -> BatchTotals: ...


# --- changes -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssueWorkingKeys:
    """A new working-key generation becomes active; the previous active one is retired."""

    tid: str
    working: StoredWorkingSet


@dataclass(frozen=True, slots=True)
class RevokeWorkingKeys:
    tid: str


@dataclass(frozen=True, slots=True)
class KeyErrorSeen:
    """A 14 the audit trail records (host.audit.KEY_ERROR_EVENTS): a terminal still MACing
    under an earlier generation (K2 MAK missed rotation) did not take the keys last issued (its
    check of their KCVs refused them, or their answer never reached it); working keys used past
    their life (K2 WK expired). Audited once per generation (host.keydb); no key changes."""

    tid: str
    reason: str


class Answered(NamedTuple):
    """An answered 0200 or 0220 to remember for duplicate detection (PROTOCOL.md §3; the
    response is sent again to a retransmission), what it was, and what it did to the card:
    one change per request, so an approval can never be remembered without its debit or
    credit, nor moved money unremembered."""

    tid: str
    terminal: int  # TerminalKeys.number
    batch: str
    stan: str
    request_ref: bytes
    response: bytes
    pan_ref: str | None  # the card found (None: a 56)
    debit: int  # minor units taken from the card (negative: returned to it); 0 unless approved
    mti: str = "0200"
    kind: str = PURCHASE
    rc: str = "00"
    amount: int = 0  # field 4 of the request
    rrn: str = ""  # fields 37, 38 and 13 of the response
    auth: str = ""
    date: str = ""
    original: int | None = None  # txn_ref of the purchase a void or refund names


class Reversed(NamedTuple):
    """A 0400 undid a purchase (its debit returns) or a void (its credit is taken back)."""

    tid: str
    ref: int  # txn_ref of the 0200 undone
    pan_ref: str
    debit: int  # signed, as `Answered.debit`


class Settled(NamedTuple):
    """A 0510 answered a batch's settlement: the terminal's totals beside the host's."""

    tid: str
    terminal: int
    batch: str
    balanced: bool
    reported: str  # field 48 as the terminal sent it
    host: str  # field 48 of the host's own totals
    at: float


class UploadedRecord(NamedTuple):
    """One transaction of a batch upload, as kept: the card by its reference and masked."""

    type_code: str
    stan: str
    pan_ref: str
    pan_masked: str
    amount: int


class Uploaded(NamedTuple):
    """A 0320's records, kept for reconciliation (no money moves); `last` ends the upload."""

    tid: str
    terminal: int
    batch: str
    stan: str
    records: tuple[UploadedRecord, ...]
    last: bool


Change = IssueWorkingKeys | RevokeWorkingKeys | KeyErrorSeen | Answered | Reversed | Settled | Uploaded

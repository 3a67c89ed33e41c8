"""The host's decisions: request bytes, key state and a clock in; response bytes and changes out.

Nothing here touches a socket, a file or the database, so the TCP server, the serial server, the
load generator and the unit tests all run the very same decisions. A `Pipeline` is compiled once
per host from its configuration (codec, security module, vault functions, response tables); a
0200 then runs the checks of PROTOCOL.md §4 top to bottom in `Pipeline.purchase`, each check a
pure function of the values in its signature that returns a refusal (`Verdict`) or None. The
prefix every financial transaction shares (terminal, keys, MAC, lifetimes: `authenticate`) is
its own step, for the §7 transactions to reuse.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from functools import lru_cache
from time import gmtime, strftime
from typing import NamedTuple

from host.audit import KEY_ERROR_EVENTS
from host.hsm import PinBlockInvalid, SecurityModule, SoftwareSecurityModule
from host.lmk import Vault
from host.state import (
    ACTIVE,
    INQUIRY,
    PURCHASE,
    REFUND,
    REVOKED,
    VOID,
    Answered,
    BatchTotals,
    Card,
    Change,
    HeldKey,
    HostView,
    IssueWorkingKeys,
    KeyErrorSeen,
    KeyHandle,
    Original,
    Prior,
    Reversed,
    RevokeWorkingKeys,
    Settled,
    Terminal,
    Uploaded,
    UploadedRecord,
    WorkingSet,
)
from protocol import codes
from protocol.clock import Rng
from protocol.codec import Codec
from protocol.codes import KeyErrorReason
from protocol.errors import ProtocolError
from protocol.fields import (
    KEY_SETS,
    NMIC_ECHO,
    NMIC_SETTLE,
    NMIC_SIGN_OFF,
    NMIC_UPLOAD_END,
    SETTLE_BALANCED,
    SETTLE_UNBALANCED,
    Balance,
    Field60,
    Half,
    OriginalData,
    SettlementTotals,
    parse_upload,
)
from protocol.macing import MAC_SIZE, PLACEHOLDER, mac_offset
from protocol.mask import mask_pan
from protocol.message import FieldValue, Message
from protocol.requests import INQUIRY_CODE, VOID_CODE
from protocol.requests import PURCHASE_CODE as PURCHASE_PROCESSING_CODE

REVERSIBLE = {PURCHASE_PROCESSING_CODE: PURCHASE, VOID_CODE: VOID}
"""What a 0400 with this processing code reverses."""

# Fields a request must carry, by MTI, before anything else is looked at (else 30). Field 64 is
# checked later, at its place in the §4 order. A 0200's depend on its processing code (an
# inquiry has no amount, a void names its original): `MANDATORY_BY_CODE` first.
_PURCHASE_FIELDS = frozenset({3, 4, 11, 22, 25, 41, 42, 49, 60})
MANDATORY: dict[str, frozenset[int]] = {
    "0200": _PURCHASE_FIELDS,
    "0220": _PURCHASE_FIELDS | {61},
    "0400": _PURCHASE_FIELDS | {39},
    "0500": frozenset({11, 41, 42, 48, 49, 60, 63}),
    "0320": frozenset({11, 41, 42, 48, 60}),
    "0800": frozenset({11, 41, 42, 60}),
    "0820": frozenset({11, 41, 42, 60}),
}
MANDATORY_BY_CODE: dict[tuple[str, FieldValue | None], frozenset[int]] = {
    ("0200", INQUIRY_CODE): _PURCHASE_FIELDS - {4},
    ("0200", VOID_CODE): _PURCHASE_FIELDS | {37, 61},
}
# Request fields a response echoes, by request MTI (PROTOCOL.md §3's and §7's response columns).
_FINANCIAL_ECHO = (3, 4, 11, 41, 42, 49, 60)
ECHOED: dict[str, tuple[int, ...]] = {
    "0200": _FINANCIAL_ECHO, "0220": _FINANCIAL_ECHO, "0400": _FINANCIAL_ECHO,
    "0500": (11, 41, 42, 60), "0320": (11, 41, 42, 60),
    "0800": (11, 41, 42, 60),
    "0820": (11, 41, 42, 60),
}
# Codes whose 0200/0220 is remembered for duplicate detection (§3: not 14, 30, 12, 03, nor 94).
REMEMBERED = frozenset({codes.APPROVED, codes.INSUFFICIENT_FUNDS, codes.EXPIRED_CARD,
                        codes.INCORRECT_PIN, codes.NO_CARD_RECORD, codes.NO_ORIGINAL,
                        codes.AMOUNT_DIFFERS})
# Requests whose answer carries the host's local time and date (12, 13), and a retrieval
# reference (37) besides (PROTOCOL.md §3, §7).
CLOCKED = frozenset({"0200", "0220", "0400", "0500", "0320", "0800"})
REFERENCED = frozenset({"0200", "0220", "0400", "0800"})
RESPONSE_DIGITS = "13579"  # an MTI's third digit: a response (or advice response), never answered
DEFAULT_KEY_LIFETIME = 24 * 3600.0
MALFUNCTIONS = (ProtocolError, ValueError, LookupError, sqlite3.Error)
"""What a bug, a broken row or a view over a failing database raises: one 96, not the host."""


@dataclass(frozen=True, slots=True)
class HandlerConfig:
    """What a host is started with; fixed for the life of a server. Its `pipeline` is compiled
    from it once, here, so nothing per request looks a setting up again."""

    codec: Codec
    vault: Vault
    rng: Rng
    key_error_code: str = codes.KEY_ERROR
    key_lifetime: float = DEFAULT_KEY_LIFETIME
    key_sets: frozenset[str] = frozenset(KEY_SETS)
    """The key sets this host issues: fewer makes ERROR14's "software too old" cause happen."""
    security: SecurityModule | None = None
    """None: a `SoftwareSecurityModule` under the vault's LMK."""
    renew_before: float = 0.0
    """`serve --renew-before`: a MACed answer under working keys this close to their expiry
    asks the terminal to sign on after it (0: never), so keys in daily use never go stale."""
    pipeline: Pipeline = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.security is None:
            module = SoftwareSecurityModule(self.vault.lmk, self.rng, self.codec.dialect)
            object.__setattr__(self, "security", module)
        object.__setattr__(self, "pipeline", Pipeline(self))


@dataclass(slots=True)
class Outcome:
    """What to send (None: nothing), what to change, and what the log line says."""

    response: bytes | None
    request: Message | None = None
    reply: Message | None = None
    changes: list[Change] = field(default_factory=list)
    rc: str | None = None
    reason: str | None = None
    note: str = ""
    close: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision: the response code, and for a key error its reason."""

    rc: str
    reason: KeyErrorReason | None = None
    note: str = ""
    maced: bool = False
    """A §7 refusal made after the request's MAC verified (its `12`s): MACed like a decline."""


def key_error(code: str, key: str, text: str) -> Verdict:
    return Verdict(codes.KEY_ERROR, KeyErrorReason(code, key, text))


def format_error(note: str) -> Verdict:
    return Verdict(codes.FORMAT_ERROR, note=note)


APPROVAL = Verdict(codes.APPROVED)
RETRANSMISSION = Verdict(codes.DUPLICATE, note="retransmission: original response sent again")
NO_CARD = Verdict(codes.NO_CARD_RECORD)
NO_ORIGINAL = Verdict(codes.NO_ORIGINAL, note="no approved purchase matches")


def refused(note: str) -> Verdict:
    """A §7 transaction's own `12` (already voided, batch settled or closed): MACed."""
    return Verdict(codes.INVALID_TRANSACTION, note=note, maced=True)


class Authenticated(NamedTuple):
    """A request whose terminal, keys and MAC checked out: the generation that verified it."""

    terminal: Terminal
    working: WorkingSet[KeyHandle]


class Request(NamedTuple):
    """A 0200/0220 past the common checks and the duplicate rule, as its transaction sees it."""

    message: Message
    field60: Field60
    terminal: Terminal
    working: WorkingSet[KeyHandle]
    request_ref: bytes
    stan: str


Transaction = Callable[[Request, HostView, float], "Outcome"]


# --- the checks of PROTOCOL.md §4, in its order ---------------------------------------------------


def check_terminal(terminal: Terminal | None, merchant: str) -> Verdict | None:
    """03 for a stranger: an unknown terminal, or a merchant (42) that is not the terminal's."""
    if terminal is None:
        return Verdict(codes.NOT_REGISTERED, note="unknown terminal")
    if merchant.rstrip() != terminal.merchant:
        return Verdict(codes.NOT_REGISTERED, note="merchant does not match the terminal")
    return None


def check_keys_present(terminal: Terminal) -> Verdict | None:
    """K1: an active TMK and active working keys."""
    tmk = terminal.tmk
    if tmk is None or tmk.state != ACTIVE:
        return key_error("K1", "TMK", "revoked" if tmk and tmk.state == REVOKED else "absent")
    if terminal.current is not None:
        return None
    if not terminal.working:
        return key_error("K1", "WK", "not signed on")
    return key_error("K1", "WK", "revoked/signed off")


def check_mac(working: tuple[WorkingSet[KeyHandle], ...], data: bytes, mac: bytes,
              verify: Callable[[KeyHandle, bytes, bytes], bool]) -> Verdict | None:
    """None when the current generation's MAK verifies; K2 when an earlier one does (the
    terminal missed a rotation); K3 when none does."""
    if verify(working[0].mak, data, mac):
        return None
    for earlier in working[1:]:
        if verify(earlier.mak, data, mac):
            return key_error("K2", "MAK", "missed rotation")
    return key_error("K3", "MAK", "mismatch")


def check_lifetimes(working: WorkingSet[KeyHandle], tmk: HeldKey[KeyHandle], now: float
                    ) -> Verdict | None:
    if working.expired(now):
        return key_error("K2", "WK", "expired")
    if tmk.expired(now):
        return key_error("K2", "TMK", "expired")
    return None


def renewal_due(working: WorkingSet[KeyHandle], now: float, renew_before: float) -> bool:
    """The working keys expire within `renew_before` seconds: time to sign on (not a refusal;
    the answer that says so is the transaction's own)."""
    return renew_before > 0 and now >= working.created + working.lifetime - renew_before


def check_processing_code(processing_code: FieldValue, served: Collection[FieldValue]
                          ) -> Verdict | None:
    if processing_code not in served:
        return Verdict(codes.INVALID_TRANSACTION, note="processing code not served")
    return None


def check_duplicate(prior: Prior | None, request_ref: bytes) -> Verdict | None:
    """94 for a STAN already answered in this batch; `RETRANSMISSION` when it is the very same
    request (its original response goes again)."""
    if prior is None:
        return None
    if prior.request_ref == request_ref:
        return RETRANSMISSION
    return Verdict(codes.DUPLICATE, note="same terminal, batch and STAN, different request")


def card_data(request: Message) -> tuple[str, str] | None:
    """PAN and expiry, from field 2/14 (keyed) or track 2 (swiped); None if neither is there."""
    if 35 in request.fields:
        pan, sep, rest = request.text(35).partition("=")
        pan, expiry = request.text(2) or pan, request.text(14) or rest[:4]
        # A track 2 enciphered where the PAN or expiry sit (hex nibbles A-F) cannot be read
        # here: the host holds no TDK scheme for it, so it is a format error, as unreadable.
        if not sep or len(rest) < 4 or not (pan.isdigit() and expiry.isdigit()):
            return None
        return pan, expiry
    if 2 in request.fields:
        return request.text(2), request.text(14)
    return None


def check_pin_control(control: FieldValue | None, key_set: str) -> Verdict | None:
    """Field 53 names the PIN format and PIK length (§3): absent is 30, another scheme than
    the keys issued is K3."""
    if control is None:
        return format_error("a PIN block without field 53")
    if control != KEY_SETS[key_set].security_control:
        return key_error("K3", "PIK", "field 53 mismatch")
    return None


def read_pin(decrypt: Callable[[KeyHandle, bytes, str], str], pik: KeyHandle, block: bytes,
             pan: str) -> str | Verdict:
    """The PIN, or K3 for a block that is not a valid format 0 block under the PIK."""
    try:
        return decrypt(pik, block, pan)
    except PinBlockInvalid:
        return key_error("K3", "PIK", "bad PIN block")


def check_card(card: Card | None) -> Verdict | None:
    return NO_CARD if card is None else None


def check_pin(pin: str | None, card: Card, pan: str,
              matches: Callable[[str, str, str], bool]) -> Verdict | None:
    if pin is not None and not matches(card.pvv, pan, pin):
        return Verdict(codes.INCORRECT_PIN)
    return None


def check_expiry(card: Card, presented: str, now: float) -> Verdict | None:
    """Expired when the card's YYMM is before this month, or the card presented another expiry."""
    if card.expiry < clock_fields(int(now)).yymm or (presented and presented != card.expiry):
        return Verdict(codes.EXPIRED_CARD)
    return None


def check_balance(amount: int, card: Card) -> Verdict | None:
    if amount > card.balance:
        return Verdict(codes.INSUFFICIENT_FUNDS)
    return None


def approval_code(request_ref: bytes) -> str:
    """Field 38 of an approval, from the request's keyed fingerprint: different for every
    request, unguessable without the host's key, deterministic for a test, and no draw from
    the random source per purchase."""
    return f"{int.from_bytes(request_ref[:4]) % 1_000_000:06d}"


# --- the checks of PROTOCOL.md §7, after the common ones ------------------------------------------


def check_original(original: Original | None, pan_ref: str, rrn: str | None = None,
                   auth: str | None = None, date: str | None = None) -> Verdict | None:
    """25 unless field 61 names an approved purchase of this terminal made with this card; a
    void's 37 and 38 and a refund's 61.3 (MMDD), when sent, must be the original's too."""
    if original is None:
        return NO_ORIGINAL
    record = original.record
    if record.kind != PURCHASE or record.rc != codes.APPROVED or record.pan_ref != pan_ref:
        return NO_ORIGINAL
    if ((rrn is not None and rrn != record.rrn) or (auth is not None and auth != record.auth)
            or (date is not None and date != record.date)):
        return NO_ORIGINAL
    return None


def check_voidable(original: Original) -> Verdict | None:
    """12 for a purchase already voided or reversed, with a refund, or in a settled batch."""
    if original.voided:
        return refused("original already voided")
    if original.record.reversed:
        return refused("original reversed")
    if original.refunded:
        return refused("original has a refund")
    if original.settled:
        return refused("original's batch is settled")
    return None


def check_void_amount(amount: int, original: Original) -> Verdict | None:
    if amount != original.record.amount:
        return Verdict(codes.AMOUNT_DIFFERS, note="void amount differs from the original's")
    return None


def check_refundable(original: Original) -> Verdict | None:
    """12 for a purchase voided or reversed (a settled batch is no obstacle: refunds are for
    earlier days)."""
    if original.voided:
        return refused("original voided")
    if original.record.reversed:
        return refused("original reversed")
    return None


def check_refund_amount(amount: int, original: Original) -> Verdict | None:
    """64 when this refund and the earlier ones of the original exceed its amount."""
    if amount + original.refunded > original.record.amount:
        return Verdict(codes.AMOUNT_DIFFERS, note="refunds would exceed the original amount")
    return None


def reversal_debit(original: Original | None, kind: str, pan_ref: str, amount: int) -> int | None:
    """What undoing the named transaction does to the card's balance (signed like
    `Answered.debit`), or None when there is nothing to undo: not found, not approved, already
    voided, refunded or reversed, its batch settled, or another card or amount than the
    reversal's (a reversal of nothing reverses nothing, PROTOCOL.md §7)."""
    if original is None:
        return None
    record = original.record
    if (record.kind != kind or record.rc != codes.APPROVED or record.reversed or original.voided
            or original.refunded or original.settled or record.pan_ref != pan_ref
            or record.amount != amount):
        return None
    return -amount if kind == PURCHASE else amount


def settlement_answer(reported: SettlementTotals, host: BatchTotals) -> SettlementTotals:
    """Field 48 of the 0510: the terminal's totals, each half's code set to 1 when the host's
    own agree and 2 when they do not (the host keeps no foreign cards: zeros)."""
    ours = (Half(*host), Half())
    halves = [Half(t.debit_amount, t.debit_count, t.credit_amount, t.credit_count,
                   SETTLE_BALANCED if t.same_totals(o) else SETTLE_UNBALANCED)
              for t, o in zip((reported.domestic, reported.foreign), ours, strict=True)]
    return SettlementTotals(*halves)


def check_upload_batch(settled: bool, closed: bool) -> Verdict | None:
    """12 for an upload of a batch never settled, settled balanced, or whose upload ended."""
    if not settled:
        return refused("batch upload of a batch not settled")
    if closed:
        return refused("batch upload of a closed batch")
    return None


# --- the compiled pipeline -----------------------------------------------------------------------


class Pipeline:
    """Every message's path, with what the configuration fixes bound once."""

    def __init__(self, config: HandlerConfig) -> None:
        assert config.security is not None
        self.codec = config.codec
        self.security = config.security
        self.request_ref = config.vault.request_ref
        self.pan_ref = config.vault.pan_ref
        self.pin_matches = config.vault.pin_matches
        self.key_error_code = config.key_error_code
        self.key_lifetime = config.key_lifetime
        self.key_sets = config.key_sets
        self.renew_before = config.renew_before
        self.served: dict[str, Callable[[Message, bytes, Field60, HostView, float], Outcome]] = {
            "0200": self.financial, "0220": self.financial, "0400": self.reversal,
            "0500": self.settlement, "0320": self.batch_upload,
            "0800": self.sign_on, "0820": self.network,
        }
        # The 0200/0220 transactions of PROTOCOL.md §7, by MTI and processing code: each runs
        # after the common checks and the duplicate rule.
        self.transactions: dict[str, dict[FieldValue, Transaction]] = {
            "0200": {PURCHASE_PROCESSING_CODE: self.purchase, INQUIRY_CODE: self.inquiry,
                     VOID_CODE: self.void},
            "0220": {VOID_CODE: self.refund},
        }

    def handle(self, data: bytes, view: HostView, now: float) -> Outcome:
        """Answer one request message (the bytes after framing, TPDU and header)."""
        try:
            request = self.codec.decode(data)
        except ProtocolError as exc:
            return self.undecodable(data, exc, now)
        mti = request.mti
        if mti[2] in RESPONSE_DIGITS:
            return Outcome(None, note="response MTI sent to the host: ignored")
        try:
            return self.dispatch(request, data, view, now)
        except MALFUNCTIONS as exc:
            return self.malfunction(request, now, type(exc).__name__)

    def undecodable(self, data: bytes, exc: ProtocolError, now: float) -> Outcome:
        """A 30 echoing what the decode error's partial message holds (STAN, terminal), so the
        terminal can match it to its request; nothing, and the connection closed, when not
        even the MTI decoded."""
        request = exc.partial
        if request is None:
            if exc.field == "MTI":
                return Outcome(None, note=f"undecodable: {exc}", close=True)
            request = Message(self.codec.decode_mti(data))  # a bitmap error: the MTI is sound
        if request.mti[2] in RESPONSE_DIGITS:
            return Outcome(None, note="response MTI sent to the host: ignored")
        return self.respond(request, format_error(str(exc)), now, None)

    def dispatch(self, request: Message, data: bytes, view: HostView, now: float) -> Outcome:
        mti = request.mti
        served = self.served.get(mti)
        if served is None:
            return self.respond(request, Verdict(codes.INVALID_TRANSACTION, note="MTI not served"),
                                now, None)
        fields = request.fields
        required = MANDATORY_BY_CODE.get((mti, fields.get(3))) or MANDATORY[mti]
        if not required <= fields.keys():
            missing = sorted(required - fields.keys())
            return self.respond(request, format_error(f"missing field(s) {missing}"), now, None)
        try:
            field60 = parse_field60(request.text(60))
        except ProtocolError as exc:
            return self.respond(request, format_error(str(exc)), now, None)
        return served(request, data, field60, view, now)

    def malfunction(self, request: Message | None, now: float, note: str) -> Outcome:
        """96 for a message the host failed to process (a bug, a broken row, a failed commit):
        the request as it was decoded, never decoded again."""
        if request is None:
            return Outcome(None, note=note, close=True)
        return self.respond(request, Verdict(codes.SYSTEM_MALFUNCTION, note=note), now, None)

    # --- the prefix of every financial transaction ---------------------------------------------

    def authenticate(self, request: Message, data: bytes, view: HostView, now: float
                     ) -> Authenticated | Verdict:
        """§4's first checks, which every financial request shares: terminal, keys, MAC and
        key lifetimes (the decoding and mandatory fields come before it, in `dispatch`)."""
        fields = request.fields
        terminal = view.terminal(request.text(41).rstrip())
        verdict = check_terminal(terminal, request.text(42)) or check_keys_present(terminal)  # type: ignore[arg-type]
        if verdict is not None:
            return verdict
        assert terminal is not None and terminal.tmk is not None
        if 64 not in fields:
            return format_error(f"{request.mti} without a MAC (field 64)")
        offset = mac_offset(self.codec, data)
        assert offset is not None
        working = terminal.working
        verdict = (check_mac(working, data[:offset], data[offset:offset + MAC_SIZE],
                             self.security.verify_mac)
                   or check_lifetimes(working[0], terminal.tmk, now))
        if verdict is not None:
            return verdict
        return Authenticated(terminal, working[0])

    def authenticated(self, request: Message, data: bytes, view: HostView, now: float
                      ) -> Authenticated | Outcome:
        """`authenticate`, its refusal already answered (unMACed, as §4 says)."""
        checked = self.authenticate(request, data, view, now)
        if type(checked) is Verdict:
            return self.respond(request, checked, now, None)
        return checked  # type: ignore[return-value]

    # --- 0200 and 0220: purchase, inquiry, void, refund ---------------------------------------

    def financial(self, request: Message, data: bytes, field60: Field60, view: HostView,
                  now: float) -> Outcome:
        """PROTOCOL.md §4, in its order, up to the duplicate rule; then the transaction's own
        checks (`self.transactions`)."""
        fields = request.fields
        checked = self.authenticated(request, data, view, now)
        if type(checked) is Outcome:
            return checked
        terminal, working = checked  # type: ignore[misc]
        mti = request.mti
        served = self.transactions[mti]
        verdict = check_processing_code(fields[3], served)
        if verdict is not None:
            return self.respond(request, verdict, now, working)
        request_ref = self.request_ref(data)
        stan = request.text(11)
        prior = view.prior(terminal, field60.batch, stan, mti)
        verdict = check_duplicate(prior, request_ref)
        if verdict is RETRANSMISSION:
            assert prior is not None
            return Outcome(prior.response, request, None, [], None, None, verdict.note)
        if verdict is not None:
            return self.respond(request, verdict, now, working)
        return served[fields[3]](Request(request, field60, terminal, working, request_ref, stan),
                                 view, now)

    def read_card(self, request: Message, working: WorkingSet[KeyHandle]
                  ) -> tuple[str, str, str | None] | Verdict:
        """PAN, expiry and PIN (None without a PIN block): card data (30), then §4's PIN block
        checks (30 without field 53, K3 for another scheme or a block that is not ISO 9564)."""
        card_values = card_data(request)
        if card_values is None:
            return format_error("no readable card data (field 2, or 35 in clear)")
        pan, expiry = card_values
        fields = request.fields
        block = fields.get(52)
        if block is None:
            return pan, expiry, None
        assert isinstance(block, bytes)
        verdict = check_pin_control(fields.get(53), working.key_set)
        if verdict is not None:
            return verdict
        pin = read_pin(self.security.decrypt_pin, working.pik, block, pan)
        if type(pin) is Verdict:
            return pin
        return pan, expiry, pin  # type: ignore[return-value]

    def answer(self, r: Request, verdict: Verdict, now: float, kind: str,
               pan_ref: str | None, debit: int = 0, amount: int = 0, original: int | None = None,
               extra: dict[int, FieldValue] | None = None) -> Outcome:
        """The response, and for a code §3 remembers the `Answered` change that keeps it (with
        its debit or credit, the two in one change)."""
        approved = verdict.rc == codes.APPROVED
        if approved:
            extra = {38: approval_code(r.request_ref), **(extra or {})}
        outcome = self.respond(r.message, verdict, now, r.working, extra)
        if verdict.rc in REMEMBERED and outcome.response is not None:
            out = outcome.reply.fields  # type: ignore[union-attr]
            outcome.changes.append(Answered(
                r.terminal.tid, r.terminal.number, r.field60.batch, r.stan, r.request_ref,
                outcome.response, pan_ref, debit if approved else 0, r.message.mti, kind,
                verdict.rc, amount, out[37], out.get(38, ""), out[13], original,  # type: ignore[arg-type]
            ))
        return outcome

    def purchase(self, r: Request, view: HostView, now: float) -> Outcome:
        """§4 from the PIN block on: card (56), PIN (55), expiry (54), balance (51)."""
        read = self.read_card(r.message, r.working)
        if type(read) is Verdict:
            return self.respond(r.message, read, now, r.working)
        pan, expiry, pin = read  # type: ignore[misc]
        card = view.card(self.pan_ref(pan))
        amount = int(r.message.text(4))
        verdict = check_card(card)
        if card is not None:
            verdict = (check_pin(pin, card, pan, self.pin_matches)
                       or check_expiry(card, expiry, now)
                       or check_balance(amount, card)
                       or APPROVAL)
        assert verdict is not None
        return self.answer(r, verdict, now, PURCHASE, None if card is None else card.pan_ref,
                           amount, amount)

    def inquiry(self, r: Request, view: HostView, now: float) -> Outcome:
        """As a purchase without the amount: card, PIN (optional), expiry; 54 the balance."""
        read = self.read_card(r.message, r.working)
        if type(read) is Verdict:
            return self.respond(r.message, read, now, r.working)
        pan, expiry, pin = read  # type: ignore[misc]
        card = view.card(self.pan_ref(pan))
        verdict = check_card(card)
        if card is None:
            return self.answer(r, verdict, now, INQUIRY, None)  # type: ignore[arg-type]
        verdict = (check_pin(pin, card, pan, self.pin_matches) or check_expiry(card, expiry, now)
                   or APPROVAL)
        extra = {54: Balance(card.currency, card.balance).format()} if verdict is APPROVAL else None
        return self.answer(r, verdict, now, INQUIRY, card.pan_ref, extra=extra)

    def named(self, r: Request, view: HostView, refund: bool
              ) -> tuple[str, int, OriginalData, Original | None] | Verdict:
        """What a void or refund names: its card (PIN checked when sent), amount, field 61
        (30 when malformed) and the original as the host remembers it."""
        read = self.read_card(r.message, r.working)
        if type(read) is Verdict:
            return read
        pan, _, pin = read  # type: ignore[misc]
        try:
            named = OriginalData.parse(r.message.text(61))
        except ProtocolError as exc:
            return format_error(str(exc))
        if refund and not named.date:
            return format_error("field 61 of a refund needs the original's date (61.3)")
        pan_ref = self.pan_ref(pan)
        card = view.card(pan_ref)
        if card is not None:
            verdict = check_pin(pin, card, pan, self.pin_matches)
            if verdict is not None:
                return verdict
        original = view.original(r.terminal, named.batch, named.stan)
        return pan_ref, int(r.message.text(4)), named, original

    def void(self, r: Request, view: HostView, now: float) -> Outcome:
        """§7: 25 (no such approved purchase with this card), 12 (voided, reversed, refunded or
        settled), 64 (amount), else 00 and the amount returns to the card."""
        found = self.named(r, view, refund=False)
        if type(found) is Verdict:
            return self.answer(r, found, now, VOID, None)
        pan_ref, amount, _, original = found  # type: ignore[misc]
        message = r.message
        verdict = check_original(original, pan_ref, message.text(37),
                                 message.text(38) if 38 in message.fields else None)
        if verdict is None:
            assert original is not None
            verdict = (check_voidable(original) or check_void_amount(amount, original)
                       or APPROVAL)
        return self.answer(r, verdict, now, VOID, pan_ref, -amount, amount,
                           None if original is None else original.record.ref)

    def refund(self, r: Request, view: HostView, now: float) -> Outcome:
        """§7: 25 (no such approved purchase with this card and date), 12 (voided or
        reversed), 64 (refunds above the original), else 00 and the amount returns."""
        found = self.named(r, view, refund=True)
        if type(found) is Verdict:
            return self.answer(r, found, now, REFUND, None)
        pan_ref, amount, named, original = found  # type: ignore[misc]
        verdict = check_original(original, pan_ref, date=named.date)
        if verdict is None:
            assert original is not None
            verdict = (check_refundable(original) or check_refund_amount(amount, original)
                       or APPROVAL)
        return self.answer(r, verdict, now, REFUND, pan_ref, -amount, amount,
                           None if original is None else original.record.ref)

    # --- 0400 reversal, 0500 settlement, 0320 batch upload ------------------------------------

    def reversal(self, request: Message, data: bytes, field60: Field60, view: HostView,
                 now: float) -> Outcome:
        """§7: once the common checks pass, always 00; the named transaction is undone when
        it still can be, and only once (the reversed flag makes a second 0400 a no-op)."""
        checked = self.authenticated(request, data, view, now)
        if type(checked) is Outcome:
            return checked
        terminal, working = checked  # type: ignore[misc]
        kind = REVERSIBLE.get(request.fields[3])
        if kind is None:
            verdict = Verdict(codes.INVALID_TRANSACTION, note="processing code not reversible")
            return self.respond(request, verdict, now, working)
        card_values = card_data(request)
        if card_values is None:
            return self.respond(request, format_error("no card data (field 2)"), now, working)
        pan_ref = self.pan_ref(card_values[0])
        amount = int(request.text(4))
        original = view.original(terminal, field60.batch, request.text(11))
        debit = reversal_debit(original, kind, pan_ref, amount)
        note = "nothing to undo" if debit is None else f"{kind} undone"
        outcome = self.respond(request, Verdict(codes.APPROVED, note=note), now, working)
        if debit is not None:
            assert original is not None
            outcome.changes.append(Reversed(terminal.tid, original.record.ref, pan_ref, debit))
        return outcome

    def settlement(self, request: Message, data: bytes, field60: Field60, view: HostView,
                   now: float) -> Outcome:
        """§7: the terminal's totals (48) against the host's own; 00 with each half's code."""
        checked = self.authenticated(request, data, view, now)
        if type(checked) is Outcome:
            return checked
        terminal, working = checked  # type: ignore[misc]
        if field60.nmic != NMIC_SETTLE:
            return self.respond(request, refused(f"60.3 {field60.nmic} is not a settlement"),
                                now, working)
        try:
            reported = SettlementTotals.parse(request.text(48))
        except ProtocolError as exc:
            return self.respond(request, format_error(str(exc)), now, working)
        answer = settlement_answer(reported, view.batch_totals(terminal, field60.batch))
        balanced = answer.domestic.code == answer.foreign.code == SETTLE_BALANCED
        state = view.batch_state(terminal, field60.batch)
        outcome = self.respond(request, Verdict(codes.APPROVED, note="balanced" if balanced
                                                else "unbalanced"), now, working,
                               {48: answer.format()})
        if not state.closed:
            outcome.changes.append(Settled(terminal.tid, terminal.number, field60.batch, balanced,
                                           request.text(48), answer.format(), now))
        return outcome

    def batch_upload(self, request: Message, data: bytes, field60: Field60, view: HostView,
                     now: float) -> Outcome:
        """§7: records kept beside the host's own for reconciliation; no money moves."""
        checked = self.authenticated(request, data, view, now)
        if type(checked) is Outcome:
            return checked
        terminal, working = checked  # type: ignore[misc]
        if field60.nmic not in (NMIC_SETTLE, NMIC_UPLOAD_END):
            return self.respond(request, refused(f"60.3 {field60.nmic} is not a batch upload"),
                                now, working)
        try:
            records = parse_upload(request.text(48))
        except ProtocolError as exc:
            return self.respond(request, format_error(str(exc)), now, working)
        verdict = check_upload_batch(*view.batch_state(terminal, field60.batch))
        if verdict is not None:
            return self.respond(request, verdict, now, working)
        last = field60.nmic == NMIC_UPLOAD_END
        outcome = self.respond(request, Verdict(codes.APPROVED, note=f"{len(records)} records"
                                                + (", upload ended" if last else "")),
                               now, working)
        kept = tuple(UploadedRecord(rec.type_code, rec.stan, self.pan_ref(rec.pan),
                                    mask_pan(rec.pan), rec.amount) for rec in records)
        outcome.changes.append(Uploaded(terminal.tid, terminal.number, field60.batch,
                                        request.text(11), kept, last))
        return outcome

    # --- 0800 sign-on, 0820 sign-off and echo --------------------------------------------------

    def sign_on(self, request: Message, data: bytes, field60: Field60, view: HostView,
                now: float) -> Outcome:
        terminal = view.terminal(request.text(41).rstrip())
        verdict = check_terminal(terminal, request.text(42))
        if verdict is not None:
            return self.respond(request, verdict, now, None)
        assert terminal is not None
        tmk = terminal.tmk
        if tmk is None or tmk.state != ACTIVE:
            return self.respond(request, key_error("K1", "TMK", "not active"), now, None)
        if tmk.expired(now):
            return self.respond(request, key_error("K2", "TMK", "expired"), now, None)
        key_set = KEY_SETS.get(field60.nmic) if field60.nmic in self.key_sets else None
        if key_set is None:
            # ERROR14: a terminal asking for a key scheme the host does not offer (software too old).
            return self.respond(request, key_error("K3", "WK", "key set unsupported"), now, None)
        issued = self.security.issue_working_set(tmk.key, key_set, terminal.next_generation, now,
                                                 self.key_lifetime)
        verdict = Verdict(codes.APPROVED, note=f"generation {issued.stored.generation}")
        outcome = self.respond(request, verdict, now, None, {62: issued.field62})
        outcome.changes.append(IssueWorkingKeys(terminal.tid, issued.stored))
        return outcome

    def network(self, request: Message, data: bytes, field60: Field60, view: HostView,
                now: float) -> Outcome:
        verdict = check_terminal(view.terminal(request.text(41).rstrip()), request.text(42))
        if verdict is not None:
            return self.respond(request, verdict, now, None)
        if field60.nmic == NMIC_ECHO:
            return self.respond(request, Verdict(codes.APPROVED, note="echo"), now, None)
        if field60.nmic == NMIC_SIGN_OFF:
            outcome = self.respond(
                request, Verdict(codes.APPROVED, note="signed off: working keys revoked"), now, None)
            outcome.changes.append(RevokeWorkingKeys(request.text(41).rstrip()))
            return outcome
        verdict = Verdict(codes.INVALID_TRANSACTION, note=f"60.3 {field60.nmic} not served")
        return self.respond(request, verdict, now, None)

    # --- building responses --------------------------------------------------------------------

    def respond(self, request: Message, verdict: Verdict, now: float,
                working: WorkingSet[KeyHandle] | None, extra: dict[int, FieldValue] | None = None,
                ) -> Outcome:
        """The response to `request` with `verdict`; MACed under `working`'s MAK where §3 says so.

        The reply's fields are built once, in one dict, and the MAC spliced into the encoded
        bytes (no copy of the message): this runs for every message the host answers.
        """
        fields = request.fields
        mti = request.mti
        out = {n: fields[n] for n in ECHOED.get(mti, _FINANCIAL_ECHO) if n in fields}
        rc = verdict.rc
        if mti in CLOCKED:
            clock = clock_fields(int(now))
            out[12] = clock.time
            out[13] = clock.date
            if mti in REFERENCED:
                stan = fields.get(11)
                out[37] = clock.rrn_prefix + (stan if type(stan) is str and len(stan) == 6
                                              else "000000")
        reason = verdict.reason.field44() if verdict.reason else None
        changes: list[Change] = []
        if reason is not None:
            out[44] = reason
            rc = self.key_error_code
            if reason in KEY_ERROR_EVENTS:  # "kcv refused", "expired" (docs/operations.md)
                changes = [KeyErrorSeen(request.text(41).rstrip(), reason)]
        out[39] = rc
        if extra:
            out.update(extra)
        reply = Message(response_mti(mti), out)
        if working is not None and (verdict.rc in codes.MACED_RESPONSE_CODES or verdict.maced):
            if renewal_due(working, now, self.renew_before) and reason is None:
                out[44] = codes.RENEWAL_DUE  # before field 64: under the response MAC
            out[64] = PLACEHOLDER
            encoded = self.codec.encode(reply)
            offset = mac_offset(self.codec, encoded)
            assert offset is not None
            mac = self.security.generate_mac(working.mak, encoded[:offset])
            encoded = encoded[:offset] + mac + encoded[offset + MAC_SIZE:]
        else:
            encoded = self.codec.encode(reply)
        return Outcome(encoded, request, reply, changes, rc, reason, verdict.note)


def handle(data: bytes, view: HostView, now: float, config: HandlerConfig) -> Outcome:
    """Answer one request message with the configuration's compiled pipeline."""
    return config.pipeline.handle(data, view, now)


@lru_cache(maxsize=4096)
def parse_field60(value: str) -> Field60:
    """Field 60 parsed once per distinct value: a terminal sends the same one all batch long."""
    return Field60.parse(value)


class ClockFields(NamedTuple):
    yymm: str
    time: str  # field 12, hhmmss
    date: str  # field 13, MMDD
    rrn_prefix: str  # YDDDHH


@lru_cache(maxsize=4)
def clock_fields(second: int) -> ClockFields:
    """The clock as messages show it (UTC); one formatting per second, not per message."""
    t = gmtime(second)
    return ClockFields(strftime("%y%m", t), strftime("%H%M%S", t), strftime("%m%d", t),
                       f"{t.tm_year % 10}{t.tm_yday:03d}{t.tm_hour:02d}")


@lru_cache(maxsize=64)
def response_mti(mti: str) -> str:
    """The answer's MTI (third digit + 1); remembered, as a host answers the same few MTIs."""
    return f"{mti[:2]}{int(mti[2]) + 1}{mti[3]}"

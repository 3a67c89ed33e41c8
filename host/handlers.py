"""The host's decisions: request bytes, key state and a clock in; response bytes and changes out.

Nothing here touches a socket, a file or the database, so the TCP server, the serial server, the
load generator and the unit tests all run the very same decisions. A 0200 is checked in exactly
the order PROTOCOL.md §4 gives; each check is one step in `PURCHASE_STEPS`, so the order is
data that can be read (and tested) in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from time import gmtime, strftime

from host import hsm
from host.lmk import Vault
from host.state import (
    ACTIVE,
    REVOKED,
    Card,
    Change,
    Debit,
    HostView,
    IssueWorkingKeys,
    RecordTransaction,
    RevokeWorkingKeys,
    TerminalKeys,
    WorkingSet,
)
from protocol import codes
from protocol.codec import Codec
from protocol.codes import KeyErrorReason
from protocol.errors import ProtocolError
from protocol.fields import KEY_SETS, NMIC_ECHO, NMIC_SIGN_OFF, Field60
from protocol.macing import PLACEHOLDER
from protocol.message import Message

# Fields a request must carry, by MTI, before anything else is looked at (else 30). Field 64 of a
# 0200 is checked later, at its place in the §4 order.
MANDATORY: dict[str, frozenset[int]] = {
    "0200": frozenset({3, 4, 11, 22, 25, 41, 42, 49, 60}),
    "0800": frozenset({11, 41, 42, 60}),
    "0820": frozenset({11, 41, 42, 60}),
}
# Request fields a response echoes, by request MTI (PROTOCOL.md §3's response columns).
ECHOED: dict[str, tuple[int, ...]] = {
    "0200": (3, 4, 11, 41, 42, 49, 60),
    "0800": (11, 41, 42, 60),
    "0820": (11, 41, 42, 60),
}
ECHOED_OTHERWISE = (3, 4, 11, 41, 42, 49, 60)
# Codes whose 0200 is remembered for duplicate detection (§3: not 14, 30, 12, 03, nor 94).
REMEMBERED = frozenset({codes.APPROVED, codes.INSUFFICIENT_FUNDS, codes.EXPIRED_CARD,
                        codes.INCORRECT_PIN, codes.NO_CARD_RECORD})
PURCHASE_PROCESSING_CODE = "000000"
RESPONSE_DIGITS = "13579"  # an MTI's third digit: a response (or advice response), never answered
DEFAULT_KEY_LIFETIME = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class HandlerConfig:
    """What a host is started with; fixed for the life of a server."""

    codec: Codec
    vault: Vault
    rng: Callable[[int], bytes]
    key_error_code: str = codes.KEY_ERROR
    key_lifetime: float = DEFAULT_KEY_LIFETIME
    key_sets: frozenset[str] = frozenset(KEY_SETS)
    """The key sets this host issues: fewer makes ERROR14's "software too old" cause happen."""


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


APPROVAL = Verdict(codes.APPROVED)


def key_error(code: str, key: str, text: str) -> Verdict:
    return Verdict(codes.KEY_ERROR, KeyErrorReason(code, key, text))


def format_error(note: str) -> Verdict:
    return Verdict(codes.FORMAT_ERROR, note=note)


# --- entry point ---------------------------------------------------------------------------------


def handle(data: bytes, view: HostView, now: float, config: HandlerConfig) -> Outcome:
    """Answer one request message (the bytes after framing, TPDU and header)."""
    codec = config.codec
    error: ProtocolError | None = None
    try:
        request = codec.decode(data)
    except ProtocolError as exc:
        try:
            mti = codec.decode_mti(data)
        except ProtocolError:
            return Outcome(None, note=f"undecodable: {exc}", close=True)
        error, request = exc, exc.partial or Message(mti)
    mti = request.mti
    if mti[2] in RESPONSE_DIGITS:
        return Outcome(None, note="response MTI sent to the host: ignored")
    if error is not None:
        # Echo what did decode (STAN, terminal) so the terminal can match the 30 to its request.
        return _respond(request, format_error(str(error)), now, config, None)
    served = SERVED.get(mti)
    if served is None:
        return _respond(request, Verdict(codes.INVALID_TRANSACTION, note="MTI not served"),
                        now, config, None)
    if not MANDATORY[mti] <= request.fields.keys():
        missing = sorted(MANDATORY[mti] - request.fields.keys())
        return _respond(request, format_error(f"missing field(s) {missing}"), now, config, None)
    try:
        field60 = parse_field60(request.text(60))
    except ProtocolError as exc:
        return _respond(request, format_error(str(exc)), now, config, None)
    return served(request, data, field60, view, now, config)


@lru_cache(maxsize=4096)
def parse_field60(value: str) -> Field60:
    """Field 60 parsed once per distinct value: a terminal sends the same one all batch long."""
    return Field60.parse(value)


# --- 0200 purchase -------------------------------------------------------------------------------


@dataclass(slots=True)
class Purchase:
    """What the §4 steps learn about one 0200 as they go."""

    request: Message
    raw: bytes
    field60: Field60
    view: HostView
    now: float
    config: HandlerConfig
    tid: str = ""
    terminal: TerminalKeys | None = None
    working: WorkingSet | None = None  # the generation whose MAK verified the request
    pan: str = ""
    expiry: str = ""
    pin: str | None = None
    card: Card | None = None
    request_ref: bytes = b""
    original: bytes | None = None


Step = Callable[[Purchase], Verdict | None]


def check_terminal(p: Purchase) -> Verdict | None:
    p.terminal, verdict = _known_terminal(p.request, p.view)
    if p.terminal is not None:
        p.tid = p.terminal.tid
    return verdict


def check_keys_present(p: Purchase) -> Verdict | None:
    terminal = p.terminal
    assert terminal is not None
    tmk = terminal.tmk
    if tmk is None or tmk.state != ACTIVE:
        return key_error("K1", "TMK", "revoked" if tmk and tmk.state == REVOKED else "absent")
    if terminal.current is not None:
        return None
    if not terminal.working:
        return key_error("K1", "WK", "not signed on")
    return key_error("K1", "WK", "revoked/signed off")


def check_mac(p: Purchase) -> Verdict | None:
    if 64 not in p.request.fields:
        return format_error("0200 without a MAC (field 64)")
    terminal = p.terminal
    assert terminal is not None
    codec = p.config.codec
    for working in terminal.working:
        if hsm.mac_verifies(codec, p.raw, working.mak):
            if working is not terminal.working[0]:
                return key_error("K2", "MAK", "missed rotation")
            p.working = working
            return None
    return key_error("K3", "MAK", "mismatch")


def check_lifetimes(p: Purchase) -> Verdict | None:
    assert p.working is not None and p.terminal is not None and p.terminal.tmk is not None
    if p.working.expired(p.now):
        return key_error("K2", "WK", "expired")
    if p.terminal.tmk.expired(p.now):
        return key_error("K2", "TMK", "expired")
    return None


def check_processing_code(p: Purchase) -> Verdict | None:
    if p.request.text(3) != PURCHASE_PROCESSING_CODE:
        return Verdict(codes.INVALID_TRANSACTION, note="processing code not served")
    return None


def check_duplicate(p: Purchase) -> Verdict | None:
    p.request_ref = p.config.vault.request_ref(p.raw)
    prior = p.view.prior(p.tid, p.field60.batch, p.request.text(11))
    if prior is None:
        return None
    if prior.request_ref == p.request_ref:
        p.original = prior.response
        return Verdict(codes.DUPLICATE, note="retransmission: original response sent again")
    return Verdict(codes.DUPLICATE, note="same terminal, batch and STAN, different request")


def _card_data(request: Message) -> tuple[str, str] | None:
    """PAN and expiry, from field 2/14 (keyed) or track 2 (swiped); None if neither is there."""
    if 35 in request.fields:
        pan, sep, rest = request.text(35).partition("=")
        if not sep or len(rest) < 4:
            return None
        return request.text(2) or pan, request.text(14) or rest[:4]
    if 2 in request.fields:
        return request.text(2), request.text(14)
    return None


def check_pin_block(p: Purchase) -> Verdict | None:
    card = _card_data(p.request)
    if card is None:
        return format_error("no card data (field 2 or 35)")
    p.pan, p.expiry = card
    block = p.request.get(52)
    if block is None:
        return None
    assert p.working is not None and isinstance(block, bytes)
    control = p.request.get(53)
    if control is None:
        return format_error("a PIN block without field 53")
    if control != KEY_SETS[p.working.key_set].security_control:
        # Field 53 names the PIN format and PIK length (§3): another scheme than the keys issued.
        return key_error("K3", "PIK", "field 53 mismatch")
    try:
        p.pin = hsm.decrypt_pin(p.working.pik, block, p.pan)
    except hsm.PinBlockInvalid:
        return key_error("K3", "PIK", "bad PIN block")
    return None


def check_card(p: Purchase) -> Verdict | None:
    p.card = p.view.card(p.config.vault.pan_ref(p.pan))
    return Verdict(codes.NO_CARD_RECORD) if p.card is None else None


def check_pin(p: Purchase) -> Verdict | None:
    assert p.card is not None
    if p.pin is not None and not p.config.vault.pin_matches(p.card.pvv, p.pan, p.pin):
        return Verdict(codes.INCORRECT_PIN)
    return None


def check_expiry(p: Purchase) -> Verdict | None:
    """Expired when the card's YYMM is before this month, or the card presented another expiry."""
    assert p.card is not None
    this_month = clock_fields(int(p.now)).yymm
    if p.card.expiry < this_month or (p.expiry and p.expiry != p.card.expiry):
        return Verdict(codes.EXPIRED_CARD)
    return None


def check_balance(p: Purchase) -> Verdict | None:
    assert p.card is not None
    if int(p.request.text(4)) > p.card.balance:
        return Verdict(codes.INSUFFICIENT_FUNDS)
    return None


PURCHASE_STEPS: tuple[Step, ...] = (
    check_terminal,          # 03
    check_keys_present,      # K1
    check_mac,               # 30, K2 (earlier generation), K3
    check_lifetimes,         # K2
    check_processing_code,   # 12
    check_duplicate,         # 94, or the original response
    check_pin_block,         # K3 (30 without card data)
    check_card,              # 56
    check_pin,               # 55
    check_expiry,            # 54
    check_balance,           # 51
)


def handle_purchase(
    request: Message, raw: bytes, field60: Field60, view: HostView, now: float,
    config: HandlerConfig,
) -> Outcome:
    p = Purchase(request, raw, field60, view, now, config)
    for step in PURCHASE_STEPS:
        verdict = step(p)
        if verdict is not None:
            break
    else:
        verdict = APPROVAL
    if p.original is not None:
        return Outcome(p.original, request, None, [], None, None, verdict.note)
    extra = {38: approval_code(p.request_ref)} if verdict is APPROVAL else None
    outcome = _respond(request, verdict, now, config, p.working, extra)
    if verdict.rc in REMEMBERED and outcome.response is not None:
        assert p.terminal is not None
        outcome.changes.append(RecordTransaction(
            p.tid, p.terminal.number, field60.batch, request.text(11), p.request_ref,
            outcome.response,
        ))
        if verdict.rc == codes.APPROVED:
            assert p.card is not None
            outcome.changes.append(Debit(p.card.pan_ref, int(request.text(4))))
    return outcome


def approval_code(request_ref: bytes) -> str:
    """Field 38 of an approval, from the request's keyed fingerprint: different for every
    request, unguessable without the host's key, deterministic for a test, and no draw from
    the random source per purchase."""
    return f"{int.from_bytes(request_ref[:4]) % 1_000_000:06d}"


# --- 0800 sign-on, 0820 sign-off and echo --------------------------------------------------------


def _known_terminal(request: Message, view: HostView) -> tuple[TerminalKeys | None, Verdict | None]:
    """The terminal of fields 41 and 42, or the 03 that a stranger gets (every MTI served)."""
    terminal = view.terminal(request.text(41).rstrip())
    if terminal is None:
        return None, Verdict(codes.NOT_REGISTERED, note="unknown terminal")
    if request.text(42).rstrip() != terminal.merchant:
        return None, Verdict(codes.NOT_REGISTERED, note="merchant does not match the terminal")
    return terminal, None


def handle_sign_on(
    request: Message, raw: bytes, field60: Field60, view: HostView, now: float,
    config: HandlerConfig,
) -> Outcome:
    terminal, verdict = _known_terminal(request, view)
    if terminal is None:
        return _respond(request, verdict, now, config, None)
    tmk = terminal.tmk
    if tmk is None or tmk.state != ACTIVE:
        return _respond(request, key_error("K1", "TMK", "not active"), now, config, None)
    if tmk.expired(now):
        return _respond(request, key_error("K2", "TMK", "expired"), now, config, None)
    key_set = KEY_SETS.get(field60.nmic) if field60.nmic in config.key_sets else None
    if key_set is None:
        # ERROR14: a terminal asking for a key scheme the host does not offer (software too old).
        verdict = key_error("K3", "WK", "key set unsupported")
        return _respond(request, verdict, now, config, None)
    working = hsm.new_working_set(
        key_set, config.codec.dialect, terminal.next_generation, now, config.key_lifetime,
        config.rng,
    )
    field62 = hsm.field62(tmk.key, working, key_set)
    outcome = _respond(request, Verdict(codes.APPROVED, note=f"generation {working.generation}"),
                       now, config, None, {62: field62})
    outcome.changes.append(IssueWorkingKeys(terminal.tid, working))
    return outcome


def handle_network(
    request: Message, raw: bytes, field60: Field60, view: HostView, now: float,
    config: HandlerConfig,
) -> Outcome:
    terminal, verdict = _known_terminal(request, view)
    if terminal is None:
        return _respond(request, verdict, now, config, None)
    if field60.nmic == NMIC_ECHO:
        return _respond(request, Verdict(codes.APPROVED, note="echo"), now, config, None)
    if field60.nmic == NMIC_SIGN_OFF:
        outcome = _respond(request, Verdict(codes.APPROVED, note="signed off: working keys revoked"),
                           now, config, None)
        outcome.changes.append(RevokeWorkingKeys(terminal.tid))
        return outcome
    verdict = Verdict(codes.INVALID_TRANSACTION, note=f"60.3 {field60.nmic} not served")
    return _respond(request, verdict, now, config, None)


Handler = Callable[[Message, bytes, Field60, HostView, float, HandlerConfig], Outcome]
SERVED: dict[str, Handler] = {
    "0200": handle_purchase,
    "0800": handle_sign_on,
    "0820": handle_network,
}


def malfunction(data: bytes, now: float, config: HandlerConfig, note: str) -> Outcome:
    """96 for a message the host failed to process (a bug, a broken row, a failed commit)."""
    codec = config.codec
    try:
        request = codec.decode(data)
    except ProtocolError:
        try:
            request = Message(codec.decode_mti(data))
        except ProtocolError:
            return Outcome(None, note=note, close=True)
    return _respond(request, Verdict(codes.SYSTEM_MALFUNCTION, note=note), now, config, None)


# --- building responses --------------------------------------------------------------------------

# Requests whose answer the host stamps with local time, date and a retrieval reference.
STAMPED = frozenset({"0200", "0800"})


def _respond(
    request: Message, verdict: Verdict, now: float, config: HandlerConfig,
    working: WorkingSet | None, extra: dict[int, bytes] | None = None,
) -> Outcome:
    """The response to `request` with `verdict`; MACed under `working`'s MAK where §3 says so.

    The reply's fields are built once, in one dict, and signed in place (no copy for the MAC):
    this runs for every message the host answers.
    """
    fields = request.fields
    mti = request.mti
    out = {n: fields[n] for n in ECHOED.get(mti, ECHOED_OTHERWISE) if n in fields}
    rc = verdict.rc
    if mti in STAMPED:
        clock = clock_fields(int(now))
        stan = fields.get(11)
        out[12] = clock.time
        out[13] = clock.date
        out[37] = clock.rrn_prefix + (stan if type(stan) is str and len(stan) == 6 else "000000")
    reason = verdict.reason.field44() if verdict.reason else None
    if reason is not None:
        out[44] = reason
        rc = config.key_error_code
    out[39] = rc
    if extra:
        out.update(extra)
    reply = Message(response_mti(mti), out)
    if working is not None and verdict.rc in codes.MACED_RESPONSE_CODES:
        out[64] = PLACEHOLDER
        data = hsm.mac_sign_in_place(config.codec, reply, working.mak)
    else:
        data = config.codec.encode(reply)
    return Outcome(data, request, reply, [], rc, reason, verdict.note)


@dataclass(frozen=True, slots=True)
class ClockFields:
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


"""What each `pos-terminal` command does, as functions over a terminal folder.

The CLI parses arguments and prints; these functions do the work and return values, so tests
drive them directly. Every exchange goes the same way: load the keys (a keystore that fails is
key error 14 K1), take a durable STAN, let the session build the request, send it, let the
session judge the answer, store any new keys atomically, and journal what happened, masked.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from protocol import fields, requests
from protocol.codes import KeyErrorReason
from protocol.crypto.keys import Key
from protocol.dialects import get_dialect
from protocol.errors import DecodeError, ProtocolError, SpecError
from protocol.framing import Framing
from protocol.injection import read_injection_file
from protocol.mask import mask_pan, masked_fields
from protocol.message import Message
from protocol.shown import show
from protocol.spec import Dialect
from protocol.transport.tcp import TransportError
from terminal import diagnose as diag
from terminal.ceremony import Component, combine
from terminal.channel import Tap, Wire, open_channel
from terminal.fsops import lock_file, temp_path
from terminal.keystore import (
    KeySet,
    KeyStatus,
    Keystore,
    KeystoreError,
    StoredKey,
    key_status,
    load_storage_key,
)
from terminal.pending import (
    BAD_ANSWER,
    CARD_PURPOSE,
    MAX_TRIES,
    NO_ANSWER,
    OTHER,
    PendingError,
    PendingReversal,
    PendingStore,
    open_blob,
    seal_blob,
)
from terminal.session import Kind, Original, Purchase, Request, Result, Session, TerminalKeyError
from terminal.store import (
    Config,
    Counters,
    Entry,
    Journal,
    Layout,
    Ledger,
    Record,
    StateError,
    append_record,
    load_config,
    load_counters,
    next_batch,
    read_journal,
    read_ledger,
    recover_counters,
    save_config,
    save_counters,
    save_supervisor,
    update_ledger,
)

CLOCK_OFFSET_ENV = "POSEMU_TERMINAL_CLOCK_OFFSET"
MAX_CLOCK_OFFSET = 100 * 366 * 24 * 3600
Trace = Callable[[str], None]


def clock_offset() -> float:
    """$POSEMU_TERMINAL_CLOCK_OFFSET as seconds, or a StateError: checked before a command
    starts, because a clock that fails after the host answered would hide the answer."""
    text = os.environ.get(CLOCK_OFFSET_ENV) or "0"
    try:
        offset = float(text)
    except ValueError:
        offset = math.nan
    if not math.isfinite(offset) or abs(offset) > MAX_CLOCK_OFFSET:
        raise StateError(f"${CLOCK_OFFSET_ENV} must be a number of seconds, not {text!r}")
    return offset


def system_clock() -> float:
    """Wall time, moved by $POSEMU_TERMINAL_CLOCK_OFFSET seconds: how a demo or a test makes
    working keys outlive their local lifetime without waiting."""
    return time.time() + clock_offset()


@dataclass
class Terminal:
    """One terminal folder with the settings of this run."""

    layout: Layout
    config: Config
    dialect: Dialect
    wire: Wire = field(default_factory=Wire)
    clock: Callable[[], float] = system_clock
    trace: Trace | None = None
    warnings: list[str] = field(default_factory=list)
    tap: Tap | None = None  # `--pcap FILE`: every exchange of this command, as the line saw it

    @property
    def keystore(self) -> Keystore:
        return Keystore(self.layout.keystore, self.layout.storage_key)

    @property
    def pending(self) -> PendingStore:
        return PendingStore(self.layout.pending, self.layout.storage_key)

    def load_keys(self) -> KeySet:
        """The keys, or the key error 14 K1 a keystore that cannot be trusted amounts to."""
        try:
            return self.keystore.load()
        except KeystoreError as exc:
            raise TerminalKeyError(KeyErrorReason("K1", "TMK", exc.reason), str(exc)) from None


def dialect_named(name: str) -> Dialect:
    """A dialect, or a StateError a person can read (get_dialect raises KeyError)."""
    try:
        return get_dialect(name)
    except (KeyError, SpecError, OSError, ValueError, TypeError) as exc:
        raise StateError(f"dialect {name!r}: {exc.args[0] if exc.args else exc}") from None


def open_terminal(layout: Layout, wire: Wire | None = None, dialect_name: str | None = None,
                  trace: Trace | None = None, tap: Tap | None = None) -> Terminal:
    """The terminal in `layout`; a wire that names no host uses the one given at init."""
    clock_offset()
    config = load_config(layout)
    wire = wire or Wire()
    if wire.host is None and wire.serial is None:
        wire = replace(wire, host=config.host)
    dialect = dialect_named(dialect_name or config.dialect)
    return Terminal(layout, config, dialect, wire, trace=trace, tap=tap)


# --- provisioning ---------------------------------------------------------------------------


def init_terminal(folder: Path, config: Config, supervisor: str | None = None) -> Layout:
    """Everything is checked first; then the folder is made, and if making it fails half way
    (a full disk, a folder that is not ours) what this call created is removed again, so a
    failed init changes nothing and can simply be run again. `supervisor`: the scrypt hash of
    a supervisor password (`store.check_supervisor`), or None for a terminal without one."""
    layout = Layout(folder)
    if layout.config.exists() or layout.storage_key.exists():
        raise FileExistsError(f"a terminal is already initialised in {folder}")
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    dialect_named(config.dialect)
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if made:
            os.chmod(folder, 0o700)
        lock_file(layout.folder).touch(mode=0o600)
        Keystore(layout.keystore, layout.storage_key).create()
        if supervisor is not None:
            save_supervisor(layout, supervisor)
        save_config(layout, config)
    except BaseException:
        for path in (layout.config, layout.keystore, temp_path(layout.keystore), layout.storage_key,
                     temp_path(layout.config), lock_file(layout.folder), layout.supervisor,
                     temp_path(layout.supervisor)):
            if path.parent.exists():
                path.unlink(missing_ok=True)
        for path in made:  # deepest first
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    return layout


def install_tmk(terminal: Terminal, tmk_key: Key) -> StoredKey:
    """A new TMK replaces the whole key set: the old working keys came under the old TMK.

    A keystore that no longer loads is replaced too, storage key included: loading a TMK is the
    recovery from a damaged key memory.
    """
    store = terminal.keystore
    try:
        keys = store.load()
    except KeystoreError:
        store.reset()
        keys = KeySet()
    previous = keys.tmk
    stored = StoredKey(tmk_key, (previous.generation if previous else 0) + 1, terminal.clock())
    store.save(keys.with_tmk(stored))
    return stored


def load_tmk_components(
    terminal: Terminal, components: list[Component], tmk_kcv: str | None
) -> StoredKey:
    return install_tmk(terminal, combine(components, tmk_kcv))


def load_tmk_file(terminal: Terminal, path: Path) -> StoredKey:
    injection = read_injection_file(path)
    if injection.tid and injection.tid != terminal.config.tid:
        raise ValueError(f"{path} is for terminal {injection.tid}, not {terminal.config.tid}")
    return install_tmk(terminal, injection.tmk)


# --- exchanges ------------------------------------------------------------------------------


def _masked(message: Message, dialect: Dialect) -> dict[str, str]:
    return {str(n): v for n, v in masked_fields(message, dialect).items()}


def _trace(terminal: Terminal, arrow: str, payload: bytes) -> None:
    """Rendered by protocol.shown, so a trace pasted into a ticket leaks nothing."""
    if terminal.trace is not None:
        for line in show(payload, terminal.dialect).lines(arrow):
            terminal.trace(line)


def _journal(terminal: Terminal, record: Record) -> None:
    """The journal is evidence, not the outcome: a journal that cannot be written (full disk,
    read-only folder) is a warning beside the real result, never a failure in its place."""
    try:
        append_record(terminal.layout, record)
    except OSError as exc:
        terminal.warnings.append(f"the journal was not written ({exc.strerror or exc}): "
                                 "this exchange is missing from status and diagnose")


def _record(terminal: Terminal, kind: str, result: Result, request: Request | None) -> None:
    dialect = terminal.dialect
    _journal(terminal, Record(
        at=terminal.clock(),
        command=kind,
        outcome=result.outcome,
        rc=result.rc,
        reason=result.reason.field44() if result.reason else None,
        source=result.source if result.rc else None,
        stan=request.stan if request else None,
        request=_masked(request.message, dialect) if request else {},
        response=_masked(result.response, dialect) if result.response else {},
        detail=result.detail or None,
    ))


def _record_failure(terminal: Terminal, kind: str, outcome: str, detail: str,
                    request: Request | None) -> None:
    _journal(terminal, Record(
        at=terminal.clock(), command=kind, outcome=outcome, detail=detail,
        stan=request.stan if request else None,
        request=_masked(request.message, terminal.dialect) if request else {},
    ))


Build = Callable[[Session, int, int], Request]
REVERSIBLE = frozenset({"purchase", "void"})
"""What PROTOCOL.md §7 reverses when unconfirmed; a refund is resent as the same bytes instead."""
PENDING_NOTE = ("the transaction is unconfirmed: its reversal is pending and goes out before the "
                "next transaction (`pos-terminal reverse` sends it now)")


def run_exchange(terminal: Terminal, kind: Kind, build: Build, *, reserve: bool = True) -> Result:
    """One request and its answer. Key errors come back as a Result (from the host or found
    here); an unreachable host or an unreadable answer raises TransportError/ProtocolError
    after being journaled.

    The STAN is reserved last, once the request is built and the line is open: a request
    refused here (bad input, a key error found by the terminal) uses no STAN. A reversal
    reserves none (`reserve=False`): it carries its original's. A purchase or a void is
    recorded as pending, durably, once the connection is up and before a byte of it leaves.
    """
    request: Request | None = None
    try:
        keys = terminal.load_keys()
        session = Session(terminal.config, terminal.dialect, keys, terminal.clock)
        upcoming = load_counters(terminal.layout).next_stan() if reserve else None
        request = build(session, upcoming.stan if upcoming else 0,
                        upcoming.batch if upcoming else 0)
    except ProtocolError as exc:  # our own request does not encode: bad input, not the host
        raise ValueError(f"cannot build the {kind} request: {exc}") from None
    except TerminalKeyError as exc:
        result = Result(kind, "key_error", "14", exc.reason, "terminal", detail=exc.detail)
        _record(terminal, kind, result, None)
        return result
    framing = Framing(terminal.dialect)
    payload = framing.payload(request.encoded)
    channel = open_channel(terminal.wire, framing.length, terminal.tap)
    pending: PendingReversal | None = None
    try:
        if upcoming is not None:
            save_counters(terminal.layout, upcoming)
        if kind in REVERSIBLE:
            connect = getattr(channel, "connect", None)
            if connect is not None:
                connect()  # a host that refuses the connection got nothing: nothing to reverse
            pending = session.pending_for(request, terminal.clock())
            terminal.pending.save(pending)
        _trace(terminal, ">>", payload)
        reply = channel.exchange(payload, terminal.wire.response_timeout)
        _trace(terminal, "<<", reply)
        result = session.receive(request, framing.unframe(reply).message)
    except TransportError as exc:
        _record_failure(terminal, kind, "unreachable", str(exc), request)
        if pending is not None:
            _keep_pending(terminal, pending, NO_ANSWER, request)
            raise TransportError(f"{exc}; {PENDING_NOTE}") from None
        raise
    except ProtocolError as exc:
        _record_failure(terminal, kind, "bad response", str(exc), request)
        if pending is not None:
            reason = BAD_ANSWER if isinstance(exc, DecodeError) else OTHER
            _keep_pending(terminal, pending, reason, request)
            raise ProtocolError(f"{exc}; {PENDING_NOTE}") from None
        raise
    finally:
        channel.close()
    if result.keyset is not None:
        terminal.keystore.save(result.keyset)
    if result.outcome == "approved":
        # Booked before the pending record is cleared: a crash between the two sends a
        # reversal the ledger then marks (`reversed`), never an approval the ledger lacks.
        _book(terminal, request, result)
    if pending is not None:
        _settle_pending(terminal, pending, request, result)
    _record(terminal, kind, result, request)
    return result


def _maced(result: Result) -> bool:
    """An approval or a decline whose MAC verified: the host's answer, believed."""
    return result.outcome in ("approved", "declined")


def _settle_pending(terminal: Terminal, pending: PendingReversal, request: Request,
                    result: Result) -> None:
    """Only an answer with a valid MAC clears the record. A MAC that fails is 96; an unMACed
    answer (a 14, 30, 12 or 03 anyone on the line could forge) leaves it pending as 06: a
    reversal of a transaction the host never made reverses nothing, a lost one loses money."""
    if _maced(result):
        terminal.pending.clear()
        return
    reason = BAD_ANSWER if result.source == "terminal" and result.is_key_error else OTHER
    if result.response is not None and 38 in result.response:
        pending = replace(pending, fields={**pending.fields, 38: result.response.text(38)})
    _keep_pending(terminal, pending, reason, request)


def _keep_pending(terminal: Terminal, pending: PendingReversal, reason: str,
                  request: Request) -> None:
    """The record with its reason, and the ledger's entry saying the transaction is unknown."""
    terminal.pending.save(pending.with_reason(reason))
    _ledger(terminal, _entry(terminal, request, None, "pending"))


def _entry(terminal: Terminal, request: Request, result: Result | None, state: str) -> Entry:
    msg = request.message
    response = result.response if result is not None else None
    original = msg.text(61)
    pan = msg.text(2)
    return Entry(
        batch=int(msg.text(60)[2:8]), stan=request.stan, kind=request.kind,
        amount=int(msg.text(4) or 0), state=state, at=terminal.clock(), card=mask_pan(pan),
        rrn=response.text(37) if response else msg.text(37),
        auth=response.text(38) if response else msg.text(38),
        date=response.text(13) if response else "",
        original=(int(original[0:6]), int(original[6:12])) if len(original) >= 12 else None,
        sealed_card=_seal_card(terminal, pan),
    )


def _seal_card(terminal: Terminal, pan: str) -> str:
    try:
        return seal_blob(load_storage_key(terminal.layout.storage_key).material, pan.encode(),
                         CARD_PURPOSE)
    except KeystoreError:
        return ""


def _book(terminal: Terminal, request: Request, result: Result) -> None:
    """An approved purchase, void or refund joins its batch; a void marks its original."""
    if request.kind not in ("purchase", "void", "refund"):
        return
    entry = _entry(terminal, request, result, "approved")
    _ledger(terminal, entry)
    if request.kind == "void" and entry.original is not None:
        batch, stan = entry.original
        voided = read_ledger_or_empty(terminal).find(stan=stan, batch=batch)
        if voided is not None:
            _ledger(terminal, replace(voided, state="voided"))


def _unbook(terminal: Terminal, reversed_entry: Entry) -> None:
    """A reversed transaction counts nowhere; a reversed void gives its purchase back."""
    _ledger(terminal, reversed_entry)
    if reversed_entry.kind == "void" and reversed_entry.original is not None:
        batch, stan = reversed_entry.original
        sale = read_ledger_or_empty(terminal).find(stan=stan, batch=batch)
        if sale is not None and sale.state == "voided":
            _ledger(terminal, replace(sale, state="approved"))


def read_ledger_or_empty(terminal: Terminal) -> Ledger:
    try:
        return read_ledger(terminal.layout)
    except StateError:
        return Ledger()


def _ledger(terminal: Terminal, entry: Entry) -> None:
    """Like the journal, a ledger that cannot be written is a loud warning beside the real
    outcome, never a failure in its place (the host's records are the truth)."""
    try:
        update_ledger(terminal.layout, entry)
    except (OSError, StateError) as exc:
        terminal.warnings.append(f"the ledger was not written ({exc}): settle may report totals "
                                 "the host disagrees with")


@dataclass(frozen=True)
class Steps:
    """A command and what was done around it: the pending reversal sent first, and with
    --auto-signon a sign-on and the retry."""

    results: tuple[Result, ...]
    renewal: tuple[Result, ...] = ()
    """The sign-on the host asked for after the transaction (its keys about to expire): not a
    step of the transaction, so `final` stays the transaction's own answer."""

    @property
    def final(self) -> Result:
        return self.results[-1]


def send_pending(terminal: Terminal) -> list[Result]:
    """The pending reversal, up to MAX_TRIES times when it gets no answer; once when the
    answer is a refusal (a 14 stays pending until a sign-on lets it through)."""
    results: list[Result] = []
    for _ in range(MAX_TRIES):
        pending = terminal.pending.load()
        if pending is None:
            break
        terminal.pending.save(pending.tried())
        try:
            result = run_exchange(terminal, "reversal",
                                  lambda s, _stan, _batch, p=pending: s.reversal(p), reserve=False)
        except (TransportError, ProtocolError) as exc:
            results.append(Result("reversal", "unreachable", detail=str(exc)))
            continue
        results.append(result)
        if _maced(result):
            _unbook(terminal, _reversed_entry(terminal, pending))
            terminal.pending.clear()
        break
    return results


def _reversed_entry(terminal: Terminal, pending: PendingReversal) -> Entry:
    known = read_ledger_or_empty(terminal).batch(pending.batch)
    entry = next((e for e in known if e.stan == pending.stan), None)
    if entry is not None:
        return replace(entry, state="reversed")
    return Entry(pending.batch, pending.stan, pending.kind, pending.amount, "reversed",
                 terminal.clock(), card=pending.masked_pan)


def blocked(kind: Kind, pending: PendingReversal) -> Result:
    return Result(kind, "blocked", detail=(
        f"the reversal of {pending.kind} STAN {pending.stan:06d} is still pending "
        "and must go out first"))


def financial(terminal: Terminal, kind: Kind, build: Build) -> Steps:
    """Any financial transaction: the pending reversal first, then this one only if the
    reversal got through (PROTOCOL.md §7)."""
    before = send_pending(terminal)
    still = terminal.pending.load()
    if still is not None:
        return Steps((*before, blocked(kind, still)))
    result = run_exchange(terminal, kind, build)
    renewal = (renew(terminal),) if result.renewal_due else ()
    return Steps((*before, result), renewal)


def renew(terminal: Terminal) -> Result:
    """The sign-on a host asked for: a line that fails now fails the renewal, never the
    transaction already answered (the keys are still valid; the next answer asks again)."""
    try:
        return signon(terminal)
    except (TransportError, ProtocolError) as exc:
        return Result("signon", "unreachable", detail=str(exc))


def reverse(terminal: Terminal) -> Steps:
    """`pos-terminal reverse`: what is pending, now; nothing pending is said, not an error."""
    results = send_pending(terminal)
    return Steps(tuple(results) or (Result("reversal", "nothing"),))


def signon(terminal: Terminal, key_set: str | None = None) -> Result:
    return run_exchange(terminal, "signon", lambda s, stan, batch: s.signon(stan, batch, key_set))


def signoff(terminal: Terminal) -> Result:
    return run_exchange(terminal, "signoff", lambda s, stan, batch: s.network("signoff", stan, batch))


def echo(terminal: Terminal) -> Result:
    return run_exchange(terminal, "echo", lambda s, stan, batch: s.network("echo", stan, batch))


def purchase(terminal: Terminal, order: Purchase) -> Steps:
    return financial(terminal, "purchase", lambda s, stan, batch: s.purchase(stan, batch, order))


def inquiry(terminal: Terminal, card: Purchase) -> Steps:
    return financial(terminal, "inquiry", lambda s, stan, batch: s.inquiry(stan, batch, card))


@dataclass(frozen=True)
class Named:
    """How the operator names an original: by STAN (in a batch) or RRN, and what to assume
    when the ledger does not know it (the host then decides: 25 if it does not either)."""

    stan: int | None = None
    rrn: str | None = None
    batch: int | None = None
    amount: int | None = None
    date: str | None = None


UNKNOWN_RRN = "0" * 12
"""Field 37 of a void whose original the ledger does not know (a void must carry one)."""


def find_original(terminal: Terminal, named: Named) -> Original:
    """From the ledger; an original it does not know needs `--stan` and `--amount` (the host's
    records are the truth, and a lost ledger must not stop a void)."""
    entry = read_ledger(terminal.layout).find(stan=named.stan, rrn=named.rrn, batch=named.batch)
    if entry is not None:
        return Original(entry.batch, entry.stan, entry.amount, entry.rrn, entry.auth, entry.date)
    if named.stan is None or named.amount is None:
        which = f"STAN {named.stan:06d}" if named.stan is not None else f"RRN {named.rrn}"
        raise StateError(f"no purchase with {which} in this terminal's ledger: give --stan and "
                         "--amount (and --batch) to name it anyway")
    batch = named.batch or load_counters(terminal.layout).batch
    date = named.date or time.strftime("%m%d", time.gmtime(terminal.clock()))
    return Original(batch, named.stan, named.amount, rrn=named.rrn or UNKNOWN_RRN, date=date)


def void(terminal: Terminal, card: Purchase, named: Named) -> Steps:
    original = find_original(terminal, named)
    if named.amount is not None:  # the operator's amount goes out as given: the host checks it
        original = replace(original, amount=named.amount)
    return financial(terminal, "void", lambda s, stan, batch: s.void(stan, batch, card, original))


def refund(terminal: Terminal, card: Purchase, named: Named, amount: int) -> Steps:
    original = find_original(terminal, replace(named, amount=named.amount or amount))
    if named.date:
        original = replace(original, date=named.date)
    return financial(terminal, "refund",
                     lambda s, stan, batch: s.refund(stan, batch, card, original, amount))


def fixable_by_signon(result: Result) -> bool:
    """K1 or K2 of a working key: a fresh download fixes it. A TMK error or a mismatch does not
    (a mismatch means something is wrong that a retry would only hide)."""
    reason = result.reason
    return (result.is_key_error and reason is not None and reason.code in ("K1", "K2")
            and not reason.is_tmk)


def stopped_by_key_error(steps: Steps) -> bool:
    """The command, or the pending reversal that blocked it, met a key error a sign-on fixes."""
    final = steps.final
    if final.outcome == "blocked" and len(steps.results) > 1:
        final = steps.results[-2]
    return fixable_by_signon(final)


def with_auto_signon(terminal: Terminal, attempt: Callable[[], Steps]) -> Steps:
    """--auto-signon: on K1/K2 of a working key, sign on once and try again (the pending
    reversal, if any, goes out after the sign-on and before the retry)."""
    first = attempt()
    if not stopped_by_key_error(first):
        return first
    logon = signon(terminal)
    if logon.outcome != "ok":
        return Steps((*first.results, logon))
    return Steps((*first.results, logon, *attempt().results))


# --- settlement -----------------------------------------------------------------------------


def settle_with_auto_signon(terminal: Terminal) -> Settlement:
    """`settle --auto-signon`, as `with_auto_signon`: the sign-on is one of the steps shown,
    and the one that failed, if it did."""
    first = settle(terminal)
    if not stopped_by_key_error(first.steps):
        return first
    logon = signon(terminal)
    if logon.outcome != "ok":
        return replace(first, steps=Steps((*first.steps.results, logon)))
    second = settle(terminal)
    return replace(second, steps=Steps((*first.steps.results, logon, *second.steps.results)))


UPLOAD_TYPES = {"purchase": fields.TYPE_PURCHASE, "void": fields.TYPE_VOID,
                "refund": fields.TYPE_REFUND}


@dataclass(frozen=True)
class Settlement:
    """What `settle` did: the steps, the totals sent, the codes the host set, and the batch."""

    steps: Steps
    batch: int
    totals: fields.Half
    answer: fields.SettlementTotals | None = None
    uploaded: int = 0
    new_batch: int | None = None

    @property
    def codes(self) -> tuple[str, str] | None:
        """Each half's code as the host set it: 1 agreed, 2 did not."""
        return (self.answer.domestic.code, self.answer.foreign.code) if self.answer else None

    @property
    def balanced(self) -> bool:
        return self.answer is not None and requests.is_balanced(self.answer)

def _upload_records(terminal: Terminal, entries: tuple[Entry, ...]) -> list[fields.UploadRecord]:
    """The batch's counted transactions, card numbers unsealed only to go on the wire."""
    storage = load_storage_key(terminal.layout.storage_key).material
    records = []
    for entry in entries:
        if entry.state not in ("approved", "voided") or not entry.sealed_card:
            continue
        try:
            pan = open_blob(storage, entry.sealed_card, CARD_PURPOSE).decode()
        except PendingError as exc:
            raise StateError(f"{terminal.layout.ledger}: the card of STAN {entry.stan:06d} "
                             f"cannot be read: {exc}") from None
        records.append(fields.UploadRecord(UPLOAD_TYPES[entry.kind], f"{entry.stan:06d}", pan,
                                           entry.amount))
    return records


def settle(terminal: Terminal) -> Settlement:
    """0500 with the ledger's totals; after a balanced answer a new batch; after an
    unbalanced one the batch goes up in 0320s (8 records each, the last 202), then a new
    batch. A step that fails leaves the batch open, so `settle` can simply be run again."""
    before = send_pending(terminal)
    batch = load_counters(terminal.layout).batch
    ledger = read_ledger(terminal.layout)
    half = ledger.totals(batch)
    still = terminal.pending.load()
    if still is not None:
        return Settlement(Steps((*before, blocked("settle", still))), batch, half)
    result = run_exchange(terminal, "settle", lambda s, stan, b: s.settlement(stan, b, half))
    steps = [*before, result]
    if result.outcome != "approved" or result.response is None:
        return Settlement(Steps(tuple(steps)), batch, half)
    echoed = requests.settlement_result(result.response)
    uploaded = 0
    if not requests.is_balanced(echoed):
        records = _upload_records(terminal, ledger.batch(batch))
        chunks = [records[i:i + fields.UPLOAD_RECORDS_MAX]
                  for i in range(0, len(records), fields.UPLOAD_RECORDS_MAX)]
        for number, chunk in enumerate(chunks, start=1):
            last = number == len(chunks)
            sent = run_exchange(terminal, "upload",
                                lambda s, stan, b, c=chunk, e=last: s.upload(stan, b, c, e))
            steps.append(sent)
            if sent.outcome != "approved":
                return Settlement(Steps(tuple(steps)), batch, half, echoed, uploaded)
            uploaded += len(chunk)
    counters = load_counters(terminal.layout)
    new_batch = next_batch(batch)
    save_counters(terminal.layout, replace(counters, batch=new_batch))
    return Settlement(Steps(tuple(steps)), batch, half, echoed, uploaded, new_batch)


# --- reading state --------------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    """Everything `status` shows; each damaged file is an error text here, never a failure."""

    config: Config
    keys: tuple[KeyStatus, ...]
    keystore_error: str | None
    counters: Counters | None
    counters_error: str | None
    now: float
    journal: Journal
    pending: PendingReversal | None = None
    pending_error: str | None = None

    @property
    def last(self) -> Record | None:
        return self.journal.last


def status(terminal: Terminal) -> Status:
    try:
        keys = tuple(key_status(terminal.keystore.load()))
        error = None
    except KeystoreError as exc:
        keys, error = (), str(exc)
    try:
        counters: Counters | None = load_counters(terminal.layout)
        counters_error = None
    except StateError as exc:
        counters, counters_error = None, str(exc)
    pending, pending_error = read_pending(terminal)
    return Status(terminal.config, keys, error, counters, counters_error, terminal.clock(),
                  read_journal(terminal.layout), pending, pending_error)


def read_pending(terminal: Terminal) -> tuple[PendingReversal | None, str | None]:
    try:
        return terminal.pending.load(), None
    except PendingError as exc:
        return None, str(exc)


def diagnose(terminal: Terminal) -> diag.Diagnosis | diag.NotAKeyError | None:
    try:
        keys = key_status(terminal.keystore.load())
    except KeystoreError:
        keys = []
    pending, _ = read_pending(terminal)
    return diag.diagnose(read_journal(terminal.layout).records, keys, terminal.clock(),
                         diag.pending_text(pending.summary()) if pending else None)


@dataclass(frozen=True)
class BatchView:
    """`batch`: the ledger by batch, what the terminal believes happened, with its totals."""

    current: int | None
    batches: tuple[tuple[int, tuple[Entry, ...], fields.Half], ...]
    pending: PendingReversal | None


def batch_view(terminal: Terminal, only: int | None) -> BatchView:
    ledger = read_ledger(terminal.layout)
    try:
        current: int | None = load_counters(terminal.layout).batch
    except StateError:
        current = None
    numbers = [only] if only is not None else ledger.batches()
    rows = []
    for number in numbers:
        rows.append((number, ledger.batch(number), ledger.totals(number)))
    return BatchView(current, tuple(rows), read_pending(terminal)[0])


def recover(terminal: Terminal, stan: int | None) -> Counters:
    """`counters recover`: new counters past every STAN the terminal can show it used."""
    counters = recover_counters(terminal.layout, stan)
    save_counters(terminal.layout, counters)
    return counters

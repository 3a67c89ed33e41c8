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

from protocol.codec import codec_for
from protocol.codes import KeyErrorReason
from protocol.crypto.keys import Key
from protocol.dialects import get_dialect
from protocol.errors import ProtocolError, SpecError
from protocol.framing import Framing
from protocol.injection import read_injection_file
from protocol.mask import mask_in_place, masked_fields
from protocol.message import Message
from protocol.spec import Dialect
from protocol.transport.tcp import TransportError
from terminal import diagnose as diag
from terminal.ceremony import Component, combine
from terminal.channel import Wire, open_channel
from terminal.fsops import lock_file, temp_path
from terminal.keystore import (
    KeySet,
    KeyStatus,
    Keystore,
    KeystoreError,
    StoredKey,
    key_status,
)
from terminal.session import Kind, Purchase, Request, Result, Session, TerminalKeyError
from terminal.store import (
    Config,
    Counters,
    Journal,
    Layout,
    Record,
    StateError,
    append_record,
    load_config,
    load_counters,
    read_journal,
    recover_counters,
    save_config,
    save_counters,
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

    @property
    def keystore(self) -> Keystore:
        return Keystore(self.layout.keystore, self.layout.storage_key)

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
                  trace: Trace | None = None) -> Terminal:
    """The terminal in `layout`; a wire that names no host uses the one given at init."""
    clock_offset()
    config = load_config(layout)
    wire = wire or Wire()
    if wire.host is None and wire.serial is None:
        wire = replace(wire, host=config.host)
    dialect = dialect_named(dialect_name or config.dialect)
    return Terminal(layout, config, dialect, wire, trace=trace)


# --- provisioning ---------------------------------------------------------------------------


def init_terminal(folder: Path, config: Config) -> Layout:
    """Everything is checked first; then the folder is made, and if making it fails half way
    (a full disk, a folder that is not ours) what this call created is removed again, so a
    failed init changes nothing and can simply be run again."""
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
        save_config(layout, config)
    except BaseException:
        for path in (layout.config, layout.keystore, temp_path(layout.keystore), layout.storage_key,
                     temp_path(layout.config), lock_file(layout.folder)):
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


def _trace(terminal: Terminal, arrow: str, payload: bytes, framing: Framing) -> None:
    """Decoded and masked: field values through protocol.mask, raw bytes with sensitive fields
    overwritten, so a trace pasted into a ticket leaks nothing."""
    if terminal.trace is None:
        return
    dialect = terminal.dialect
    try:
        unframed = framing.unframe(payload)
        message, spans = codec_for(dialect).decode_spans(unframed.message)
    except ProtocolError as exc:
        terminal.trace(f"{arrow} {len(payload)} bytes that do not decode: {exc}")
        return
    terminal.trace(f"{arrow} {message.mti} ({len(payload)} bytes)")
    for number, value in masked_fields(message, dialect).items():
        terminal.trace(f"     {number:>3} {value}")
    base = len(payload) - len(unframed.message)
    terminal.trace(f"     hex {mask_in_place(payload, spans, dialect, base).hex().upper()}")


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


def run_exchange(terminal: Terminal, kind: Kind, build: Build) -> Result:
    """One request and its answer. Key errors come back as a Result (from the host or found
    here); an unreachable host or an unreadable answer raises TransportError/ProtocolError
    after being journaled.

    The STAN is reserved last, once the request is built and the line is open: a request
    refused here (bad input, a key error found by the terminal) uses no STAN.
    """
    request: Request | None = None
    try:
        keys = terminal.load_keys()
        session = Session(terminal.config, terminal.dialect, keys, terminal.clock)
        upcoming = load_counters(terminal.layout).next_stan()
        request = build(session, upcoming.stan, upcoming.batch)
    except ProtocolError as exc:  # our own request does not encode: bad input, not the host
        raise ValueError(f"cannot build the {kind} request: {exc}") from None
    except TerminalKeyError as exc:
        result = Result(kind, "key_error", "14", exc.reason, "terminal", detail=exc.detail)
        _record(terminal, kind, result, None)
        return result
    framing = Framing(terminal.dialect)
    payload = framing.payload(request.encoded)
    channel = open_channel(terminal.wire)
    try:
        save_counters(terminal.layout, upcoming)
        _trace(terminal, ">>", payload, framing)
        reply = channel.exchange(payload, terminal.wire.response_timeout)
        _trace(terminal, "<<", reply, framing)
        result = session.receive(request, framing.unframe(reply).message)
    except TransportError as exc:
        _record_failure(terminal, kind, "unreachable", str(exc), request)
        raise
    except ProtocolError as exc:
        _record_failure(terminal, kind, "bad response", str(exc), request)
        raise
    finally:
        channel.close()
    if result.keyset is not None:
        terminal.keystore.save(result.keyset)
    _record(terminal, kind, result, request)
    return result


def signon(terminal: Terminal, key_set: str | None = None) -> Result:
    return run_exchange(terminal, "signon", lambda s, stan, batch: s.signon(stan, batch, key_set))


def signoff(terminal: Terminal) -> Result:
    return run_exchange(terminal, "signoff", lambda s, stan, batch: s.network("signoff", stan, batch))


def echo(terminal: Terminal) -> Result:
    return run_exchange(terminal, "echo", lambda s, stan, batch: s.network("echo", stan, batch))


def purchase(terminal: Terminal, order: Purchase) -> Result:
    return run_exchange(terminal, "purchase", lambda s, stan, batch: s.purchase(stan, batch, order))


def fixable_by_signon(result: Result) -> bool:
    """K1 or K2 of a working key: a fresh download fixes it. A TMK error or a mismatch does not
    (a mismatch means something is wrong that a retry would only hide)."""
    reason = result.reason
    return (result.is_key_error and reason is not None and reason.code in ("K1", "K2")
            and not reason.is_tmk)


@dataclass(frozen=True)
class Steps:
    """A purchase and what was done around it: with --auto-signon, up to three exchanges."""

    results: tuple[Result, ...]

    @property
    def final(self) -> Result:
        return self.results[-1]


def purchase_with_auto_signon(terminal: Terminal, order: Purchase) -> Steps:
    first = purchase(terminal, order)
    if not fixable_by_signon(first):
        return Steps((first,))
    logon = signon(terminal)
    if logon.outcome != "ok":
        return Steps((first, logon))
    return Steps((first, logon, purchase(terminal, order)))


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
    return Status(terminal.config, keys, error, counters, counters_error, terminal.clock(),
                  read_journal(terminal.layout))


def diagnose(terminal: Terminal) -> diag.Diagnosis | diag.NotAKeyError | None:
    try:
        keys = key_status(terminal.keystore.load())
    except KeystoreError:
        keys = []
    return diag.diagnose(read_journal(terminal.layout).records, keys, terminal.clock())


def recover(terminal: Terminal, stan: int | None) -> Counters:
    """`counters recover`: new counters past every STAN the terminal can show it used."""
    counters = recover_counters(terminal.layout, stan)
    save_counters(terminal.layout, counters)
    return counters

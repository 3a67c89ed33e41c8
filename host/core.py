"""The host's one path for every message, whatever carried it: unframe, handle, apply the
changes, log, frame. The pure handlers (host.handlers) wrapped in state: the database and the
caches of key handles. TCP connections and serial ports (host.server) share it, and so do tests
and the benchmark (through `handle_payload`).

Consistency: one thread owns the HostCore (the event loop's; serial ports hand their messages to
it), and a message is handled and its changes applied without yielding, so no two messages (of
one terminal or of any) ever interleave: a connection can never see a half-updated key state.
Changes of the messages that arrived in one turn of the event loop are committed together (group
commit) before any of their responses is written, so every answer the host gives is already
on disk (WAL with `synchronous=FULL`: the commit returns after fdatasync, host.keydb), at one
commit and one fsync per turn instead of one per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import InvalidStateError
from typing import NamedTuple, TypeVar

from host.handlers import MALFUNCTIONS, HandlerConfig, Outcome
from host.keydb import GENERATIONS_CHECKED, KeyDb
from host.logs import MessageLog
from host.metrics import NULL_METRICS, HostMetrics
from host.rules import Effect, RuleBook
from host.state import (
    Answered,
    BatchState,
    BatchTotals,
    Card,
    Change,
    IssueWorkingKeys,
    Original,
    Prior,
    Reversed,
    RevokeWorkingKeys,
    Terminal,
)
from protocol.clock import Clock
from protocol.errors import FramingError
from protocol.framing import Framing, Tpdu

ANSWER, IGNORED, CLOSE = "answer", "ignored", "close"
Reply = Callable[[bytes | None], None]
"""Where an answer goes: a payload to frame and send, or None to close the connection."""


class Pending(NamedTuple):
    """An answer held back until the batch it belongs to is committed (a tuple: one is made per
    message, and a frozen dataclass costs several times as much to build)."""

    outcome: Outcome
    reply: Reply
    tpdu: Tpdu | None
    header: bytes
    effect: Effect | None = None  # a rule's way of delivering it (host.rules)


CACHE_LIMIT = 10_000
"""Entries per in-memory cache: past it the oldest go, so unauthenticated traffic (made-up
terminal ids, batches) cannot grow the host's memory without bound."""
EVICTED = CACHE_LIMIT // 10
"""Entries dropped at once when a cache is full, oldest first: a fleet larger than the cache
loses a tenth of it, not all of it (every terminal reloading at once), and the scan for the
oldest is paid once per `EVICTED` insertions."""

K = TypeVar("K")
V = TypeVar("V")


def _make_room(cache: dict[K, V]) -> None:
    if len(cache) >= CACHE_LIMIT:
        for key in list(itertools.islice(cache, EVICTED)):  # a dict keeps insertion order
            del cache[key]


def _cached(cache: dict[K, V], key: K, load: Callable[[K], V | None]) -> V | None:
    """A hit, or a database read; only what exists is kept (a miss costs a read each time)."""
    try:
        return cache[key]
    except KeyError:
        pass
    value = load(key)
    if value is not None:
        _make_room(cache)
        cache[key] = value
    return value


class HostCore:
    """Handlers plus state: a `HostView` over the database with a cache of unwrapped keys."""

    def __init__(
        self, db: KeyDb, config: HandlerConfig, clock: Clock, log: MessageLog,
        framing: Framing,
    ) -> None:
        self.db = db
        self.config = config
        self.clock = clock
        self.log = log
        self.framing = framing
        assert config.security is not None
        self._handle = config.pipeline.handle  # bound once: the path of every message
        self._malfunction = config.pipeline.malfunction
        self._admit = config.security.admit
        self._admit_issued = config.security.admit_issued
        self.metrics: HostMetrics = NULL_METRICS  # `serve --metrics`: host.metrics
        self._terminals: dict[str, Terminal] = {}  # key handles only: the module holds the keys
        self._cards: dict[str, Card] = {}
        # The highest STAN remembered per (terminal, batch), whatever the MTI: one integer
        # each, where a set of every STAN answered grew by a string per approval.
        self._last_stans: dict[tuple[str, str], int] = {}
        self._data_version = db.data_version()
        self._in_transaction = False
        self._buffered: list[Change] = []  # this batch's purchases, written at commit
        self._recent: dict[tuple[str, str, str, str], Answered] = {}  # ... by terminal, batch,
        # STAN and MTI
        self._pending: list[Pending] = []
        self.rules: RuleBook | None = None  # `serve --rules`: answers and faults as data
        self.messages = 0  # handled, and
        self.commits = 0  # transactions committed: messages / commits is the mean group commit

    # --- HostView ----------------------------------------------------------------------------

    def terminal(self, tid: str) -> Terminal | None:
        return _cached(self._terminals, tid, self._load_terminal)

    def _load_terminal(self, tid: str) -> Terminal | None:
        """Read sealed from the database and opened inside the security module: the cache keeps
        handles, and no key material passes through the host's own code."""
        keys = self.db.load_sealed(tid)
        return None if keys is None else self._admit(keys)

    def card(self, pan_ref: str) -> Card | None:
        return _cached(self._cards, pan_ref, self.db.card)

    def prior(self, terminal: Terminal, batch: str, stan: str, mti: str = "0200") -> Prior | None:
        """The common case, a STAN above every one remembered in its batch, costs no row read
        (the highest is read once per terminal and batch); a STAN at or below it costs one
        (none if answered in this batch): a retransmission, or STANs after a wrap to 000001."""
        tid = terminal.tid
        record = self._recent.get((tid, batch, stan, mti))
        if record is not None:
            return Prior(record.request_ref, record.response)
        last = self._last_stans.get((tid, batch))
        if last is None:
            _make_room(self._last_stans)
            last = self._last_stans[tid, batch] = self.db.last_stan(terminal.number, batch)
        if int(stan) > last:
            return None
        return self.db.prior(terminal.number, batch, stan, mti)

    # The lookups of PROTOCOL.md §7 read the database after this batch's buffered answers are
    # written into the open transaction: a void finds the purchase approved a moment before.

    def original(self, terminal: Terminal, batch: str, stan: str) -> Original | None:
        self._write_buffered()
        return self.db.original(terminal.number, batch, stan)

    def batch_state(self, terminal: Terminal, batch: str) -> BatchState:
        self._write_buffered()
        return self.db.batch_state(terminal.number, batch)

    def batch_totals(self, terminal: Terminal, batch: str) -> BatchTotals:
        self._write_buffered()
        return self.db.batch_totals(terminal.number, batch)

    def _write_buffered(self) -> None:
        if self._buffered:
            self._begin()
            self.db.apply(self._buffered)
            self._buffered.clear()

    # --- one message -------------------------------------------------------------------------

    def submit(self, payload: bytes, reply: Reply, conn: str) -> str:
        """Handle one framed payload; its answer goes to `reply` at the next `commit`.

        Returns ANSWER (the answer is pending), IGNORED (nothing will be sent: a response MTI)
        or CLOSE (the payload cannot be answered: `reply(None)` at the next `commit`, after the
        answers before it, and the caller feeds that connection nothing more). Only the thread
        that owns this core may call it.
        """
        started = time.perf_counter()
        self.messages += 1
        try:
            unframed = self.framing.unframe(payload)
        except FramingError as exc:
            self._log(None, conn, started, f"bad TPDU/header: {exc}")
            self.close_later(reply)
            return CLOSE
        if not self._pending:  # the first message of a batch
            self._refresh()
            if self.rules is not None:
                self.rules.reload_if_changed()
        now = self.clock()
        try:
            outcome = self._handle(unframed.message, self, now)
        except MALFUNCTIONS as exc:
            # The pipeline answers a decoded request's failure with 96 itself; this is a bug
            # before the request decoded: it costs that connection, not the host.
            outcome = Outcome(None, note=f"{type(exc).__name__} before decoding", close=True)
        effect = None
        if self.rules is not None:
            try:
                outcome, effect = self.rules.apply(outcome, self, now)
            except MALFUNCTIONS as exc:  # a rule that cannot act leaves the answer as it was
                outcome.note = f"{outcome.note}; a rule failed: {type(exc).__name__}".lstrip("; ")
        if outcome.changes:
            outcome = self._apply(outcome, now)
        self._log(outcome, conn, started)
        if outcome.close:
            self.close_later(reply)
            return CLOSE
        if outcome.response is None:
            return IGNORED
        self._pending.append(Pending(outcome, reply, unframed.tpdu, unframed.header, effect))
        return ANSWER

    def close_later(self, reply: Reply) -> None:
        """Close a connection once the answers already due to it are sent."""
        self._pending.append(Pending(Outcome(None, close=True), reply, None, b""))

    def commit(self) -> None:
        """Make the batch's changes durable, then release its answers (96s if that failed)."""
        if self._buffered or self._in_transaction:
            try:
                self._begin()
                self.db.apply(self._buffered)
                self.db.conn.execute("COMMIT")
                self.commits += 1
                self.metrics.commit(len(self._pending))
            except sqlite3.Error as exc:
                self._abort_batch(type(exc).__name__, self.clock())
            self._in_transaction = False
            self._buffered.clear()
            self._recent.clear()
        pending, self._pending = self._pending, []
        self.log.flush()  # before the answers: whoever reads an answer finds its log line
        framing = self.framing
        for p in pending:
            if p.outcome.response is None:
                p.reply(None)
            else:
                tpdu = p.tpdu.reply() if p.tpdu else None
                answer = framing.payload(p.outcome.response, tpdu, p.header)
                if p.effect is None:
                    p.reply(answer)
                else:
                    deliver(p.effect, answer, p.reply)
        if self.rules is not None:  # after the answers: their hit counts are bookkeeping
            error = self.rules.save()
            if error is not None:
                self.log.event(event="rule hits not saved", error=error)

    def handle_payload(self, payload: bytes, conn: str = "direct") -> bytes | None:
        """One request payload in (TPDU and header included, no length), its answer out.

        None: nothing to send (a response MTI), or the payload cannot be answered. Commits
        before returning; for a caller that owns the core (tests, the benchmark). A serving
        host's serial ports go through `LoopHandler` instead.
        """
        answers: list[bytes | None] = []
        self.submit(payload, answers.append, conn)
        self.commit()
        return answers[0] if answers else None

    # --- helpers -----------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Drop cached keys and cards when another process (the CLI) has committed since the
        last batch; so the operator's change is seen by the next message that arrives."""
        if self._in_transaction:
            return  # we hold the write lock: nobody else can have committed
        version = self.db.data_version()
        if version != self._data_version:
            self._data_version = version
            self._forget()

    def _forget(self) -> None:
        self._terminals.clear()
        self._cards.clear()
        self._last_stans.clear()

    def _apply(self, outcome: Outcome, now: float) -> Outcome:
        """Take a message's changes into the batch: answered 0200/0220s (the remembered answer
        and its debit or credit) wait for the batch's commit and are meanwhile served from
        memory; every other change (keys, reversals, settlements, uploads) goes to the
        database at once (the next message must find it there). If a write fails, nothing of
        the batch is kept and every message in it is answered 96."""
        for change in outcome.changes:
            if isinstance(change, (Answered, Reversed)) and change.debit:
                card = self._cards.get(change.pan_ref)  # type: ignore[arg-type]
                if card is not None:
                    self._cards[card.pan_ref] = card.debited(change.debit)
            if isinstance(change, Answered):
                self._recent[change.tid, change.batch, change.stan, change.mti] = change
                key = (change.tid, change.batch)
                last = self._last_stans.get(key)
                if last is not None and int(change.stan) > last:
                    self._last_stans[key] = int(change.stan)
                self._buffered.append(change)
                continue
            try:
                self._begin()
                self._write_buffered()
                self.db.apply([change])
            except sqlite3.Error as exc:
                self._abort_batch(type(exc).__name__, now)
                return self._malfunction(outcome.request, now, f"{type(exc).__name__} in apply")
            if isinstance(change, IssueWorkingKeys):
                self._issued(change)
            elif isinstance(change, RevokeWorkingKeys):
                self._terminals.pop(change.tid, None)
        return outcome

    def _issued(self, change: IssueWorkingKeys) -> None:
        """The cached terminal takes the keys its sign-on issued, as the database now holds
        them: its next purchase reads no row and unwraps nothing (dropping the entry made
        every terminal's first purchase after a sign-on do both). A rollback forgets it."""
        self.metrics.signon(change.working.key_set, True)
        cached = self._terminals.get(change.tid)
        if cached is not None:
            self._terminals[change.tid] = self._admit_issued(cached, change.working,
                                                             GENERATIONS_CHECKED)

    def _begin(self) -> None:
        if not self._in_transaction:
            self.db.conn.execute("BEGIN IMMEDIATE")
            self._in_transaction = True

    def _abort_batch(self, error: str, now: float) -> None:
        """Roll the batch back; the answers it held become 96 (nothing they said was kept)."""
        self._in_transaction = False
        self._buffered.clear()
        self._recent.clear()
        with contextlib.suppress(sqlite3.Error):
            self.db.conn.execute("ROLLBACK")
        self._forget()
        self.log.event(event="batch rolled back", error=error, answers=len(self._pending))
        self._pending = [
            p if p.outcome.response is None else
            Pending(self._malfunction(p.outcome.request, now, f"{error}: batch rolled back"),
                    p.reply, p.tpdu, p.header)
            for p in self._pending
        ]

    def _log(self, outcome: Outcome | None, conn: str, started: float, note: str = "") -> None:
        elapsed = time.perf_counter() - started
        if outcome is None:
            self.metrics.message(None, None, None, elapsed)
            self.log.message(ts=self.clock(), conn=conn, request=None, reply=None, rc=None,
                             reason=None, note=note, elapsed_us=elapsed * 1e6)
        else:
            request = outcome.request
            self.metrics.message(None if request is None else request.mti, outcome.rc,
                                 outcome.reason, elapsed)
            self.log.message(ts=self.clock(), conn=conn, request=request,
                             reply=outcome.reply, rc=outcome.rc, reason=outcome.reason,
                             note=outcome.note, elapsed_us=elapsed * 1e6)


class Cut(bytes):
    """An answer to be sent cut short (a rule's `cut`): its length header and the first half of
    its payload, then the line closed. The connection frames it, so the header is the one its
    dialect's framing writes."""

    def framed(self, frame: Callable[[bytes], bytes]) -> bytes:
        whole = frame(self)
        return whole[:len(whole) - len(self) + len(self) // 2]


def deliver(effect: Effect, answer: bytes, reply: Reply) -> None:
    """A rule's delivery: late (on the event loop, when there is one), not at all, twice, cut
    short, or the connection closed instead of answered."""
    if effect.kind == "drop":
        return
    if effect.kind == "close":
        reply(None)
    elif effect.kind == "cut":
        reply(Cut(answer))
    elif effect.kind == "twice":
        reply(answer)
        with contextlib.suppress(InvalidStateError):  # a serial port's reply takes one answer
            reply(answer)
    else:  # delay
        try:
            asyncio.get_running_loop().call_later(effect.seconds, reply, answer)
        except RuntimeError:  # no loop (handle_payload): nothing to wait on
            reply(answer)

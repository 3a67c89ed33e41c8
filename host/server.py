"""The serving host: the pure handlers wrapped in state (database, key cache) and in asyncio.

`HostCore` is the one path every message takes, whatever carried it: unframe, handle, apply the
changes, log, frame. The TCP server and the serial server (through `handle_payload`) share it.

Consistency: a message is handled and its changes applied without yielding to the event loop,
and the serial thread takes the same lock, so no two messages (of one terminal or of any) ever
interleave: a connection can never see a half-updated key state. Changes of the messages that
arrived in one turn of the event loop are committed together (group commit) before any of
their responses is written, so every answer the host gives is already durable as WAL with
`synchronous=NORMAL` makes it (host.keydb), at one commit per turn instead of one per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from host.clock import Clock
from host.handlers import HandlerConfig, Outcome, handle, malfunction
from host.keydb import KeyDb
from host.logs import MessageLog
from host.state import Card, IssueWorkingKeys, Prior, RevokeWorkingKeys, TerminalKeys
from protocol.errors import FramingError, ProtocolError
from protocol.framing import FrameReader, Framing, Tpdu, length_prefixed

LISTEN_BACKLOG = 4096
Reply = Callable[[bytes | None], None]
"""Where an answer goes: a payload to frame and send, or None to close the connection."""


@dataclass(frozen=True, slots=True)
class Pending:
    """An answer held back until the batch it belongs to is committed."""

    outcome: Outcome
    reply: Reply
    tpdu: Tpdu | None
    header: bytes
    message: bytes


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
        self.lock = threading.Lock()
        self._terminals: dict[str, TerminalKeys | None] = {}
        self._data_version = db.data_version()
        self._in_transaction = False
        self._pending: list[Pending] = []

    # --- HostView ----------------------------------------------------------------------------

    def terminal(self, tid: str) -> TerminalKeys | None:
        try:
            return self._terminals[tid]
        except KeyError:
            keys = self._terminals[tid] = self.db.load_terminal(tid)
            return keys

    def card(self, pan_ref: str) -> Card | None:
        return self.db.card(pan_ref)

    def prior(self, tid: str, batch: str, stan: str) -> Prior | None:
        return self.db.prior(tid, batch, stan)

    # --- one message -------------------------------------------------------------------------

    def submit(self, payload: bytes, reply: Reply, conn: str) -> bool:
        """Handle one framed payload; its answer goes to `reply` at the next `commit`.

        Returns False when the payload cannot be answered: its connection closes at the next
        `commit`, after the answers before it, and the caller feeds it nothing more.
        Must be called with `lock` held.
        """
        started = time.process_time()
        try:
            unframed = self.framing.unframe(payload)
        except FramingError as exc:
            self._log(None, conn, started, f"bad TPDU/header: {exc}")
            self.close_later(reply)
            return False
        self._refresh()
        now = self.clock()
        try:
            outcome = handle(unframed.message, self, now, self.config)
        except (ProtocolError, ValueError, LookupError, sqlite3.Error) as exc:
            # A bug or a broken row must cost one answer (96), not the host.
            outcome = malfunction(unframed.message, now, self.config, type(exc).__name__)
        if outcome.changes:
            self._apply(outcome)
        self._log(outcome, conn, started)
        if outcome.close:
            self.close_later(reply)
            return False
        if outcome.response is not None:
            self._pending.append(
                Pending(outcome, reply, unframed.tpdu, unframed.header, unframed.message)
            )
        return True

    def close_later(self, reply: Reply) -> None:
        """Close a connection once the answers already due to it are sent."""
        self._pending.append(Pending(Outcome(None, close=True), reply, None, b"", b""))

    def commit(self) -> None:
        """Make the batch's changes durable, then release its answers (96s if that failed)."""
        pending, self._pending = self._pending, []
        if self._in_transaction:
            self._in_transaction = False
            try:
                self.db.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self.log.event(event="commit failed", error=type(exc).__name__,
                               answers=len(pending))
                now = self.clock()
                pending = [
                    Pending(malfunction(p.message, now, self.config, "commit failed"),
                            p.reply, p.tpdu, p.header, p.message)
                    for p in pending
                ]
        self.log.flush()  # before the answers: whoever reads an answer finds its log line
        framing = self.framing
        for p in pending:
            if p.outcome.response is None:
                p.reply(None)
            else:
                tpdu = p.tpdu.reply() if p.tpdu else None
                p.reply(framing.payload(p.outcome.response, tpdu, p.header))

    def handle_payload(self, payload: bytes) -> bytes | None:
        """One request payload in (TPDU and header included, no length), its answer out.

        None: nothing to send (a response MTI), or the payload cannot be answered. This is the
        entry point of the serial server; it commits before returning.
        """
        answers: list[bytes | None] = []
        with self.lock:
            self.submit(payload, answers.append, "serial")
            self.commit()
        return answers[0] if answers else None

    # --- helpers -----------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Drop cached keys when another process (the CLI) committed since the last message."""
        if self._in_transaction:
            return  # we hold the write lock: nobody else can have committed
        version = self.db.data_version()
        if version != self._data_version:
            self._data_version = version
            self._terminals.clear()

    def _apply(self, outcome: Outcome) -> None:
        conn = self.db.conn
        if not self._in_transaction:
            conn.execute("BEGIN IMMEDIATE")
            self._in_transaction = True
        conn.execute("SAVEPOINT message")
        try:
            self.db.apply(outcome.changes)
        except sqlite3.Error:
            conn.execute("ROLLBACK TO message")
            conn.execute("RELEASE message")
            raise
        conn.execute("RELEASE message")
        for change in outcome.changes:
            if type(change) in (IssueWorkingKeys, RevokeWorkingKeys):
                self._terminals.pop(change.tid, None)

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.conn.execute("ROLLBACK")
        self._terminals.clear()

    def _log(self, outcome: Outcome | None, conn: str, started: float, note: str = "") -> None:
        self.log.message(
            ts=self.clock(), conn=conn,
            request=outcome.request if outcome else None,
            reply=outcome.reply if outcome else None,
            rc=outcome.rc if outcome else None,
            reason=outcome.reason if outcome else None,
            note=outcome.note if outcome else note,
            cpu_us=(time.process_time() - started) * 1e6,
        )


# --- TCP -----------------------------------------------------------------------------------------


class Batcher:
    """Runs `HostCore.commit` once per turn of the event loop in which messages arrived."""

    def __init__(self, core: HostCore, loop: asyncio.AbstractEventLoop) -> None:
        self.core = core
        self.loop = loop
        self.scheduled = False

    def schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        with self.core.lock:
            self.core.commit()


class HostConnection(asyncio.Protocol):
    """One terminal connection: frames in, answers out; a broken stream closes only itself."""

    def __init__(self, core: HostCore, batcher: Batcher, conn: str, live: set[HostConnection]):
        self.core = core
        self.batcher = batcher
        self.conn = conn
        self.live = live
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.live.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.live.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            payloads: list[bytes] | None = self.reader.feed(data)
        except FramingError as exc:
            self.core.log.event(event="bad frame", conn=self.conn, error=str(exc))
            payloads = None
        if payloads == []:
            return
        core = self.core
        with core.lock:
            if payloads is None:
                core.close_later(self.send)
                self.closing = True
            else:
                for payload in payloads:
                    if not core.submit(payload, self.send, self.conn):
                        self.closing = True
                        break
        self.batcher.schedule()

    def send(self, payload: bytes | None) -> None:
        if self.transport is None:
            return
        if payload is None:
            self.close()
        else:
            self.transport.write(length_prefixed(payload))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass
class TcpHost:
    """A listening TCP server around a HostCore; `stop` drains and closes it."""

    core: HostCore
    server: asyncio.Server
    batcher: Batcher
    live: set[HostConnection] = field(default_factory=set)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port

    async def stop(self) -> None:
        """Stop accepting, answer what was already read, then close every connection."""
        self.server.close()
        self.batcher.flush()
        for connection in list(self.live):
            connection.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while self.live:
                    await asyncio.sleep(0.01)
        await self.server.wait_closed()


async def start_tcp(core: HostCore, host: str, port: int) -> TcpHost:
    loop = asyncio.get_running_loop()
    batcher = Batcher(core, loop)
    live: set[HostConnection] = set()
    numbers = itertools.count(1)
    server = await loop.create_server(
        lambda: HostConnection(core, batcher, f"tcp-{next(numbers)}", live),
        host, port, backlog=LISTEN_BACKLOG, reuse_address=True,
    )
    return TcpHost(core, server, batcher, live)


async def serve_until_signalled(
    core: HostCore, tcp: tuple[str, int] | None, serial: list[str],
    announce: Callable[[str], None],
) -> None:
    """Serve until SIGINT/SIGTERM, then finish the requests in flight and close cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    listener = await start_tcp(core, *tcp) if tcp else None
    if listener is not None:
        bound_host, bound_port = listener.address
        core.log.event(event="listening", tcp=f"{bound_host}:{bound_port}")
        announce(f"listening tcp {bound_host}:{bound_port}")
    if serial:
        raise NotImplementedError("serial serving lands with protocol.transport.serial")
    await stop.wait()
    if listener is not None:
        await listener.stop()
    core.log.event(event="stopped")

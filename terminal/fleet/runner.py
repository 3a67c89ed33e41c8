"""The fleet on one asyncio loop: one connection per terminal, many sans-IO members per loop.

Open loop (`rate`): a scheduler sends request k at its due time whatever came back before, and
latency is measured from the due time, so queueing anywhere (host, network, this loop) shows.
Closed loop (`concurrency`): each slot sends its next request when the last one is answered.
A terminal that gets a working-key 14 signs on by itself and retries once, as
`pos-terminal purchase --auto-signon` does; requests due meanwhile wait for the sign-on.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocol.dialects import get_dialect
from protocol.errors import ProtocolError
from protocol.framing import FrameReader
from terminal.commands import fixable_by_signon
from terminal.fleet.member import Card, Identity, Member, outcome_label, stan_of
from terminal.fleet.mix import Mix
from terminal.fleet.schedule import Schedule, slots, terminal_for
from terminal.fleet.stats import Stats
from terminal.session import Request, Result, TerminalKeyError

SWEEP_SECONDS = 0.25


@dataclass(frozen=True)
class Load:
    """What one loop is asked to do (one worker's share of the fleet)."""

    host: str
    port: int
    dialect: str
    key_set: str
    identities: list[Identity]
    cards: list[Card]
    mix: Mix
    duration: float
    batch: int
    rate: float | None = None
    concurrency: int | None = None
    signon_storm: bool = False
    signon: bool = True  # off: for echo tests against a host or echo server without sign-on
    timeout: float = 10.0
    drain: float = 10.0
    seed: int | None = None
    connect_parallel: int = 256
    signon_parallel: int = 64


@dataclass(slots=True)
class Pending:
    request: Request
    due: float
    sent_at: float
    slot: Slot | None = None
    retry: bool = True
    done: asyncio.Future[Result | None] | None = None


@dataclass
class Slot:
    """A closed-loop slot: the terminals it takes in turn."""

    links: list[Link]
    index: int = 0

    def next(self) -> Link:
        link = self.links[self.index % len(self.links)]
        self.index += 1
        return link


@dataclass
class Deferred:
    kind: str
    due: float
    slot: Slot | None
    retry: bool


class Link(asyncio.Protocol):
    """One terminal's connection: requests out, answers matched to them by STAN."""

    def __init__(self, member: Member, fleet: Fleet) -> None:
        self.member = member
        self.fleet = fleet
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, Pending] = {}
        self.expired: set[int] = set()
        self.deferred: list[Deferred] = []
        self.signing_on = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.fleet.running or self.pending:
            self.fleet.stats.errors["connection closed by the host"] += 1

    def data_received(self, data: bytes) -> None:
        try:
            payloads = self.reader.feed(data)
        except ProtocolError as exc:
            payloads = list(getattr(exc, "frames", []) or [])
            self.fleet.stats.errors["bad frame length from the host"] += 1
            if self.transport:
                self.transport.close()
        for payload in payloads:
            self.fleet.on_answer(self, payload)

    def send(self, kind: str, due: float, slot: Slot | None = None, retry: bool = True,
             done: asyncio.Future[Result | None] | None = None) -> None:
        fleet = self.fleet
        if kind != "signon" and self.signing_on:
            self.deferred.append(Deferred(kind, due, slot, retry))
            return
        if self.transport is None or self.transport.is_closing():
            fleet.stats.errors["not sent: connection closed"] += 1
            if done is not None and not done.done():
                done.set_result(None)
            return
        try:
            request = self.member.build(kind, fleet.cards, fleet.rng)
        except TerminalKeyError as exc:  # refused before sending, as pos-terminal does
            fleet.stats.answer(kind, 0.0, fleet.now() - fleet.t0, "14",
                               f"{exc.reason.field44()} (terminal)")
            fleet.continue_slot(slot)
            return
        if kind == "signon":
            self.signing_on = True
        self.pending[request.stan] = Pending(request, due, fleet.now(), slot, retry, done)
        fleet.stats.sent += kind != "signon"
        self.transport.write(self.member.frame(request))

    def flush_deferred(self) -> None:
        waiting, self.deferred = self.deferred, []
        for d in waiting:
            self.send(d.kind, d.due, d.slot, d.retry)


class Fleet:
    """Every link of one worker and what they measured."""

    def __init__(self, load: Load, clock: Callable[[], float] = time.monotonic) -> None:
        self.load = load
        self.now = clock
        self.dialect = get_dialect(load.dialect)
        self.cards = load.cards
        self.rng = random.Random(load.seed)
        self.stats = Stats()
        self.signons = Stats()
        self.links: list[Link] = []
        self.running = False
        self.t0 = clock()
        self.signon_t0 = self.t0
        self.signon_seconds = 0.0
        self.elapsed = 0.0

    # --- answers ---------------------------------------------------------------------------

    def on_answer(self, link: Link, payload: bytes) -> None:
        now = self.now()
        try:
            data, response = link.member.decode(payload)
        except ProtocolError:
            only = list(link.pending.values())
            if len(only) == 1 and only[0].request.kind == "signon":  # a garbled 0810 is K3
                pending = link.pending.pop(only[0].request.stan)
                self._judged(link, pending, link.member.judge(pending.request, payload, None), now)
            else:
                self.stats.mismatched += 1
            return
        stan = stan_of(response)
        pending = link.pending.pop(stan, None) if stan is not None else None
        if pending is None:
            if stan in link.expired:
                link.expired.discard(stan)
                self.stats.late += 1
            else:
                self.stats.mismatched += 1
            return
        try:
            result = link.member.judge(pending.request, data, response)
        except ProtocolError:  # another terminal's answer, the wrong MTI...
            self.stats.mismatched += 1
            return
        self._judged(link, pending, result, now)

    def _judged(self, link: Link, pending: Pending, result: Result, now: float) -> None:
        code, reason = outcome_label(result)
        kind = pending.request.kind
        if kind == "signon":
            self.signons.answer(kind, now - pending.due, now - self.signon_t0, code, reason)
            link.signing_on = False
            if pending.done is not None and not pending.done.done():
                pending.done.set_result(result)
            link.flush_deferred()
            return
        self.stats.answer(kind, now - pending.due, now - self.t0, code, reason)
        if pending.retry and fixable_by_signon(result):
            self.stats.auto_signons += 1
            if not link.signing_on:
                link.send("signon", now)
            link.send(kind, pending.due, pending.slot, retry=False)
            return
        self.continue_slot(pending.slot)

    def continue_slot(self, slot: Slot | None) -> None:
        if slot is not None and self.running:
            slot.next().send(self.load.mix.choose(self.rng), self.now(), slot)

    # --- phases ----------------------------------------------------------------------------

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(self.load.connect_parallel)
        dialect, key_set, batch = self.dialect, self.load.key_set, self.load.batch

        async def one(identity: Identity) -> None:
            async with gate:
                member = Member(identity, dialect, key_set, batch)
                try:
                    await loop.create_connection(lambda: self._new_link(member),
                                                 self.load.host, self.load.port)
                except OSError as exc:
                    self.stats.errors[f"connect: {exc.strerror or type(exc).__name__}"] += 1

        await asyncio.gather(*(one(i) for i in self.load.identities))

    def _new_link(self, member: Member) -> Link:
        link = Link(member, self)
        self.links.append(link)
        return link

    async def sign_on(self) -> None:
        """Every terminal signs on; all at once in a storm, else a few at a time."""
        loop = asyncio.get_running_loop()
        self.signon_t0 = self.now()
        parallel = len(self.links) if self.load.signon_storm else self.load.signon_parallel
        gate = asyncio.Semaphore(max(1, parallel))

        async def one(link: Link) -> None:
            async with gate:
                done: asyncio.Future[Result | None] = loop.create_future()
                link.send("signon", self.now(), done=done)
                try:
                    await asyncio.wait_for(done, self.load.timeout)
                except TimeoutError:
                    self.signons.timeouts += 1
                    link.signing_on = False

        await asyncio.gather(*(one(link) for link in self.links))
        self.signons.sent = len(self.links)
        self.signon_seconds = self.now() - self.signon_t0

    async def sweep(self) -> None:
        """Requests unanswered past the timeout count once as timeouts; a closed-loop slot goes
        on without them (else one lost answer would stop it for the rest of the run)."""
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = self.now()
            for link in self.links:
                if not link.pending:
                    continue
                for stan, p in list(link.pending.items()):
                    if now - p.sent_at > self.load.timeout and p.request.kind != "signon":
                        del link.pending[stan]
                        link.expired.add(stan)
                        self.stats.timeouts += 1
                        self.continue_slot(p.slot)

    async def window(self, t0: float | None = None) -> None:
        """The measured run: from t0 (a monotonic time: workers start together) for duration."""
        start = self.now() if t0 is None else t0
        await asyncio.sleep(max(0.0, start - self.now()))
        self.t0 = start
        self.running = True
        sweeper = asyncio.create_task(self.sweep())
        try:
            if self.load.rate is not None:
                await self._open_loop(Schedule(self.load.rate, self.load.duration))
            else:
                self._closed_loop(self.load.concurrency or 1)
            await asyncio.sleep(max(0.0, self.t0 + self.load.duration - self.now()))
            self.running = False
            self.elapsed = self.now() - self.t0
            deadline = self.now() + self.load.drain
            while any(link.pending for link in self.links) and self.now() < deadline:
                await asyncio.sleep(0.05)
        finally:
            self.running = False
            sweeper.cancel()
        self.stats.lost = sum(len(link.pending) + len(link.expired) for link in self.links)

    async def _open_loop(self, schedule: Schedule) -> None:
        links, mix, rng = self.links, self.load.mix, self.rng
        if not links:
            return
        k, count = 0, schedule.count
        while k < count:
            due_now = schedule.due_by(self.now() - self.t0)
            while k < due_now:
                links[terminal_for(k, len(links))].send(mix.choose(rng), self.t0 + schedule.due(k))
                k += 1
            if k < count:
                await asyncio.sleep(max(0.0, self.t0 + schedule.due(k) - self.now()))

    def _closed_loop(self, concurrency: int) -> None:
        if not self.links:
            return
        for members in slots(concurrency, len(self.links)):
            slot = Slot([self.links[i] for i in members])
            slot.next().send(self.load.mix.choose(self.rng), self.now(), slot)

    def close(self) -> None:
        for link in self.links:
            if link.transport is not None:
                link.transport.close()

    def snapshot(self) -> dict[str, Any]:
        """What the live line needs, cheap enough to send every second."""
        last = self.stats.seconds[-2] if len(self.stats.seconds) >= 2 else None
        return {"sent": self.stats.sent, "answered": self.stats.answered,
                "codes": dict(self.stats.codes), "timeouts": self.stats.timeouts,
                "last_second": last.answered if last else 0,
                "p99_us": last.latency().get_value_at_percentile(99) if last and last.answered else 0}


@dataclass
class Outcome:
    """What a worker sends back once its window and drain are over (plain data: pickled)."""

    stats: dict[str, Any]
    signons: dict[str, Any]
    elapsed: float
    signon_seconds: float
    connected: int
    window_cpu: float = 0.0
    """The worker's CPU seconds (user and system) over its window and drain: its cost per
    exchange, without the interpreter's start, the imports and the connecting before."""

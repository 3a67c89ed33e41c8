"""How the TCP host sheds load instead of falling over (docs/host.md, "Shedding load").

A host that serves anyone who connects must bound what each peer can hold: a descriptor (the
connection cap, below the process's descriptor limit), time (the idle and frame-completion
timeouts) and memory (the write-buffer marks, in `host.server.HostConnection`). `Registry`
keeps the live connections in the order they were last heard from, so the one idle longest is
always first: the cap closes it to make room, the idle sweep closes from the front until it
meets one that spoke recently. `Listener` accepts connections itself: out of descriptors,
asyncio's own accept loop logs a traceback for every queued connection, thousands a second,
where this one counts the failure, stops accepting for a moment and tries again.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from host.logs import RateLimited

IDLE_TIMEOUT = 300.0
"""Seconds a connection may stay silent. A terminal that dials per transaction is gone in
seconds; one that keeps its line open between purchases sends an echo test (0820) well within
five minutes; a peer silent for longer holds a descriptor someone else may need."""
FRAME_TIMEOUT = 10.0
"""Seconds from a frame's first byte to its last. A frame is at most 8 KiB, a second's work on
the slowest line a terminal uses (9600 bit/s); ten seconds leave room for a congested network
and close slowloris peers and half-sent frames."""
FD_HEADROOM = 64
"""Descriptors kept free beyond those open at start: the event loop, the listener, serial
ports, SQLite's files, and the connection accepted while at the cap, before another is shed."""
WRITE_HIGH, WRITE_LOW = 64 * 1024, 16 * 1024
"""Answers buffered for a peer that is not reading them: past the high mark the host stops
reading from it, under the low mark it reads again (asyncio's default marks)."""
LOG_INTERVAL = 10.0
"""Seconds between log lines of one kind of shed connection or failed accept (with counts)."""
ACCEPT_RETRY = 0.1
"""Seconds between attempts to accept while out of descriptors (one system call each)."""
ACCEPTS_PER_TURN = 64
GONE_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
"""accept() failures that are the peer's (it gave up while queued): the next one is tried."""


def default_max_connections(headroom: int = FD_HEADROOM) -> int:
    """The descriptor limit less what is open now and the headroom (at least 1)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    fds = Path("/proc/self/fd")
    in_use = len(os.listdir(fds)) if fds.is_dir() else 16
    return max(1, soft - in_use - headroom)


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int
    idle_timeout: float = IDLE_TIMEOUT
    frame_timeout: float = FRAME_TIMEOUT
    write_high: int = WRITE_HIGH
    write_low: int = WRITE_LOW
    log_interval: float = LOG_INTERVAL

    @property
    def sweep_interval(self) -> float:
        """A timeout is enforced within a quarter of itself (at most a second late)."""
        return max(0.05, min(1.0, self.idle_timeout / 4, self.frame_timeout / 4))


class Member(Protocol):
    def close(self) -> None:
        """Close once the answers already written are sent."""

    def shed(self) -> None:
        """Close now, whatever the connection was doing."""


class Registry:
    """The live connections, idle longest first, and those holding part of a frame, the
    oldest frame first; each check is O(1) per message and O(closed) per sweep."""

    def __init__(self, limits: Limits, events: RateLimited,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.events = events
        self.clock = clock
        self._heard: OrderedDict[Member, float] = OrderedDict()
        self._framing: OrderedDict[Member, float] = OrderedDict()
        self._sweeper: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._heard)

    def __iter__(self) -> Iterator[Member]:
        return iter(list(self._heard))

    def add(self, member: Member) -> None:
        while len(self._heard) >= self.limits.max_connections:
            self._shed(next(iter(self._heard)), "connection cap")
        self._heard[member] = self.clock()

    def drop(self, member: Member) -> None:
        self._heard.pop(member, None)
        self._framing.pop(member, None)

    def heard(self, member: Member, mid_frame: bool) -> None:
        """Bytes came: the member is the most recently heard; `mid_frame`: part of a frame
        is still to come (its clock starts now unless it was already running)."""
        heard = self._heard
        if member not in heard:
            return
        now = heard[member] = self.clock()
        heard.move_to_end(member)
        if not mid_frame:
            self._framing.pop(member, None)
        elif member not in self._framing:
            self._framing[member] = now

    def hold(self, member: Member) -> None:
        """The host stopped reading the member (backpressure): its frame's clock stops."""
        self._framing.pop(member, None)

    def release(self, member: Member, mid_frame: bool) -> None:
        """The host reads the member again: a frame it was in starts its clock again."""
        if mid_frame and member in self._heard:
            self._framing[member] = self.clock()

    def closing(self, member: Member) -> None:
        """The host is closing the member and waits for the peer to close: within the frame
        timeout, else it is shed."""
        self._framing.pop(member, None)
        if member in self._heard:
            self._framing[member] = self.clock()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = loop.call_later(self.limits.sweep_interval, self._sweep, loop)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.events.flush(force=True)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = self.clock()
        for queue, timeout, reason in ((self._heard, self.limits.idle_timeout, "idle timeout"),
                                       (self._framing, self.limits.frame_timeout,
                                        "frame timeout")):
            deadline = now - timeout
            while queue:
                member, since = next(iter(queue.items()))
                if since > deadline:
                    break
                self._shed(member, reason)
        self.events.flush()
        self.start(loop)

    def _shed(self, member: Member, reason: str) -> None:
        self.drop(member)
        member.shed()
        self.events.note("connection shed", reason)


class Listener:
    """A listening socket whose accept failures cost a counted log line, not a traceback."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop,
                 adopt: Callable[[socket.socket], None], events: RateLimited) -> None:
        self.sock = sock
        self.loop = loop
        self.adopt = adopt
        self.events = events
        self._retry: asyncio.TimerHandle | None = None

    @classmethod
    def bind(cls, host: str, port: int, backlog: int, loop: asyncio.AbstractEventLoop,
             adopt: Callable[[socket.socket], None], events: RateLimited) -> Listener:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
        sock = socket.create_server(address[:2], family=family, backlog=backlog)
        sock.setblocking(False)
        return cls(sock, loop, adopt, events)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def start(self) -> None:
        self._retry = None
        self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in GONE_ERRNOS:
                    continue
                # Out of descriptors the socket stays readable: wait a moment, do not spin.
                self.events.note("accept failed", errno.errorcode.get(exc.errno or 0, "?"))
                self.loop.remove_reader(self.sock.fileno())
                self._retry = self.loop.call_later(ACCEPT_RETRY, self.start)
                return
            self.adopt(conn)

"""What every `scripts/bench` case shares: interleaved, time-bounded rate measurement, and the
bare servers (an echo, a mirror) a case measures the real one against, each in a process of its
own so that its CPU is its own."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection

from protocol.framing import FrameReader

START_SECONDS = 30.0
STOP_SECONDS = 10.0


def ops_per_second(fn: Callable[[], object], seconds: float, batch: int = 50) -> float:
    """Ops/s of `fn` over one time slice of `seconds`."""
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            fn()
        n += batch
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def rates(ours: Callable[[], object], theirs: Callable[[], object], seconds: float,
          rounds: int = 5) -> tuple[float, float]:
    """Best ops/s of each side over `rounds` interleaved slices: bounded in time, and a load
    spike on the machine hits both sides alike instead of skewing the ratio. The baseline's
    warnings (psec warns under current `cryptography`) are silenced while it runs, only."""
    best_ours = best_theirs = 0.0
    for _ in range(rounds):
        best_ours = max(best_ours, ops_per_second(ours, seconds / rounds))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            best_theirs = max(best_theirs, ops_per_second(theirs, seconds / rounds))
    return best_ours, best_theirs


class Echo(asyncio.Protocol):
    """Answers every frame with the same prebuilt `answer` (already length-prefixed)."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        for _ in self.reader.feed(data):
            self.transport.write(self.answer)


@dataclass(frozen=True, slots=True)
class Served:
    """A bare server running in its own process: where it listens, and its pid (for its CPU)."""

    port: int
    pid: int


Start = Callable[[], Awaitable[asyncio.Server]]
"""Starts a server on the running loop, listening on 127.0.0.1 at an ephemeral port."""


def listening(factory: Callable[[], asyncio.Protocol]) -> Start:
    """A server of `factory`'s protocol."""
    return lambda: asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0, backlog=4096)


def _serve(start: Start, control: Connection) -> None:
    async def serve() -> None:
        server = await start()
        control.send(server.sockets[0].getsockname()[1])
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()
    asyncio.run(serve())


@contextlib.contextmanager
def served(start: Start, name: str = "echo server") -> Iterator[Served]:
    """The server `start` makes, run by a forked process, which is stopped (SIGTERM, then
    joined) when the block ends; RuntimeError if it does not start."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_serve, args=(start, child), daemon=True)
    process.start()
    try:
        if not parent.poll(START_SECONDS):
            raise RuntimeError(f"the {name} did not start")
        assert process.pid is not None
        yield Served(parent.recv(), process.pid)
    finally:
        if process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
        process.join(STOP_SECONDS)

"""One process per worker, each with its own loop; the parent starts them together, shows the
live line and adds up what they measured.

Every worker connects and then waits; all sign on at the parent's word (a storm across workers
is one storm), then all start the window at the same wall-clock instant.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from typing import Any

from terminal.fleet.runner import Fleet, Load, Outcome
from terminal.fleet.schedule import split
from terminal.fleet.stats import Stats

FD_SPARE = 64
START_GRACE = 0.3
PHASE_TIMEOUT = 600.0
Live = Callable[[float, list[dict[str, Any]]], None]


class FleetRunError(Exception):
    """A worker could not run; the message is the worker's one line."""


def raise_nofile(connections: int) -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; refuse a run the hard limit cannot hold."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and connections + FD_SPARE > soft:
        raise FleetRunError(
            f"{connections} connections need {connections + FD_SPARE} file descriptors; this "
            f"worker may open {soft}: raise the hard limit (ulimit -Hn, limits.conf) or use "
            "more --workers")
    return soft


def shares(load: Load, workers: int) -> list[Load]:
    """Each worker's terminals, and its part of the rate or concurrency."""
    total = len(load.identities)
    parts = [r for r in split(total, min(workers, total)) if len(r)]
    out = []
    concurrency = split(load.concurrency or len(parts), len(parts))
    for index, part in enumerate(parts):
        share = len(part) / total
        out.append(replace(
            load, identities=load.identities[part.start:part.stop],
            rate=None if load.rate is None else load.rate * share,
            concurrency=None if load.concurrency is None else max(1, len(concurrency[index])),
            seed=None if load.seed is None else load.seed + index,
        ))
    return out


def _at(wall: float) -> float:
    """A wall-clock instant from the parent as this process's monotonic time."""
    return time.monotonic() + (wall - time.time())


async def _message(conn: Connection) -> Any:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(conn.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await asyncio.wait_for(ready, PHASE_TIMEOUT)
    finally:
        loop.remove_reader(conn.fileno())
    return conn.recv()


async def _work(load: Load, conn: Connection) -> None:
    fleet = Fleet(load)
    await fleet.connect()
    conn.send(("connected", len(fleet.links)))
    _, wall = await _message(conn)
    await asyncio.sleep(max(0.0, _at(wall) - time.monotonic()))
    if load.signon:
        await fleet.sign_on()
    conn.send(("ready", None))
    _, wall = await _message(conn)

    async def ticks() -> None:
        while True:
            await asyncio.sleep(1.0)
            conn.send(("tick", fleet.snapshot()))

    ticker = asyncio.create_task(ticks())
    start = _at(wall)
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    cpu = time.process_time()
    try:
        await fleet.window(start)
    finally:
        ticker.cancel()
        fleet.close()
    conn.send(("done", Outcome(fleet.stats.to_wire(), fleet.signons.to_wire(), fleet.elapsed,
                               fleet.signon_seconds, len(fleet.links), time.process_time() - cpu)))


def worker_main(load: Load, conn: Connection) -> None:
    """A worker process: raise its descriptor limit, run its share, report or fail in a line."""
    try:
        raise_nofile(len(load.identities))
        asyncio.run(_work(load, conn))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _expect(conns: list[Connection], phase: str, timeout: float,
            on_tick: Callable[[int, dict[str, Any]], None] | None = None) -> list[Any]:
    """One `phase` message from every worker (ticks on the way go to on_tick)."""
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    while len(results) < len(conns):
        left = deadline - time.monotonic()
        if left <= 0:
            raise FleetRunError(f"workers did not reach {phase} within {timeout:.0f} s")
        for conn in wait([c for i, c in enumerate(conns) if i not in results], left):
            assert isinstance(conn, Connection)
            index = conns.index(conn)
            try:
                kind, value = conn.recv()
            except EOFError:
                raise FleetRunError(f"worker {index} died before {phase}") from None
            if kind == "error":
                raise FleetRunError(f"worker {index}: {value}")
            if kind == "tick":
                if on_tick:
                    on_tick(index, value)
                continue
            results[index] = value
    return [results[i] for i in range(len(conns))]


def run_workers(load: Load, workers: int, live: Live | None = None) -> tuple[list[Outcome], float]:
    """Run the load over `workers` processes; their outcomes and the wall time of the start."""
    context = multiprocessing.get_context("spawn")  # no inherited loop, threads or sockets
    pipes, processes = [], []
    for share in shares(load, workers):
        parent, child = context.Pipe()
        process = context.Process(target=worker_main, args=(share, child), daemon=True)
        process.start()
        child.close()
        pipes.append(parent)
        processes.append(process)
    try:
        _expect(pipes, "connected", PHASE_TIMEOUT)
        for conn in pipes:
            conn.send(("signon", time.time() + START_GRACE))
        _expect(pipes, "sign-on", PHASE_TIMEOUT)
        start = time.time() + START_GRACE
        for conn in pipes:
            conn.send(("go", start))
        latest: list[dict[str, Any]] = [{} for _ in pipes]

        def tick(index: int, snapshot: dict[str, Any]) -> None:
            latest[index] = snapshot
            if live:
                live(time.time() - start, latest)

        outcomes = _expect(pipes, "the end", load.duration + load.drain + PHASE_TIMEOUT, tick)
    finally:
        for process in processes:
            process.join(5.0)
            if process.is_alive():
                process.kill()
                process.join(5.0)
    return outcomes, start


def merge(outcomes: list[Outcome]) -> tuple[Stats, Stats]:
    stats, signons = Stats(), Stats()
    for outcome in outcomes:
        stats.merge(outcome.stats)
        signons.merge(outcome.signons)
    return stats, signons


def live_line(elapsed: float, snapshots: list[dict[str, Any]]) -> str:
    codes: dict[str, int] = {}
    for snap in snapshots:
        for code, n in snap.get("codes", {}).items():
            codes[code] = codes.get(code, 0) + n
    rate = sum(s.get("last_second", 0) for s in snapshots)
    p99 = max((s.get("p99_us", 0) for s in snapshots), default=0) / 1000
    answered = sum(s.get("answered", 0) for s in snapshots)
    timeouts = sum(s.get("timeouts", 0) for s in snapshots)
    shown = " ".join(f"{c}:{n}" for c, n in sorted(codes.items()))
    return (f"{elapsed:5.0f}s  {rate:6d}/s  p99 {p99:7.1f} ms  answered {answered}  "
            f"timeouts {timeouts}  {shown}")


def tty_live(stream: Any = sys.stderr) -> Live | None:
    """The live line, rewritten in place, on a terminal only (never into a pipe or a file)."""
    if not stream.isatty():
        return None
    return lambda elapsed, snaps: print(f"\r{live_line(elapsed, snaps)}\033[K", end="",
                                        file=stream, flush=True)

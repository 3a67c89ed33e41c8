"""The fleet's own cost and its figures at scale: scripts/bench fleet [--json] [options].

(a) Cost: a mirror server (its own process; it answers each 0820 echo test with an 0830 that
carries the request's STAN and terminal id, spliced into a prebuilt answer) is driven for S
seconds, closed loop over the same N connections, by a raw client (sends prebuilt bytes, counts
frames) and by pos-fleet's own runner (sans-IO sessions build and judge every message, each
answer matched by STAN into an HdrHistogram), interleaved.

    fleet_vs_raw_echo = fleet rate / raw client rate      goal >= 0.5
    (the median over the rounds of each adjacent raw/fleet pair), and beside it the CPU per
    exchange of each client (fleet_vs_raw_cpu = raw µs / fleet µs), which a busy machine
    does not skew.

(b) Scale: T terminals provisioned at a real `pos-host serve` process, a sign-on storm, then
open loop at R purchases a second (real MACs and PIN blocks) for S seconds: sign-ons per second,
achieved rate, p50/p99/p99.9, lost, host RSS at T connections and CPU per transaction of the
host and of the fleet (who saturates first).

127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench_host import CARD, MID, cpu_seconds, provision, start_pos_host
from benchlib import Echo, listening, served

from protocol.codec import get_codec
from protocol.crypto import Key
from protocol.framing import FrameReader, length_prefixed
from protocol.message import Message
from terminal.fleet.member import Card, Identity
from terminal.fleet.mix import parse_mix
from terminal.fleet.report import build_report
from terminal.fleet.runner import Load
from terminal.fleet.workers import merge, run_workers

ECHO_TID = "E0000001"


# --- the mirror server and the raw client (their own processes) ---------------------------------


def _template() -> tuple[bytes, tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    """A sample 0820 and the 0830 to answer it, with where STAN (11) and TID (41) sit in each."""
    codec = get_codec("iso87")
    base = {11: "000001", 41: ECHO_TID, 42: MID, 60: "00000001301"}
    request = codec.encode(Message("0820", base))
    answer = codec.encode(Message("0830", {**base, 39: "00"}))
    _, rspans = codec.decode_spans(request)
    _, aspans = codec.decode_spans(answer)
    return answer, rspans[11], rspans[41], aspans[11], aspans[41]


class Mirror(Echo):
    def __init__(self) -> None:
        answer, self.r11, self.r41, self.a11, self.a41 = _template()
        super().__init__(answer)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        a, (r11s, r11e), (r41s, r41e), (a11s, a11e), (a41s, a41e) = (
            self.answer, self.r11, self.r41, self.a11, self.a41)
        out = []
        for request in self.reader.feed(data):
            out.append(length_prefixed(a[:a11s] + request[r11s:r11e] + a[a11e:a41s]
                                       + request[r41s:r41e] + a[a41e:]))
        self.transport.write(b"".join(out))


class Raw(asyncio.Protocol):
    """The baseline: prebuilt bytes out, frames counted in, nothing judged."""

    def __init__(self, frame: bytes, counts: list[int]) -> None:
        self.frame, self.counts = frame, counts
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.running = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.frame)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        for _ in self.reader.feed(data):
            self.counts[0] += 1
            if self.running:
                self.transport.write(self.frame)


def raw_main(port: int, connections: int, seconds: float, control: Connection) -> None:
    async def drive() -> tuple[float, int, float]:
        loop = asyncio.get_running_loop()
        frame = length_prefixed(get_codec("iso87").encode(Message(
            "0820", {11: "000001", 41: ECHO_TID, 42: MID, 60: "00000001301"})))
        counts = [0]
        clients = []
        for _ in range(connections):
            _, client = await loop.create_connection(lambda: Raw(frame, counts), "127.0.0.1", port)
            clients.append(client)
        await asyncio.sleep(0.5)  # warm, as the fleet's connections are before its window
        start_count, start, cpu = counts[0], time.perf_counter(), time.process_time()
        await asyncio.sleep(seconds)
        rate = (counts[0] - start_count) / (time.perf_counter() - start)
        window = counts[0] - start_count, time.process_time() - cpu
        for client in clients:
            client.running = False
            assert client.transport is not None
            client.transport.close()
        return rate, *window
    control.send(asyncio.run(drive()))


def raw_rate(port: int, connections: int, seconds: float) -> tuple[float, int, float]:
    """The raw client's rate in its window, the exchanges and the CPU seconds of the window."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=raw_main, args=(port, connections, seconds, child), daemon=True)
    process.start()
    try:
        if not parent.poll(seconds + 60):
            raise RuntimeError("the raw client sent no result")
        rate, exchanges, cpu = parent.recv()
        return float(rate), int(exchanges), float(cpu)
    finally:
        process.join(10)


def fake_identities(count: int) -> list[Identity]:
    """Echo tests need no keys: any TMK will do, nothing is ever wrapped under it."""
    return [Identity(f"E{i:07d}", MID, Key("TDES", "TMK", os.urandom(16))) for i in range(count)]


def fleet_echo_rate(port: int, connections: int, seconds: float) -> tuple[float, int, float]:
    load = Load("127.0.0.1", port, "iso87", "003", fake_identities(connections), [],
                parse_mix("echo=100"), seconds, 1, concurrency=connections, signon=False)
    outcomes, _ = run_workers(load, 1)
    stats, _ = merge(outcomes)
    if stats.mismatched or stats.lost:
        raise RuntimeError(f"fleet against the mirror: {stats.mismatched} mismatched, "
                           f"{stats.lost} lost")
    return (stats.answered / max(seconds, outcomes[0].elapsed), stats.answered,
            outcomes[0].window_cpu)


def cost(connections: int, seconds: float, rounds: int) -> dict[str, Any]:
    with served(listening(Mirror), "mirror server") as mirror:
        pairs = []
        for _ in range(rounds):  # interleaved: a load spike hits both alike
            pairs.append((measured(raw_rate, mirror.port, connections, seconds),
                          measured(fleet_echo_rate, mirror.port, connections, seconds)))
    ratios = sorted(fleet[0] / raw[0] for raw, fleet in pairs)
    raw_cpu = min(raw[1] for raw, _ in pairs)
    fleet_cpu = min(fleet[1] for _, fleet in pairs)
    return {"echo_connections": connections,
            "raw_echo_rate": round(max(raw[0] for raw, _ in pairs), 1),
            "fleet_echo_rate": round(max(fleet[0] for _, fleet in pairs), 1),
            "fleet_vs_raw_echo": round(ratios[len(ratios) // 2], 3),
            "fleet_vs_raw_echo_rounds": [round(r, 3) for r in ratios],
            "raw_cpu_us": round(raw_cpu, 1), "fleet_cpu_us": round(fleet_cpu, 1),
            "fleet_vs_raw_cpu": round(raw_cpu / fleet_cpu, 3)}


def measured(client: Callable[[int, int, float], tuple[float, int, float]], port: int,
             connections: int, seconds: float) -> tuple[float, float]:
    """(rate, CPU µs per exchange) of one client run in its own process: the CPU figure holds
    on a machine shared with other work, where the rate is what the scheduler left over. Each
    client measures its CPU over its own window: the fleet's worker is a spawned interpreter
    whose start and imports (half a second of CPU) would otherwise count as exchanges' cost,
    where the raw client is forked ready."""
    rate, exchanges, cpu = client(port, connections, seconds)
    return rate, cpu / max(1, exchanges) * 1e6


# --- at scale, against pos-host -------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def scale(terminals: int, rate: float, seconds: float, workers: int,
          report_path: Path | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="posemu-bench-fleet-") as tmp:
        started = time.perf_counter()
        tmks = provision(Path(tmp) / "host", terminals)
        provision_s = time.perf_counter() - started
        host, port = start_pos_host(Path(tmp) / "host", Path(tmp) / "host.log")
        peak = [0.0]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.5):
                peak[0] = max(peak[0], rss_mb(host.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            identities = [Identity(tid, MID, tmk) for tid, tmk in tmks.items()]
            load = Load("127.0.0.1", port, "iso87", "003", identities,
                        [Card(CARD.pan, CARD.expiry, CARD.pin)], parse_mix("purchase=100"),
                        seconds, 1, rate=rate, signon_storm=True, timeout=30.0)
            host_cpu = cpu_seconds(host.pid)
            fleet_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
            outcomes, _ = run_workers(load, workers)
            fleet_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            host_cpu = cpu_seconds(host.pid) - host_cpu
        finally:
            sampling.set()
            sampler.join(5)
            host.send_signal(signal.SIGTERM)
            host.wait(60)
    stats, signons = merge(outcomes)
    report = build_report(stats, signons, mode="open", terminals=terminals, workers=workers,
                          duration=seconds, elapsed=max(o.elapsed for o in outcomes),
                          signon_seconds=max(o.signon_seconds for o in outcomes), target=rate,
                          storm=True)
    if report_path:
        report_path.write_text(json.dumps(report, indent=1) + "\n")
    worst = max(report["timeline"], key=lambda p: p["p99_ms"] or 0.0, default={})
    fleet_cpu_s = (fleet_after.ru_utime + fleet_after.ru_stime
                   - fleet_cpu.ru_utime - fleet_cpu.ru_stime)
    exchanges = stats.answered + signons.answered
    return {
        "terminals": terminals, "target_rate": rate, "seconds": seconds, "workers": workers,
        "provision_s": round(provision_s, 1),
        "signon_rate": report["signon"]["rate"], "signon_ok": report["signon"]["ok"],
        "signon_p99_ms": report["signon"]["p99_ms"],
        "achieved_rate": report["achieved_rate"], "p50_ms": report["p50_ms"],
        "p99_ms": report["p99_ms"], "p999_ms": report["p999_ms"], "lost": report["lost"],
        "worst_second": worst.get("t"), "worst_second_p99_ms": worst.get("p99_ms"),
        "mismatched": report["mismatched"], "timeouts": report["timeouts"],
        "codes": report["codes"], "errors": report["errors"],
        "host_rss_mb": round(peak[0], 1),
        "host_cpu_us": round(host_cpu / exchanges * 1e6, 1) if exchanges else None,
        "fleet_cpu_us": round(fleet_cpu_s / exchanges * 1e6, 1) if exchanges else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--echo-connections", type=int, default=100)
    parser.add_argument("--echo-seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--terminals", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--report", type=Path, help="the scale run's full pos-fleet report (JSON)")
    args = parser.parse_args()
    result = cost(args.echo_connections, args.echo_seconds, args.rounds)
    if not args.skip_scale:
        result |= {"scale": scale(args.terminals, args.rate, args.seconds, args.workers,
                                       args.report)}
    for key, value in result.items():
        if isinstance(value, dict):
            for k, v in value.items():
                print(f"{k:>22}: {v}")
        else:
            print(f"{key:>22}: {value}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()

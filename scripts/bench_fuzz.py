"""Fuzzer speed: scripts/bench fuzz [--json] [--seconds S].

(a) fuzz_vs_echo: against a bare echo server (benchlib's, in its own process, answering each
frame with the request mirrored as its response MTI, so the oracles decode and check every
answer), the fuzzer's message-layer cases per second (generate, send, receive, judge) over a
raw client's round trips per second (one fixed frame, sendall and recv) in the same run,
interleaved slices, best of each.   goal >= 0.2
(b) cases per second against a real `pos-host serve` at each layer: frame, message and session
over TCP (session: signed on from a key-injection file), link over a served pty.

127.0.0.1 and ptys only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
from bench_host import host_command  # noqa: E402
from benchlib import Echo, listening, rates, served  # noqa: E402

from protocol.dialects import get_dialect  # noqa: E402
from protocol.framing import length_prefixed  # noqa: E402
from protocol.injection import read_injection_file  # noqa: E402
from protocol.transport.tcp import Endpoint  # noqa: E402
from terminal.fuzz import engine  # noqa: E402
from terminal.fuzz.engine import Context  # noqa: E402
from terminal.fuzz.runner import PIPELINE, Keys, Run, Settings  # noqa: E402
from terminal.fuzz.serial import SerialTarget  # noqa: E402
from terminal.fuzz.tcp import TcpTarget  # noqa: E402

TID, MID = "BENCH001", "BENCHMERCHANT01"
SERIAL_LINK = ",inter_byte_timeout=0.1,ack_timeout=0.5"


class Mirror(Echo):
    """benchlib's echo server, answering each request with itself under its response MTI.
    Like any host of the contract it answers requests only (an even third MTI digit): an
    answer to a response would sit unread and be taken for the next request's."""

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        for payload in self.reader.feed(data):
            if len(payload) >= 4 and payload[2:3] in (b"0", b"2", b"4", b"6", b"8"):
                self.transport.write(length_prefixed(payload[:2] + bytes([payload[2] | 1]) + payload[3:]))


def fuzz_run(target: Any, ctx: Context, layers: tuple[str, ...], keys: Keys | None = None) -> Run:
    settings = Settings(seed=1, cases=10**9, seconds=10**9, layers=layers, shrink_attempts=0,
                        shrink_seconds=0, restart_wait=0.5)
    run = Run(target, ctx, settings, str(target), keys)
    if keys is not None:
        run.sign_on()
    return run


CHUNK = 2 * PIPELINE
"""Cases (and raw round trips) per timed call: whole pipelined writes, as a long run sends them."""


def chunks(run: Run) -> Any:
    """CHUNK fuzz cases per call, through Run.run_cases as pos-fuzz runs them."""
    state = {"case": 0}

    def some() -> None:
        run.run_cases(state["case"], CHUNK)
        state["case"] += CHUNK
    return some


def fuzz_vs_echo(seconds: float) -> dict[str, float]:
    with served(listening(lambda: Mirror(b""))) as server:
        port = server.port
        ctx = Context(get_dialect("iso87"))
        target = TcpTarget(Endpoint("127.0.0.1", port), timeout=5.0)
        fuzz = chunks(fuzz_run(target, ctx, ("message",)))
        frame = length_prefixed(engine.encode(ctx, "0820", engine.template("0820", ctx)))
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def round_trips() -> None:
            for _ in range(CHUNK):
                raw.sendall(frame)
                got = 0
                while got < len(frame):
                    chunk = raw.recv(65536)
                    if not chunk:
                        raise RuntimeError("the echo server closed")
                    got += len(chunk)

        ours, theirs = (CHUNK * r for r in rates(fuzz, round_trips, seconds, rounds=5))
        raw.close()
        target.close()
    return {"fuzz_cases_per_s": round(ours, 1), "echo_round_trips_per_s": round(theirs, 1),
            "fuzz_vs_echo": round(ours / theirs, 3)}


def pos_host(data: Path, *argv: str) -> Any:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([*host_command(), "--data", str(data), "--json", *argv], env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout) if done.stdout.strip().startswith("{") else None


def serve(data: Path, *argv: str) -> tuple[subprocess.Popen[bytes], str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen([*host_command(), "--data", str(data), "serve", "--log",
                                str(data.parent / "serve.log"), *argv],
                               stdout=subprocess.PIPE, env=env)
    assert process.stdout is not None
    line = process.stdout.readline().decode().split()
    if line[:1] != ["listening"]:
        process.kill()
        raise RuntimeError("pos-host did not start")
    return process, line[2]


def per_layer(seconds: float) -> dict[str, float]:
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="posemu-bench-fuzz-") as tmp:
        data, keys_file = Path(tmp) / "host", Path(tmp) / "tmk.json"
        pos_host(data, "init")
        pos_host(data, "terminal", "add", TID, "--merchant", MID, "--out", str(keys_file))
        ctx = Context(get_dialect("iso87"), tid=TID, mid=MID, batch="000042")
        tmk = read_injection_file(keys_file).tmk
        process, where = serve(data, "--tcp", "127.0.0.1:0")
        try:
            host, _, port = where.rpartition(":")
            for layer in ("frame", "message", "session"):
                target = TcpTarget(Endpoint(host, int(port)), timeout=5.0)
                keys = Keys(ctx, tmk) if layer == "session" else None
                run = fuzz_run(target, ctx, (layer,), keys)
                out[f"{layer}_cases_per_s"] = round(_rate(run, seconds), 1)
                target.close()
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        process, where = serve(data, "--serial", "pty" + SERIAL_LINK)
        try:
            target = SerialTarget(where + SERIAL_LINK, timeout=5.0)
            run = fuzz_run(target, ctx, ("link",))
            out["link_cases_per_s"] = round(_rate(run, seconds), 1)
            target.close()
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    return out


def _rate(run: Run, seconds: float) -> float:
    start = time.perf_counter()
    run.run_cases(0, 10**9, time.monotonic() + seconds)
    return run.cases / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    result = {**fuzz_vs_echo(args.seconds), **per_layer(args.seconds)}
    for key, value in result.items():
        print(f"{key:>24}: {value}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()

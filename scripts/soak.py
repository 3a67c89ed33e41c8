"""Soak a real `pos-host serve`: broken frames and approved purchases, round after round, and
the host's resident memory after each round.

    scripts/soak [--broken 300000] [--purchases 100000] [--rounds 10] [--warmup 2] [--json]

Each round sends its share of both: the broken frames (the protocol package's
`strategies.broken_frames`, every kind, a pool drawn with a fixed seed, the junk bitmaps made
new for every frame so that no cache keyed by them can be filled from the pool) and the
purchases (MACed, with PIN blocks, from several terminals, each answered `00` and debited).
After the warm-up rounds the host's RSS (VmRSS of /proc/PID/status) is the baseline; the soak
passes when no later round is more than `--limit-mb` (10) above it. It ends with one JSON line
and exits 1 when memory did not plateau, an answer was lost or wrong, the host died or its log
holds a traceback.

Broken frames the host answers (or ignores) go many to a connection, pipelined; a frame the host
cannot answer (no MTI, a bad length or TPDU, cut short) goes last on its connection, whose write
side is then shut, so the host closes it. 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from protocol import strategies  # noqa: E402
from protocol.codec import get_codec  # noqa: E402
from protocol.dialects import get_dialect  # noqa: E402
from protocol.errors import ProtocolError  # noqa: E402
from protocol.framing import FrameReader, Framing  # noqa: E402
from tests.host.client import Card, ClientTerminal, tmk_from_ceremony  # noqa: E402
from tests.support import add_card, init_host, provision_terminal, start_host  # noqa: E402

DIALECT = "iso87"
MID = "M00000000000001"
CARD = Card("6212345678901234", "2812", "1234")
TERMINALS = 4
POOL = 3000  # distinct broken frames drawn; the junk bitmaps are drawn again for every frame
PIPELINE = 50  # frames sent before their answers are read
TIMEOUT = 30.0  # on every socket operation


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


# --- the frames ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Broken:
    data: bytes
    answers: int  # answers the host owes for it (a response MTI is ignored; a 30 is answered)
    closes: bool  # the host closes the connection after it (no MTI, bad length or TPDU, cut)
    bitmap_at: int | None  # where a junk bitmap sits, to draw it again per frame


def classify(frame: strategies.BrokenFrame) -> Broken:
    """What the host will do with the frame, from the protocol package's own readers."""
    dialect = get_dialect(DIALECT)
    codec, framing = get_codec(DIALECT), Framing(dialect)
    reader = FrameReader()
    closes = False
    try:
        payloads = reader.feed(frame.data)
    except ProtocolError as exc:
        payloads, closes = exc.frames, True
    answers = 0
    for payload in payloads:
        try:
            mti = codec.decode_mti(framing.unframe(payload).message)
        except ProtocolError:
            closes = True
            break
        answers += mti[2] not in "13579"
    at = 2 + len(framing.payload(b"", None)) + codec.mti_length
    return Broken(frame.data, answers, closes or reader.pending > 0,
                  at if frame.kind == "junk_bitmap" else None)


def broken_pool(size: int) -> list[Broken]:
    """`size` broken frames of every kind, the same ones every run (a fixed seed)."""
    drawn: list[strategies.BrokenFrame] = []

    @seed(20261201)
    @settings(max_examples=size, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategies.broken_frames(DIALECT))
    def draw(frame: strategies.BrokenFrame) -> None:
        drawn.append(frame)

    draw()
    return [classify(f) for f in drawn]


def fresh(broken: Broken, rng: random.Random) -> bytes:
    if broken.bitmap_at is None:
        return broken.data
    at = broken.bitmap_at
    size = min(16, len(broken.data) - at)  # the bitmap and whatever follows: the same length
    return broken.data[:at] + rng.randbytes(size) + broken.data[at + size:]


# --- the client side -----------------------------------------------------------------------------


@contextmanager
def connection(port: int) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        yield sock
    finally:
        sock.close()


def read_answers(sock: socket.socket, reader: FrameReader, count: int) -> list[bytes]:
    """`count` answers, or fewer if the host closes first (count < 0: read until it closes)."""
    answers: list[bytes] = []
    while count < 0 or len(answers) < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answers += reader.feed(chunk)
    return answers


@dataclass
class Tally:
    broken_sent: int = 0
    broken_answered: int = 0
    broken_expected: int = 0
    purchases: int = 0
    approved: int = 0
    wrong: int = 0
    resets: int = 0


def send_broken(port: int, pool: list[Broken], count: int, rng: random.Random,
                tally: Tally) -> None:
    """Pipelined on a connection until a frame the host will not answer, which goes last."""
    sent = 0
    while sent < count:
        batch: list[Broken] = []
        while sent < count and len(batch) < PIPELINE:
            item = pool[rng.randrange(len(pool))]
            batch.append(item)
            sent += 1
            if item.closes:
                break
        expected = sum(b.answers for b in batch)
        with connection(port) as sock:
            sock.sendall(b"".join(fresh(b, rng) for b in batch))
            sock.shutdown(socket.SHUT_WR)  # a frame cut short is then a cut frame: closed
            try:
                tally.broken_answered += len(read_answers(sock, FrameReader(), -1))
            except ConnectionResetError:  # answers the host sent may be lost with it
                tally.resets += 1
        tally.broken_sent += len(batch)
        tally.broken_expected += expected


def send_purchases(port: int, terminals: list[ClientTerminal], count: int, tally: Tally) -> None:
    """`count` purchases shared among the terminals, each checked to be approved."""
    codec = get_codec(DIALECT)
    for i, terminal in enumerate(terminals):
        share = count // len(terminals) + (i < count % len(terminals))
        with connection(port) as sock:
            reader = FrameReader()
            for start in range(0, share, PIPELINE):
                n = min(PIPELINE, share - start)
                requests = [terminal.payload(terminal.purchase(CARD, 1)) for _ in range(n)]
                sock.sendall(b"".join(len(r).to_bytes(2, "big") + r for r in requests))
                answers = read_answers(sock, reader, n)
                codes = [codec.decode(terminal.unpayload(a)).text(39) for a in answers]
                tally.purchases += n
                tally.approved += codes.count("00")
                tally.wrong += n - codes.count("00")


def signed_on(port: int, ceremonies: list[dict[str, Any]]) -> list[ClientTerminal]:
    codec = get_codec(DIALECT)
    terminals = []
    for ceremony in ceremonies:
        terminal = ClientTerminal(ceremony["tid"], MID, tmk_from_ceremony(ceremony))
        with connection(port) as sock:
            request = terminal.payload(terminal.sign_on_request())
            sock.sendall(len(request).to_bytes(2, "big") + request)
            (answer,) = read_answers(sock, FrameReader(), 1)
        terminal.install(codec.decode(terminal.unpayload(answer)), "003")
        terminals.append(terminal)
    return terminals


# --- the soak ------------------------------------------------------------------------------------


def soak(broken: int, purchases: int, rounds: int, warmup: int, limit_mb: float,
         serve_args: list[str]) -> dict[str, Any]:
    rng = random.Random(1)
    pool = broken_pool(POOL)
    with tempfile.TemporaryDirectory(prefix="posemu-soak-") as tmp:
        data = init_host(Path(tmp) / "host")
        ceremonies = [provision_terminal(data, f"S{i:07d}", MID) for i in range(TERMINALS)]
        add_card(data, CARD.pan, CARD.expiry, CARD.pin, "99999999.00")
        host = start_host(data, *serve_args, log_path=Path(tmp) / "host.log")
        tally = Tally()
        rss: list[int] = []
        started = time.monotonic()
        try:
            terminals = signed_on(host.port, ceremonies)
            for r in range(rounds):
                send_broken(host.port, pool, broken // rounds + (r < broken % rounds), rng, tally)
                send_purchases(host.port, terminals, purchases // rounds
                               + (r < purchases % rounds), tally)
                rss.append(rss_kb(host.process.pid))
            alive = host.process.poll() is None
        finally:
            code = host.stop()
        log = host.log_text()
    after = rss[warmup:] or rss[-1:]
    base = rss[warmup - 1] if 0 < warmup <= len(rss) else rss[0]
    growth_mb = (max(after) - base) / 1024
    result = {
        "broken_frames": tally.broken_sent, "broken_answered": tally.broken_answered,
        "broken_answers_expected": tally.broken_expected, "resets": tally.resets,
        "purchases": tally.purchases, "approved": tally.approved, "not_approved": tally.wrong,
        "rounds": rounds, "warmup_rounds": warmup,
        "rss_mb": [round(kb / 1024, 1) for kb in rss],
        "baseline_mb": round(base / 1024, 1), "growth_mb": round(growth_mb, 2),
        "limit_mb": limit_mb, "host_alive": alive, "host_exit": code,
        "tracebacks": log.count("Traceback"), "seconds": round(time.monotonic() - started, 1),
    }
    result["ok"] = (growth_mb <= limit_mb and alive and code == 0 and tally.wrong == 0
                    and tally.resets == 0
                    and tally.broken_answered == tally.broken_expected
                    and result["tracebacks"] == 0)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broken", type=int, default=300_000, help="broken frames in all")
    parser.add_argument("--purchases", type=int, default=100_000, help="approved purchases")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2, help="rounds before the baseline")
    parser.add_argument("--limit-mb", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    parser.add_argument("serve_args", nargs="*", help="extra `pos-host serve` options (after --)")
    args = parser.parse_args()
    if not 0 <= args.warmup < args.rounds:
        parser.error("--warmup must be below --rounds")
    result = soak(args.broken, args.purchases, args.rounds, args.warmup, args.limit_mb,
                  args.serve_args)
    if not args.json:
        for key, value in result.items():
            print(f"{key:>24}: {value}")
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Host throughput and overhead: scripts/bench host [--json] [--terminals N] [--seconds S] [--hsm].

(a) a real `pos-host serve` process and (b) a bare echo server with the same framing (answering
every frame with a frame of the host's response size) are each driven for S seconds by a load
generator in its own process: N connections, one terminal each, every terminal signed on and
every request (valid MAC and PIN block) built before the timed window (twice as many as the
handlers' own rate, measured first, could use; a run in which a terminal still runs out is
reported `capped`), each response matched to its request by STAN. Server CPU comes from the
OS (/proc/PID/stat: user + system time), not wall time, so a slow load generator cannot flatter
the host. (c) the host's handlers (decode,
MAC, PIN, key lookup, database write and commit, encode, MAC) run in-process without sockets,
and (d) pyiso8583 decodes the same request and encodes the same response.

    host_efficiency      = (echo_cpu_us + handler_cpu_us) / host_cpu_us   goal >= 0.85
    handler_vs_pyiso8583 = pyiso8583_cpu_us / handler_cpu_us              goal >= 1.2
    lost                 = responses missing or matched to the wrong request   goal 0

(e) the cost of durable approvals: the host with `--sync full` (fsync of the WAL at every group
commit, the default) and `--sync normal` (no fsync) in alternating windows of the same run
(`--sync-rounds` of each), each on a fresh copy of the provisioned data:

    fsync_vs_nosync_tps  = fsync_tps / nosync_tps

(f) iso8583sim's mock host (an asyncio host that approves whatever decodes: no MAC, no PIN,
no database) driven by the same load generator with the same requests, in the same run:

    host_vs_iso8583sim_tps = host_tps / iso8583sim_tps                   goal >= 3
    host_vs_iso8583sim_cpu = iso8583sim_cpu_us / host_cpu_us             goal >= 3

With --hsm, (g) sign-ons per second and purchases per second of the in-process handlers under
a file LMK and under an LMK in a SoftHSM2 token of the run's own, same terminals, same run.

127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import iso8583
from benchlib import Echo, listening, served

from host import admin
from host.core import HostCore
from host.datadir import init_data, open_data
from host.handlers import HandlerConfig
from host.keydb import KeyDb
from protocol.clock import system_clock, system_rng
from protocol.codec import get_codec
from protocol.crypto import Key
from protocol.dialects import get_dialect
from protocol.framing import FrameReader, Framing, length_prefixed
from protocol.pyiso8583_spec import pyiso8583_spec, to_pyiso8583_doc
from protocol.transport.tcp import Endpoint, TcpChannel
from terminal.fleet.member import Card
from terminal.keystore import KeySet, StoredKey
from terminal.session import Purchase, Request, Session
from terminal.store import MAX_WK_LIFETIME, Config

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MID = "M00000000000001"
CARD = Card("6212345678901234", "2812", "1234")
DIALECT = get_dialect("iso87")
KEY_SET, BATCH = "003", 1
STREAM_HEADROOM = 2.0
"""Requests built per terminal = headroom x (the handlers' own rate, measured in-process first:
a one-thread server cannot answer faster) x seconds / terminals. A terminal that still runs out
before the window ends makes the run `capped`: its host_tps is then a floor, and says so."""
MIN_PER_TERMINAL = 40
DRAIN_SECONDS = 5.0
IN_PROCESS_TERMINALS = 100  # the handlers take turns between this many terminals' keys
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchTerminal:
    """A terminal as pos-terminal is one (its sans-IO session, whose requests come from
    protocol.requests): signed on once, then its MACed purchases with PIN blocks built ahead."""

    def __init__(self, tid: str, tmk: Key) -> None:
        now = time.time()
        config = Config(tid, MID, DIALECT.name, KEY_SET, wk_lifetime=MAX_WK_LIFETIME)
        self.session = Session(config, DIALECT, KeySet({"TMK": StoredKey(tmk, 1, now)}))
        self.framing = Framing(DIALECT)
        self.stans = itertools.count(1)

    def sign_on_request(self) -> tuple[Request, bytes]:
        request = self.session.signon(next(self.stans), BATCH, KEY_SET)
        return request, self.framing.payload(request.encoded)

    def install(self, request: Request, answer: bytes | None) -> None:
        """The session judges the sign-on's answer (KCVs checked) and takes its keys."""
        if answer is None:
            raise RuntimeError(f"no answer to the sign-on of {self.session.config.tid}")
        result = self.session.receive(request, self.framing.unframe(answer).message)
        if result.rc != "00" or result.keyset is None:
            raise RuntimeError(f"sign-on of {self.session.config.tid}: {result.rc} {result.reason}")
        self.session.keys = result.keyset

    def purchase(self, card: Card, amount: int) -> bytes:
        order = Purchase(amount, card.pan, card.expiry, card.pin)
        return self.framing.payload(self.session.purchase(next(self.stans), BATCH, order).encoded)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process as the kernel counts it."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --- provisioning --------------------------------------------------------------------------------


def provision(data: Path, terminals: int, make: Callable[[Path], object] | None = None,
              ) -> dict[str, Key]:
    """N terminals and one card with a balance no run can spend, straight into the database
    (`make` makes the data folder: a file LMK by default)."""
    (make or (lambda path: init_data(path, system_rng)))(data)
    db = open_data(data, system_rng)
    try:
        tmks = {}
        for i in range(terminals):
            tid = f"B{i:07d}"
            _, tmks[tid] = admin.add_terminal(db, tid, MID, 2, system_clock(), system_rng)
        admin.add_card(db, CARD.pan, CARD.expiry, CARD.pin, "999999999.00")
    finally:
        db.close()
    return tmks


# --- load generator (its own process) ------------------------------------------------------------


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    sent: int = 0
    wrong: int = 0
    exhausted: int = 0


class LoadClient(asyncio.Protocol):
    """One terminal: send a request, wait for its answer, send the next; until told to stop."""

    def __init__(self, frames: list[bytes], stans: list[bytes], stats: Stats,
                 stan_of: Callable[[bytes], bytes] | None, done: Callable[[], None]) -> None:
        self.frames, self.stans, self.stats, self.stan_of = frames, stans, stats, stan_of
        self.done = done
        self.reader = FrameReader()
        self.index = 0
        self.sent_at = 0.0
        self.outstanding = False
        self.running = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def start(self) -> None:
        self.running = True
        self.send_next()

    def send_next(self) -> None:
        if not self.running:
            return
        if self.index >= len(self.frames):
            if self.stan_of is None:  # echo requests carry no STAN: they can go round again
                self.index = 0
            else:
                self.stats.exhausted += 1
                self.running = False
                return
        assert self.transport is not None
        self.outstanding = True
        self.sent_at = time.perf_counter()
        self.stats.sent += 1
        self.transport.write(self.frames[self.index])

    def data_received(self, data: bytes) -> None:
        for payload in self.reader.feed(data):
            now = time.perf_counter()
            if not self.outstanding:
                self.stats.wrong += 1
                continue
            self.outstanding = False
            if self.stan_of is not None and self.stan_of(payload) != self.stans[self.index]:
                self.stats.wrong += 1
            else:
                self.stats.latencies.append(now - self.sent_at)
            self.index += 1
            if self.running:
                self.send_next()
            else:
                self.done()

    def stop(self) -> None:
        self.running = False
        if not self.outstanding:
            self.done()


def build_requests(port: int, tmks: dict[str, Key], per_terminal: int) -> tuple[
        list[list[bytes]], list[list[bytes]]]:
    """Sign every terminal on and build its MACed purchases with PIN blocks (untimed)."""
    frames, stans = [], []
    codec = get_codec("iso87")
    for tid, tmk in tmks.items():
        terminal = BenchTerminal(tid, tmk)
        request, payload = terminal.sign_on_request()
        with TcpChannel(Endpoint("127.0.0.1", port), response_timeout=10.0) as channel:
            terminal.install(request, channel.exchange(payload))
        requests = [terminal.purchase(CARD, 1) for _ in range(per_terminal)]
        frames.append([length_prefixed(r) for r in requests])
        stans.append([codec.decode(r)[11].encode() for r in requests])  # type: ignore[union-attr]
    return frames, stans


def stan_reader() -> Callable[[bytes], bytes]:
    codec = get_codec("iso87")
    return lambda payload: codec.decode(payload)[11].encode()  # type: ignore[union-attr]


async def drive(port: int, frames: list[list[bytes]], stans: list[list[bytes]], check: bool,
                seconds: float, control: Connection) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stats = Stats()
    finished = asyncio.Event()
    remaining = len(frames)

    def one_done() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            finished.set()

    clients = []
    for f, s in zip(frames, stans, strict=True):
        _, client = await loop.create_connection(
            lambda f=f, s=s: LoadClient(f, s, stats, stan_reader() if check else None, one_done),
            "127.0.0.1", port)
        clients.append(client)
    control.send("ready")
    if not control.poll(60) or control.recv() != "go":
        raise RuntimeError("no go from the bench")
    started = time.perf_counter()
    for client in clients:
        client.start()
    await asyncio.sleep(seconds)
    for client in clients:
        client.stop()
    elapsed = time.perf_counter() - started
    control.send("stopped")  # the window closes here: the bench reads server CPU
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            await finished.wait()
    except TimeoutError:
        pass
    unanswered = sum(1 for c in clients if c.outstanding)
    for client in clients:
        if client.transport:
            client.transport.close()
    lat = sorted(stats.latencies)
    return {
        "completed": len(lat), "elapsed": elapsed, "lost": unanswered + stats.wrong,
        "exhausted": stats.exhausted,
        "p50_ms": 1000 * lat[len(lat) // 2] if lat else math.nan,
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else math.nan,
    }


@dataclass(frozen=True)
class Load:
    """What a load generator is asked to do: real terminals (tmks) or echo-sized requests."""

    port: int
    terminals: int
    per_terminal: int
    seconds: float
    tmks: dict[str, Key] | None = None
    echo_request_size: int = 0
    signon_port: int | None = None
    """Where the terminals sign on, when not at `port` (a mock host that issues no keys)."""


def loadgen_main(load: Load, control: Connection) -> None:
    """Entry point of the load-generator process."""
    try:
        if load.tmks is not None:
            frames, stans = build_requests(load.signon_port or load.port, load.tmks,
                                           load.per_terminal)
        else:  # the echo server: any request of the right size will do, answers carry no STAN
            request = length_prefixed(bytes(load.echo_request_size))
            frames = [[request] * load.per_terminal for _ in range(load.terminals)]
            stans = [[b""] * load.per_terminal for _ in frames]
        result = asyncio.run(drive(load.port, frames, stans, load.tmks is not None,
                                   load.seconds, control))
        control.send(result)
    except Exception as exc:  # reported to the bench, which fails with it
        control.send({"error": f"{type(exc).__name__}: {exc}"})


# --- in-process measurements ---------------------------------------------------------------------


@dataclass
class CpuMeter:
    """Process CPU over everything measured, per item: a mean, like the servers' CPU per
    transaction over their window (a best-of would flatter in-process work against them)."""

    seconds: float = 0.0
    items: int = 0

    def measure(self, work: Callable[[], int]) -> None:
        start = time.process_time()
        self.items += work()
        self.seconds += time.process_time() - start

    @property
    def us(self) -> float:
        return self.seconds / self.items * 1e6


def handler_and_pyiso8583(data: Path, tmks: dict[str, Key], batch: int,
                          rounds: int = 5) -> tuple[float, float, int, int]:
    """(handler_cpu_us, pyiso8583_cpu_us, request size, response size): the same request, in
    the same machine state."""
    db: KeyDb = open_data(data, system_rng)
    codec = get_codec("iso87")
    config = HandlerConfig(codec, db.vault, system_rng)
    core = HostCore(db, config, system_clock, _NullLog(), Framing(get_dialect("iso87")))
    terminals = []
    for tid, tmk in list(tmks.items())[:IN_PROCESS_TERMINALS]:
        terminal = BenchTerminal(tid, tmk)
        request, payload = terminal.sign_on_request()
        terminal.install(request, core.handle_payload(payload))
        terminals.append(terminal)
    per_round = max(1, 800 // len(terminals))

    def requests() -> list[bytes]:
        return [t.purchase(CARD, 1) for _ in range(per_round) for t in terminals]

    replies: list[bytes | None] = []

    def handlers(messages: list[bytes]) -> int:
        """The server's own path (HostCore.submit, commit per batch) without sockets or log."""
        replies.clear()
        for i in range(0, len(messages), batch):
            for message in messages[i:i + batch]:
                core.submit(message, replies.append, "bench")
            core.commit()
        return len(messages)

    spec = pyiso8583_spec(get_dialect("iso87"))

    def pyiso(messages: list[bytes], docs: list[dict[str, str]]) -> int:
        """pyiso8583 decodes the very requests the handlers took, and encodes their replies."""
        for message, doc in zip(messages, docs, strict=True):
            iso8583.decode(message, spec)
            iso8583.encode(doc, spec)
        return len(messages)

    handler_cpu, pyiso_cpu = CpuMeter(), CpuMeter()
    handlers(requests())  # warm: every terminal's keys unwrapped and cached, as in the server
    for _ in range(rounds):  # interleaved, so both meet the same machine state
        messages = requests()
        handler_cpu.measure(lambda m=messages: handlers(m))
        docs = [to_pyiso8583_doc(codec.decode(reply)) for reply in replies if reply]
        assert all(doc["39"] == "00" for doc in docs)
        pyiso_cpu.measure(lambda m=messages, d=docs: pyiso(m, d))
    sizes = len(messages[0]), len(replies[0] or b"")
    db.close()
    return handler_cpu.us, pyiso_cpu.us, *sizes


class _NullLog:
    """The in-process core logs nothing: the log is the server's cost, not the handlers'."""

    def message(self, **_: object) -> None: ...

    def event(self, **_: object) -> None: ...

    def flush(self) -> None: ...


# --- the LMK in a PKCS#11 token beside the file LMK (--hsm) -------------------------------------


def lmk_rates(data: Path, tmks: dict[str, Key], per_terminal: int = 20, batch: int = 50,
              ) -> dict[str, float]:
    """Sign-ons per second (each seals its new keys under the LMK: in the token, a C_WrapKey
    per key; and the first loads the terminal's TMK, a C_UnwrapKey), the first purchase of each
    terminal after it (its keys loaded again: a C_UnwrapKey each) and purchases per second
    after that (keys cached in memory: no purchase crosses the PKCS#11 boundary)."""
    db: KeyDb = open_data(data, system_rng)
    codec = get_codec("iso87")
    core = HostCore(db, HandlerConfig(codec, db.vault, system_rng), system_clock, _NullLog(),
                    Framing(get_dialect("iso87")))
    terminals = [BenchTerminal(tid, tmk) for tid, tmk in tmks.items()]
    started = time.perf_counter()
    for terminal in terminals:
        request, payload = terminal.sign_on_request()
        terminal.install(request, core.handle_payload(payload))
    sign_ons = len(terminals) / (time.perf_counter() - started)
    replies: list[bytes | None] = []

    def purchase(messages: list[bytes]) -> float:
        started = time.perf_counter()
        for i in range(0, len(messages), batch):
            for message in messages[i:i + batch]:
                core.submit(message, replies.append, "bench")
            core.commit()
        return len(messages) / (time.perf_counter() - started)

    # the first purchase after a sign-on loads the terminal's keys again (one unwrap each)
    first = purchase([t.purchase(CARD, 1) for t in terminals])
    purchases = purchase([t.purchase(CARD, 1) for _ in range(per_terminal) for t in terminals])
    assert all(r is not None and codec.decode(r)[39] == "00" for r in replies)
    db.close()
    return {"sign_ons_per_s": round(sign_ons, 1), "first_purchases_per_s": round(first, 1),
            "purchases_per_s": round(purchases, 1)}


def hsm_compare(terminals: int) -> dict[str, Any]:
    """The same provisioning and load under a file LMK and under a SoftHSM2 token LMK."""
    from host.datadir import init_token_data
    from host.pkcs11 import DEFAULT_PIN_ENV, TokenConfig
    from tests.host.softhsm import LABEL, PIN, SO_PIN, module_path

    module = module_path()
    if module is None or shutil.which("softhsm2-util") is None:
        return {"skipped": "SoftHSM2 is not installed (scripts/_setup.sh installs softhsm2)"}
    with tempfile.TemporaryDirectory(prefix="posemu-bench-hsm-") as tmp:
        folder = Path(tmp) / "tokens"
        folder.mkdir()
        conf = Path(tmp) / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {folder}\nobjectstore.backend = file\n")
        os.environ["SOFTHSM2_CONF"] = str(conf)
        os.environ[DEFAULT_PIN_ENV] = PIN
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", LABEL, "--so-pin",
                        SO_PIN, "--pin", PIN], check=True, capture_output=True, timeout=60)
        config = TokenConfig(module, LABEL)
        file_tmks = provision(Path(tmp) / "file", terminals)
        token_tmks = provision(Path(tmp) / "token", terminals,
                               lambda path: init_token_data(path, system_rng, config, PIN).close())
        file_lmk = lmk_rates(Path(tmp) / "file", file_tmks)
        token_lmk = lmk_rates(Path(tmp) / "token", token_tmks)
    return {"file_lmk": file_lmk, "token_lmk": token_lmk,
            "token_vs_file_sign_ons": round(token_lmk["sign_ons_per_s"] / file_lmk["sign_ons_per_s"], 3),
            "token_vs_file_purchases": round(token_lmk["purchases_per_s"]
                                             / file_lmk["purchases_per_s"], 3)}


# --- orchestration -------------------------------------------------------------------------------


def run_window(server_pid: int, load: Load) -> dict[str, Any]:
    """Drive one server for `load.seconds`; its CPU over exactly the timed window."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=loadgen_main, args=(load, child), daemon=True)
    process.start()
    try:
        if not parent.poll(600):
            raise RuntimeError("the load generator did not get ready")
        message = parent.recv()
        if message != "ready":
            raise RuntimeError(f"load generator: {message}")
        cpu_before = cpu_seconds(server_pid)
        parent.send("go")
        if not parent.poll(load.seconds + 60) or parent.recv() != "stopped":
            raise RuntimeError("the load generator did not finish its window")
        cpu = cpu_seconds(server_pid) - cpu_before
        if not parent.poll(DRAIN_SECONDS + 30):
            raise RuntimeError("the load generator sent no results")
        result = parent.recv()
        if "error" in result:
            raise RuntimeError(f"load generator: {result['error']}")
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
    result["cpu_s"] = cpu
    result["cpu_us"] = cpu / result["completed"] * 1e6 if result["completed"] else math.nan
    result["tps"] = result["completed"] / result["elapsed"]
    return result


def host_command() -> list[str]:
    installed = shutil.which("pos-host", path=str(Path(sys.executable).parent))
    return [installed] if installed else [sys.executable, "-m", "host.cli"]


def start_pos_host(data: Path, log: Path, *serve: str) -> tuple[subprocess.Popen[bytes], int]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [*host_command(), "--data", str(data), "serve", "--tcp", "127.0.0.1:0", "--log",
         str(log), *serve], stdout=subprocess.PIPE, env=env)
    assert process.stdout is not None
    line = process.stdout.readline().decode().split()
    if line[:2] != ["listening", "tcp"]:
        process.kill()
        raise RuntimeError("pos-host did not start")
    return process, int(line[2].rpartition(":")[2])


def sync_cost(pristine: Path, tmp: Path, load: Load, rounds: int) -> dict[str, Any]:
    """The host with `--sync full` (fsync at every group commit) against `--sync normal`, in
    alternate windows of the same run, each on its own copy of the freshly provisioned data
    (so every window's purchases are new STANs)."""
    runs: dict[str, list[dict[str, Any]]] = {"full": [], "normal": []}
    for i in range(rounds):
        for mode in ("normal", "full"):
            data = tmp / f"sync-{mode}-{i}"
            shutil.copytree(pristine, data)
            host, port = start_pos_host(data, tmp / f"sync-{mode}-{i}.log", "--sync", mode)
            try:
                runs[mode].append(run_window(host.pid, Load(port, load.terminals,
                                                             load.per_terminal, load.seconds,
                                                             load.tmks)))
            finally:
                host.send_signal(signal.SIGTERM)
                host.wait(30)
    result: dict[str, Any] = {}
    for mode, name in (("full", "fsync"), ("normal", "nosync")):
        done = runs[mode]
        result[f"{name}_tps"] = round(sum(r["tps"] for r in done) / len(done), 1)
        result[f"{name}_cpu_us"] = round(sum(r["cpu_us"] for r in done) / len(done), 1)
        result[f"{name}_p99_ms"] = round(max(r["p99_ms"] for r in done), 3)
        result[f"{name}_lost"] = sum(r["lost"] for r in done)
    result["fsync_vs_nosync_tps"] = round(result["fsync_tps"] / result["nosync_tps"], 3)
    return result


def iso8583sim_window(pristine: Path, data: Path, load: Load) -> dict[str, Any] | None:
    """iso8583sim's mock host (no crypto, no database: it approves whatever decodes, echoing
    the STAN) driven by the same load generator with the same requests: the terminals sign on
    at a pos-host of their own (keys for the MACs and PIN blocks), then purchase at the mock.
    None when iso8583sim is not installed (it is in the `test` extra)."""
    try:
        from iso8583sim.net.host import MockHost
    except ImportError:
        return None
    shutil.copytree(pristine, data)
    host, port = start_pos_host(data, data.parent / "sim-signon.log")
    try:
        with served(lambda: MockHost().start("127.0.0.1", 0), "iso8583sim mock host") as sim:
            return run_window(sim.pid, replace(load, port=sim.port, signon_port=port))
    finally:
        host.send_signal(signal.SIGTERM)
        host.wait(30)


def stream_length(handler_us: float, terminals: int, seconds: float) -> int:
    """Requests to build per terminal so that none runs out at `STREAM_HEADROOM` times the
    rate the handlers reach alone (`handler_us` of CPU per purchase, one thread)."""
    rate = STREAM_HEADROOM * 1e6 / handler_us
    return max(MIN_PER_TERMINAL, math.ceil(rate * seconds / terminals))


def bench(terminals: int, seconds: float, sync_rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="posemu-bench-") as tmp:
        tmks = provision(Path(tmp) / "host", terminals)
        shutil.copytree(Path(tmp) / "host", Path(tmp) / "inproc")
        shutil.copytree(Path(tmp) / "host", Path(tmp) / "rate")
        shutil.copytree(Path(tmp) / "host", Path(tmp) / "pristine")
        rate_us = handler_and_pyiso8583(Path(tmp) / "rate", tmks, min(50, terminals), rounds=1)[0]
        per_terminal = stream_length(rate_us, terminals, seconds)

        log = Path(tmp) / "host.log"
        host, port = start_pos_host(Path(tmp) / "host", log)
        try:
            hosted = run_window(host.pid, Load(port, terminals, per_terminal, seconds, tmks))
        finally:
            host.send_signal(signal.SIGTERM)
            host.wait(30)
        # The in-process handlers commit as often as the host did: its mean group commit.
        stopped = [json.loads(line) for line in log.read_text().splitlines()
                   if '"event":"stopped"' in line.replace(" ", "")]
        purchases = stopped[-1]["messages"] - terminals if stopped else 0  # less the sign-ons
        commits = stopped[-1]["commits"] - terminals if stopped else 0
        batch = max(1, round(purchases / commits)) if commits > 0 else 1
        handler_us, pyiso_us, request_size, response_size = handler_and_pyiso8583(
            Path(tmp) / "inproc", tmks, min(batch, terminals))

        answer = length_prefixed(bytes(response_size))
        with served(listening(lambda: Echo(answer))) as echo:
            echoed = run_window(echo.pid, Load(echo.port, terminals, per_terminal, seconds,
                                               None, request_size))
        simulated = iso8583sim_window(Path(tmp) / "pristine", Path(tmp) / "sim",
                                      Load(0, terminals, per_terminal, seconds, tmks))
        synced = sync_cost(Path(tmp) / "pristine", Path(tmp),
                           Load(0, terminals, per_terminal, seconds, tmks), sync_rounds)

    result = {
        "terminals": terminals,
        "seconds": seconds,
        "transactions": hosted["completed"],
        "host_cpu_us": round(hosted["cpu_us"], 1),
        "echo_cpu_us": round(echoed["cpu_us"], 1),
        "handler_cpu_us": round(handler_us, 1),
        "pyiso8583_cpu_us": round(pyiso_us, 1),
        "host_tps": round(hosted["tps"], 1),
        "echo_tps": round(echoed["tps"], 1),
        "p50_ms": round(hosted["p50_ms"], 3),
        "p99_ms": round(hosted["p99_ms"], 3),
        "lost": hosted["lost"],
        "requests_per_terminal": per_terminal,
        "exhausted_terminals": hosted["exhausted"],
        "capped": hosted["exhausted"] > 0,
        "host_mean_group_commit": batch,
    }
    result["host_efficiency"] = round(
        (result["echo_cpu_us"] + result["handler_cpu_us"]) / result["host_cpu_us"], 3)
    result["handler_vs_pyiso8583"] = round(result["pyiso8583_cpu_us"]
                                           / result["handler_cpu_us"], 3)
    if simulated is not None:
        result |= {
            "iso8583sim_tps": round(simulated["tps"], 1),
            "iso8583sim_cpu_us": round(simulated["cpu_us"], 1),
            "iso8583sim_lost": simulated["lost"],
            "host_vs_iso8583sim_tps": round(hosted["tps"] / simulated["tps"], 3),
            "host_vs_iso8583sim_cpu": round(simulated["cpu_us"] / hosted["cpu_us"], 3),
        }
    return result | synced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--terminals", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--sync-rounds", type=int, default=2,
                        help="windows of --sync normal and --sync full, alternating")
    parser.add_argument("--hsm", action="store_true",
                        help="also sign-ons/s and purchases/s with the LMK in a SoftHSM2 token, "
                             "beside the file LMK")
    args = parser.parse_args()
    result = bench(args.terminals, args.seconds, max(1, args.sync_rounds))
    if args.hsm:
        result["hsm"] = hsm_compare(args.terminals)
    for key, value in result.items():
        print(f"{key:>22}: {value}")
    if result["capped"]:
        print(f"CAPPED: {result['exhausted_terminals']} terminal(s) ran out of pre-built requests "
              "before the window ended; host_tps is a floor")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()

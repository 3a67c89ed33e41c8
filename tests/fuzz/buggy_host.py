"""A deliberately buggy host (a test fixture, not product code): one planted bug per oracle.

    python -m tests.fuzz.buggy_host --bug echo [--keys FILE] [--serial]

serves iso87 on 127.0.0.1 port 0 (or a fresh pty) and prints `listening tcp HOST:PORT` (or
`listening serial /dev/pts/N`). Without its bug it is a correct host as far as the fuzzer's
oracles can tell: it answers every request MTI (12 when unserved, 30 when malformed), echoes
11/41/42, closes only on an undecodable MTI, and with --keys signs on (key set 003) and
approves any 0200 whose MAC verifies, MACing its answer. Each bug breaks one of those:
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from protocol import macing
from protocol.codec import get_codec
from protocol.crypto import generate_key, wrap_ecb
from protocol.errors import FramingError, ProtocolError
from protocol.fields import Field60, WrappedKey, build_key_set
from protocol.framing import FrameReader, length_prefixed
from protocol.injection import read_injection_file
from protocol.message import Message

CODEC = get_codec("iso87")
CLOSE = object()
HANG = object()
SLOW = 0.6

BUGS: dict[str, str] = {
    "crash": "a request without field 42 kills the process",
    "hang": "a sign-on whose operator (63) is not '01 ' is never answered",
    "malformed": "an answer to a STAN ending in 7 has a stray byte after its last field",
    "wrong_mti": "an MTI it does not serve is answered 0210 instead of its own response MTI",
    "echo": "field 41 is echoed upper-cased",
    "malfunction": "a 0200 whose processing code is not 000000 gets 96",
    "mac": "an approval of a 0200 whose field 25 is not 00 goes out without a MAC",
    "closed": "an 0600 or 0620 closes the connection instead of getting 12",
    "latency": "an 0820 whose STAN ends in 3 is answered after 0.6 s",
}


class BuggyHost:
    def __init__(self, bug: str, tmk_file: Path | None) -> None:
        self.bug = bug
        self.tmk = read_injection_file(tmk_file).tmk if tmk_file else None
        self.mak = None
        self.rng = os.urandom

    def answer(self, message: bytes) -> bytes | object | None:
        try:
            request = CODEC.decode(message)
            broken = False
        except ProtocolError as exc:
            try:
                request = exc.partial or Message(CODEC.decode_mti(message))
            except ProtocolError:
                return CLOSE
            broken = True
        mti = request.mti
        if mti[2] in "13579":
            return None
        bug = self.bug
        if bug == "crash" and not broken and 42 not in request.fields:
            os._exit(3)
        if bug == "closed" and mti in ("0600", "0620"):
            return CLOSE
        if bug == "hang" and mti == "0800" and request.text(63) != "01 " and not broken:
            return HANG
        rc, extra, mac = self.decide(request, message, broken)
        out = {n: request.fields[n] for n in (3, 4, 11, 41, 42, 49, 60) if n in request.fields}
        if bug == "echo" and 41 in out:
            out[41] = str(out[41]).upper()
        out[39] = rc
        out.update(extra)
        reply_mti = f"{mti[:2]}{int(mti[2]) + 1}{mti[3]}"
        if bug == "wrong_mti" and mti not in ("0200", "0800", "0820"):
            reply_mti = "0210"
        reply = Message(reply_mti, out)
        if mac and self.mak is not None and not (bug == "mac" and request.text(25) != "00"):
            data = macing.sign(CODEC, reply, self.mak)
        else:
            data = CODEC.encode(reply)
        if bug == "latency" and mti == "0820" and request.text(11).endswith("3"):
            time.sleep(SLOW)
        return data

    def decide(self, request: Message, raw: bytes, broken: bool) -> tuple[str, dict, bool]:
        if broken:
            return "30", {}, False
        if request.mti == "0800" and self.tmk is not None:
            try:
                code = Field60.parse(request.text(60)).nmic
            except ProtocolError:
                return "30", {}, False
            if code != "003":
                return "12", {}, False
            pik = generate_key("TDES", 16, "PIK", self.rng)
            mak = generate_key("TDES", 16, "MAK", self.rng)
            wrapped = [WrappedKey(k.usage, wrap_ecb(self.tmk, k), k.kcv(4)) for k in (pik, mak)]
            self.mak = mak
            return "00", {62: build_key_set(wrapped, "003")}, False
        if request.mti in ("0800", "0820"):
            return "00", {}, False
        if request.mti != "0200":
            return "12", {}, False
        if self.bug == "malfunction" and request.text(3) != "000000":
            return "96", {}, False
        if self.mak is None or not macing.verify(CODEC, raw, self.mak):
            return "14", {44: "K3 MAK mismatch"}, False
        return "00", {38: "123456"}, True


def serve_tcp(host: BuggyHost, port: int, announce: Callable[[str], None]) -> None:
    lock = threading.Lock()

    class Connection(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            reader = FrameReader()
            sock: socket.socket = self.request
            while True:
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                try:
                    frames = reader.feed(chunk)
                except FramingError:
                    return
                for frame in frames:
                    with lock:
                        reply = host.answer(frame)
                    if reply is CLOSE:
                        return
                    if reply is HANG:
                        time.sleep(60)
                        return
                    if isinstance(reply, bytes):
                        if host.bug == "malformed" and CODEC.decode(reply).text(11).endswith("7"):
                            reply += b"\x00"
                        sock.sendall(length_prefixed(reply))

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    with Server(("127.0.0.1", port), Connection) as server:
        announce(f"listening tcp 127.0.0.1:{server.server_address[1]}")
        server.serve_forever()


def serve_pty(host: BuggyHost, announce: Callable[[str], None]) -> None:
    from protocol.transport.serial import serve_serial

    def handle(payload: bytes) -> bytes | None:
        reply = host.answer(payload)
        return reply if isinstance(reply, bytes) else None

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    serve_serial("pty,inter_byte_timeout=0.1,ack_timeout=0.5", handle, stop=stop,
                 on_ready=lambda name: announce(f"listening serial {name}"))


def say(line: str) -> None:
    print(line, flush=True)


def supervise(argv: list[str]) -> int:
    """Runs the host as a child and starts it again when it dies, on the same port, after a
    pause: a crash is seen as refused connections, and the fuzzer can then shrink it."""
    child_argv = [sys.executable, "-m", "tests.fuzz.buggy_host", "--child", *argv]
    port = 0
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    first = True
    while not stopping.is_set():
        child = subprocess.Popen([*child_argv, "--port", str(port)], stdout=subprocess.PIPE)
        assert child.stdout is not None
        line = child.stdout.readline().decode().strip()
        if first:
            say(line)
            first = False
        port = int(line.rpartition(":")[2]) if line.startswith("listening tcp") else port
        while child.poll() is None and not stopping.is_set():
            stopping.wait(0.05)
        if child.poll() is None:
            child.terminate()
            child.wait(5)
        child.stdout.close()
        stopping.wait(0.2)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bug", choices=[*BUGS, "none"], default="none")
    parser.add_argument("--keys", type=Path)
    parser.add_argument("--serial", action="store_true")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    host = BuggyHost(args.bug, args.keys)
    if args.serial:
        serve_pty(host, say)
        return 0
    if not args.child:
        rest = ["--bug", args.bug] + (["--keys", str(args.keys)] if args.keys else [])
        return supervise(rest)
    serve_tcp(host, args.port, say)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A noisy line on purpose: a TCP relay that damages what the host answers.

ERROR14's "communication fault (unstable line)": the key download arrives corrupted or cut. Put
this between a terminal and any host (127.0.0.1 only) and choose the damage; the terminal must
then refuse the download (K3) and keep its old keys.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from protocol.framing import FrameReader, length_prefixed
from protocol.transport.tcp import parse_endpoint

Damage = Callable[[bytes], bytes]
"""Takes a response payload (what follows the length prefix), returns what arrives instead."""
ACCEPT_POLL = 0.2
LINE_TIMEOUT = 10.0


def flip_bit(offset_from_end: int, mask: int = 0x10) -> Damage:
    """Flip bits of one byte counted from the end: in an 0810, field 62's check values end it."""
    def damage(payload: bytes) -> bytes:
        data = bytearray(payload)
        data[len(data) - offset_from_end] ^= mask
        return bytes(data)
    return damage


def read_frame(conn: socket.socket) -> bytes | None:
    """One length-prefixed frame's payload from a socket, or None when the peer closes first."""
    reader = FrameReader()
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        frames = reader.feed(chunk)
        if frames:
            return frames[0]


@contextmanager
def serving(handle: Callable[[socket.socket], None]) -> Iterator[str]:
    """Yields `tcp://127.0.0.1:PORT` of a listener that runs `handle` on each connection, one at
    a time, until the block ends; a peer's socket error ends only its own connection."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(ACCEPT_POLL)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn, suppress(OSError):
                conn.settimeout(LINE_TIMEOUT)
                handle(conn)

    thread = threading.Thread(target=serve, name="line", daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        server.close()


@contextmanager
def noisy_line(upstream: str, damage: Damage) -> Iterator[str]:
    """Yields `tcp://127.0.0.1:PORT` of a relay to `upstream` that damages every answer; one
    request and one answer per connection, as our terminal makes them."""
    target = parse_endpoint(upstream)

    def relay(conn: socket.socket) -> None:
        request = read_frame(conn)
        if request is None:
            return
        with socket.create_connection((target.host, target.port), timeout=LINE_TIMEOUT) as up:
            up.sendall(length_prefixed(request))
            response = read_frame(up)
        if response is not None:
            conn.sendall(length_prefixed(damage(response)))

    with serving(relay) as url:
        yield url

"""Network stand-ins for what a real host cannot be asked to do: answer like a foreign host, or
not answer at all. (A line that damages frames is a feature: protocol.transport.noisy.)"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

from protocol.codec import get_codec
from protocol.framing import length_prefixed
from protocol.message import Message
from protocol.transport.noisy import read_frame, serving


@contextmanager
def foreign_host(rc: str, dialect: str = "iso87") -> Iterator[str]:
    """A host that answers every request with `rc` and no field 44: how a real acquirer says 14
    ("invalid card number" in ISO 8583), with no K reason."""
    codec = get_codec(dialect)

    def handle(conn: socket.socket) -> None:
        request = read_frame(conn)
        if request is None:
            return
        msg = codec.decode(request)
        mti = f"{int(msg.mti) + 10:04d}"
        keep = {n: v for n, v in msg.fields.items() if n in (3, 4, 11, 41, 42, 49, 60)}
        reply = Message(mti, {**keep, 37: "000000000009", 39: rc})
        conn.sendall(length_prefixed(codec.encode(reply)))

    with serving(handle) as url:
        yield url


@contextmanager
def silent_host() -> Iterator[str]:
    """A port that accepts connections (the kernel does, from the backlog) and never answers."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()


def closed_port() -> str:
    """A port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"

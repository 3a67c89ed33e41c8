"""Blocking TCP channel for clients (the terminal, tests, load generators).

One request, one response: `exchange` sends a length-prefixed payload and reads one frame back.
Errors are `TransportError` with a sentence a person can act on (refused, unreachable, timed
out, closed), never a bare socket traceback.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from protocol.errors import FramingError
from protocol.framing import DEFAULT_MAX_FRAME, FrameReader, length_prefixed
from protocol.transport.errors import TransportError

__all__ = ["Endpoint", "TcpChannel", "TransportError", "parse_endpoint"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """`tcp://HOST:PORT` or `HOST:PORT`."""
    url = urlsplit(text if "://" in text else f"tcp://{text}")
    if url.scheme != "tcp" or not url.hostname or url.port is None:
        raise ValueError(f"expected tcp://HOST:PORT, got {text!r}")
    return Endpoint(url.hostname, url.port)


class TcpChannel:
    """A connection to a host; opened lazily so a CLI can build it before it knows it needs it."""

    def __init__(self, endpoint: Endpoint, connect_timeout: float = 5.0,
                 response_timeout: float = 30.0, max_frame: int = DEFAULT_MAX_FRAME):
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.max_frame = max_frame
        self._sock: socket.socket | None = None
        self._reader = FrameReader(max_frame)
        self._ready: list[bytes] = []

    def connect(self) -> None:
        if self._sock is not None:
            return
        try:
            sock = socket.create_connection(
                (self.endpoint.host, self.endpoint.port), timeout=self.connect_timeout
            )
        except TimeoutError:
            raise TransportError(
                f"host {self.endpoint} did not accept a connection within "
                f"{self.connect_timeout:g} s"
            ) from None
        except ConnectionRefusedError:
            raise TransportError(
                f"host {self.endpoint} refused the connection: is pos-host running there?"
            ) from None
        except OSError as exc:
            raise TransportError(f"host {self.endpoint} is unreachable: {exc.strerror or exc}") \
                from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._reader = FrameReader(self.max_frame)
        self._ready = []

    def send(self, payload: bytes) -> None:
        self.connect()
        assert self._sock is not None
        try:
            self._sock.sendall(length_prefixed(payload))
        except OSError as exc:
            self.close()
            raise TransportError(f"sending to {self.endpoint} failed: {exc.strerror or exc}") \
                from None

    def receive(self, timeout: float | None = None) -> bytes:
        self.connect()
        sock = self._sock
        assert sock is not None
        wait = self.response_timeout if timeout is None else timeout
        sock.settimeout(wait)
        while not self._ready:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                self.close()
                raise TransportError(f"no response from {self.endpoint} within {wait:g} s") \
                    from None
            except OSError as exc:
                self.close()
                raise TransportError(f"connection to {self.endpoint} failed: "
                                     f"{exc.strerror or exc}") from None
            if not chunk:
                self.close()
                raise TransportError(f"host {self.endpoint} closed the connection")
            try:
                self._ready.extend(self._reader.feed(chunk))
            except FramingError as exc:
                self.close()
                if not exc.frames:
                    raise TransportError(f"host {self.endpoint} sent a bad frame: {exc}") \
                        from None
                self._ready.extend(exc.frames)  # what came whole before it is still an answer
        return self._ready.pop(0)

    def exchange(self, payload: bytes, timeout: float | None = None) -> bytes:
        self.send(payload)
        return self.receive(timeout)

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self) -> TcpChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

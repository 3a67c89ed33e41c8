"""Blocking TCP channel for clients (the terminal, tests, load generators).

One request, one response: `exchange` sends a payload behind the dialect's length header (2
bytes binary by default; a spec file's `length` otherwise) and reads one frame back; with a
`PcapTap` (`--pcap FILE`) every byte each way is also written to a capture.
Errors are `TransportError` with a sentence a person can act on (refused, unreachable, timed
out, closed), never a bare socket traceback.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from protocol.errors import FramingError
from protocol.framing import DEFAULT_MAX_FRAME, LENGTH_HEADERS, FrameReader, LengthHeader
from protocol.pcap import PcapTap, TapConnection
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
                 response_timeout: float = 30.0, max_frame: int = DEFAULT_MAX_FRAME,
                 length: LengthHeader = LENGTH_HEADERS["binary2"], tap: PcapTap | None = None):
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.max_frame = max_frame
        self.length = length
        self._tap = tap
        self._capture: TapConnection | None = None
        self._sock: socket.socket | None = None
        self._reader = FrameReader(max_frame, length)
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
        self._reader = FrameReader(self.max_frame, self.length)
        self._ready = []
        if self._tap is not None:
            self._capture = self._tap.connection(sock.getsockname(), sock.getpeername(),
                                                 local_is_client=True)

    def send(self, payload: bytes) -> None:
        self.connect()
        assert self._sock is not None
        frame = self.length.prefix(payload)
        try:
            self._sock.sendall(frame)
        except OSError as exc:
            self.close()
            raise TransportError(f"sending to {self.endpoint} failed: {exc.strerror or exc}") \
                from None
        if self._capture is not None:
            self._capture.wrote(frame)

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
            if self._capture is not None:
                self._capture.read(chunk)
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
        if self._capture is not None:
            self._capture.closed()
            self._capture = None
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self) -> TcpChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

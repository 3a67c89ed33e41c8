"""A relay between a serial line and a TCP host, each side with its own framing.

Serial side: link frames (STX LEN message ETX LRC, ACK/NAK, retries) on a device, URL or `pty`.
TCP side: the bridge dials the host and sends each payload as a 2-byte big-endian length and the
payload; what the host sends back goes to the serial line as a link frame. The payload itself
(TPDU and header included) is never touched, so either end may be any dialect.

The bridge dials the host when the first message needs it and again after the host hangs up, so
a host that closes after every transaction works as well as one that keeps the connection.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

from protocol.errors import FramingError
from protocol.framing import DEFAULT_MAX_FRAME, FrameReader, length_prefixed
from protocol.link import LinkOptions
from protocol.trace import TraceOptions
from protocol.transport.serial import (
    PortSpec,
    SerialLine,
    SerialLinkError,
    log_error,
    pump,
    resolve_spec,
)

log = logging.getLogger(__name__)


class _Connection(threading.Thread):
    """One TCP connection to the host and the thread that reads it."""

    def __init__(self, sock: socket.socket, deliver: Callable[[bytes], None], max_length: int):
        super().__init__(name=f"bridge tcp {sock.getpeername()}", daemon=True)
        self.sock = sock
        self._deliver = deliver
        self._reader = FrameReader(max_length)
        self.closed = threading.Event()

    def run(self) -> None:
        try:
            while data := self.sock.recv(65536):
                for payload in self._reader.feed(data):
                    self._deliver(payload)
            if self._reader.pending:
                log.warning("bridge: the host hung up in the middle of a frame")
        except FramingError as error:
            for payload in error.frames:  # whole before the bad length: still delivered
                self._deliver(payload)
            log.error("bridge: the host sent a bad frame (%s); hanging up", error)
        except OSError as error:
            if not self.closed.is_set():
                log.error("bridge: connection to the host failed: %s", error)
        self.closed.set()

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(OSError):  # already reset by the host: nothing to shut down
            self.sock.shutdown(socket.SHUT_RDWR)
        self.join()
        self.sock.close()


class _Upstream:
    """The TCP host as seen from the serial thread: `send` dials when there is no connection."""

    def __init__(self, address: tuple[str, int], deliver: Callable[[bytes], None],
                 connect_timeout: float, max_length: int):
        self._address = address
        self._deliver = deliver
        self._connect_timeout = connect_timeout
        self._max_length = max_length
        self._connection: _Connection | None = None

    def send(self, payload: bytes) -> None:
        host, port = self._address
        try:
            connection = self._connect()
            connection.sock.sendall(length_prefixed(payload))
        except OSError as error:
            log.error("bridge: message dropped, TCP host %s:%d unreachable: %s", host, port, error)
            self.close()

    def _connect(self) -> _Connection:
        if self._connection is not None and self._connection.closed.is_set():
            self.close()
        if self._connection is None:
            sock = socket.create_connection(self._address, timeout=self._connect_timeout)
            sock.settimeout(None)
            self._connection = _Connection(sock, self._deliver, self._max_length)
            self._connection.start()
            log.info("bridge: connected to %s:%d", *self._address)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def run_bridge(serial_spec: PortSpec | str, tcp_host: str, tcp_port: int, *,
               link_options: LinkOptions | None = None, trace: TraceOptions | None = None,
               stop: threading.Event, on_ready: Callable[[str], None] | None = None,
               on_error: Callable[[SerialLinkError], None] = log_error,
               connect_timeout: float = 5.0, max_length: int = DEFAULT_MAX_FRAME,
               clock: Callable[[], float] = time.monotonic) -> SerialLinkError | None:
    """Relays until `stop` is set or the serial port fails (returned and given to `on_error`).

    `on_ready` gets the serial port's name (the /dev/pts/N of `pty`) once it is open. A TCP
    host that cannot be reached costs the message in hand, not the bridge: the serial device
    retries at its own level and the next message dials again."""
    spec, options = resolve_spec(serial_spec, link_options)
    try:
        line = SerialLine(spec, options, trace, clock)
    except SerialLinkError as error:
        on_error(error)
        return error
    upstream = _Upstream((tcp_host, tcp_port), line.send_from_thread, connect_timeout,
                         max_length)
    try:
        return pump(line, stop, on_ready, on_error, upstream.send)
    finally:
        upstream.close()

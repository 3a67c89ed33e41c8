"""How the terminal reaches its host: TCP or a serial link, behind one `exchange` call.

Both carry the same payload (TPDU and header included in TPDU dialects), so the session and the
framing are the same whichever wire is used; only this module knows there is a choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from protocol.transport.tcp import TcpChannel, TransportError, parse_endpoint


class Channel(Protocol):
    def exchange(self, payload: bytes, timeout: float) -> bytes: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Wire:
    """Where the host is and how long to wait for it."""

    host: str | None = None
    serial: str | None = None
    connect_timeout: float = 5.0
    response_timeout: float = 15.0


def open_serial(spec: str) -> Channel:
    """A serial channel; its link errors are TransportErrors already, only a bad spec is not."""
    # Imported here: pyserial and the link threads cost every command a start-up delay, and only
    # --serial needs them.
    from protocol.transport.serial import PortSpecError, SerialChannel

    try:
        return SerialChannel(spec)
    except PortSpecError as exc:
        raise TransportError(str(exc)) from None  # it names the spec already


def open_channel(wire: Wire) -> Channel:
    if wire.serial:
        return open_serial(wire.serial)
    if not wire.host:
        raise TransportError("no host given: use --host tcp://HOST:PORT (or init --host)")
    try:
        endpoint = parse_endpoint(wire.host)
    except ValueError as exc:
        raise TransportError(str(exc)) from None
    return TcpChannel(endpoint, wire.connect_timeout, wire.response_timeout)

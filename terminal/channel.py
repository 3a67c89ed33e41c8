"""How the terminal reaches its host: TCP or a serial link, behind one `exchange` call.

Both carry the same payload (TPDU and header included in TPDU dialects), so the session and the
framing are the same whichever wire is used; only this module knows there is a choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from protocol.framing import Framing
from protocol.spec import Dialect
from protocol.transport.tcp import TcpChannel, TransportError, parse_endpoint


class Channel(Protocol):
    def exchange(self, payload: bytes, timeout: float | None = None) -> bytes: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Wire:
    """Where the host is and how long to wait for it."""

    host: str | None = None
    serial: str | None = None
    connect_timeout: float = 5.0
    response_timeout: float = 15.0

    def describe(self) -> str:
        return f"serial {self.serial}" if self.serial else str(self.host)


def open_channel(wire: Wire) -> Channel:
    if wire.serial:
        return _serial_channel(wire)
    if not wire.host:
        raise TransportError("no host given: use --host tcp://HOST:PORT (or init --host)")
    try:
        endpoint = parse_endpoint(wire.host)
    except ValueError as exc:
        raise TransportError(str(exc)) from None
    return TcpChannel(endpoint, wire.connect_timeout, wire.response_timeout)


def _serial_channel(wire: Wire) -> Channel:
    try:
        from protocol.transport.serial import SerialChannel
    except ImportError:
        raise TransportError("serial transport is not available in this build") from None
    return SerialChannel(wire.serial, None)  # type: ignore[no-any-return]


def exchange(wire: Wire, framing: Framing, message: bytes) -> tuple[bytes, bytes]:
    """Send one message and return (request payload, response message bytes)."""
    payload = framing.payload(message)
    channel = open_channel(wire)
    try:
        reply = channel.exchange(payload, wire.response_timeout)
    finally:
        channel.close()
    return payload, framing.unframe(reply).message


def framing_for(dialect: Dialect) -> Framing:
    return Framing(dialect)

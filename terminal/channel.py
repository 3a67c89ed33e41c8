"""How the terminal reaches its host: TCP or a serial link, behind one `exchange` call.

Both carry the same payload (TPDU and header included in TPDU dialects), so the session and the
framing are the same whichever wire is used; only this module knows there is a choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from protocol.transport.serial import SerialChannel, SerialLinkError
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


class SerialAdapter:
    """A serial channel whose failures read like TCP's, so callers handle one error type."""

    def __init__(self, spec: str) -> None:
        try:
            self._channel = SerialChannel(spec)
        except (SerialLinkError, ValueError) as exc:
            raise TransportError(f"serial {spec}: {exc}") from None

    def exchange(self, payload: bytes, timeout: float) -> bytes:
        try:
            return self._channel.exchange(payload, timeout)
        except SerialLinkError as exc:
            raise TransportError(str(exc)) from None

    def close(self) -> None:
        self._channel.close()


def open_channel(wire: Wire) -> Channel:
    if wire.serial:
        return SerialAdapter(wire.serial)
    if not wire.host:
        raise TransportError("no host given: use --host tcp://HOST:PORT (or init --host)")
    try:
        endpoint = parse_endpoint(wire.host)
    except ValueError as exc:
        raise TransportError(str(exc)) from None
    return TcpChannel(endpoint, wire.connect_timeout, wire.response_timeout)

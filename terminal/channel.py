"""How the terminal reaches its host: TCP or a serial link, behind one `exchange` call.

Both carry the same payload (TPDU and header included in TPDU dialects), so the session and the
framing are the same whichever wire is used; only this module knows there is a choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from protocol.framing import LENGTH_HEADERS, LengthHeader
from protocol.pcap import LINKTYPE_USER0, LinkCapture, PcapTap, open_capture
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


Tap = PcapTap | LinkCapture
"""Where `--pcap FILE` writes: TCP conversations as packets, or serial link frames (USER0)."""


def open_tap(path: str, wire: Wire) -> Tap:
    """The capture for one command (every exchange it makes goes into the one file), of the
    link type of the wire it uses; mode 0600 (it holds the line's bytes)."""
    if wire.serial:
        return LinkCapture(open_capture(path, LINKTYPE_USER0))
    return PcapTap(path)


def open_serial(spec: str, capture: LinkCapture | None = None) -> Channel:
    """A serial channel; its link errors are TransportErrors already, only a bad spec is not."""
    # Imported here: pyserial and the link threads cost every command a start-up delay, and only
    # --serial needs them.
    from protocol.transport.serial import PortSpecError, SerialChannel

    try:
        return SerialChannel(spec, capture=capture)
    except PortSpecError as exc:
        raise TransportError(str(exc)) from None  # it names the spec already


def open_channel(wire: Wire, length: LengthHeader = LENGTH_HEADERS["binary2"],
                 tap: Tap | None = None) -> Channel:
    """`length`: the dialect's length header (TCP only: a serial link delimits its frames)."""
    if wire.serial:
        return open_serial(wire.serial, tap if isinstance(tap, LinkCapture) else None)
    if not wire.host:
        raise TransportError("no host given: use --host tcp://HOST:PORT (or init --host)")
    if not length.size:
        raise TransportError("this dialect has no length header (length = \"none\"): "
                             "its frames need a serial link (--serial), not TCP")
    try:
        endpoint = parse_endpoint(wire.host)
    except ValueError as exc:
        raise TransportError(str(exc)) from None
    return TcpChannel(endpoint, wire.connect_timeout, wire.response_timeout, length=length,
                      tap=tap if isinstance(tap, PcapTap) else None)

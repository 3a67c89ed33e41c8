"""Captures a tester can open in Wireshark: what went over TCP, or over a serial link, as pcap.

A TCP conversation is written as IPv4/TCP packets (link type RAW), synthesized from the bytes
each side sent, with a handshake, consistent sequence numbers and a close, so Wireshark
reassembles the stream and the project's dissector (protocol/wireshark/posemu.lua) decodes the
frames in it. Serial link frames go on the first user link type, each record one direction
byte (0 terminal to host, 1 host to terminal) then the link bytes as they travelled (STX, LEN,
payload, ETX, LRC, or a lone ACK/NAK). What is written is the wire itself, keys and PANs
included, exactly as a network tap would see it: a capture file is as sensitive as the line,
which is why it is written with mode 0600 and only when asked for.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable
from typing import BinaryIO

LINKTYPE_RAW = 101
"""Raw IPv4/IPv6, no link-layer header (pcap LINKTYPE_RAW)."""
LINKTYPE_USER0 = 147
"""The first of the link types pcap reserves for private use: our serial link records."""
TO_HOST, FROM_HOST = 0, 1
MAX_SEGMENT = 1460
_FIN, _SYN, _PSH, _ACK = 0x01, 0x02, 0x08, 0x10


class PcapWriter:
    """pcap (not pcapng) records to a binary stream; thread-safe, so one file can take every
    connection a server has. `clock` returns seconds since the epoch (injected for tests)."""

    def __init__(self, stream: BinaryIO, linktype: int, clock: Callable[[], float] = time.time):
        self._stream = stream
        self._clock = clock
        self._lock = threading.Lock()
        self.linktype = linktype
        stream.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype))
        stream.flush()

    def record(self, data: bytes) -> None:
        now = self._clock()
        seconds = int(now)
        header = struct.pack("<IIII", seconds, int((now - seconds) * 1_000_000), len(data), len(data))
        with self._lock:
            self._stream.write(header + data)
            self._stream.flush()

    def close(self) -> None:
        with self._lock:
            self._stream.close()


def open_capture(path: str | os.PathLike[str], linktype: int = LINKTYPE_RAW,
                 clock: Callable[[], float] = time.time) -> PcapWriter:
    """A new capture file of mode 0600 (it holds the line's bytes, PANs and keys included)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return PcapWriter(os.fdopen(fd, "wb"), linktype, clock)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _address(host: str) -> bytes:
    parts = [int(p) for p in host.split(".")]
    if len(parts) != 4 or not all(0 <= p <= 255 for p in parts):
        raise ValueError(f"an IPv4 address is needed for a capture, not {host!r}")
    return bytes(parts)


class TcpCapture:
    """One TCP connection as packets: `opened`, then `sent(data, by_client)` for each write
    that went over it, then `closed`. Addresses are what the socket reported."""

    def __init__(self, writer: PcapWriter, client: tuple[str, int], server: tuple[str, int]):
        self._writer = writer
        self._ends = ((_address(client[0]), client[1]), (_address(server[0]), server[1]))
        self._seq = [1000, 5000]  # next sequence number: client's, server's
        self._ident = 0

    def _packet(self, from_client: bool, flags: int, payload: bytes = b"") -> None:
        (src, sport), (dst, dport) = self._ends if from_client else self._ends[::-1]
        me, peer = (0, 1) if from_client else (1, 0)
        seq, ack = self._seq[me], self._seq[peer]
        tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack if flags != _SYN else 0,
                          5 << 4, flags, 65535, 0, 0)
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp) + len(payload))
        tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp + payload)) + tcp[18:]
        self._ident = (self._ident + 1) & 0xFFFF
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), self._ident,
                         0x4000, 64, 6, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
        self._writer.record(ip + tcp + payload)
        self._seq[me] = (seq + len(payload) + (1 if flags & (_SYN | _FIN) else 0)) & 0xFFFFFFFF

    def opened(self) -> None:
        self._packet(True, _SYN)
        self._packet(False, _SYN | _ACK)
        self._packet(True, _ACK)

    def sent(self, data: bytes, by_client: bool) -> None:
        for at in range(0, len(data), MAX_SEGMENT):
            self._packet(by_client, _PSH | _ACK, data[at:at + MAX_SEGMENT])

    def closed(self, by_client: bool = True) -> None:
        self._packet(by_client, _FIN | _ACK)
        self._packet(not by_client, _FIN | _ACK)
        self._packet(by_client, _ACK)


class PcapTap:
    """The transport hook behind `--pcap FILE`: one capture file for a whole process, a
    `TcpCapture` per connection. A driver calls `connection` when a connection is made (with
    the socket's own and its peer's address, as `getsockname`/`getpeername` or asyncio's
    `sockname`/`peername` give them) and then `sent` on each write and read."""

    def __init__(self, path: str | os.PathLike[str], clock: Callable[[], float] = time.time):
        self.writer = open_capture(path, LINKTYPE_RAW, clock)

    def connection(self, local: tuple[str, int], peer: tuple[str, int],
                   local_is_client: bool) -> TapConnection:
        client, server = (local, peer) if local_is_client else (peer, local)
        capture = TcpCapture(self.writer, client[:2], server[:2])
        capture.opened()
        return TapConnection(capture, local_is_client)

    def close(self) -> None:
        self.writer.close()


class TapConnection:
    """One connection's hook, in the driver's own terms: what it wrote and what it read."""

    def __init__(self, capture: TcpCapture, local_is_client: bool):
        self._capture = capture
        self._local_is_client = local_is_client

    def wrote(self, data: bytes) -> None:
        self._capture.sent(data, by_client=self._local_is_client)

    def read(self, data: bytes) -> None:
        self._capture.sent(data, by_client=not self._local_is_client)

    def closed(self) -> None:
        self._capture.closed(by_client=self._local_is_client)


class LinkCapture:
    """Serial link traffic, each chunk as it crossed the line, with its direction."""

    def __init__(self, writer: PcapWriter):
        if writer.linktype != LINKTYPE_USER0:
            raise ValueError("serial link records go in a capture of link type USER0 (147)")
        self._writer = writer

    def sent(self, data: bytes, to_host: bool) -> None:
        self._writer.record(bytes([TO_HOST if to_host else FROM_HOST]) + data)

    def close(self) -> None:
        self._writer.close()

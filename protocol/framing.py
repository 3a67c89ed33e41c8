"""TCP framing: a 2-byte big-endian length, then (in TPDU dialects) TPDU and header, then the message.

The fixed layouts are `construct` structs, compiled once. `FrameReader` is the incremental side:
bytes in any chunking go in, whole frames come out, and a declared length beyond the limit is
refused before a single byte of it is buffered, so a peer cannot make the host hold memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from construct import Int8ub, Int16ub, StreamError, Struct

from protocol.errors import FrameDecodeError, FrameEncodeError
from protocol.spec import Dialect

LENGTH = Int16ub.compile()
TPDU_STRUCT = Struct("id" / Int8ub, "destination" / Int16ub, "source" / Int16ub).compile()
TPDU_SIZE = 5
TPDU_ID = 0x60
MAX_FRAME = 0xFFFF
DEFAULT_MAX_FRAME = 8192


@dataclass(frozen=True, slots=True)
class Tpdu:
    destination: int = 0
    source: int = 0
    id: int = TPDU_ID

    def reply(self) -> Tpdu:
        """A response goes back the way the request came: destination and source swap."""
        return Tpdu(destination=self.source, source=self.destination, id=self.id)

    def build(self) -> bytes:
        return TPDU_STRUCT.build({"id": self.id, "destination": self.destination,
                                  "source": self.source})


class Unframed(NamedTuple):
    """A payload split into its parts (a named tuple: a host makes one per message, and a
    frozen dataclass costs several times as much to build)."""

    tpdu: Tpdu | None
    header: bytes
    message: bytes


class LengthHeader(NamedTuple):
    """What precedes a frame on TCP (spec `length`): its size, how a length becomes bytes and
    back (None: not a length in this encoding), and whether it counts its own bytes too."""

    name: str
    size: int
    limit: int
    encode: Callable[[int], bytes]
    decode: Callable[[bytes], int | None]
    includes_self: bool = False

    def prefix(self, payload: bytes) -> bytes:
        """`payload` with this header in front: a frame."""
        n = len(payload) + (self.size if self.includes_self else 0)
        if n > self.limit:
            raise FrameEncodeError(f"a frame holds at most {self.limit} bytes, not {n}", field="length")
        return self.encode(n) + payload


def _digits(raw: bytes) -> int | None:
    return int(raw) if raw.isascii() and raw.isdigit() else None


def _bcd(raw: bytes) -> int | None:
    text = raw.hex()
    return int(text) if text.isdigit() else None


LENGTH_HEADERS: dict[str, LengthHeader] = {
    "binary2": LengthHeader("binary2", 2, MAX_FRAME, lambda n: n.to_bytes(2, "big"),
                            lambda raw: int.from_bytes(raw, "big")),
    "binary4": LengthHeader("binary4", 4, 0xFFFFFFFF, lambda n: n.to_bytes(4, "big"),
                            lambda raw: int.from_bytes(raw, "big")),
    "ascii4": LengthHeader("ascii4", 4, 9999, lambda n: b"%04d" % n, _digits),
    "bcd2": LengthHeader("bcd2", 2, 9999, lambda n: bytes.fromhex(f"{n:04d}"), _bcd),
    "none": LengthHeader("none", 0, MAX_FRAME, lambda n: b"", lambda raw: None),
}
"""`none`: the link delimits frames (the serial link's STX/ETX); a TCP reader cannot."""


def length_header(dialect: Dialect) -> LengthHeader:
    return LENGTH_HEADERS[dialect.length_header]._replace(includes_self=dialect.length_includes_self)


class Framing:
    """What surrounds a message on TCP for one dialect; the serial link carries the same payload."""

    def __init__(self, dialect: Dialect):
        self.dialect = dialect
        self.has_tpdu = dialect.tpdu
        self.header = dialect.header
        self.length = length_header(dialect)
        self.prefix_size = (TPDU_SIZE if dialect.tpdu else 0) + len(dialect.header)

    def payload(self, message: bytes, tpdu: Tpdu | None = None, header: bytes | None = None) -> bytes:
        """TPDU + header + message: what a frame carries after its length, and a serial frame holds."""
        if not self.prefix_size:
            return message
        head = self.header if header is None else header
        if len(head) != len(self.header):
            raise FrameEncodeError(f"header must be {len(self.header)} bytes", field="header")
        if not self.has_tpdu:
            return head + message
        return (tpdu or Tpdu()).build() + head + message

    def frame(self, message: bytes, tpdu: Tpdu | None = None, header: bytes | None = None) -> bytes:
        return self.length.prefix(self.payload(message, tpdu, header))

    def reader(self, max_length: int = DEFAULT_MAX_FRAME) -> FrameReader:
        """A reader of this dialect's frames (its length header)."""
        return FrameReader(max_length, self.length)

    def unframe(self, payload: bytes) -> Unframed:
        """Split a payload (what follows the length prefix) into TPDU, header and message."""
        if not self.prefix_size:
            return Unframed(None, b"", payload)
        if not self.has_tpdu:
            if len(payload) < self.prefix_size:
                raise FrameDecodeError(f"truncated: {len(payload)} bytes cannot hold the header",
                                       field="header", offset=0)
            return Unframed(None, payload[:self.prefix_size], payload[self.prefix_size:])
        if len(payload) < self.prefix_size:
            raise FrameDecodeError(
                f"truncated: {len(payload)} bytes cannot hold the TPDU and header",
                field="TPDU", offset=0,
            )
        try:
            raw = TPDU_STRUCT.parse(payload[:TPDU_SIZE])
        except StreamError:  # pragma: no cover - length checked above
            raise FrameDecodeError("truncated TPDU", field="TPDU", offset=0) from None
        if raw.id != TPDU_ID:
            raise FrameDecodeError(self._no_tpdu(payload, raw.id), field="TPDU", offset=0)
        tpdu = Tpdu(destination=raw.destination, source=raw.source, id=raw.id)
        header = payload[TPDU_SIZE:self.prefix_size]
        return Unframed(tpdu, header, payload[self.prefix_size:])


    def _no_tpdu(self, payload: bytes, got: int) -> str:
        """Say what the bytes look like instead of a TPDU: a bare message and a payload that
        still has its length prefix are the usual mistakes, and each has its own fix."""
        bare = payload[:2].hex() if self.dialect.mti_encoding == "bcd" else payload[:4].decode("latin-1")
        if len(payload) >= 2 and int.from_bytes(payload[:2], "big") == len(payload) - 2:
            return (f"no TPDU: the first 2 bytes are a length ({len(payload) - 2}) of what follows: "
                    "a whole frame where the payload after its length was expected")
        if len(bare) == 4 and bare.isascii() and bare.isdigit() and bare[0] in "012" and bare[1] != "0":
            return (f"no TPDU (id 0x60 expected, got 0x{got:02X}): the bytes start with what reads "
                    f"as MTI {bare}: a bare message without TPDU and header?")
        return f"TPDU id must be 0x60, got 0x{got:02X}"


def length_prefixed(payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise FrameEncodeError(f"a frame holds at most {MAX_FRAME} bytes, not {len(payload)}",
                               field="length")
    # LENGTH's bytes (2, big-endian) without construct's build call: one per answer sent.
    return len(payload).to_bytes(2, "big") + payload


def length_hint(head: bytes, header: LengthHeader) -> str:
    """What refused length bytes look like instead, so the error names the likely mistake: a
    peer with another length header, or one that sends no length at all."""
    if header.name != "ascii4" and len(head) == 4 and head.isdigit():
        return (": the length header reads as a 4-digit ASCII length (spec length = \"ascii4\") "
                "or an ASCII MTI without a length")
    if head[:1] == bytes([TPDU_ID]):
        return ": 0x60 starts a TPDU: a frame without its length header?"
    return ""


class FrameReader:
    """Incremental reader of length-prefixed frames; returns payloads (without the length)."""

    def __init__(self, max_length: int = DEFAULT_MAX_FRAME, header: LengthHeader | None = None):
        if not 1 <= max_length <= MAX_FRAME:
            raise ValueError(f"max_length must be 1..{MAX_FRAME}")
        header = header or LENGTH_HEADERS["binary2"]
        if not header.size:
            raise ValueError("a dialect without a length header needs a link that delimits frames")
        self.header = header
        self._fast = header.name == "binary2" and not header.includes_self
        self.max_length = max_length
        self._buffer = bytearray()
        self._consumed = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return every frame now complete. Raises FramingError on a bad length
        (its `frames`: those complete before it), after which the stream cannot be trusted and
        the connection should close."""
        buf = self._buffer
        if self._fast and not buf and len(data) >= 2:
            # The usual chunk: exactly one whole frame, nothing held. Returned as it is, without
            # the buffer's copy in and out; anything else takes the general path below.
            length = (data[0] << 8) | data[1]
            if len(data) == length + 2 and 0 < length <= self.max_length:
                self._consumed += len(data)
                return [bytes(data[2:])]
        buf += data
        frames: list[bytes] = []
        pos = 0
        size = self.header.size
        own = size if self.header.includes_self else 0
        while len(buf) - pos >= size:
            if self._fast:
                length: int | None = (buf[pos] << 8) | buf[pos + 1]
            else:
                length = self.header.decode(bytes(buf[pos:pos + size]))
                if length is not None:
                    length -= own
            if length is None or length <= 0 or length > self.max_length:
                at = self._consumed + pos
                self._buffer = bytearray()
                reason = (f"the {size}-byte length header is not {self.header.name}" if length is None
                          else "zero-length frame" if length <= 0
                          else f"declared length {length} exceeds the limit {self.max_length}")
                reason += length_hint(bytes(buf[pos:pos + 4]), self.header)
                raise FrameDecodeError(reason, field="length", offset=at, frames=frames)
            end = pos + size + length
            if end > len(buf):
                break
            frames.append(bytes(buf[pos + size:end]))
            pos = end
        if pos:
            del buf[:pos]
            self._consumed += pos
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held: a peer that closes with some is a cut frame."""
        return len(self._buffer)

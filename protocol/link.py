"""The serial link of PROTOCOL.md §5 as a sans-IO state machine (its trace is protocol.trace).

`Link` never reads a clock, sleeps or touches a port: bytes and the current time go in
(`send`, `receive_data`, `handle_timers`), events and the bytes to write come out (`events`,
`data_to_send`), and `next_deadline` says when the driver must call back. Every timing rule is
therefore testable with a hand-held clock, and the same code runs over pyserial, a pty or a test.

Nothing a peer sends can raise: a bad frame, noise or a stray control byte becomes an event (and a
NAK on the wire). Only a caller's mistake raises (`LinkOptionError`, `LinkUsageError`).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import reduce
from operator import xor

from protocol.errors import ProtocolError

STX, ETX, EOT, ENQ, ACK, DLE, NAK = 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x15
CONTROL_NAMES = {STX: "STX", ETX: "ETX", EOT: "EOT", ENQ: "ENQ", ACK: "ACK", DLE: "DLE",
                 NAK: "NAK"}
STUFFED = frozenset({STX, ETX, DLE})
"""Bytes a DLE-stuffed frame escapes inside the message: the ones that would end or restart it."""


# --- options -------------------------------------------------------------------------------------

class LinkOptionError(ValueError):
    """Link options that cannot describe a working link."""


class LinkUsageError(ProtocolError):
    """A message the link cannot carry (empty, or too long for the length encoding)."""


def _bcd_length(n: int) -> bytes:
    return bytes.fromhex(f"{n:04d}")


def _bcd_value(raw: bytes) -> int | None:
    text = raw.hex()
    return int(text) if text.isdigit() else None


@dataclass(frozen=True, slots=True)
class LengthEncoding:
    size: int
    maximum: int
    encode: Callable[[int], bytes]
    decode: Callable[[bytes], int | None]
    """None when the bytes are not a length in this encoding (e.g. a nibble above 9 in BCD)."""


LENGTH_ENCODINGS: dict[str, LengthEncoding] = {
    "bcd": LengthEncoding(2, 9999, _bcd_length, _bcd_value),
    "binary": LengthEncoding(2, 0xFFFF, lambda n: n.to_bytes(2, "big"),
                             lambda raw: int.from_bytes(raw, "big")),
    "none": LengthEncoding(0, 0xFFFF, lambda n: b"", lambda raw: None),
}


@dataclass(frozen=True, slots=True)
class LrcRange:
    stx: bool
    length: bool
    etx: bool


LRC_RANGES: dict[str, LrcRange] = {
    "len-etx": LrcRange(stx=False, length=True, etx=True),
    "stx-etx": LrcRange(stx=True, length=True, etx=True),
    "msg-etx": LrcRange(stx=False, length=False, etx=True),
    "len-msg": LrcRange(stx=False, length=True, etx=False),
    "msg": LrcRange(stx=False, length=False, etx=False),
}
"""Which bytes the XOR covers besides the message (always covered). With length "none" there is
no LEN, so "len-etx" and "msg-etx" are the same; a stuffed message counts unstuffed."""


@dataclass(frozen=True, slots=True)
class LinkOptions:
    """Everything that differs between real devices' links (PROTOCOL.md §5)."""

    length: str = "bcd"
    lrc: str = "len-etx"
    ack_timeout: float = 2.0
    inter_byte_timeout: float = 0.5
    retries: int = 3
    ack_nak: bool = True
    max_length: int = 9999

    def __post_init__(self) -> None:
        if self.length not in LENGTH_ENCODINGS:
            raise LinkOptionError(f"length must be one of {', '.join(LENGTH_ENCODINGS)}")
        if self.lrc not in LRC_RANGES:
            raise LinkOptionError(f"lrc must be one of {', '.join(LRC_RANGES)}")
        if not 0 <= self.retries <= 99:
            raise LinkOptionError("retries must be 0..99")
        if not 0 < self.inter_byte_timeout < 3600 or not 0 < self.ack_timeout < 3600:
            raise LinkOptionError("timeouts must be positive seconds")
        if self.ack_nak and self.inter_byte_timeout >= self.ack_timeout:
            # A receiver still waiting out a cut frame would swallow the sender's retransmission.
            raise LinkOptionError("inter_byte_timeout must be shorter than ack_timeout")
        if not 1 <= self.max_length <= LENGTH_ENCODINGS[self.length].maximum:
            raise LinkOptionError(
                f"max_length must be 1..{LENGTH_ENCODINGS[self.length].maximum} "
                f"with length {self.length}")

    @property
    def stuffing(self) -> bool:
        """Without a length the end of a frame is found by ETX, so ETX in data must be escaped."""
        return self.length == "none"

    @property
    def duplicate_window(self) -> float:
        return self.ack_timeout * 4


# --- frames --------------------------------------------------------------------------------------

_STUFF_RE = re.compile(rb"[\x02\x03\x10]")


def _xor(data: bytes) -> int:
    return reduce(xor, data, 0)


def lrc(options: LinkOptions, head: bytes, payload: bytes) -> int:
    covered = LRC_RANGES[options.lrc]
    value = _xor(payload)
    if covered.stx:
        value ^= STX
    if covered.length:
        value ^= _xor(head)
    if covered.etx:
        value ^= ETX
    return value


def encode_frame(payload: bytes, options: LinkOptions) -> bytes:
    """STX | LEN | message (DLE-stuffed when there is no LEN) | ETX | LRC."""
    if not 1 <= len(payload) <= options.max_length:
        raise LinkUsageError(f"a link frame carries 1..{options.max_length} bytes, "
                             f"not {len(payload)}")
    head = LENGTH_ENCODINGS[options.length].encode(len(payload))
    body = _STUFF_RE.sub(lambda m: bytes([DLE]) + m.group(), payload) if options.stuffing \
        else payload
    return bytes([STX]) + head + body + bytes([ETX, lrc(options, head, payload)])


@dataclass(frozen=True, slots=True)
class Control:
    """An ACK or NAK byte seen between frames."""

    byte: int


@dataclass(frozen=True, slots=True)
class GoodFrame:
    payload: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class BadFrame:
    """Bytes that did not make a frame; only the count is kept, since they may hold a PAN."""

    reason: str
    size: int


Token = Control | GoodFrame | BadFrame

_IDLE, _LEN, _BODY, _ETX, _LRC, _STUFFED, _DISCARD = range(7)


class FrameParser:
    """One direction of the line cut into frames, ACK/NAK bytes and rejects.

    After a framing error it discards everything until the line has been quiet for the inter-byte
    timeout: the rest of a broken frame would otherwise be read as noise or, worse, an STX inside
    it would start a bogus frame. The reject is reported then, so a NAK never overlaps the
    sender still transmitting. Shared by `Link` and the trace, so both see the same frames.
    """

    def __init__(self, options: LinkOptions):
        self._options = options
        self._length = LENGTH_ENCODINGS[options.length]
        self._last_byte_at = 0.0
        self._steps = {_IDLE: self._on_idle, _LEN: self._on_len, _BODY: self._on_body,
                       _ETX: self._on_etx, _LRC: self._on_lrc, _STUFFED: self._on_stuffed,
                       _DISCARD: self._on_discard}
        self._reset()

    def _reset(self) -> None:
        self._state = _IDLE
        self._head = bytearray()
        self._message = bytearray()
        self._need = 0
        self._escaped = False
        self._size = 0
        self._reason = ""

    def deadline(self) -> float | None:
        if self._state == _IDLE:
            return None
        return self._last_byte_at + self._options.inter_byte_timeout

    def expire(self, now: float) -> list[Token]:
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return []
        if self._state == _DISCARD:
            reason = self._reason
        else:
            reason = f"inter-byte timeout: frame cut after {self._size} bytes"
        token = BadFrame(reason, self._size)
        self._reset()
        return [token]

    def feed(self, data: bytes, now: float) -> list[Token]:
        tokens = self.expire(now)
        if data:
            self._last_byte_at = now
        pos = 0
        while pos < len(data):
            pos = self._steps[self._state](data, pos, tokens)
        return tokens

    def _start_discard(self, reason: str) -> None:
        self._state = _DISCARD
        self._reason = reason

    def _on_idle(self, data: bytes, pos: int, tokens: list[Token]) -> int:
        byte = data[pos]
        self._size = 1
        if byte == STX:
            self._state = _LEN if self._length.size else _STUFFED
        elif byte in (ACK, NAK):
            tokens.append(Control(byte))
            self._size = 0
        else:
            name = CONTROL_NAMES.get(byte)
            self._start_discard("noise outside a frame" + (f", starting with {name}" if name
                                                            else ""))
        return pos + 1

    def _on_len(self, data: bytes, pos: int, tokens: list[Token]) -> int:
        take = min(self._length.size - len(self._head), len(data) - pos)
        self._head += data[pos:pos + take]
        self._size += take
        if len(self._head) == self._length.size:
            value = self._length.decode(bytes(self._head))
            shown = self._head.hex(" ").upper()
            if value is None:
                self._start_discard(f"bad length: LEN {shown} is not {self._options.length}")
            elif not 1 <= value <= self._options.max_length:
                self._start_discard(f"bad length: LEN {shown} is outside "
                                    f"1..{self._options.max_length}")
            else:
                self._need = value
                self._state = _BODY
        return pos + take

    def _on_body(self, data: bytes, pos: int, tokens: list[Token]) -> int:
        take = min(self._need, len(data) - pos)
        self._message += data[pos:pos + take]
        self._need -= take
        self._size += take
        if not self._need:
            self._state = _ETX
        return pos + take

    def _on_etx(self, data: bytes, pos: int, tokens: list[Token]) -> int:
        self._size += 1
        if data[pos] == ETX:
            self._state = _LRC
        else:
            self._start_discard(f"bad length: no ETX after the {len(self._message)} bytes LEN "
                                "announces")
        return pos + 1

    def _on_lrc(self, data: bytes, pos: int, tokens: list[Token]) -> int:
        payload = bytes(self._message)
        if data[pos] == lrc(self._options, bytes(self._head), payload):
            tokens.append(GoodFrame(payload))
        else:
            tokens.append(BadFrame("bad LRC", self._size + 1))
        self._reset()
        return pos + 1

    def _on_stuffed(self, data: bytes, pos: int, tokens: list[Token]) -> int:
        byte = data[pos]
        self._size += 1
        if self._escaped:
            self._escaped = False
            self._message.append(byte)
        elif byte == DLE:
            self._escaped = True
        elif byte == ETX:
            self._state = _LRC
        elif byte == STX:
            # Without a length an unescaped STX can only mean the sender gave up and restarted.
            tokens.append(BadFrame("frame cut by a new STX", self._size - 1))
            self._reset()
            self._state, self._size = _STUFFED, 1
        else:
            self._message.append(byte)
        if len(self._message) > self._options.max_length:
            self._start_discard(f"frame longer than max_length {self._options.max_length}")
        return pos + 1

    def _on_discard(self, data: bytes, pos: int, tokens: list[Token]) -> int:
        self._size += len(data) - pos
        return len(data)


# --- events --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, repr=False)
class _PayloadEvent:
    payload: bytes

    def __repr__(self) -> str:
        # Payloads hold PANs and keys: an event that reaches a log or an assertion shows its size.
        return f"{type(self).__name__}(<{len(self.payload)} bytes>)"


@dataclass(frozen=True, slots=True, repr=False)
class MessageReceived(_PayloadEvent):
    """A good frame that is not a retransmission: deliver it."""


@dataclass(frozen=True, slots=True, repr=False)
class MessageSent(_PayloadEvent):
    """The peer ACKed the frame (or, with ACK/NAK off, it was handed to the wire)."""


@dataclass(frozen=True, slots=True, repr=False)
class DuplicateIgnored(_PayloadEvent):
    """The last delivered frame again, within the duplicate window: our ACK was lost; ACKed again."""

    def __str__(self) -> str:
        return "the last frame came again (its ACK was lost): ACKed, not delivered twice"


@dataclass(frozen=True, slots=True)
class FrameRejected:
    """Bytes that made no good frame (NAKed when ACK/NAK is on)."""

    reason: str
    size: int

    def __str__(self) -> str:
        return f"rejected {self.size} bytes: {self.reason}"


@dataclass(frozen=True, slots=True)
class Retransmitted:
    attempt: int
    cause: str
    """"NAK" or "timeout"."""

    def __str__(self) -> str:
        return f"transmission {self.attempt} after {'a NAK' if self.cause == 'NAK' else 'no answer'}"


@dataclass(frozen=True, slots=True)
class LinkError:
    """The peer never ACKed a frame: the message is dropped and the next one (if any) goes."""

    payload: bytes = field(repr=False)
    transmissions: int = 0
    cause: str = ""

    def __str__(self) -> str:
        last = "a NAK" if self.cause == "NAK" else "no answer"
        return f"no ACK after {self.transmissions} transmissions (the last got {last})"


Event = MessageReceived | MessageSent | DuplicateIgnored | FrameRejected | Retransmitted | LinkError


# --- the link ------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Pending:
    payload: bytes
    frame: bytes
    transmissions: int = 0
    deadline: float = 0.0


class Link:
    """Both directions of one serial line: sending with ACK wait and retries, and receiving."""

    def __init__(self, options: LinkOptions | None = None):
        self.options = options or LinkOptions()
        self._parser = FrameParser(self.options)
        self._out = bytearray()
        self._events: list[Event] = []
        self._queue: deque[bytes] = deque()
        self._pending: _Pending | None = None
        self._last_delivered: tuple[bytes, float] | None = None
        self._frame_unsent = False

    # inputs
    def send(self, payload: bytes, now: float) -> None:
        """Queue a message; frames go one at a time, each after the previous one's ACK."""
        encode_frame(payload, self.options)  # refuse now what could never be framed
        self._queue.append(bytes(payload))
        self._start_next(now)

    def receive_data(self, data: bytes, now: float) -> None:
        self.handle_timers(now)
        for token in self._parser.feed(data, now):
            self._on_token(token, now)

    def transmitted(self, now: float) -> None:
        """The bytes last taken from `data_to_send` have left the port: a frame among them
        waits for its ACK from now on, since at a low baud rate sending it takes a while."""
        if self._pending is not None and self._frame_unsent:
            self._pending.deadline = now + self.options.ack_timeout
        self._frame_unsent = False

    def handle_timers(self, now: float) -> None:
        for token in self._parser.expire(now):
            self._on_token(token, now)
        pending = self._pending
        if pending is not None and now >= pending.deadline:
            self._retry(pending, "timeout", now)

    # outputs
    def next_deadline(self) -> float | None:
        deadlines = [d for d in (self._parser.deadline(),
                                 self._pending.deadline if self._pending else None)
                     if d is not None]
        return min(deadlines, default=None)

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    @property
    def sending(self) -> bool:
        """A frame awaits its ACK or is queued."""
        return self._pending is not None or bool(self._queue)

    # internals
    def _start_next(self, now: float) -> None:
        while self._pending is None and self._queue:
            payload = self._queue.popleft()
            frame = encode_frame(payload, self.options)
            self._out += frame
            self._frame_unsent = True
            if self.options.ack_nak:
                self._pending = _Pending(payload, frame, 1, now + self.options.ack_timeout)
            else:
                self._events.append(MessageSent(payload))

    def _retry(self, pending: _Pending, cause: str, now: float) -> None:
        if pending.transmissions > self.options.retries:
            self._events.append(LinkError(pending.payload, pending.transmissions, cause))
            self._pending = None
            self._start_next(now)
            return
        pending.transmissions += 1
        pending.deadline = now + self.options.ack_timeout
        self._out += pending.frame
        self._frame_unsent = True
        self._events.append(Retransmitted(pending.transmissions, cause))

    def _on_token(self, token: Token, now: float) -> None:
        if isinstance(token, GoodFrame):
            self._on_frame(token.payload, now)
        elif isinstance(token, BadFrame):
            if self.options.ack_nak:
                self._out.append(NAK)
            self._events.append(FrameRejected(token.reason, token.size))
        elif self._pending is not None:  # an ACK or NAK with nothing in flight is ignored
            if token.byte == ACK:
                self._events.append(MessageSent(self._pending.payload))
                self._pending = None
                self._start_next(now)
            else:
                self._retry(self._pending, "NAK", now)

    def _on_frame(self, payload: bytes, now: float) -> None:
        if not self.options.ack_nak:
            self._events.append(MessageReceived(payload))
            return
        self._out.append(ACK)
        last = self._last_delivered
        if last is not None and last[0] == payload and now - last[1] <= \
                self.options.duplicate_window:
            self._events.append(DuplicateIgnored(payload))
            return
        self._last_delivered = (payload, now)
        self._events.append(MessageReceived(payload))

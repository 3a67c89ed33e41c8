"""What a log, a trace or a report may show of a payload: the one masked renderer of a message.

A payload (TPDU and header in TPDU dialects, then the message) is unframed and decoded once, and
what comes out keeps only what PROTOCOL.md §6 lets anyone see: field values masked by
protocol.mask, and the payload's bytes with every sensitive value overwritten. It never holds
the clear message, so no way of printing it can leak what the masking hid. The link trace, the
terminal's `--trace` and the fuzzer's findings take their text from here; `describe` dissects
further (names, subfields, EMV tags) and the host log renders decoded messages, both with the
same protocol.mask values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.codec import codec_for
from protocol.emv import describe_tags
from protocol.errors import ProtocolError
from protocol.framing import Framing
from protocol.mask import MASK_BYTE, mask_in_place, masked_fields
from protocol.message import Message
from protocol.spec import Dialect


def mask_all(data: bytes) -> bytes:
    """When nobody can say where a PAN or a key would be: hide every byte."""
    return bytes([MASK_BYTE]) * len(data)


@dataclass(frozen=True, slots=True)
class Shown:
    """A payload as it may be shown. `error` (its text names a field and an offset, never a
    value) when it did not decode; then `fields` is empty and `masked` hides all after what
    could still be read (the TPDU and header, the MTI)."""

    size: int
    masked: bytes
    mti: str | None = None
    fields: dict[int, str] = field(default_factory=dict)
    error: str | None = None
    tags: dict[int, tuple[str, ...]] = field(default_factory=dict)

    def line(self) -> str:
        """One line: the MTI and the masked fields (the link trace, the fuzzer's findings)."""
        return f"{self.mti} " + " ".join(f"{n}={v}" for n, v in self.fields.items())

    def lines(self, arrow: str) -> list[str]:
        """A field a line, then the masked bytes in hex (the terminal's `--trace`)."""
        if self.error is not None:
            return [f"{arrow} {self.size} bytes that do not decode: {self.error}"]
        lines = [f"{arrow} {self.mti} ({self.size} bytes)"]
        for number, value in self.fields.items():
            lines.append(f"     {number:>3} {value}")
            lines.extend(self.tags.get(number, ()))
        return [*lines, f"     hex {self.masked.hex().upper()}"]


def show(payload: bytes, dialect: Dialect) -> Shown:
    try:
        unframed = Framing(dialect).unframe(payload)
    except ProtocolError as exc:
        return Shown(len(payload), mask_all(payload), error=str(exc))
    head = payload[:len(payload) - len(unframed.message)]
    message, masked, error = _decode_masked(unframed.message, dialect)
    if message is None:
        return Shown(len(payload), head + masked, error=error)
    tags = {number: _tag_lines(raw, number) for number, raw in message.fields.items()
            if dialect.fields[number].tlv and isinstance(raw, bytes)}
    return Shown(len(payload), head + masked, message.mti, masked_fields(message, dialect), tags=tags)


def _tag_lines(data: bytes, number: int) -> tuple[str, ...]:
    """A BER-TLV field (55) tag by tag, by name, the cardholder's tags masked (protocol.emv)."""
    try:
        tags = describe_tags(data, number)
    except ProtocolError as exc:
        return (f"         not BER-TLV: {exc}",)
    return tuple(f"         {tag['tag']:<5} {tag['name'][:36]:<36} {tag['value']}" for tag in tags)


def mask_message_bytes(message: bytes, dialect: Dialect) -> bytes:
    """A bare message's bytes (no TPDU or header) masked in place."""
    return _decode_masked(message, dialect)[1]


def _decode_masked(data: bytes, dialect: Dialect) -> tuple[Message | None, bytes, str | None]:
    """The message, its bytes masked in place, and no error; or, when it does not decode, its
    bytes masked whole after the MTI (nobody can say where its PAN or keys would be)."""
    codec = codec_for(dialect)
    try:
        message, spans = codec.decode_spans(data)
    except ProtocolError as exc:
        keep = codec.mti_length
        return None, data[:keep] + mask_all(data[keep:]), str(exc)
    return message, mask_in_place(data, spans, dialect), None

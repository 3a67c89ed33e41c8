"""What a log, a trace or an error may show of a message (PROTOCOL.md §6).

Masking is driven by each field's `mask` category in the dialect, so a spec file that marks a
field sensitive is masked everywhere without code. PANs keep their first six and last four
digits; track data, PIN blocks, keys and MACs keep only their size. Nothing here decodes: what
masks a payload's bytes by decoding it is protocol.shown.
"""

from __future__ import annotations

from protocol.message import FieldValue, Message
from protocol.spec import Dialect, prefix_width

MASK_BYTE = 0x2A  # '*': masked bytes in a hex trace read as 2A, never as the original


def mask_pan(pan: str) -> str:
    if len(pan) <= 10:
        return "*" * len(pan)
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


def _size(value: FieldValue) -> str:
    return f"{len(value)} bytes" if isinstance(value, bytes) else f"{len(value)} chars"


MASKERS = {
    "pan": lambda v: mask_pan(v) if isinstance(v, str) else f"<PAN, {_size(v)}>",
    "track": lambda v: f"<track data masked, {_size(v)}>",
    "icc": lambda v: f"<ICC data masked, {_size(v)}>",
    "pin": lambda v: f"<PIN block masked, {_size(v)}>",
    "key": lambda v: f"<key material masked, {_size(v)}>",
    "mac": lambda v: f"<MAC masked, {_size(v)}>",
}


def mask_value(dialect: Dialect, number: int, value: FieldValue) -> str:
    spec = dialect.fields.get(number)
    category = spec.mask if spec else "key"
    if category:
        return MASKERS[category](value)
    if isinstance(value, bytes):
        return value.hex().upper()
    return value


def masked_fields(message: Message, dialect: Dialect) -> dict[int, str]:
    return {n: mask_value(dialect, n, v) for n, v in sorted(message.fields.items())}


def sensitive_numbers(dialect: Dialect) -> frozenset[int]:
    return frozenset(n for n, f in dialect.fields.items() if f.mask)


def mask_in_place(data: bytes, spans: dict[int | str, tuple[int, int]], dialect: Dialect,
                  base: int = 0) -> bytes:
    """`data` with the bytes of every sensitive field overwritten: for hex traces of raw frames.

    `spans` come from `Codec.decode_spans`; `base` is where the message starts inside `data`
    (after a length prefix, TPDU and header). Length prefixes stay readable; values do not.
    """
    out = bytearray(data)
    sensitive = sensitive_numbers(dialect)
    for number, (start, end) in spans.items():
        if number in sensitive:
            spec = dialect.fields[number]  # type: ignore[index]
            prefix_bytes = prefix_width(spec.prefix, dialect.prefix_encoding_of(spec))
            out[base + start + prefix_bytes:base + end] = bytes([MASK_BYTE]) * (
                end - start - prefix_bytes
            )
    return bytes(out)


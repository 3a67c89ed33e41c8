"""BER-TLV (ISO/IEC 8825-1, as EMV Book 3 Annex B uses it): the layout of field 55's chip data.

Tags are kept as upper-case hex (`9F26`), the way EMV documents and every trace write them;
values stay bytes. Parsing is strict and located, because field 55 comes from a peer.
"""

from __future__ import annotations

from collections.abc import Iterable

from protocol.errors import DecodeError, EncodeError

Tlv = tuple[str, bytes]


MAX_TAG_BYTES = 3  # EMV tags are 1 to 3 bytes (EMV Book 3, Annex B)


def parse(data: bytes, field: int = 55) -> list[Tlv]:
    """Every (tag, value) in order; a DecodeError at the offset where the data stops making sense."""
    out: list[Tlv] = []
    pos, end = 0, len(data)
    while pos < end:
        start = pos
        if data[pos] in (0x00, 0xFF):  # padding between TLVs (EMV Book 3, Annex B)
            pos += 1
            continue
        pos += 1
        if data[start] & 0x1F == 0x1F:  # more tag bytes follow, while bit 8 is set
            while pos < end and data[pos] & 0x80:
                pos += 1
            pos += 1
            if pos > end:
                raise DecodeError("BER-TLV tag cut short", field=field, offset=start)
            if pos - start > MAX_TAG_BYTES:  # not a tag: named by its place, never its bytes
                raise DecodeError(f"BER-TLV tag longer than {MAX_TAG_BYTES} bytes", field=field,
                                  offset=start)
        tag = data[start:pos].hex().upper()
        if pos >= end:
            raise DecodeError(f"BER-TLV tag {tag} has no length", field=field, offset=pos,
                              path=f"{field}.{tag}")
        first = data[pos]
        pos += 1
        if first & 0x80:
            size = first & 0x7F
            if not 1 <= size <= 2 or pos + size > end:
                raise DecodeError(f"BER-TLV length of {tag} is malformed", field=field,
                                  offset=pos - 1, path=f"{field}.{tag}")
            length = int.from_bytes(data[pos:pos + size], "big")
            pos += size
        else:
            length = first
        if pos + length > end:
            raise DecodeError(f"BER-TLV value of {tag} runs past the end ({length} bytes)",
                              field=field, offset=pos, path=f"{field}.{tag}")
        out.append((tag, data[pos:pos + length]))
        pos += length
    return out


def build(tlvs: Iterable[Tlv], field: int = 55) -> bytes:
    """The bytes of (tag, value) pairs in the order given."""
    parts: list[bytes] = []
    for tag, value in tlvs:
        try:
            raw_tag = bytes.fromhex(tag)
        except ValueError:
            raise EncodeError(f"tag {tag!r} is not hex", field=field) from None
        if not raw_tag:
            raise EncodeError("empty tag", field=field)
        n = len(value)
        if n > 0xFFFF:
            raise EncodeError(f"value of {tag} too long: {n} bytes", field=field, path=f"{field}.{tag}")
        length = bytes([n]) if n < 0x80 else bytes([0x81, n]) if n <= 0xFF else b"\x82" + n.to_bytes(2, "big")
        parts.append(raw_tag + length + value)
    return b"".join(parts)

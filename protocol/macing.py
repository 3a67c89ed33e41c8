"""Message-level MACs: which bytes are MACed, and signing and checking field 64 (PROTOCOL.md §1).

The MAC covers the message from the MTI up to the end of the last field before 64, with bit 64
already set; in TPDU dialects the TPDU and header are outside it. The common case (no secondary
bitmap, field 64 last) needs no decoding: the MAC is the last 8 bytes.
"""

from __future__ import annotations

from protocol.codec import Codec
from protocol.crypto import Key, verify_mac
from protocol.crypto.mac import dialect_mac_function
from protocol.errors import ProtocolError
from protocol.message import Message

MAC_SIZE = 8
PLACEHOLDER = bytes(MAC_SIZE)


def mac_offset(codec: Codec, encoded: bytes) -> int | None:
    """Where field 64 starts in an encoded message, or None when it has no field 64."""
    at = codec.mti_length
    if len(encoded) < at + 8:
        raise ProtocolError("truncated: no bitmap", field="bitmap", offset=at)
    if not encoded[at + 7] & 0x01:
        return None
    if not encoded[at] & 0x80:
        return len(encoded) - MAC_SIZE
    _, spans = codec.decode_spans(encoded)
    return spans[64][0]


def mac_input(codec: Codec, encoded: bytes) -> bytes:
    """The bytes the MAC covers; a message without field 64 has nothing to MAC and is refused."""
    offset = mac_offset(codec, encoded)
    if offset is None:
        raise ProtocolError("message has no field 64", field=64)
    return encoded[:offset]


def message_mac(codec: Codec, encoded: bytes) -> bytes | None:
    offset = mac_offset(codec, encoded)
    return None if offset is None else encoded[offset:offset + MAC_SIZE]


def compute(codec: Codec, mak: Key, data: bytes) -> bytes:
    return dialect_mac_function(codec.dialect.mac, mak.material)(data)


def sign(codec: Codec, message: Message, mak: Key) -> bytes:
    """Encode `message` with field 64 set to its MAC under `mak`."""
    fields = dict(message.fields)
    fields[64] = PLACEHOLDER
    return sign_in_place(codec, Message(message.mti, fields), mak)


def sign_in_place(codec: Codec, message: Message, mak: Key) -> bytes:
    """`sign` for a message that already holds field 64 (any 8 bytes; they are not MACed):
    a host that builds each response's fields once would otherwise pay for a copy."""
    encoded = codec.encode(message)
    offset = mac_offset(codec, encoded)
    assert offset is not None
    mac = compute(codec, mak, encoded[:offset])
    if offset + MAC_SIZE == len(encoded):  # field 64 last: nothing after it to keep
        return encoded[:offset] + mac
    return encoded[:offset] + mac + encoded[offset + MAC_SIZE:]


def verify(codec: Codec, encoded: bytes, mak: Key) -> bool:
    """True when field 64 is present and matches; compared in constant time."""
    offset = mac_offset(codec, encoded)
    if offset is None:
        return False
    mac = dialect_mac_function(codec.dialect.mac, mak.material)(encoded[:offset])
    return verify_mac(mac, encoded[offset:offset + MAC_SIZE])

"""Field 64 at message level: which bytes are MACed, and that any change is caught.

The MAC primitives themselves are proven on published vectors in tests/crypto; here the point is
the range PROTOCOL.md §1 fixes: MTI through the last field before 64, bit 64 set, TPDU outside.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as hs

from protocol.codec import get_codec
from protocol.crypto import Key, dialect_mac
from protocol.dialects import get_dialect
from protocol.errors import ProtocolError
from protocol.framing import Framing, Tpdu
from protocol.macing import mac_input, message_mac, sign, verify
from protocol.message import Message

# Odd-parity keys written by hand (each byte has an odd number of 1 bits).
MAK16 = Key("TDES", "MAK", bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"))
MAK8 = Key("DES", "MAK", bytes.fromhex("0123456789ABCDEF"))
KEYS = {"iso87": MAK16, "cup": MAK8}


def purchase() -> Message:
    return Message("0200", {
        3: "000000", 4: "000000001234", 11: "000042", 22: "021", 25: "00",
        41: "TERM0001", 42: "MERCHANT0000001", 49: "156", 60: "22000001000",
    })


def test_mac_covers_mti_to_field_63_with_bit_64_set() -> None:
    for name, key in KEYS.items():
        codec = get_codec(name)
        wire = sign(codec, purchase(), key)
        body = wire[:-8]
        bitmap = body[codec.mti_length:codec.mti_length + 8]
        assert bitmap[7] & 0x01, "bit 64 is set in the MACed bytes"
        assert mac_input(codec, wire) == body
        assert message_mac(codec, wire) == dialect_mac(get_dialect(name).mac, key.material, body)


def test_cup_mac_is_eight_uppercase_hex_characters_and_tpdu_is_outside() -> None:
    codec = get_codec("cup")
    wire = sign(codec, purchase(), MAK8)
    mac = message_mac(codec, wire)
    assert mac is not None and len(mac) == 8
    assert all(c in b"0123456789ABCDEF" for c in mac)
    framing = Framing(get_dialect("cup"))
    a = framing.unframe(framing.payload(wire, Tpdu(1, 2))).message
    b = framing.unframe(framing.payload(wire, Tpdu(7, 9), b"\x60\x31\x00\x00\x00\x01")).message
    assert verify(codec, a, MAK8) and verify(codec, b, MAK8)


def test_secondary_bitmap_mac_range_ends_at_field_64() -> None:
    codec = get_codec("iso87")
    message = purchase()
    message.fields[70] = "301"
    wire = sign(codec, message, MAK16)
    decoded = codec.decode(wire)
    assert decoded.fields[70] == "301"
    assert verify(codec, wire, MAK16)
    assert mac_input(codec, wire) == wire[: wire.index(decoded.fields[64])]


def test_missing_field_64_is_refused_and_never_verifies() -> None:
    codec = get_codec("iso87")
    wire = codec.encode(purchase())
    assert not verify(codec, wire, MAK16)
    try:
        mac_input(codec, wire)
    except ProtocolError as exc:
        assert exc.field == 64
    else:
        raise AssertionError("a message without field 64 has no MAC input")


def test_wrong_key_fails() -> None:
    other = Key("TDES", "MAK", bytes.fromhex("FEDCBA98765432100123456789ABCDEF"))
    codec = get_codec("iso87")
    assert not verify(codec, sign(codec, purchase(), MAK16), other)


@given(name=hs.sampled_from(sorted(KEYS)), data=hs.data())
def test_any_flipped_bit_is_detected(name: str, data: hs.DataObject) -> None:
    codec = get_codec(name)
    wire = sign(codec, purchase(), KEYS[name])
    index = data.draw(hs.integers(0, len(wire) - 1), label="byte")
    bit = data.draw(hs.integers(0, 7), label="bit")
    broken = bytearray(wire)
    broken[index] ^= 1 << bit
    try:
        ok = verify(codec, bytes(broken), KEYS[name])
    except ProtocolError:
        ok = False
    assert not ok

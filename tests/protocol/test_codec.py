"""Unit tests of the codec in both built-in dialects: packing, padding, bitmaps and every error."""

from __future__ import annotations

import pytest

from protocol.codec import Codec, get_codec
from protocol.dialects import CUP, ISO87, get_dialect
from protocol.errors import ProtocolError, SpecError
from protocol.message import Message

ISO = get_codec("iso87")
CUPC = get_codec("cup")


def bitmap(*numbers: int) -> bytes:
    """Bitmap bytes written out independently of the codec (bit 1 added for fields above 64)."""
    value = 0
    for n in numbers:
        value |= 1 << (128 - n)
    if any(n > 64 for n in numbers):
        return (value | 1 << 127).to_bytes(16, "big")
    return (value >> 64).to_bytes(8, "big")


def raises(func, *args, field, offset=None, match=None) -> ProtocolError:
    with pytest.raises(ProtocolError, match=match) as info:
        func(*args)
    assert info.value.field == field, str(info.value)
    if offset is not None:
        assert info.value.offset == offset, str(info.value)
    return info.value


# --- dialect tables -------------------------------------------------------------------------------

def test_iso87_defines_all_128_fields_with_protocol_overrides():
    assert sorted(ISO87.fields) == list(range(2, 129))
    assert ISO87.fields[62].notation() == "b...999"
    assert ISO87.fields[53].notation() == "n16"
    assert ISO87.fields[44].notation() == "ans..25"
    assert ISO87.fields[35].notation() == "z..37"


def test_cup_table_matches_protocol():
    assert CUP.fields[49].notation() == "an3"
    assert CUP.fields[62].notation() == "b...999"
    assert CUP.fields[53].notation() == "n16"
    assert CUP.fields[44].notation() == "ans..25"
    assert 5 not in CUP.fields
    assert CUP.tpdu and CUP.header == bytes.fromhex("603100000000")
    assert get_dialect("cup") is CUP
    with pytest.raises(SpecError, match="unknown dialect 'nope'"):
        get_dialect("nope")


# --- iso87 packing --------------------------------------------------------------------------------

def test_iso87_fixed_padding():
    data = ISO.encode(Message("0200", {4: "1", 41: "T1", 49: "156"}))
    assert data == b"0200" + bitmap(4, 41, 49) + b"000000000001" + b"T1      " + b"156"
    # decoding keeps the padded wire value
    assert ISO.decode(data).fields == {4: "000000000001", 41: "T1      ", 49: "156"}


def test_iso87_ll_and_lll_prefixes_count_characters_and_bytes():
    msg = Message("0100", {2: "123456789", 44: "", 62: b"\x00\xff\x10"})
    data = ISO.encode(msg)
    assert data == b"0100" + bitmap(2, 44, 62) + b"09123456789" + b"00" + b"003\x00\xff\x10"
    assert ISO.decode(data) == msg


def test_iso87_track2_ascii_with_separator():
    msg = Message("0200", {35: "4761739001010119=25121010"})
    data = ISO.encode(msg)
    assert data == b"0200" + bitmap(35) + b"25" + b"4761739001010119=25121010"
    assert ISO.decode(data) == msg


def test_secondary_bitmap_only_when_a_field_above_64_is_present():
    low = ISO.encode(Message("0800", {64: b"12345678"}))
    assert len(low) == 4 + 8 + 8 and low[4] & 0x80 == 0
    high = ISO.encode(Message("0800", {70: "301"}))
    assert high == b"0800" + bytes.fromhex("8000000000000000" "0400000000000000") + b"301"
    assert ISO.decode(high) == Message("0800", {70: "301"})
    assert max(CUP.fields) <= 64  # cup never needs a secondary bitmap


def test_empty_message_and_field_128():
    assert ISO.encode(Message("0800")) == b"0800" + bytes(8)
    msg = Message("0800", {128: b"ABCDEFGH"})
    data = ISO.encode(msg)
    assert data[4:20] == bytes.fromhex("8000000000000000" "0000000000000001")
    assert ISO.decode(data) == msg


# --- cup packing ----------------------------------------------------------------------------------

def test_cup_mti_is_bcd_and_fields_49_41_ascii():
    data = CUPC.encode(Message("0800", {41: "TERM0001", 49: "156"}))
    assert data == b"\x08\x00" + bitmap(41, 49) + b"TERM0001" + b"156"


def test_cup_bcd_fixed_odd_is_right_aligned_with_leading_zero_nibble():
    # Field 23 (n3) stays right-aligned: `001` is `00 01` (PROTOCOL.md §1). Field 22 was the
    # example here until the contract made it the left-aligned exception (the next test).
    data = CUPC.encode(Message("0200", {23: "001", 3: "000000"}))
    assert data == b"\x02\x00" + bitmap(3, 23) + b"\x00\x00\x00" + b"\x00\x01"
    assert CUPC.decode(data).fields == {3: "000000", 23: "001"}
    # short fixed n is zero padded on the left, in BCD too
    assert CUPC.encode(Message("0200", {23: "5"}))[-2:] == b"\x00\x05"


def test_cup_field_22_is_left_aligned_with_trailing_zero_nibble():
    # PROTOCOL.md §1: "field 22 (n3, entry mode), which CUP terminals send left-aligned with a
    # trailing 0 nibble (`021` is `02 10`)"; issue 18's corpus of 40 published CUP frames agrees.
    data = CUPC.encode(Message("0200", {22: "021", 3: "000000"}))
    assert data == b"\x02\x00" + bitmap(3, 22) + b"\x00\x00\x00" + b"\x02\x10"
    assert CUPC.decode(data).fields == {3: "000000", 22: "021"}
    # the old right-aligned `00 21` is no longer read as `002`: its pad nibble is refused
    with pytest.raises(ProtocolError, match="pad nibble") as info:
        CUPC.decode(b"\x02\x00" + bitmap(22) + b"\x00\x21")
    assert info.value.field == 22


def test_cup_bcd_variable_odd_is_left_aligned_with_trailing_zero_nibble():
    msg = Message("0200", {2: "6222020200112233445"})
    data = CUPC.encode(msg)
    assert data == b"\x02\x00" + bitmap(2) + b"\x19" + bytes.fromhex("62220202001122334450")
    assert CUPC.decode(data) == msg
    even = CUPC.encode(Message("0200", {2: "62220202"}))
    assert even[10:] == b"\x08" + bytes.fromhex("62220202")


def test_cup_lll_prefix_is_two_bcd_bytes_counting_digits_or_bytes():
    data = CUPC.encode(Message("0800", {60: "00000001003"}))
    assert data[10:] == b"\x00\x11" + bytes.fromhex("000000010030")
    data = CUPC.encode(Message("0810", {62: bytes(24)}))
    assert data[10:] == b"\x00\x24" + bytes(24)
    data = CUPC.encode(Message("0810", {63: "01 "}))
    assert data[10:] == b"\x00\x03" + b"01 "


def test_cup_track2_equals_sign_is_nibble_d():
    msg = Message("0200", {35: "6222020200112233445=25121"})
    data = CUPC.encode(msg)
    assert data[10:] == b"\x25" + bytes.fromhex("6222020200112233445D2512" "10")
    assert CUPC.decode(data) == msg
    even = Message("0200", {35: "1234=5"})
    assert CUPC.encode(even)[10:] == b"\x06" + bytes.fromhex("1234D5")


def test_cup_empty_variable_fields():
    msg = Message("0200", {2: "", 55: b"", 63: ""})
    data = CUPC.encode(msg)
    assert data[10:] == b"\x00" + b"\x00\x00" + b"\x00\x00"
    assert CUPC.decode(data) == msg


# --- encode errors: validated, never cut ---------------------------------------------------------

@pytest.mark.parametrize("codec", [ISO, CUPC], ids=["iso87", "cup"])
@pytest.mark.parametrize(("number", "value"), [
    (11, "1234567"),          # n6
    (2, "1" * 20),            # n..19
    (41, "TERMINAL1"),        # ans8
    (49, "1560"),             # an3
    (52, bytes(9)),           # b8
    (62, bytes(1000)),        # b...999
    (35, "1" * 38),           # z..37
    (44, "x" * 26),           # ans..25
])
def test_encode_value_too_long_is_refused(codec, number, value):
    raises(codec.encode, Message("0200", {number: value}), field=number, match="too long|exactly")


@pytest.mark.parametrize("codec", [ISO, CUPC], ids=["iso87", "cup"])
@pytest.mark.parametrize(("number", "value", "match"), [
    (11, "12a456", "non-digit"),
    (2, "4761 7390", "non-digit"),
    (35, "4761=25D1", "track"),
    (41, "TERMé001", "ASCII"),
    (44, "tab\there", "non-printable"),
    (52, "12345678", "bytes"),
    (11, b"123456", "str"),
    (52, bytes(7), "exactly"),
])
def test_encode_bad_values_are_refused(codec, number, value, match):
    raises(codec.encode, Message("0200", {number: value}), field=number, match=match)


@pytest.mark.parametrize("codec", [ISO, CUPC], ids=["iso87", "cup"])
@pytest.mark.parametrize("mti", ["800", "08000", "08A0", "", "\uff10\uff18\uff10\uff10", 800])
def test_encode_bad_mti(codec, mti):
    raises(codec.encode, Message(mti, {11: "000001"}), field="MTI")


@pytest.mark.parametrize("codec", [ISO, CUPC], ids=["iso87", "cup"])
def test_encode_field_1_explicitly_is_refused(codec):
    raises(codec.encode, Message("0800", {1: bytes(8), 11: "000001"}), field=1, match="bitmap")


def test_encode_field_the_dialect_does_not_define():
    raises(CUPC.encode, Message("0200", {5: "000000000001"}), field=5, match="does not define")
    raises(ISO.encode, Message("0200", {129: "1"}), field=129)


@pytest.mark.parametrize(("codec", "number", "value"), [
    (CUPC, 44, "x" * 100),     # LL text in a BCD-prefix dialect: the prefix cannot spell 100
    (CUPC, 63, "x" * 1000),    # LLL text: the prefix cannot spell 1000
    (CUPC, 54, "x" * 1000),
], ids=["cup-44-LL", "cup-63-LLL", "cup-54-LLL"])
def test_encode_too_long_for_the_bcd_prefix_is_a_protocol_error(codec, number, value):
    # Regression: the prefix used to be built before the length check, and the BCD prefix table
    # raised IndexError.
    raises(codec.encode, Message("0200", {number: value}), field=number, match="too long")


@pytest.mark.parametrize("codec", [ISO, CUPC], ids=["iso87", "cup"])
@pytest.mark.parametrize("number", [2, 44, 63])
def test_encode_wrong_type_in_a_variable_field_is_a_protocol_error(codec, number):
    # Regression: ASCII variable fields used to call len(value) before the type check, so an int
    # raised TypeError where fixed fields raise ProtocolError("... takes str").
    raises(codec.encode, Message("0200", {number: 12345}), field=number)


def test_encode_does_not_mutate_the_message():
    msg = Message("0200", {4: "1", 41: "T1"})
    ISO.encode(msg)
    assert msg.fields == {4: "1", 41: "T1"}


# --- decode errors: field and offset named --------------------------------------------------------

HEAD = b"0200"


@pytest.mark.parametrize(("data", "field", "offset", "match"), [
    (b"02", "MTI", 0, "truncated"),
    (b"02A0" + bytes(8), "MTI", 0, "MTI"),
    (b"0200" + bytes(3), "bitmap", 4, "truncated"),
    (b"0200" + b"\x80" + bytes(7) + bytes(3), 1, 12, "truncated"),
    (HEAD + bitmap(11) + b"0001", 11, 12, "truncated"),
    (HEAD + bitmap(11) + b"00A123", 11, 12, "non-digit"),
    (HEAD + bitmap(2) + b"19" + b"1234", 2, 12, "past the end"),
    (HEAD + bitmap(2) + b"1", 2, 12, "truncated"),
    (HEAD + bitmap(2) + b"1A" + b"1", 2, 12, "not ASCII digits"),
    (HEAD + bitmap(2) + b"20" + b"1" * 20, 2, 12, "exceeds"),
    (HEAD + bitmap(2, 11) + b"021" + b"000001", 11, 16, "truncated"),
    (HEAD + bitmap(11) + b"000001" + b"X", "end", 18, "trailing"),
    (HEAD + bitmap(35) + b"05" + b"12?45", 35, 14, "track"),
    (HEAD + bitmap(41) + b"TERM\x00001", 41, 12, "non-printable"),
    (HEAD + bitmap(62) + b"004" + b"\x00\x01", 62, 12, "past the end"),
    (HEAD + bitmap(11, 70) + b"000001" + b"30", 70, 26, "truncated"),
])
def test_iso87_decode_errors(data, field, offset, match):
    raises(ISO.decode, data, field=field, offset=offset, match=match)


CHEAD = b"\x02\x00"


@pytest.mark.parametrize(("data", "field", "offset", "match"), [
    (b"\x02", "MTI", 0, "truncated"),
    (b"\x0a\x00" + bytes(8), "MTI", 0, "MTI"),
    (CHEAD + bitmap(3) + b"\x00\x0a\x00", 3, 10, "bad BCD nibble"),
    (CHEAD + bitmap(3) + b"\x00\x00", 3, 10, "truncated"),
    (CHEAD + bitmap(3) + b"\x00\x0d\x00", 3, 10, "bad BCD nibble"),
    (CHEAD + bitmap(22) + b"\x10\x21", 22, 10, "pad nibble"),
    (CHEAD + bitmap(2) + b"\x03" + b"\x12\x31", 2, 11, "pad nibble"),
    (CHEAD + bitmap(2) + b"\x1a" + bytes(10), 2, 10, "not BCD"),
    (CHEAD + bitmap(2) + b"\x20" + bytes(10), 2, 10, "exceeds"),
    (CHEAD + bitmap(2) + b"\x19" + bytes(9), 2, 10, "past the end"),
    # a track takes hex nibbles (partly enciphered, issue 18), but not as its pad nibble
    (CHEAD + bitmap(35) + b"\x03" + b"\x12\xe4", 35, 11, "pad nibble"),
    (CHEAD + bitmap(60) + b"\x00", 60, 10, "truncated"),
    (CHEAD + bitmap(60) + b"\x01\x00" + bytes(50), 60, 10, "exceeds"),
    (CHEAD + bitmap(63) + b"\x00\x05" + b"ab", 63, 10, "past the end"),
    (CHEAD + bitmap(5) + bytes(6), 5, 2, "does not define"),
    (CHEAD + bitmap(3, 5) + bytes(3) + bytes(6), 5, 2, "does not define"),
    (CHEAD + bitmap(100) + b"\x01\x23", 100, 14, "does not define"),
    (CHEAD + bitmap(3) + bytes(3) + b"\x00\x00", "end", 13, "trailing"),
])
def test_cup_decode_errors(data, field, offset, match):
    raises(CUPC.decode, data, field=field, offset=offset, match=match)


def test_error_text_never_holds_the_value():
    pan = "4761739001010119"
    data = HEAD + bitmap(2, 11) + b"16" + pan.encode() + b"00A123"
    err = raises(ISO.decode, data, field=11, offset=30)
    assert pan not in str(err) and "00A123" not in str(err)


def test_decode_accepts_bytearray_and_memoryview():
    data = ISO.encode(Message("0800", {11: "000001"}))
    assert ISO.decode(bytearray(data)) == ISO.decode(memoryview(data)) == Message("0800", {11: "000001"})


def test_decode_spans_locate_every_field():
    data = ISO.encode(Message("0200", {2: "12345", 11: "000001", 70: "301"}))
    msg, spans = ISO.decode_spans(data)
    assert msg == ISO.decode(data)
    assert spans["MTI"] == (0, 4)
    assert spans["bitmap"] == (4, 20)
    assert spans[2] == (20, 27) and data[20:27] == b"0512345"
    assert spans[11] == (27, 33) and spans[70] == (33, 36)


def test_codec_for_custom_dialect_is_independent():
    codec = Codec(CUP.with_header(b"\x00" * 6))
    assert codec.encode(Message("0800", {11: "000001"})) == CUPC.encode(Message("0800", {11: "000001"}))


def test_short_x_plus_n_value_keeps_its_sign_first() -> None:
    codec = get_codec("iso87")
    wire = codec.encode(Message("0200", {28: "C5"}))
    assert wire.endswith(b"C00000005")
    assert codec.decode(wire).fields[28] == "C00000005"


def test_secondary_bitmap_without_a_field_above_64_is_refused() -> None:
    codec = get_codec("iso87")
    wire = codec.encode(Message("0800", {11: "000001"}))
    # Set bit 1 and insert an all-zero secondary bitmap by hand.
    forged = wire[:4] + bytes([wire[4] | 0x80]) + wire[5:12] + bytes(8) + wire[12:]
    with pytest.raises(ProtocolError) as info:
        codec.decode(forged)
    assert info.value.field == 1 and info.value.offset == 12


def test_a_decode_error_carries_the_fields_decoded_before_it() -> None:
    codec = get_codec("iso87")
    wire = codec.encode(Message("0200", {3: "000000", 11: "000042", 41: "TERM0001", 60: "22000001000"}))
    with pytest.raises(ProtocolError) as info:
        codec.decode(wire[:-2])
    assert info.value.field == 60
    assert info.value.partial is not None
    assert info.value.partial.fields == {3: "000000", 11: "000042", 41: "TERM0001"}
    with pytest.raises(ProtocolError) as trailing:
        codec.decode(wire + b"X")
    assert trailing.value.partial is not None and 60 in trailing.value.partial.fields

"""Field 60 subfields, field 62 key sets, and masking (PROTOCOL.md §2, §3, §6)."""

from __future__ import annotations

import pytest

from protocol.codec import get_codec
from protocol.dialects import CUP, ISO87
from protocol.errors import ProtocolError
from protocol.fields import KEY_SETS, Field60, WrappedKey, build_key_set, key_set, parse_key_set
from protocol.mask import mask_pan, masked_fields
from protocol.message import Message
from protocol.shown import mask_message_bytes

# --- field 60 --------------------------------------------------------------------------------------


def test_field60_round_trip_and_names():
    f = Field60.parse("00000001003")
    assert (f.type_code, f.batch, f.nmic) == ("00", "000001", "003")
    assert f.format() == "00000001003"
    assert Field60("22", "123456", "000").format() == "22123456000"
    assert Field60().format() == "22000001000"
    # cup's 60 may go on past 60.3; the first three subfields are read by name
    assert Field60.parse("2200000100050").nmic == "000"


@pytest.mark.parametrize("value", ["", "0000000100", "0000000100X", "00-00001003"])
def test_field60_parse_refuses_bad_values(value):
    with pytest.raises(ProtocolError) as info:
        Field60.parse(value)
    assert info.value.field == 60


@pytest.mark.parametrize(("args", "name"), [
    (("0", "000001", "003"), "60.1"),
    (("00", "00001", "003"), "60.2"),
    (("00", "000001", "03"), "60.3"),
    (("00", "000001", "0a3"), "60.3"),
])
def test_field60_format_refuses_bad_subfields(args, name):
    with pytest.raises(ProtocolError, match=name):
        Field60(*args).format()


# --- field 62 key sets ------------------------------------------------------------------------------

def wrapped(usage: str, size: int, seed: int) -> WrappedKey:
    return WrappedKey(usage, bytes((seed + i) % 256 for i in range(size)), bytes([seed] * 4))


def test_key_set_layouts_match_protocol():
    assert {code: ks.layout() for code, ks in KEY_SETS.items()} == {"001": 24, "003": 40, "004": 60}
    assert KEY_SETS["003"].security_control == "2600000000000000"
    assert KEY_SETS["001"].security_control == "2000000000000000"
    assert KEY_SETS["003"].mak_length(CUP) == 8
    assert KEY_SETS["003"].mak_length(ISO87) == 16
    with pytest.raises(ProtocolError):
        key_set("002")


def test_key_set_001_layout():
    pik, mak = wrapped("PIK", 8, 1), wrapped("MAK", 8, 100)
    data = build_key_set([mak, pik], "001")  # order given does not matter
    assert data == pik.ciphertext + pik.kcv + mak.ciphertext + mak.kcv
    assert parse_key_set(data, "001", ISO87) == [pik, mak]
    assert parse_key_set(data, "001", CUP) == [pik, mak]


def test_key_set_003_iso87_double_mak_and_cup_padded_single_mak():
    pik, mak16, mak8 = wrapped("PIK", 16, 1), wrapped("MAK", 16, 50), wrapped("MAK", 8, 90)
    iso = build_key_set([pik, mak16], "003")
    assert len(iso) == 40 and iso[20:36] == mak16.ciphertext
    assert parse_key_set(iso, "003", ISO87) == [pik, mak16]
    cup = build_key_set([pik, mak8], "003")
    assert cup[20:36] == mak8.ciphertext + bytes(8) and cup[36:40] == mak8.kcv
    assert parse_key_set(cup, "003", CUP) == [pik, mak8]


def test_key_set_004_adds_tdk():
    keys = [wrapped("PIK", 16, 1), wrapped("MAK", 16, 2), wrapped("TDK", 16, 3)]
    data = build_key_set(keys, "004")
    assert len(data) == 60 and data[40:56] == keys[2].ciphertext
    assert parse_key_set(data, "004", ISO87) == keys


def test_parse_key_set_refuses_wrong_size_and_dirty_mak_padding():
    with pytest.raises(ProtocolError, match="needs 40 bytes") as info:
        parse_key_set(bytes(39), "003", CUP)
    assert info.value.field == 62
    dirty = bytearray(build_key_set([wrapped("PIK", 16, 1), wrapped("MAK", 8, 2)], "003"))
    dirty[35] = 1
    with pytest.raises(ProtocolError, match="padding") as info:
        parse_key_set(bytes(dirty), "003", CUP)
    assert info.value.offset == 20 + 8  # PIK(16) KCV(4), then the MAK's 8 bytes


def test_build_key_set_refuses_missing_or_oversized_keys():
    with pytest.raises(ProtocolError, match="needs a MAK"):
        build_key_set([wrapped("PIK", 8, 1)], "001")
    with pytest.raises(ProtocolError, match="does not fit"):
        build_key_set([wrapped("PIK", 16, 1), wrapped("MAK", 8, 2)], "001")
    with pytest.raises(ProtocolError, match="does not fit"):
        build_key_set([wrapped("PIK", 8, 1), WrappedKey("MAK", bytes(8), bytes(3))], "001")


def test_wrapped_key_repr_hides_ciphertext():
    key = wrapped("PIK", 16, 0xAB)
    assert key.ciphertext.hex() not in repr(key).lower()


# --- masking ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("pan", "masked"), [
    ("4761739001010119", "476173******0119"),
    ("6222020200112233445", "622202*********3445"),
    ("12345678901", "123456*8901"),
    ("1234567890", "**********"),
    ("", ""),
])
def test_mask_pan(pan, masked):
    assert mask_pan(pan) == masked


SECRET_MESSAGE = Message("0200", {
    2: "4761739001010119",
    4: "000000010000",
    35: "4761739001010119=25121010",
    41: "TERM0001",
    52: bytes.fromhex("1122334455667788"),
    62: bytes.fromhex("A1A2A3A4A5A6A7A8B1B2B3B4"),
    64: bytes.fromhex("C1C2C3C4C5C6C7C8"),
})


@pytest.mark.parametrize("dialect", [ISO87, CUP], ids=["iso87", "cup"])
def test_masked_fields_hide_pan_track_pin_key_mac(dialect):
    msg = Message("0200", {n: v for n, v in SECRET_MESSAGE.fields.items() if n in dialect.fields})
    out = masked_fields(msg, dialect)
    text = repr(out)
    assert out[2] == "476173******0119"
    assert "4761739001010119" not in text and "25121010" not in text
    for secret in ("1122334455667788", "A1A2A3A4", "C1C2C3C4"):
        assert secret not in text.upper()
    assert out[4] == "000000010000" and out[41] == "TERM0001"
    assert out[52] == "<PIN block masked, 8 bytes>"
    assert out[64] == "<MAC masked, 8 bytes>"


def test_masked_fields_treat_unknown_fields_as_secret():
    out = masked_fields(Message("0200", {5: b"\x01\x02\x03"}), CUP)
    assert "010203" not in out[5]


@pytest.mark.parametrize("name", ["iso87", "cup"])
def test_mask_message_bytes_overwrites_sensitive_values(name):
    dialect = ISO87 if name == "iso87" else CUP
    codec = get_codec(name)
    msg = Message("0200", {n: v for n, v in SECRET_MESSAGE.fields.items() if n in dialect.fields})
    data = codec.encode(msg)
    masked = mask_message_bytes(data, dialect)
    assert len(masked) == len(data)
    for n in (2, 35, 52, 62, 64):
        raw = codec.encode(Message("0200", {n: msg.fields[n]}))[codec.mti_length + 8:]
        value_bytes = raw[-4:]  # the tail of each value: never left in the masked bytes
        assert value_bytes not in masked, n
    assert b"TERM0001" in masked
    # a message that does not decode is masked whole after its MTI
    broken = data + b"\x00"
    assert mask_message_bytes(broken, dialect)[codec.mti_length:] == b"*" * (len(broken) - codec.mti_length)

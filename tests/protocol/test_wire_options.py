"""Spec options beyond the two built-in dialects: each round-trips under property tests, and is
differential-tested against pyiso8583 wherever pyiso8583 can express the same spec."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import iso8583
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from protocol import strategies as ps
from protocol.codec import codec_for
from protocol.dialects import CUP
from protocol.errors import DecodeError, SpecError
from protocol.framing import Framing
from protocol.message import Message
from protocol.pyiso8583_spec import from_pyiso8583_doc, pyiso8583_spec, to_pyiso8583_doc
from protocol.spec import Dialect, dialect_from_data

# A table with every kind, fixed and variable, of each prefix size, odd and even lengths.
FIELDS: dict[str, dict[str, Any]] = {
    "2": {"type": "n", "max": 19, "prefix": "LL", "mask": "pan"},
    "3": {"type": "n", "length": 6},
    "4": {"type": "n", "length": 5},
    "22": {"type": "n", "length": 3},
    "35": {"type": "z", "max": 37, "prefix": "LL", "mask": "track"},
    "37": {"type": "an", "length": 12},
    "41": {"type": "ans", "length": 8},
    "43": {"type": "ans", "max": 40, "prefix": "LL"},
    "48": {"type": "n", "max": 999, "prefix": "LLL"},
    "52": {"type": "b", "length": 8, "mask": "pin"},
    "55": {"type": "b", "max": 255, "prefix": "LLL"},
    "60": {"type": "n", "max": 17, "prefix": "LLL"},
    "61": {"type": "ans", "max": 9, "prefix": "L"},
    "63": {"type": "ans", "max": 1200, "prefix": "LLLL"},
    "70": {"type": "n", "length": 3},
    "72": {"type": "n", "max": 1999, "prefix": "LLLL"},
}


def dialect(fields: dict[str, dict[str, Any]] | None = None, **top: Any) -> Dialect:
    data = {"name": "device", "mti": "ascii", "digits": "ascii", "prefixes": "ascii",
            "fields": fields or FIELDS, **top}
    return dialect_from_data(data)


def with_each(setting: dict[str, Any], numbers: tuple[str, ...] | None = None) -> dict[str, dict[str, Any]]:
    """FIELDS with `setting` added to the given fields (default: every field it can apply to)."""
    return {k: {**v, **setting} if numbers is None or k in numbers else v for k, v in FIELDS.items()}


DIGITS = ("2", "3", "4", "22", "35", "48", "60", "70", "72")
VARIABLE = tuple(k for k, v in FIELDS.items() if "max" in v)
OPTIONS: dict[str, Dialect] = {
    "bcd digits, bcd prefixes": dialect(digits="bcd", prefixes="bcd"),
    "bcd digits, binary prefixes": dialect(digits="bcd", prefixes="binary"),
    "bcd mti, hex bitmap": dialect(mti="bcd", bitmap="hex"),
    "ebcdic everything": dialect(mti="ebcdic", digits="ebcdic", prefixes="ebcdic", text="ebcdic",
                                 bitmap="hex"),
    "ebcdic text, ascii digits": dialect(text="ebcdic"),
    "binary prefixes": dialect(prefixes="binary"),
    "bcd pad F": dialect(with_each({"pad": "F"}, DIGITS), digits="bcd", prefixes="bcd"),
    "bcd pad F right-aligned": dialect(with_each({"pad": "F", "align": "right"}, DIGITS),
                                       digits="bcd", prefixes="bcd"),
    "bcd left-aligned 0": dialect(with_each({"align": "left"}, DIGITS), digits="bcd", prefixes="bcd"),
    "bcd counting bytes, pad F": dialect(
        with_each({"pad": "F", "counts": "bytes"}, ("2", "35", "48", "60", "72")),
        digits="bcd", prefixes="bcd"),
    "per-field encodings": dialect({
        **FIELDS,
        "2": {**FIELDS["2"], "encoding": "bcd", "prefix_encoding": "binary", "pad": "F"},
        "35": {**FIELDS["35"], "encoding": "bcd", "prefix_encoding": "bcd", "counts": "bytes",
               "pad": "F"},
        "43": {**FIELDS["43"], "encoding": "ebcdic", "prefix_encoding": "ebcdic"},
        "55": {**FIELDS["55"], "prefix_encoding": "binary"},
        "63": {**FIELDS["63"], "prefix_encoding": "bcd"},
    }),
}


@pytest.mark.parametrize("name", sorted(OPTIONS))
@settings(max_examples=80)
@given(data=st.data())
def test_every_option_round_trips_and_agrees_with_pyiso8583(name: str, data: st.DataObject) -> None:
    d = OPTIONS[name]
    message = data.draw(ps.messages(d))
    codec = codec_for(d)
    ours = codec.encode(message)
    assert codec.decode(ours) == message
    decoded, spans = codec.decode_spans(ours)
    assert decoded == message and spans["MTI"][0] == 0
    # pyiso8583 pads odd BCD only when its prefix counts nibbles: a prefix counting bytes of an
    # odd number of digits is beyond what it can express.
    assume(all(len(v) % 2 == 0 for n, v in message.fields.items()
               if d.fields[n].counts == "bytes" and d.encoding_of(d.fields[n]) == "bcd"))
    spec = pyiso8583_spec(d)
    theirs, _ = iso8583.encode(to_pyiso8583_doc(message, d), spec)
    assert bytes(theirs) == ours
    doc, _ = iso8583.decode(bytearray(ours), spec)
    assert from_pyiso8583_doc(doc, d) == message


@settings(max_examples=100)
@given(ps.messages(replace(CUP, tpdu=False, header=b""), fields=[n for n in CUP.fields if n != 65]))
def test_cup_message_bytes_agree_with_pyiso8583(message: Message) -> None:
    """The built-in cup table, field 22 left-aligned included, as pyiso8583 reads it (less the
    TPDU and header, which pyiso8583 has no notion of)."""
    bare = replace(CUP, tpdu=False, header=b"")
    spec = pyiso8583_spec(bare)
    assert spec["22"]["right_pad"] == "0" and spec["23"]["left_pad"] == "0"
    ours = codec_for(bare).encode(message)
    theirs, _ = iso8583.encode(to_pyiso8583_doc(message, bare), spec)
    assert bytes(theirs) == ours


# --- worked values, byte for byte (the frames of docs/protocol.md) ------------------------------

def test_worked_encodings():
    ebcdic = codec_for(OPTIONS["ebcdic everything"])
    # "0200" in EBCDIC is F0 F2 F0 F0; the bitmap as 16 EBCDIC hex characters; 3 = F0 x 6.
    data = ebcdic.encode(Message("0200", {3: "000000"}))
    assert data == bytes.fromhex("F0F2F0F0" "F2F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0" "F0F0F0F0F0F0")
    pad_f = codec_for(OPTIONS["bcd pad F"])
    # 2: LL BCD 19 -> 19, digits left-aligned, pad F; 22 fixed n3 right-aligned: F0 21
    data = pad_f.encode(Message("0200", {2: "6222020200112233445", 22: "021"}))
    assert data[-13:] == bytes.fromhex("19" "6222020200112233445F" "F021")
    counting = codec_for(OPTIONS["bcd counting bytes, pad F"])
    # 35 counts bytes: 25 digits are 13 bytes, prefix 13
    data = counting.encode(Message("0200", {35: "6222020200112233445=25121"}))
    assert data[-14:] == bytes.fromhex("13" "6222020200112233445D25121F")
    binary = codec_for(OPTIONS["per-field encodings"])
    data = binary.encode(Message("0200", {2: "6222020200112233445", 63: "AB"}))
    # 2: binary prefix 0x13 (19 digits), BCD pad F; 63: LLLL as 2 BCD bytes 0002, ASCII "AB"
    assert data[12:] == bytes.fromhex("13" "6222020200112233445F" "0002" "4142")


def test_bcd_pad_nibble_is_checked_where_the_count_says_it_is():
    codec = codec_for(OPTIONS["bcd pad F"])
    good = codec.encode(Message("0200", {22: "021"}))
    assert good[-2:] == b"\xF0\x21"
    with pytest.raises(DecodeError, match="pad nibble is not F") as info:
        codec.decode(good[:-2] + b"\x00\x21")
    assert info.value.path == "22"


@pytest.mark.parametrize(("entry", "value", "reason"), [
    ("encoding", "bcd", "needs type n or z"),
    ("encoding", "utf-16", "encoding must be one of"),
    ("prefix_encoding", "ebcdic", "need a length prefix"),
    ("counts", "nibbles", "counts must be one of"),
    ("pad", "E", "pad must be one of"),
    ("align", "left", "not BCD"),
])
def test_bad_field_options_are_refused_with_entry_and_reason(entry: str, value: str, reason: str):
    field = {"type": "ans", "length": 8, entry: value}
    with pytest.raises(SpecError, match=reason) as info:
        dialect({"41": field})
    assert "fields.41" in str(info.value)


@pytest.mark.parametrize(("top", "entry"), [
    ({"length": "ascii5"}, "length"),
    ({"bitmap": "base64"}, "bitmap"),
    ({"text": "gbk"}, "text"),
    ({"length": "none", "length_includes_self": True}, "length_includes_self"),
    ({"prefixes": "binary", "fields": {"48": {"type": "n", "max": 300, "prefix": "LL"}}}, "fields.48"),
])
def test_bad_dialect_options_are_refused_with_entry(top: dict[str, Any], entry: str):
    with pytest.raises(SpecError) as info:
        dialect(**top)
    assert f"dialect spec: {entry}:" in str(info.value)


# --- framing options ------------------------------------------------------------------------------

@pytest.mark.parametrize(("top", "head"), [
    ({"length": "binary2"}, "0003"),
    ({"length": "binary4"}, "00000003"),
    ({"length": "ascii4"}, "30303033"),
    ({"length": "bcd2"}, "0003"),
    ({"length": "binary2", "length_includes_self": True}, "0005"),
    ({"length": "ascii4", "length_includes_self": True}, "30303037"),
])
def test_length_headers(top: dict[str, Any], head: str):
    framing = Framing(dialect(**top))
    frame = framing.frame(b"MSG")
    assert frame == bytes.fromhex(head) + b"MSG"
    reader = framing.reader()
    assert reader.feed(frame[:1]) == [] and reader.feed(frame[1:] + frame) == [b"MSG", b"MSG"]


def test_bcd2_length_above_99_and_a_bad_header():
    framing = Framing(dialect(length="bcd2"))
    assert framing.frame(b"x" * 1234)[:2] == b"\x12\x34"
    with pytest.raises(DecodeError, match="not bcd2") as info:
        framing.reader().feed(b"\x1A\x00")
    assert info.value.path == "length"
    with pytest.raises(DecodeError, match="not ascii4"):
        Framing(dialect(length="ascii4")).reader().feed(b"00x1")


def test_no_length_header_and_a_header_without_tpdu():
    framing = Framing(dialect(length="none", header="4142"))
    assert framing.frame(b"MSG") == b"ABMSG"
    unframed = framing.unframe(b"ABMSG")
    assert unframed.tpdu is None and unframed.header == b"AB" and unframed.message == b"MSG"
    with pytest.raises(ValueError, match="delimits"):
        framing.reader()


def test_describe_reads_a_device_frame_by_its_length_header():
    from protocol.describe import describe

    d = OPTIONS["ebcdic everything"]
    d = replace(d, length_header="ascii4")
    frame = Framing(d).frame(codec_for(d).encode(Message("0200", {3: "000000", 41: "TERM0001"})))
    assert frame[:4] == b"0034"  # 4 MTI + 16 hex bitmap + 6 + 8
    desc = describe(frame, d)
    assert desc.error is None and desc.framed and desc.length == 34
    assert desc.mti == "0200" and desc.fields[41]["value"] == "TERM0001"


# --- GBK text (merchant names in fields 43 and 63 of CUP frames) ----------------------------------

GBK = dialect({
    **FIELDS,
    "43": {"type": "ans", "length": 40, "encoding": "gbk"},
    "63": {"type": "ans", "max": 163, "prefix": "LLL", "encoding": "gbk"},
}, digits="bcd", prefixes="bcd")


def test_gbk_text_counts_bytes_and_agrees_with_pyiso8583():
    message = Message("0200", {43: "银联商户 POSEMU".ljust(40 - 4), 63: "操作员01"})
    ours = codec_for(GBK).encode(message)
    name = "银联商户 POSEMU".encode("gbk")
    # 43: 4 Chinese characters are 8 bytes, so 32 characters fill its 40 bytes; 63: LLL BCD 0008
    assert ours[12:52] == name + b" " * (40 - len(name))  # after MTI (4) and bitmap (8)
    assert ours[52:] == b"\x00\x08" + "操作员01".encode("gbk")
    assert codec_for(GBK).decode(ours) == message
    theirs, _ = iso8583.encode(to_pyiso8583_doc(message, GBK), pyiso8583_spec(GBK))
    assert bytes(theirs) == ours


def test_gbk_refuses_what_it_cannot_carry():
    from protocol.errors import EncodeError

    with pytest.raises(EncodeError, match="outside GBK") as info:
        codec_for(GBK).encode(Message("0200", {63: "café ☕"}))
    assert info.value.path == "63"
    with pytest.raises(EncodeError, match="too long"):
        codec_for(GBK).encode(Message("0200", {43: "银" * 21}))
    with pytest.raises(DecodeError, match="not GBK") as decoded:
        codec_for(GBK).decode(codec_for(GBK).encode(Message("0200", {63: "ab"}))[:-2] + b"\x81\x20")
    assert decoded.value.path == "63"
    with pytest.raises(SpecError, match="gbk is for text"):
        dialect({"3": {"type": "n", "length": 6, "encoding": "gbk"}})

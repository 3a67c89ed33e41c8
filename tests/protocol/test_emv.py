"""BER-TLV and EMV field 55 by name, masked; field 60 read by its parts in every shape."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import emv, tlv
from protocol.codec import get_codec
from protocol.describe import describe, render
from protocol.dialects import CUP
from protocol.errors import DecodeError
from protocol.framing import Framing
from protocol.message import Message
from protocol.subfields import split

PAN = "6222020200112233445"
# Tags as EMV 4.3 Book 3 Annex B encodes them, spelled by hand: 9F26 (two-byte tag, its first
# byte's low five bits all set), 8-byte value; 5A with the PAN in BCD padded with F; 5F20 name.
FIELD_55 = bytes.fromhex(
    "9F2608" "1122334455667788"
    "5A0A" "6222020200112233445F"
    "5F2007" + "4A4F484E20444F".lower()  # "JOHN DO"
    + "9F2701" "80"
    + "57" "13" + "6222020200112233445D2512201" "0000000000F"
)


def test_parse_known_tlvs():
    tags = tlv.parse(FIELD_55)
    assert [t for t, _ in tags] == ["9F26", "5A", "5F20", "9F27", "57"]
    assert dict(tags)["9F26"] == bytes.fromhex("1122334455667788")
    assert tlv.build(tags) == FIELD_55


def test_long_lengths_use_81_and_82():
    assert tlv.build([("DF31", bytes(200))])[:4] == bytes.fromhex("DF3181C8")
    assert tlv.build([("71", bytes(300))])[:4] == bytes.fromhex("7182012C")
    assert tlv.parse(tlv.build([("71", bytes(300))])) == [("71", bytes(300))]


@given(st.lists(st.tuples(st.sampled_from(sorted(emv.TAG_NAMES)), st.binary(max_size=300)), max_size=8))
def test_tlv_round_trips(tlvs):
    assert tlv.parse(tlv.build(tlvs)) == tlvs


@pytest.mark.parametrize(("data", "path"), [
    (bytes.fromhex("9F2608112233"), "55.9F26"),
    (bytes.fromhex("9F"), "55"),
    (bytes.fromhex("9F26"), "55.9F26"),
    (bytes.fromhex("9F2683000001"), "55.9F26"),
])
def test_bad_tlv_is_located(data, path):
    with pytest.raises(DecodeError) as info:
        tlv.parse(data)
    assert info.value.path == path


def test_sensitive_tags_are_masked_and_the_rest_named():
    shown = {t["tag"]: t for t in emv.describe_tags(FIELD_55)}
    assert shown["5A"]["value"] == "622202*********3445"
    assert shown["57"]["value"] == "<track 2 equivalent data masked, 19 bytes>"
    assert shown["5F20"]["value"] == "<cardholder name masked, 7 bytes>"
    assert shown["9F26"] == {"tag": "9F26", "name": "Application cryptogram (ARQC)",
                             "value": "1122334455667788"}


def test_a_template_is_masked_whole_because_it_may_hold_card_data():
    """70 (a record template, constructed: bit 6 of its first byte) around a 57 track: the
    inner tags are not read, so the whole value is shown by size only."""
    track = bytes.fromhex("57" "13" "6222020200112233445D2512201" "0000000000F")
    shown = emv.describe_tags(tlv.build([("70", track), ("9F27", b"\x80")]))
    assert shown[0]["value"] == f"<template masked, {len(track)} bytes>"
    assert "6222020200112233445" not in json.dumps(shown) and shown[1]["value"] == "80"


def test_a_run_of_high_bytes_is_no_tag_and_is_not_named_by_its_bytes():
    """Digits of a PAN in BCD (0x9x) read as tag bytes would otherwise be printed as a tag."""
    with pytest.raises(DecodeError) as info:
        tlv.parse(bytes.fromhex("9F9999990101"))
    assert "9999" not in str(info.value) and info.value.offset == 0


def test_describe_a_chip_purchase_shows_tags_by_name_and_no_card_data():
    icc = emv.purchase_tags("000000001234", "0156", "251130", bytes.fromhex("A1B2C3D4"), 7,
                            bytes.fromhex("0102030405060708")) + FIELD_55[11:]  # less its 9F26
    message = Message("0200", {
        2: PAN, 3: "000000", 4: "000000001234", 11: "000042", 22: "051", 23: "001", 25: "00",
        41: "TERM0001", 43: "POSEMU TEST SHOP", 49: "156", 55: icc, 59: "A2" "QR0001",
        60: "22000001000501",
    })
    frame = Framing(CUP).frame(get_codec("cup").encode(message))
    desc = describe(frame, CUP)
    assert desc.error is None
    text, as_json = desc.text(), render(desc, True)
    for shown in (text, as_json):
        assert PAN not in shown and "4A4F484E" not in shown.upper() and "JOHN" not in shown
    tags = {t["tag"]: t["name"] for t in desc.fields[55]["tags"]}
    assert tags["9F26"] == "Application cryptogram (ARQC)" and tags["9F37"] == "Unpredictable number"
    assert "5A" in tags and "9F36" in tags and "95" in tags
    assert "Application cryptogram (ARQC)" in text
    assert json.loads(as_json)["fields"]["60"]["subfields"] == {
        "60.1": "22", "60.2": "000001", "60.3": "000", "60.4": "5", "60.5": "0", "60.6": "1",
    }
    assert desc.fields[43]["value"] == "POSEMU TEST SHOP".ljust(40)  # ans40, space-padded


@pytest.mark.parametrize(("value", "parts"), [
    ("22000001", {"60.1": "22", "60.2": "000001"}),
    ("2200000100", {"60.1": "22", "60.2": "000001", "60.3": "00"}),
    ("22000001000", {"60.1": "22", "60.2": "000001", "60.3": "000"}),
    ("2200000100050100000", {"60.1": "22", "60.2": "000001", "60.3": "000", "60.4": "5",
                             "60.5": "0", "60.6": "1", "60.7": "000", "60.rest": "00"}),
])
def test_field_60_is_read_as_far_as_it_goes(value, parts):
    assert split(CUP.fields[60], value) == parts


def test_field_55_that_is_not_tlv_is_said_so():
    message = Message("0200", {3: "000000", 55: b"\x9f\x26\x08\x01"})
    desc = describe(get_codec("cup").encode(message), CUP.with_header(CUP.header))
    # a bare message (no TPDU) is named as such; with the TPDU the field shows its error
    assert desc.error is not None and "bare message" in desc.error
    framed = Framing(CUP).frame(get_codec("cup").encode(message))
    info = describe(framed, CUP).fields[55]
    assert info["value"] == "<ICC data masked, 4 bytes>" and "55.9F26" in info["tags_error"]

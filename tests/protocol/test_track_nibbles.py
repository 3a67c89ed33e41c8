"""Track 2 partly enciphered (hex nibbles A-F in field 35), as real CUP frames carry it: BCD
tracks encode and decode every nibble, `=` stays nibble D, and the track is masked as any."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.codec import codec_for, get_codec
from protocol.describe import describe
from protocol.dialects import CUP, ISO87
from protocol.errors import EncodeError
from protocol.framing import Framing
from protocol.mask import mask_in_place, masked_fields
from protocol.message import Message
from protocol.spec import dialect_from_data

TRACK = "621234A9C3F0B1E2=2812101"
# 3 = 000000; 35: LL BCD 24 digits, the PAN's enciphered nibbles as they are, '=' as D
FRAME = "0200" "2000000020000000" "000000" "24" "621234A9C3F0B1E2D2812101"


def test_a_cup_track_with_hex_nibbles_round_trips_byte_for_byte() -> None:
    codec = get_codec("cup")
    message = Message("0200", {3: "000000", 35: TRACK})
    assert codec.encode(message).hex().upper() == FRAME
    assert codec.decode(bytes.fromhex(FRAME)) == message


def test_spec_options_take_hex_nibbles_too() -> None:
    """The general (spec file) path: BCD track, pad F, a prefix counting bytes."""
    dialect = dialect_from_data({"name": "dev", "digits": "bcd", "prefixes": "bcd",
                                 "fields": {"35": {"type": "z", "max": 37, "prefix": "LL",
                                                   "counts": "bytes", "pad": "F"}}}, ISO87)
    codec = codec_for(dialect)
    odd = "621234A9C3F0B1E2=281210"  # 23 nibbles: an F pad
    data = codec.encode(Message("0200", {35: odd}))
    assert data[-13:].hex().upper() == "12621234A9C3F0B1E2D281210F"  # BCD 12 bytes
    assert codec.decode(data).fields[35] == odd


@given(st.text("0123456789ABCEF", min_size=1, max_size=36), st.integers(0, 36))
def test_any_hex_track_round_trips_in_cup(body: str, at: int) -> None:
    track = body[:at] + "=" + body[at:] if at < len(body) else body
    codec = get_codec("cup")
    message = Message("0200", {35: track[:37]})
    assert codec.decode(codec.encode(message)) == message


@pytest.mark.parametrize("bad", ["6212D4", "6212a4", "6212 4"])
def test_values_a_bcd_track_cannot_carry_are_refused(bad: str) -> None:
    with pytest.raises(EncodeError, match="hex nibble A-F"):
        get_codec("cup").encode(Message("0200", {35: bad}))


def test_an_ascii_track_still_takes_only_digits_and_separator() -> None:
    with pytest.raises(EncodeError, match="digit or '='"):
        get_codec("iso87").encode(Message("0200", {35: TRACK}))


def test_an_enciphered_track_is_masked_in_fields_describe_and_hex() -> None:
    message = Message("0200", {3: "000000", 35: TRACK})
    assert masked_fields(message, CUP)[35] == "<track data masked, 24 chars>"
    plain = replace(CUP, tpdu=False, header=b"")
    data = codec_for(plain).encode(message)
    text = describe(Framing(plain).frame(data), plain).text()
    assert "track data masked" in text and "A9C3F0" not in text and TRACK not in text
    _, spans = codec_for(plain).decode_spans(data)
    assert "A9C3F0" not in mask_in_place(data, spans, plain).hex().upper()
    assert ISO87.fields[35].mask == "track"

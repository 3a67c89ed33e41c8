"""The public strategies themselves: they generate what they promise."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import strategies as ps
from protocol.codec import get_codec
from protocol.dialects import CUP, ISO87
from protocol.framing import Framing
from protocol.spec import FieldSpec


@pytest.mark.parametrize("spec", [
    FieldSpec(3, "n6", "n", 6), FieldSpec(2, "n..19", "n", 19, 2), FieldSpec(35, "z..37", "z", 37, 2),
    FieldSpec(41, "ans8", "ans", 8), FieldSpec(44, "ans..25", "ans", 25, 2), FieldSpec(7, "a4", "a", 4),
    FieldSpec(28, "xn9", "xn", 9), FieldSpec(20, "xn..12", "xn", 12, 2), FieldSpec(52, "b8", "b", 8),
    FieldSpec(62, "b...999", "b", 999, 3), FieldSpec(45, "ns..40", "ns", 40, 2),
], ids=lambda s: s.name)
@settings(max_examples=60)
@given(data=st.data())
def test_field_values_fit_their_spec(spec, data):
    value = data.draw(ps.field_values(spec))
    if spec.prefix:
        assert len(value) <= spec.length
    else:
        assert len(value) == spec.length
    if spec.kind == "b":
        assert isinstance(value, bytes)
        return
    assert isinstance(value, str) and value.isascii()
    if spec.kind == "n":
        assert value == "" or value.isdigit()
    elif spec.kind == "z":
        assert set(value) <= set("0123456789=") and value.count("=") <= 1
    elif spec.kind == "xn":
        assert value[0] in "CD" and value[1:].isdigit()
    elif spec.kind == "a":
        assert value == "" or value.isalpha()
    else:
        assert all(32 <= ord(c) < 127 for c in value)


def test_field_values_reach_the_maximum_sometimes():
    spec = ISO87.fields[62]
    sizes: set[int] = set()

    @settings(max_examples=300, database=None)
    @given(ps.field_values(spec))
    def collect(value):
        sizes.add(len(value))

    collect()
    assert 999 in sizes and min(sizes) < 50


@settings(max_examples=50)
@given(ps.messages("cup", mti="0200", fields=[2, 3, 4, 64], required=[11]))
def test_messages_respect_mti_fields_and_required(message):
    assert message.mti == "0200"
    assert 11 in message.fields and set(message.fields) <= {2, 3, 4, 11, 64}


def test_messages_refuse_undefined_fields():
    with pytest.raises(ValueError, match="does not define field 5"):
        ps.messages(CUP, fields=[5])
    with pytest.raises(ValueError, match="unknown broken-frame kind"):
        ps.broken_frames(CUP, kinds=["nope"])
    with pytest.raises(ValueError, match="applies"):
        ps.broken_frames(ISO87, kinds=["undefined_field"])


@settings(max_examples=50)
@given(ps.frames("cup"))
def test_cup_frames_carry_tpdu_and_header(frame):
    assert int.from_bytes(frame[:2], "big") == len(frame) - 2
    assert frame[2] == 0x60 and frame[7:13] == CUP.header
    get_codec("cup").decode(Framing(CUP).unframe(frame[2:]).message)


@settings(max_examples=50)
@given(ps.broken_frames("cup", kinds=["overlong_field"]))
def test_overlong_field_names_the_field_and_a_length_above_its_maximum(broken):
    assert broken.invalid and isinstance(broken.field, int)
    assert int(broken.detail.split()[1]) > CUP.fields[broken.field].length


def test_broken_frame_repr_explains_itself():
    broken = ps.BrokenFrame("appended", b"\x00\x01\xff", "1 byte(s) appended", "end")
    assert repr(broken) == "BrokenFrame('appended', '1 byte(s) appended', field='end', data=0001ff)"
    assert broken.invalid
    assert not ps.BrokenFrame("bit_flip", b"").invalid

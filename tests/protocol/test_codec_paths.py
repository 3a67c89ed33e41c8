"""Differential tests of the codec's fast paths against its general ones.

A bitmap's first decode goes field by field; a plan (runs of fixed fields checked as one slice)
takes over once the bitmap has decoded. A stamp splices per-field encodings into bytes encoded
once. Each must give exactly what the general path gives: the same message, or the same error
(field, offset, reason, partial message).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import strategies as ps
from protocol.codec import Codec
from protocol.errors import ProtocolError
from protocol.message import Message
from protocol.spec import Dialect

fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
_MESSAGES: dict[str, st.SearchStrategy[Message]] = {}


def messages(dialect: Dialect) -> st.SearchStrategy[Message]:
    """Messages with at least one field, the strategy built once per dialect (drawing from a
    new one per example makes Hypothesis see inconsistent data)."""
    if dialect.name not in _MESSAGES:
        _MESSAGES[dialect.name] = ps.messages(dialect, max_fields=8).filter(lambda m: m.fields)
    return _MESSAGES[dialect.name]


def outcome(codec: Codec, data: bytes) -> Message | tuple:
    try:
        return codec.decode(data)
    except ProtocolError as exc:
        return (type(exc), exc.field, exc.offset, str(exc), exc.partial)


@fixture_ok
@given(data=st.data())
def test_a_planned_decode_gives_what_the_field_by_field_one_gives(any_dialect, data):
    message = data.draw(messages(any_dialect), label="message")
    good = Codec(any_dialect).encode(message)
    # one byte changed, or the message cut: a plan's run must fall back exactly
    at = data.draw(st.integers(0, len(good) - 1), label="at")
    byte = data.draw(st.integers(0, 255), label="byte")
    variants = [good, good[:at], good[:at] + bytes([byte]) + good[at + 1:]]
    planned, unplanned = Codec(any_dialect), Codec(any_dialect)
    for variant in variants:
        planned._plans.clear()
        planned.decode(good)  # the bitmap has decoded once: its plan is made
        assert planned._plans, "the second decode of a bitmap must take its plan"
        unplanned._plans.clear()
        assert outcome(planned, variant) == outcome(unplanned, variant)


@fixture_ok
@given(data=st.data())
def test_a_bitmap_whose_fields_do_not_decode_gets_no_plan(any_dialect, data):
    codec = Codec(any_dialect)
    junk = codec.encode_mti("0200") + data.draw(st.binary(min_size=8, max_size=8)) + b"\xff" * 4
    try:
        codec.decode(junk)
    except ProtocolError as exc:
        if isinstance(exc.field, int) and exc.field > 1:  # failed inside the fields
            assert not codec._plans


@fixture_ok
@given(data=st.data())
def test_a_stamp_gives_what_encode_gives(any_dialect, data):
    codec = Codec(any_dialect)
    message = data.draw(messages(any_dialect), label="message")
    numbers = sorted(message.fields)
    varying = tuple(data.draw(st.lists(st.sampled_from(numbers), min_size=1, unique=True),
                              label="varying"))
    stamp = codec.stamp(message, varying)
    for _ in range(2):
        values = {n: data.draw(ps.field_values(any_dialect.fields[n]), label=f"field {n}")
                  for n in sorted(varying)}
        assert stamp(*values.values()) == codec.encode(Message(message.mti, {**message.fields, **values}))


@fixture_ok
@given(data=st.data())
def test_a_stamp_refuses_what_encode_refuses(any_dialect, data):
    codec = Codec(any_dialect)
    message = data.draw(messages(any_dialect), label="message")
    number = data.draw(st.sampled_from(sorted(message.fields)), label="varying")
    spec = any_dialect.fields[number]
    bad = "x" * (spec.length + 1) if spec.kind != "b" else b"x" * (spec.length + 1)
    try:
        codec.encode(Message(message.mti, {**message.fields, number: bad}))
    except ProtocolError as exc:
        expected = (type(exc), exc.field, str(exc))
    try:
        codec.stamp(message, (number,))(bad)
    except ProtocolError as exc:
        assert (type(exc), exc.field, str(exc)) == expected
    else:
        raise AssertionError("the stamp took a value encode refuses")

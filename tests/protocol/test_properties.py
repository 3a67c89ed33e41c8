"""Property tests: round trips, chunking, and that nothing but ProtocolError comes out of bad bytes.

`test_broken_frames_iso87` and `test_broken_frames_cup` are the CI's broken-frame budget: 5,000
examples per built-in dialect under the "ci" profile (CI set), 10,000 in all; a few hundred in a
developer's loop.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import strategies as ps
from protocol.codec import codec_for
from protocol.dialects import get_dialect
from protocol.errors import FramingError, ProtocolError
from protocol.framing import FrameReader, Framing
from protocol.mask import mask_pan, masked_fields
from protocol.message import Message
from protocol.spec import Dialect

BROKEN_PER_DIALECT = 5000 if os.environ.get("CI") else 300
fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


_STRATEGIES: dict[tuple, tuple[Dialect, st.SearchStrategy]] = {}


def strategy(factory, dialect: Dialect, **kwargs) -> st.SearchStrategy:
    """`factory(dialect, **kwargs)` built once per dialect: building one per example is slow."""
    key = (factory.__name__, id(dialect), tuple(sorted(kwargs.items())))
    hit = _STRATEGIES.get(key)
    if hit is None or hit[0] is not dialect:
        hit = _STRATEGIES[key] = (dialect, factory(dialect, **kwargs))
    return hit[1]


def check_error(exc: ProtocolError, size: int) -> None:
    """A ProtocolError that locates the problem: a field and a byte offset inside the input."""
    assert isinstance(exc, ProtocolError)
    assert exc.field is not None, str(exc)
    assert exc.offset is not None and 0 <= exc.offset <= size, str(exc)
    assert str(exc).startswith(f"field {exc.field}, offset {exc.offset}: ")


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(data)) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


def read_stream(dialect: Dialect, pieces: list[bytes]) -> list[Message | ProtocolError]:
    """What a server reads from a connection: FrameReader, then Framing.unframe + Codec.decode.

    Each frame's outcome is a Message or the ProtocolError it raised; a FramingError from the
    reader ends the stream. Any other exception escapes and fails the test.
    """
    reader = FrameReader()
    framing = Framing(dialect)
    codec = codec_for(dialect)
    total = sum(map(len, pieces))
    outcomes: list[Message | ProtocolError] = []
    try:
        for piece in pieces:
            for payload in reader.feed(piece):
                try:
                    unframed = framing.unframe(payload)
                    outcomes.append(codec.decode(unframed.message))
                except ProtocolError as exc:
                    check_error(exc, len(payload))
                    outcomes.append(exc)
    except FramingError as exc:
        check_error(exc, total)
        outcomes.append(exc)
    return outcomes


# --- valid data round-trips ------------------------------------------------------------------------

@fixture_ok
@given(data=st.data())
def test_encode_decode_identity(any_dialect, data):
    codec = codec_for(any_dialect)
    message = data.draw(strategy(ps.messages, any_dialect), label="message")
    encoded = codec.encode(message)
    assert codec.decode(encoded) == message
    assert codec.encode(codec.decode(encoded)) == encoded


@fixture_ok
@given(data=st.data())
def test_frames_decode_to_one_message(any_dialect, data):
    frame = data.draw(strategy(ps.frames, any_dialect), label="frame")
    (outcome,) = read_stream(any_dialect, [frame])
    assert isinstance(outcome, Message)
    framing = Framing(any_dialect)
    tpdu = framing.unframe(frame[2:]).tpdu
    assert framing.frame(codec_for(any_dialect).encode(outcome), tpdu=tpdu) == frame


@fixture_ok
@given(data=st.data())
def test_frame_reader_same_messages_whatever_the_chunking(any_dialect, data):
    messages = data.draw(st.lists(strategy(ps.messages, any_dialect, max_fields=4), min_size=1, max_size=3))
    codec = codec_for(any_dialect)
    framing = Framing(any_dialect)
    stream = b"".join(framing.frame(codec.encode(m)) for m in messages)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts")
    assert read_stream(any_dialect, split(stream, cuts)) == messages
    assert read_stream(any_dialect, [stream[i:i + 1] for i in range(len(stream))]) == messages
    assert read_stream(any_dialect, [stream]) == messages


@fixture_ok
@given(data=st.data())
def test_message_bytes_decode(any_dialect, data):
    encoded = data.draw(strategy(ps.message_bytes, any_dialect, max_fields=4))
    codec = codec_for(any_dialect)
    assert codec.encode(codec.decode(encoded)) == encoded


@fixture_ok
@given(data=st.data())
def test_encode_never_cuts_a_value_one_too_long(any_dialect, data):
    number = data.draw(st.sampled_from(sorted(any_dialect.fields)), label="field")
    spec = any_dialect.fields[number]
    # a value of the field's kind, exactly one character (or byte) longer than it may be
    longer = replace(spec, length=spec.length + 1, prefix=0)
    value = data.draw(ps.field_values(longer), label="value")
    message = Message("0200", {11: "000001"} if number != 11 and 11 in any_dialect.fields else {})
    message.fields[number] = value
    try:
        codec_for(any_dialect).encode(message)
    except ProtocolError as exc:
        assert exc.field == number
    else:
        raise AssertionError(f"field {number} ({spec.notation()}) took a value of {len(value)}")


# --- bad bytes: only ProtocolError ------------------------------------------------------------------

@fixture_ok
@given(data=st.data())
def test_arbitrary_bytes_decode_or_raise_protocol_error(any_dialect, data):
    codec = codec_for(any_dialect)
    # plain random bytes, and random bytes behind a valid MTI and bitmap to get past the header
    head = data.draw(st.sampled_from([b"", codec.encode_mti("0200") + data.draw(st.binary(min_size=8,
                                                                                          max_size=16))]))
    raw = head + data.draw(st.binary(max_size=200), label="raw")
    try:
        message = codec.decode(raw)
    except ProtocolError as exc:
        check_error(exc, len(raw))
        return
    # what decodes re-encodes to the same bytes, except that an empty secondary bitmap is dropped
    again = codec.encode(message)
    bitmap_at = codec.mti_length
    if raw[bitmap_at] & 0x80 and not any(raw[bitmap_at + 8:bitmap_at + 16]) and max(message.fields,
                                                                                      default=0) <= 64:
        assert again == raw[:bitmap_at] + bytes([raw[bitmap_at] & 0x7F]) + raw[bitmap_at + 1:bitmap_at + 8] \
            + raw[bitmap_at + 16:]
    else:
        assert again == raw


@fixture_ok
@given(data=st.data())
def test_arbitrary_streams_raise_only_protocol_error(any_dialect, data):
    stream = data.draw(st.binary(max_size=300), label="stream")
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=5), label="cuts")
    read_stream(any_dialect, split(stream, cuts))


def check_broken(dialect: Dialect, broken: ps.BrokenFrame, cut: int) -> None:
    outcomes = read_stream(dialect, split(broken.data, [cut]))
    first = outcomes[0] if outcomes else None
    if broken.invalid:
        assert not isinstance(first, Message), f"{broken.kind} frame accepted as a message"
    if broken.field is not None:
        assert isinstance(first, ProtocolError) and first.field == broken.field, first
    if broken.kind == "truncated":
        assert outcomes == []


# Built once, at import: the dedicated test's strategies (4 optional fields keep examples quick).
BROKEN = {name: ps.broken_frames(name, max_fields=4) for name in ("iso87", "cup")}


def _broken_test(name: str):
    dialect = get_dialect(name)

    @settings(max_examples=BROKEN_PER_DIALECT)
    @given(broken=BROKEN[name], cut=st.integers(0, 0xFFFF))
    def test(broken, cut):
        check_broken(dialect, broken, cut % (len(broken.data) + 1))

    test.__name__ = f"test_broken_frames_{name}"
    test.__doc__ = f"The CI's broken-frame budget for {name}: {BROKEN_PER_DIALECT} examples."
    return test


test_broken_frames_iso87 = _broken_test("iso87")
test_broken_frames_cup = _broken_test("cup")


@fixture_ok
@given(data=st.data())
def test_broken_frames_custom(custom_dialect, data):
    broken = data.draw(strategy(ps.broken_frames, custom_dialect), label="broken")
    cut = data.draw(st.integers(0, len(broken.data)), label="cut")
    check_broken(custom_dialect, broken, cut)


@pytest.mark.parametrize("kind", sorted(ps.BROKEN_KINDS))
@pytest.mark.parametrize("name", ["iso87", "cup"])
@settings(max_examples=25)
@given(data=st.data())
def test_every_broken_kind_on_its_own(name, kind, data):
    dialect = get_dialect(name)
    try:
        kinds = strategy(ps.broken_frames, dialect, kinds=(kind,))
    except ValueError:
        assert kind in {"undefined_field", "non_digit", "bad_bcd", "bad_tpdu"}
        return
    broken = data.draw(kinds)
    assert broken.kind == kind
    check_broken(dialect, broken, len(broken.data))


# --- masking ------------------------------------------------------------------------------------------

@fixture_ok
@given(data=st.data())
def test_masked_fields_never_show_secrets(any_dialect, data):
    sensitive = [n for n, f in any_dialect.fields.items() if f.mask]
    message = data.draw(strategy(ps.messages, any_dialect, required=tuple(sensitive), max_fields=4))
    out = masked_fields(message, any_dialect)
    assert sorted(out) == sorted(message.fields)
    for n in sensitive:
        value, shown, category = message.fields[n], out[n], any_dialect.fields[n].mask
        if category == "pan":
            assert shown == mask_pan(value)
            assert len(shown) == len(value)
            if len(value) > 10:
                assert shown[6:-4] == "*" * (len(value) - 10)
                assert shown[:6] == value[:6] and shown[-4:] == value[-4:]
            else:
                assert set(shown) <= {"*"}
        else:
            kind = {"track": "track data", "icc": "ICC data", "pin": "PIN block", "key": "key material",
                    "mac": "MAC"}[category]
            unit = "bytes" if isinstance(value, bytes) else "chars"
            assert shown == f"<{kind} masked, {len(value)} {unit}>"

"""TCP framing: length prefix, TPDU and header, and the incremental FrameReader."""

from __future__ import annotations

import pytest

from protocol.dialects import CUP, ISO87
from protocol.errors import FramingError, ProtocolError
from protocol.framing import DEFAULT_MAX_FRAME, MAX_FRAME, FrameReader, Framing, Tpdu, length_prefixed


def frames_of(*payloads: bytes) -> bytes:
    return b"".join(len(p).to_bytes(2, "big") + p for p in payloads)


PAYLOADS = [b"abc", b"x" * 300, b"\x00", bytes(range(256)) * 3]


def test_iso87_frame_is_length_then_message():
    assert Framing(ISO87).frame(b"0800" + bytes(8)) == b"\x00\x0c0800" + bytes(8)
    assert Framing(ISO87).unframe(b"hello").message == b"hello"


def test_cup_frame_has_tpdu_and_header():
    framing = Framing(CUP)
    frame = framing.frame(b"MSG", tpdu=Tpdu(destination=0x1234, source=0xABCD))
    assert frame == bytes.fromhex("000E" "601234ABCD" "603100000000") + b"MSG"
    unframed = framing.unframe(frame[2:])
    assert unframed.tpdu == Tpdu(0x1234, 0xABCD)
    assert unframed.header == CUP.header and unframed.message == b"MSG"
    # default TPDU, configurable header of the same size
    assert framing.frame(b"", header=b"ABCDEF") == bytes.fromhex("000B" "6000000000") + b"ABCDEF"
    with pytest.raises(FramingError, match="header must be 6 bytes"):
        framing.frame(b"", header=b"AB")
    custom = Framing(CUP.with_header(bytes.fromhex("603200000001")))
    assert custom.frame(b"M")[7:13] == bytes.fromhex("603200000001")


@pytest.mark.parametrize("payload", [b"", b"\x60\x00\x00\x00", b"\x60\x00\x00\x00\x00\x60\x31\x00\x00\x00"])
def test_cup_unframe_refuses_a_payload_too_short_for_tpdu_and_header(payload):
    with pytest.raises(FramingError) as info:
        Framing(CUP).unframe(payload)
    assert info.value.field == "TPDU" and info.value.offset == 0


def test_cup_unframe_refuses_a_bad_tpdu_id():
    with pytest.raises(FramingError, match="0x61"):
        Framing(CUP).unframe(bytes.fromhex("6100000000603100000000") + b"\x08\x00")


def test_length_prefixed_refuses_more_than_65535_bytes():
    assert length_prefixed(b"x" * MAX_FRAME)[:2] == b"\xff\xff"
    with pytest.raises(FramingError):
        length_prefixed(b"x" * (MAX_FRAME + 1))


def test_reader_whole_stream_at_once():
    reader = FrameReader()
    assert reader.feed(frames_of(*PAYLOADS)) == PAYLOADS
    assert reader.pending == 0


def test_reader_one_byte_at_a_time():
    reader = FrameReader()
    out: list[bytes] = []
    stream = frames_of(*PAYLOADS)
    ends = []
    for i in range(len(stream)):
        got = reader.feed(stream[i:i + 1])
        assert len(got) <= 1
        if got:
            ends.append(i + 1)
        out += got
    assert out == PAYLOADS
    # each frame came out on its last byte, not before and not later
    assert ends == [sum(len(p) + 2 for p in PAYLOADS[:k + 1]) for k in range(len(PAYLOADS))]
    assert reader.pending == 0


def test_reader_split_inside_the_length_prefix_and_pending():
    reader = FrameReader()
    stream = frames_of(b"hello", b"world")
    assert reader.feed(stream[:1]) == []
    assert reader.pending == 1
    assert reader.feed(stream[1:5]) == []
    assert reader.pending == 5
    assert reader.feed(stream[5:9]) == [b"hello"]
    assert reader.pending == 2
    assert reader.feed(stream[9:]) == [b"world"]
    assert reader.pending == 0
    assert reader.feed(b"") == []


def test_reader_refuses_an_oversized_length_before_buffering_it():
    reader = FrameReader(max_length=100)
    # only the two length bytes arrive: the refusal does not wait for the 101 bytes
    with pytest.raises(FramingError, match="exceeds the limit 100") as info:
        reader.feed(b"\x00\x65")
    assert info.value.field == "length" and info.value.offset == 0
    assert reader.pending == 0
    assert FrameReader(max_length=100).feed(frames_of(b"y" * 100)) == [b"y" * 100]


def test_reader_error_offset_counts_the_whole_stream():
    reader = FrameReader(max_length=DEFAULT_MAX_FRAME)
    assert reader.feed(frames_of(b"abc")) == [b"abc"]
    with pytest.raises(FramingError) as info:
        reader.feed(frames_of(b"de") + b"\xff\xff")
    assert info.value.offset == 5 + 4
    assert info.value.frames == [b"de"]  # complete before the bad length: not lost
    assert isinstance(info.value, ProtocolError)


def test_reader_refuses_zero_length():
    with pytest.raises(FramingError, match="zero-length") as info:
        FrameReader().feed(b"\x00\x00")
    assert info.value.field == "length" and info.value.offset == 0


@pytest.mark.parametrize("bad", [0, -1, MAX_FRAME + 1])
def test_reader_limit_must_be_sane(bad):
    with pytest.raises(ValueError):
        FrameReader(max_length=bad)

"""The link state machine alone, with a hand-held clock: every rule of PROTOCOL.md §5."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from protocol.link import (
    ACK,
    LRC_RANGES,
    NAK,
    DuplicateIgnored,
    Event,
    FrameRejected,
    Link,
    LinkError,
    LinkOptionError,
    LinkOptions,
    LinkUsageError,
    MessageReceived,
    MessageSent,
    Retransmitted,
    encode_frame,
)

OPTIONS = LinkOptions()
LENGTH_FRAMED = [LinkOptions(length="bcd"), LinkOptions(length="binary"),
                 LinkOptions(length="bcd", lrc="stx-etx")]
ALL_OPTIONS = [*LENGTH_FRAMED, LinkOptions(length="none"),
               *(LinkOptions(lrc=name) for name in LRC_RANGES)]

payloads = st.binary(min_size=1, max_size=300)
options = st.sampled_from(ALL_OPTIONS)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def feed(link: Link, chunks: list[bytes], start: float, step: float) -> float:
    """Feeds chunks `step` seconds apart; returns the time of the last one."""
    now = start
    for chunk in chunks:
        link.receive_data(chunk, now)
        now += step
    return now - step


def delivered(events: list[Event]) -> list[bytes]:
    return [e.payload for e in events if isinstance(e, MessageReceived)]


def test_frame_layout_is_stx_bcd_len_message_etx_lrc() -> None:
    # LRC = 00 ^ 02 ^ 01 ^ 02 ^ 03 = 02 (LEN through ETX).
    assert encode_frame(b"\x01\x02", OPTIONS) == bytes.fromhex("02 0002 0102 03 02")
    assert encode_frame(b"x" * 1234, OPTIONS)[1:3] == bytes.fromhex("1234")
    assert encode_frame(b"x" * 300, LinkOptions(length="binary"))[1:3] == (300).to_bytes(2, "big")


def test_dle_stuffing_escapes_stx_etx_and_dle_only() -> None:
    frame = encode_frame(b"\x02A\x03\x10", LinkOptions(length="none"))
    assert frame[:-1] == bytes.fromhex("02 1002 41 1003 1010 03")
    assert frame[-1] == 0x02 ^ 0x41 ^ 0x03 ^ 0x10 ^ 0x03  # over the unstuffed message and ETX


def test_round_trip_acks_and_reports_sent() -> None:
    a, b = Link(), Link()
    a.send(b"hello", 0.0)
    b.receive_data(a.data_to_send(), 0.1)
    assert delivered(b.events()) == [b"hello"]
    assert b.data_to_send() == bytes([ACK])
    a.receive_data(bytes([ACK]), 0.2)
    assert a.events() == [MessageSent(b"hello")]
    assert not a.sending and a.next_deadline() is None


def test_frames_queue_behind_the_one_awaiting_its_ack() -> None:
    a = Link()
    a.send(b"one", 0.0)
    a.send(b"two", 0.0)
    assert a.data_to_send() == encode_frame(b"one", OPTIONS)
    a.receive_data(bytes([ACK]), 0.5)
    assert a.data_to_send() == encode_frame(b"two", OPTIONS)


def test_nak_and_silence_retransmit_then_link_error_after_four_transmissions() -> None:
    a = Link()
    a.send(b"ping", 0.0)
    frame = a.data_to_send()
    a.receive_data(bytes([NAK]), 0.1)
    assert a.data_to_send() == frame
    assert a.events() == [Retransmitted(2, "NAK")]
    assert a.next_deadline() == pytest.approx(2.1)
    a.handle_timers(2.1)
    a.handle_timers(4.1)
    assert a.data_to_send() == frame * 2
    a.handle_timers(6.0)  # not yet
    assert a.data_to_send() == b""
    a.handle_timers(6.1)
    events = a.events()
    assert events[-1] == LinkError(b"ping", 4, "timeout")
    assert str(events[-1]).startswith("no ACK after 4 transmissions")
    assert a.data_to_send() == b"" and not a.sending


def test_the_ack_timer_runs_from_when_the_frame_has_left_the_port() -> None:
    a = Link()
    a.send(b"slow line", 0.0)
    a.data_to_send()
    a.transmitted(1.5)  # 1200 baud: the frame took 1.5 s to go out
    assert a.next_deadline() == pytest.approx(3.5)
    a.receive_data(encode_frame(b"peer", OPTIONS), 2.0)
    a.data_to_send()
    a.transmitted(2.1)  # only our ACK went out: the frame's timer stands
    assert a.next_deadline() == pytest.approx(3.5)


def test_retries_option_sets_the_transmission_count() -> None:
    a = Link(LinkOptions(retries=0))
    a.send(b"x", 0.0)
    a.receive_data(bytes([NAK]), 0.1)
    assert a.events() == [LinkError(b"x", 1, "NAK")]


def test_same_frame_within_four_ack_timeouts_is_acked_not_delivered() -> None:
    b = Link()
    frame = encode_frame(b"req", OPTIONS)
    b.receive_data(frame, 0.0)
    b.receive_data(frame, 7.9)
    assert b.data_to_send() == bytes([ACK, ACK])
    assert [type(e) for e in b.events()] == [MessageReceived, DuplicateIgnored]
    b.receive_data(frame, 8.1)  # past 4 x 2 s after the delivery: a new message
    assert delivered(b.events()) == [b"req"]


def test_ack_nak_off_sends_no_control_bytes_and_never_waits() -> None:
    opts = LinkOptions(ack_nak=False)
    a, b = Link(opts), Link(opts)
    a.send(b"one", 0.0)
    assert a.events() == [MessageSent(b"one")] and a.next_deadline() is None
    frame = a.data_to_send()
    b.receive_data(frame + frame + b"\x02\x00\x01x\x03\x00", 0.0)
    b.handle_timers(1.0)
    assert delivered(b.events()) == [b"one", b"one"]  # no retransmissions, so no duplicates
    assert b.data_to_send() == b""


@pytest.mark.parametrize(("wire", "reason"), [
    (bytes.fromhex("02 1A00"), "LEN 1A 00 is not bcd"),
    (bytes.fromhex("02 0000"), "outside 1..9999"),
    (bytes.fromhex("02 0001 41 04 00"), "no ETX"),
    (bytes.fromhex("02 0001 41 03 00"), "bad LRC"),
    (bytes.fromhex("02 0005 41"), "inter-byte timeout"),
    (bytes.fromhex("05 0005 41"), "noise outside a frame, starting with ENQ"),
])
def test_bad_frames_are_nak_ed_once_the_line_is_quiet(wire: bytes, reason: str) -> None:
    b = Link()
    b.receive_data(wire, 0.0)
    b.handle_timers(0.49)
    if "LRC" not in reason:  # a bad LRC ends a frame: NAK at once; the rest wait for quiet
        assert b.data_to_send() == b""
        b.handle_timers(0.5)
    assert b.data_to_send() == bytes([NAK])
    (event,) = b.events()
    assert isinstance(event, FrameRejected) and reason in event.reason


def test_the_rest_of_a_bad_frame_cannot_start_a_bogus_one() -> None:
    # The declared length is not BCD; an embedded good frame must not be taken for a message.
    b = Link()
    b.receive_data(bytes.fromhex("02 AB") + encode_frame(b"bogus", OPTIONS), 0.0)
    b.handle_timers(1.0)
    assert delivered(b.events()) == []


def test_options_refuse_what_cannot_work() -> None:
    for bad in ({"length": "ascii"}, {"lrc": "crc"}, {"retries": -1}, {"ack_timeout": 0},
                {"inter_byte_timeout": 3.0}, {"max_length": 10000}):
        with pytest.raises(LinkOptionError):
            LinkOptions(**bad)  # type: ignore[arg-type]
    with pytest.raises(LinkUsageError):
        Link().send(b"", 0.0)
    with pytest.raises(LinkUsageError):
        Link().send(b"x" * 10000, 0.0)


def test_event_reprs_never_show_a_payload() -> None:
    assert repr(MessageReceived(b"4761739001010119")) == "MessageReceived(<16 bytes>)"
    assert "4761" not in repr(LinkError(b"4761739001010119", 4, "timeout"))


# --- properties ----------------------------------------------------------------------------------

@given(options, st.lists(payloads, min_size=1, max_size=4),
       st.lists(st.integers(min_value=0, max_value=2000), max_size=40))
def test_frames_survive_any_chunking(opts: LinkOptions, messages: list[bytes],
                                     cuts: list[int]) -> None:
    wire = b"".join(encode_frame(m, opts) for m in messages)
    b = Link(opts)
    last = feed(b, chunked(wire, cuts), 0.0, opts.inter_byte_timeout / 2)
    b.handle_timers(last + 10)
    # back to back, identical messages are, by §5, one message retransmitted
    expected = [m for i, m in enumerate(messages) if i == 0 or m != messages[i - 1]]
    assert delivered(b.events()) == expected
    assert set(b.data_to_send()) <= {ACK}


@given(st.sampled_from(LENGTH_FRAMED), payloads, st.data(),
       st.lists(st.integers(min_value=0, max_value=400), max_size=10))
def test_any_single_corrupted_byte_is_nak_ed_and_not_delivered(
        opts: LinkOptions, payload: bytes, data: st.DataObject, cuts: list[int]) -> None:
    frame = encode_frame(payload, opts)
    index = data.draw(st.integers(min_value=0, max_value=len(frame) - 1), label="index")
    value = data.draw(st.integers(min_value=0, max_value=255).filter(lambda v: v != frame[index]),
                      label="value")
    corrupted = frame[:index] + bytes([value]) + frame[index + 1:]
    b = Link(opts)
    last = feed(b, chunked(corrupted, cuts), 0.0, 0.01)
    b.handle_timers(last + opts.inter_byte_timeout)
    got = delivered(b.events())
    if index >= 3:  # framing intact: the LRC must catch it
        assert got == []
        assert b.data_to_send() == bytes([NAK])
    else:  # a hit STX or LEN moves the frame's bounds: only a frame inside the bytes can pass
        assert all(encode_frame(p, opts) in corrupted for p in got)
        assert payload not in got
        assert NAK in b.data_to_send() or got


@given(options, payloads, st.data())
def test_a_cut_frame_is_nak_ed_and_its_retransmission_delivered_once(
        opts: LinkOptions, payload: bytes, data: st.DataObject) -> None:
    frame = encode_frame(payload, opts)
    cut = data.draw(st.integers(min_value=1, max_value=len(frame) - 1), label="cut")
    b = Link(opts)
    b.receive_data(frame[:cut], 0.0)
    b.handle_timers(opts.inter_byte_timeout)
    assert delivered(b.events()) == [] and b.data_to_send() == bytes([NAK])
    b.receive_data(frame, opts.ack_timeout)
    assert delivered(b.events()) == [payload] and b.data_to_send() == bytes([ACK])


@given(st.sampled_from(LENGTH_FRAMED), payloads, st.integers(min_value=1, max_value=9999))
def test_a_wrong_length_is_nak_ed_and_not_delivered(opts: LinkOptions, payload: bytes,
                                                    length: int) -> None:
    assume(length != len(payload))
    frame = encode_frame(payload, opts)
    wrong = frame[:1] + encode_frame(b"x" * length, opts)[1:3] + frame[3:]
    b = Link(opts)
    b.receive_data(wrong, 0.0)
    b.handle_timers(opts.inter_byte_timeout)
    got = delivered(b.events())
    # §5: an XOR LRC cannot catch a shorter length that lands on a message byte equal to ETX
    # followed by one equal to the shortened frame's LRC; then that frame is in the bytes.
    assert all(encode_frame(p, opts) in wrong for p in got)
    assert payload not in got
    assert NAK in b.data_to_send() or got


@given(options, payloads, st.integers(min_value=1, max_value=3),
       st.floats(min_value=0.0, max_value=0.5))
def test_a_retransmission_after_lost_acks_is_delivered_once(
        opts: LinkOptions, payload: bytes, lost: int, delay: float) -> None:
    a, b = Link(opts), Link(opts)
    now = 0.0
    a.send(payload, now)
    received: list[Event] = []
    for _ in range(lost):  # the frame arrives, its ACK does not; the sender times out
        b.receive_data(a.data_to_send(), now + delay)
        received += b.events()
        assert b.data_to_send() == bytes([ACK])
        now += opts.ack_timeout
        a.handle_timers(now)
    b.receive_data(a.data_to_send(), now + delay)
    received += b.events()
    a.receive_data(b.data_to_send(), now + 2 * delay)
    assert delivered(received) == [payload]
    assert sum(isinstance(e, DuplicateIgnored) for e in received) == lost
    assert a.events()[-1] == MessageSent(payload)


@given(options, st.lists(st.tuples(st.binary(max_size=50),
                                   st.floats(min_value=0.0, max_value=3.0)), max_size=20))
def test_junk_never_raises_and_only_yields_events(opts: LinkOptions,
                                                  chunks: list[tuple[bytes, float]]) -> None:
    link = Link(opts)
    link.send(b"pending", 0.0)
    now = 0.0
    for chunk, step in chunks:
        now += step
        link.receive_data(chunk, now)
        link.handle_timers(now)
    for event in link.events():
        assert isinstance(event, Event)
    assert set(link.data_to_send()) - set(encode_frame(b"pending", opts)) <= {ACK, NAK}

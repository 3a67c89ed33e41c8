"""The serial relay on real kernel ptys, byte by byte: noise breaks a frame's LRC (so a real
receiver NAKs it), `frames` limits it, a cut passes the bytes before it and nothing after, and
the counts say what crossed."""

from __future__ import annotations

import os
import select
import time
import tty
from collections.abc import Iterator

import pytest

from protocol.link import ACK, NAK, BadFrame, FrameParser, GoodFrame, LinkOptions, encode_frame
from terminal.scenario.serial_relay import LineFault, SerialRelay

WAIT = 3.0
QUIET = 0.5
"""How long a line that must stay silent is watched (the relay passes bytes in milliseconds)."""
ANSWER = b"\x60\x00\x00\x00\x00" + b"0810 answer with keys"
FRAME = encode_frame(ANSWER, LinkOptions())


class Ends:
    """The host's side (a pty master the relay's port is the slave of) and the terminal's."""

    def __init__(self, fault: LineFault) -> None:
        self.host, slave = os.openpty()
        tty.setraw(slave)
        self.relay = SerialRelay(os.ttyname(slave), fault)
        os.close(slave)
        self.terminal = os.open(self.relay.path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.terminal)

    def read(self, fd: int, size: int, wait: float = WAIT) -> bytes:
        data = b""
        deadline = time.monotonic() + wait
        while len(data) < size and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([fd], [], [], min(left, 0.3))
            if not ready:
                if data:
                    break  # quiet after some bytes: that is all that came
                continue
            data += os.read(fd, size - len(data))
        return data

    def close(self) -> None:
        self.relay.close()
        os.close(self.terminal)
        os.close(self.host)


@pytest.fixture
def ends(request: pytest.FixtureRequest) -> Iterator[Ends]:
    made = Ends(request.param)
    yield made
    made.close()


def parsed(data: bytes) -> list[object]:
    return FrameParser(LinkOptions()).feed(data, 0.0)


@pytest.mark.parametrize("ends", [LineFault("flip", offset=3, frames=1)], indirect=True)
def test_noise_breaks_the_lrc_of_the_first_frame_only(ends: Ends) -> None:
    os.write(ends.host, FRAME)
    first = ends.read(ends.terminal, len(FRAME))
    assert len(first) == len(FRAME) and first != FRAME
    assert [type(t) for t in parsed(first)] == [BadFrame]  # a receiver NAKs it: bad LRC
    os.write(ends.terminal, bytes([NAK]))
    assert ends.read(ends.host, 1) == bytes([NAK])
    os.write(ends.host, FRAME)  # the host sends it again: this time it passes untouched
    assert ends.read(ends.terminal, len(FRAME)) == FRAME
    os.write(ends.terminal, bytes([ACK]))
    assert ends.read(ends.host, 1) == bytes([ACK])
    counts, notes = ends.relay.take()
    assert counts["answers"] == 2 and counts["answer_repeats"] == 1 and counts["damaged"] == 1
    assert counts["terminal_naks"] == 1 and counts["terminal_acks"] == 1
    assert [text for _, text in notes][:1] == ["line noise: a byte of an answer frame flipped"]
    assert ends.relay.take()[0]["answers"] == 0  # a take starts the counts over


@pytest.mark.parametrize("ends", [LineFault("cut", offset=7)], indirect=True)
def test_a_cut_passes_the_bytes_before_it_and_nothing_after(ends: Ends) -> None:
    os.write(ends.host, FRAME)
    assert ends.read(ends.terminal, len(FRAME)) == FRAME[:7]
    os.write(ends.terminal, bytes([NAK]))
    os.write(ends.host, FRAME)
    assert ends.read(ends.host, 1, QUIET) == b"" and ends.read(ends.terminal, 1, QUIET) == b""
    counts, _ = ends.relay.take()
    assert counts["cut"] and counts["dropped"] == 2 and counts["terminal_naks"] == 1


@pytest.mark.parametrize("ends", [LineFault("clean")], indirect=True)
def test_a_clean_line_passes_frames_both_ways(ends: Ends) -> None:
    os.write(ends.terminal, FRAME)
    assert [type(t) for t in parsed(ends.read(ends.host, len(FRAME)))] == [GoodFrame]
    os.write(ends.host, FRAME)
    assert ends.read(ends.terminal, len(FRAME)) == FRAME
    counts, _ = ends.relay.take()
    assert counts["requests"] == 1 and counts["answers"] == 1 and counts["damaged"] == 0

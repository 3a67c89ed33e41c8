"""A refused length header says what its bytes look like instead (issue 18: not just "TPDU id
must be 0x60" or a length over the limit)."""

from __future__ import annotations

import pytest

from protocol.dialects import CUP, ISO87
from protocol.errors import FrameDecodeError
from protocol.framing import Framing


@pytest.mark.parametrize(("data", "hint"), [
    (b"0048" + b"0800" + bytes(44), 'reads as a 4-digit ASCII length (spec length = "ascii4")'),
    (b"0800" + bytes(40), "or an ASCII MTI without a length"),
    (bytes.fromhex("6000010000") + bytes(40), "0x60 starts a TPDU: a frame without its length header?"),
])
def test_a_refused_length_names_the_likely_mistake(data: bytes, hint: str) -> None:
    with pytest.raises(FrameDecodeError, match="exceeds the limit") as caught:
        Framing(ISO87).reader().feed(data)
    assert hint in str(caught.value) and caught.value.path == "length"


def test_a_bare_cup_message_says_so() -> None:
    message = bytes.fromhex("0200") + bytes(20)
    with pytest.raises(FrameDecodeError, match="reads as MTI 0200: a bare message"):
        Framing(CUP).unframe(message)


def test_a_sound_length_gets_no_hint() -> None:
    with pytest.raises(FrameDecodeError) as caught:
        Framing(ISO87).reader(max_length=4).feed(b"\x00\x05hello")
    assert str(caught.value).endswith("exceeds the limit 4")

"""$POSEMU_HOST_CLOCK_OFFSET: how a scenario moves the serving host's clock."""

from __future__ import annotations

import time

import pytest

from host.clock import CLOCK_OFFSET_ENV, serving_clock
from protocol.clock import system_clock


def test_no_offset_is_the_system_clock() -> None:
    assert serving_clock({}) is system_clock
    assert serving_clock({CLOCK_OFFSET_ENV: ""}) is system_clock


def test_an_offset_moves_the_clock() -> None:
    before = time.time()
    moved = serving_clock({CLOCK_OFFSET_ENV: "90000"})()
    assert before + 90000 <= moved <= time.time() + 90000


@pytest.mark.parametrize("text", ["25h", "nan", "inf", "x"])
def test_anything_but_a_finite_number_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        serving_clock({CLOCK_OFFSET_ENV: text})

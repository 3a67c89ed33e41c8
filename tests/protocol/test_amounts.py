"""One amount rule for host and terminal: ASCII digits, at most two decimals, field 4's size."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.amounts import MAX_MINOR, format_amount, parse_amount


@pytest.mark.parametrize(
    ("text", "minor"), [("12.34", 1234), ("5", 500), ("0.5", 50), ("9999999999.99", MAX_MINOR)]
)
def test_amounts(text: str, minor: int) -> None:
    assert parse_amount(text) == minor
    assert parse_amount(format_amount(minor)) == minor


@pytest.mark.parametrize(
    "text",
    ["", "1.234", "-1", "abc", "0", "0.00", "1e3", "nan", "NaN", "inf", "-inf", "1e400", " 1", "1 ",
     "1.", ".5", "+1", "1_000", "１２", "١٢", "12\n", "10000000000", "99999999999.99"],
)
def test_bad_amounts_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_amount(text)


def test_zero_only_when_asked_for() -> None:
    assert parse_amount("0", allow_zero=True) == 0
    assert parse_amount("0.00", allow_zero=True) == 0


def test_a_refusal_never_echoes_a_long_or_unprintable_input() -> None:
    with pytest.raises(ValueError) as info:
        parse_amount("9" * 200)
    assert len(str(info.value)) < 120
    with pytest.raises(ValueError) as info:
        parse_amount("1\x1b[2J")
    assert "\x1b" not in str(info.value)


@given(st.integers(min_value=0, max_value=MAX_MINOR))
def test_format_then_parse_is_the_identity(minor: int) -> None:
    assert parse_amount(format_amount(minor), allow_zero=True) == minor


@given(st.text(max_size=16))
def test_anything_parsed_is_ascii_and_in_range(text: str) -> None:
    try:
        value = parse_amount(text, allow_zero=True)
    except ValueError:
        return
    assert text.isascii() and 0 <= value <= MAX_MINOR

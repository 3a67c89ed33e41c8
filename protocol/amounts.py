"""Money as a person types it and as the wire carries it: one rule for both sides.

An amount is ASCII digits, optionally a point and one or two more digits, and fits field 4
(12 digits of minor units). `str.isdigit` and `Decimal` both accept far more than that (full-width
and Arabic-Indic digits, `NaN`, `inf`, `1e400`), and money read wrongly is the worst bug a payment
tool can have, so nothing else is accepted.
"""

from __future__ import annotations

import re

MAX_MINOR = 10**12 - 1
"""The largest amount field 4 (n12, minor units) can carry."""

_AMOUNT = re.compile(r"([0-9]{1,10})(?:\.([0-9]{1,2}))?", re.ASCII)


def parse_amount(text: str, *, allow_zero: bool = False) -> int:
    """'12.34' -> 1234 minor units, or ValueError saying what an amount must look like.

    Zero is refused unless asked for: a sale of nothing is a typo, a zero balance is not.
    """
    match = _AMOUNT.fullmatch(text)
    if match is None:
        shown = text if len(text) <= 24 and text.isprintable() else f"{text[:24]!r}..."
        raise ValueError(f"amount must be ASCII digits like 12.34, not {shown!r}")
    whole, cents = match.groups()
    value = int(whole) * 100 + int((cents or "").ljust(2, "0"))
    if value > MAX_MINOR:
        raise ValueError("amount must fit 12 digits of minor units (at most 9999999999.99)")
    if value == 0 and not allow_zero:
        raise ValueError("amount must be more than 0")
    return value


def format_amount(minor: int) -> str:
    """1234 -> '12.34'; a negative amount keeps its sign."""
    sign = "-" if minor < 0 else ""
    minor = abs(minor)
    return f"{sign}{minor // 100}.{minor % 100:02d}"

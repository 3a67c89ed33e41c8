"""Loading the terminal master key: clear components typed in, or a key-injection file.

Each component is checked against its own check value before they are combined, so a typing
mistake is reported against the component that has it (the person holding that component can
retype it) instead of as a wrong TMK at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protocol.crypto.components import combine_components
from protocol.crypto.errors import ComponentError, CryptoError
from protocol.crypto.keys import Key


class CeremonyError(Exception):
    """The TMK is refused; the message names what failed and is safe to show (no material)."""


@dataclass(frozen=True)
class Component:
    """One clear component as an operator types it, and the check value printed beside it."""

    hex: str
    kcv: str

    def __repr__(self) -> str:
        return f"Component(kcv={self.kcv})"


def _material(index: int, component: Component) -> bytes:
    text = component.hex.replace(" ", "")
    try:
        material = bytes.fromhex(text)
    except ValueError:
        raise CeremonyError(f"component {index}: not hexadecimal") from None
    if len(material) != 16:
        raise CeremonyError(
            f"component {index}: {len(material)} bytes; a TMK component is 16 (32 hex digits)"
        )
    return material


def _kcv_text(index: int | str, text: str) -> str:
    cleaned = text.strip().upper()
    if len(cleaned) != 6 or any(c not in "0123456789ABCDEF" for c in cleaned):
        raise CeremonyError(f"{index}: a check value is 6 hex digits, not {text!r}")
    return cleaned


def combine(components: Sequence[Component], tmk_kcv: str | None = None) -> Key:
    """The TMK from two or three components, each verified, then the result verified."""
    if not 2 <= len(components) <= 3:
        raise CeremonyError(f"a TMK takes 2 or 3 components, not {len(components)}")
    pairs = [
        (_material(i, c), _kcv_text(f"component {i}", c.kcv))
        for i, c in enumerate(components, start=1)
    ]
    expected = _kcv_text("--tmk-kcv", tmk_kcv) if tmk_kcv else None
    try:
        key = combine_components(pairs, expected)
    except ComponentError as exc:
        if exc.index is None:
            raise CeremonyError("the combined TMK does not match --tmk-kcv") from None
        problem = {
            "parity": "does not have odd parity",
            "length": "is not as long as the others",
        }.get(exc.check, f"does not match its check value {pairs[exc.index][1]}")
        raise CeremonyError(f"component {exc.index + 1} {problem}: retype it") from None
    except CryptoError as exc:
        raise CeremonyError(f"the components cannot form a TMK: {exc}") from None
    return Key(key.algorithm, "TMK", key.material)

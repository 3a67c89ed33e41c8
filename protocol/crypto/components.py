"""Clear key components combined by XOR (the key ceremony of PROTOCOL.md §2)."""

import hmac
from collections.abc import Sequence

from protocol.crypto.ciphers import xor
from protocol.crypto.errors import ComponentError
from protocol.crypto.kcv import kcv
from protocol.crypto.keys import Key, fix_parity, has_odd_parity

_ALGORITHM_BY_LENGTH = {8: "DES", 16: "TDES", 24: "TDES"}
_HEX = frozenset("0123456789ABCDEFabcdef")


def kcv_matches(material: bytes, algorithm: str, kcv_hex: str) -> bool:
    """Does ``kcv_hex`` (any even number of hex digits, 2 to 16, either case) match the key?"""
    if not (2 <= len(kcv_hex) <= 16 and len(kcv_hex) % 2 == 0 and set(kcv_hex) <= _HEX):
        return False
    computed = kcv(material, len(kcv_hex) // 2, algorithm).hex().upper()
    return hmac.compare_digest(computed, kcv_hex.upper())


def combine_components(
    components: Sequence[tuple[bytes, str | None]],
    expected_kcv: str | None = None,
    *,
    usage: str = "TMK",
) -> Key:
    """XOR two or three DES/TDES components, each checked against its own check value, into an
    odd-parity key checked against ``expected_kcv``; each component must have odd parity itself.

    Two odd-parity components XOR to even parity, hence the parity fix. A failing component is
    named by its index, so the operator knows which custodian to ask again.
    """
    if not 2 <= len(components) <= 3:
        raise ComponentError(f"{len(components)} components given (expected 2 or 3)")
    length = len(components[0][0])
    algorithm = _ALGORITHM_BY_LENGTH.get(length)
    if algorithm is None:
        raise ComponentError(f"component 0 is {length} bytes (expected 8, 16 or 24)", 0, "length")
    combined = bytes(length)
    for index, (component, component_kcv) in enumerate(components):
        if len(component) != length:
            raise ComponentError(
                f"component {index} is {len(component)} bytes, component 0 is {length}", index,
                "length",
            )
        if not has_odd_parity(component):
            # A check value cannot see parity (DES ignores those bits): a mistyped parity bit
            # would otherwise pass (PROTOCOL.md §2).
            raise ComponentError(f"component {index} does not have odd parity", index, "parity")
        if component_kcv is not None and not kcv_matches(component, algorithm, component_kcv):
            raise ComponentError(f"component {index} does not match its check value", index)
        combined = xor(combined, component)
    key = Key(algorithm, usage, fix_parity(combined))
    if expected_kcv is not None and not kcv_matches(key.material, algorithm, expected_kcv):
        raise ComponentError("combined key does not match the expected check value")
    return key

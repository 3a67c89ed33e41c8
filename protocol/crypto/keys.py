"""The ``Key`` value passed around the project, DES parity, and key generation."""

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocol.crypto.errors import KeyMaterialError
from protocol.crypto.kcv import kcv

Rng = Callable[[int], bytes]

KEY_LENGTHS: dict[str, tuple[int, ...]] = {
    "DES": (8,),
    "TDES": (16, 24),
    "AES": (16, 24, 32),
}
DES_ALGORITHMS = frozenset({"DES", "TDES"})

# Byte -> the same byte with its low bit set so that the byte has an odd number of 1 bits.
_ODD_PARITY = bytes(b if b.bit_count() % 2 else b ^ 1 for b in range(256))


def has_odd_parity(material: bytes) -> bool:
    """True when every byte has odd parity, as DES keys must (DES itself ignores the bit)."""
    return material.translate(_ODD_PARITY) == material


def fix_parity(material: bytes) -> bytes:
    """Set each byte's low bit so the byte has odd parity."""
    return material.translate(_ODD_PARITY)


def check_des_key(material: bytes) -> None:
    """Reject DES/TDES material of a bad length or parity.

    A check value cannot catch a parity error (DES ignores parity bits), so every key received
    from outside goes through here before use.
    """
    if len(material) not in (8, 16, 24):
        raise KeyMaterialError(f"DES/TDES key of {len(material)} bytes (expected 8, 16 or 24)")
    if not has_odd_parity(material):
        raise KeyMaterialError("DES/TDES key without odd parity")


@dataclass(frozen=True, repr=False, eq=False)
class Key:
    """A key with what it is for. Its text forms show usage, length and check value only."""

    algorithm: str
    usage: str
    material: bytes

    def __post_init__(self) -> None:
        lengths = KEY_LENGTHS.get(self.algorithm)
        if lengths is None:
            raise KeyMaterialError(f"unknown key algorithm {self.algorithm!r}")
        if not isinstance(self.material, bytes | bytearray):
            raise KeyMaterialError("key material must be bytes")
        object.__setattr__(self, "material", bytes(self.material))
        if len(self.material) not in lengths:
            raise KeyMaterialError(f"{self.algorithm} key of {len(self.material)} bytes")

    def __repr__(self) -> str:
        return f"Key({self.algorithm}, usage={self.usage!r}, {len(self.material)} bytes, kcv={self.kcv_hex})"

    __str__ = __repr__

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Hypothesis and IPython pretty-print dataclasses field by field; keep material out."""
        printer.text(repr(self))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Key):
            return NotImplemented
        return (self.algorithm, self.usage) == (other.algorithm, other.usage) and (
            hmac.compare_digest(self.material, other.material)
        )

    def __hash__(self) -> int:
        return hash((self.algorithm, self.usage, self.material))

    @property
    def length(self) -> int:
        """Length of the key in bytes."""
        return len(self.material)

    def kcv(self, n: int = 3) -> bytes:
        """Check value, ``n`` bytes (see ``protocol.crypto.kcv``)."""
        return kcv(self.material, n, self.algorithm)

    @property
    def kcv_hex(self) -> str:
        """The 3-byte check value as 6 uppercase hex digits, the form shown to people."""
        return self.kcv(3).hex().upper()


def generate_key(algorithm: str, length: int, usage: str, rng: Rng) -> Key:
    """A new key of ``length`` bytes from ``rng`` (injected so tests and demos are reproducible);
    DES/TDES keys get odd parity."""
    if length not in KEY_LENGTHS.get(algorithm, ()):
        raise KeyMaterialError(f"cannot generate a {length}-byte {algorithm} key")
    material = rng(length)
    if len(material) != length:
        raise KeyMaterialError(f"random source returned {len(material)} bytes, not {length}")
    if algorithm in DES_ALGORITHMS:
        material = fix_parity(material)
    return Key(algorithm, usage, material)


def material_of(key: "Key | bytes") -> bytes:
    """The material of a ``Key``, or the bytes themselves: MAC and PIN functions take either."""
    return key.material if isinstance(key, Key) else bytes(key)

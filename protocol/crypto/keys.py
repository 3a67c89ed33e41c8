"""The ``Key`` value passed around the project, DES parity, and key generation."""

import hmac
import itertools
from dataclasses import dataclass
from typing import Any

from protocol.clock import Rng
from protocol.crypto.errors import KeyMaterialError
from protocol.crypto.kcv import kcv

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


# FIPS 74 (1981) §3.6 and NIST SP 800-67 Rev. 2 §3.3.2, with odd parity: the 4 weak keys (each
# is its own inverse: encrypting twice gives the plaintext back) and the 6 pairs of semi-weak
# keys (each pair's keys undo each other). A key drawn at random is one of them with probability
# 2**-52; a broken random source much more often, which is why they are refused, not ignored.
DES_WEAK_KEYS = frozenset(bytes.fromhex(k) for k in (
    "0101010101010101", "FEFEFEFEFEFEFEFE", "E0E0E0E0F1F1F1F1", "1F1F1F1F0E0E0E0E",
))
DES_SEMI_WEAK_KEYS = frozenset(bytes.fromhex(k) for k in (
    "01FE01FE01FE01FE", "FE01FE01FE01FE01", "1FE01FE00EF10EF1", "E01FE01FF10EF10E",
    "01E001E001F101F1", "E001E001F101F101", "1FFE1FFE0EFE0EFE", "FE1FFE1FFE0EFE0E",
    "011F011F010E010E", "1F011F010E010E01", "E0FEE0FEF1FEF1FE", "FEE0FEE0FEF1FEF1",
))
MAX_DRAWS = 16
"""Draws before a random source that keeps giving refused keys is called broken (a sound one
needs a second draw about once in 2**50 keys)."""


def key_weakness(material: bytes, avoid: frozenset[bytes] = frozenset()) -> str | None:
    """Why DES/TDES material must not be used as a new key, or None.

    A double-length key with equal halves, or a triple-length one with K1 = K2 or K2 = K3, is
    single DES in disguise (SP 800-67 §3.1); `avoid` holds keys it must differ from (a working
    key equal to the TMK it travels under would be sent under itself)."""
    parts = [fix_parity(material[i:i + 8]) for i in range(0, len(material), 8)]
    if any(part in DES_WEAK_KEYS for part in parts):
        return "a DES weak key"
    if any(part in DES_SEMI_WEAK_KEYS for part in parts):
        return "a DES semi-weak key"
    if len(parts) > 1 and any(a == b for a, b in itertools.pairwise(parts)):
        return "single DES (equal key parts)"
    if fix_parity(material) in avoid:
        return "equal to a key it must differ from"
    return None


def generate_key(algorithm: str, length: int, usage: str, rng: Rng,
                 avoid: frozenset[bytes] = frozenset()) -> Key:
    """A new key of ``length`` bytes from ``rng`` (injected so tests and demos are reproducible);
    DES/TDES keys get odd parity, and a weak one (`key_weakness`) is drawn again."""
    if length not in KEY_LENGTHS.get(algorithm, ()):
        raise KeyMaterialError(f"cannot generate a {length}-byte {algorithm} key")
    for _ in range(MAX_DRAWS):
        material = rng(length)
        if len(material) != length:
            raise KeyMaterialError(f"random source returned {len(material)} bytes, not {length}")
        if algorithm not in DES_ALGORITHMS:
            return Key(algorithm, usage, material)
        material = fix_parity(material)
        if key_weakness(material, avoid) is None:
            return Key(algorithm, usage, material)
    raise KeyMaterialError(f"the random source gave {MAX_DRAWS} refused {algorithm} keys in a row "
                           f"(weak, semi-weak or single DES): it is broken")


def material_of(key: "Key | bytes") -> bytes:
    """The material of a ``Key``, or the bytes themselves: MAC and PIN functions take either."""
    return key.material if isinstance(key, Key) else bytes(key)

"""The byte-level encodings a spec file can name: EBCDIC, BCD with its pad nibble, and length
prefixes of one to four digits in text, BCD or binary.

The built-in dialects never come here (the codec's compiled fast paths cover ASCII and the
contract's BCD); a device's spec file that differs from them does, one small function per
choice, so a new option is a new entry rather than another branch in the codec.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

_ALL = bytes(range(256))
A2E = _ALL.decode("latin-1").encode("cp037")
"""Latin-1 byte -> EBCDIC (code page 037) byte: cp037 is a permutation of Latin-1, so both
tables are total, and text checks run on the ASCII side unchanged."""
E2A = _ALL.decode("cp037").encode("latin-1")


class PrefixCoder(NamedTuple):
    """A length prefix: its size in bytes, how a count becomes bytes, and back (None: not a
    length in this encoding)."""

    width: int
    encode: Callable[[int], bytes]
    decode: Callable[[bytes], int | None]
    capacity: int


def _ascii_count(raw: bytes) -> int | None:
    return int(raw) if raw.isdigit() else None


def prefix_coder(digits: int, encoding: str) -> PrefixCoder:
    """The prefix of an L (1) to LLLL (4) field in `encoding`; see spec.prefix_width."""
    if encoding == "ascii":
        return PrefixCoder(digits, lambda n: b"%0*d" % (digits, n), _ascii_count, 10 ** digits - 1)
    if encoding == "ebcdic":
        return PrefixCoder(
            digits, lambda n: (b"%0*d" % (digits, n)).translate(A2E),
            lambda raw: _ascii_count(raw.translate(E2A)), 10 ** digits - 1,
        )
    if encoding == "bcd":
        width = (digits + 1) // 2

        def bcd_count(raw: bytes) -> int | None:
            text = raw.hex()
            return int(text) if text.isdigit() else None
        return PrefixCoder(width, lambda n: bytes.fromhex(f"{n:0{2 * width}d}"), bcd_count,
                           10 ** (2 * width) - 1)
    width = 1 if digits <= 2 else 2
    return PrefixCoder(width, lambda n: n.to_bytes(width, "big"),
                       lambda raw: int.from_bytes(raw, "big"), 256 ** width - 1)


TRACK_NIBBLES = "0123456789ABCDEF"
"""A BCD track 2's nibbles: digits, `D` for the separator `=`, and the hex nibbles of a track
partly enciphered by the terminal (CUP terminals encrypt part of field 35 under the TDK)."""
TRACK_VALUE = frozenset(b"0123456789=ABCEF")
"""The characters of a BCD track's value: `=` is nibble D, so `D` itself cannot be one."""


def track_reason(raw: bytes) -> str | None:
    """Why `raw` cannot be a BCD track's value (None: it can)."""
    if set(raw) <= TRACK_VALUE:
        return None
    return "character other than a digit, '=' or a hex nibble A-F (not D) in track data"


def pack_bcd(digits: str, right: bool, pad: str) -> bytes:
    """Digits (hex nibbles: `D` stands for track 2's `=`) packed two a byte, an odd count padded
    with `pad` before them (right-aligned) or after (left-aligned)."""
    if len(digits) % 2:
        digits = pad + digits if right else digits + pad
    return bytes.fromhex(digits)


def unpack_bcd(raw: bytes, ndigits: int | None, right: bool, pad: str) -> tuple[str, str | None]:
    """The nibbles of `raw` (upper-case hex) less the pad nibble, and a reason when the pad is
    wrong. With `ndigits` None (a prefix counting bytes) the pad is stripped only when it is an
    `F`: a `0` there cannot be told from a digit."""
    hexs = raw.hex().upper()
    if ndigits is None:
        at = 0 if right else -1
        if pad == "F" and hexs and hexs[at] == "F":
            return (hexs[1:] if right else hexs[:-1]), None
        return hexs, None
    if ndigits % 2 == 0:
        return hexs, None
    nibble = hexs[0] if right else hexs[-1]
    if nibble != pad:
        return hexs, f"BCD pad nibble is not {pad}"
    return (hexs[1:] if right else hexs[:-1]), None

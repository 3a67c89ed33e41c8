"""Structured fields by name: field 60's subfields and field 62's key-set layouts (PROTOCOL.md §2-3).

Both sides read and write these through one definition, so the terminal and the host can never
disagree on where a key or a check value starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from protocol.dialects import FIELD_60_PARTS
from protocol.errors import DecodeError, EncodeError, ProtocolError
from protocol.spec import Dialect

# 60.1 message type codes and 60.3 network management codes.
TYPE_SIGN_ON: Final = "00"
TYPE_PURCHASE: Final = "22"
NMIC_NONE: Final = "000"
NMIC_SIGN_OFF: Final = "002"
NMIC_ECHO: Final = "301"

KCV_SIZE: Final = 4
PARTS_60: Final = tuple((p.name.split()[0], p.length) for p in FIELD_60_PARTS[:3])
"""The parts of field 60 that the contract requires (PROTOCOL.md §3), from the dialects' table."""


@dataclass(frozen=True, slots=True)
class Field60:
    """60.1 (n2 message type), 60.2 (n6 batch), 60.3 (n3 network management code)."""

    type_code: str = TYPE_PURCHASE
    batch: str = "000001"
    nmic: str = NMIC_NONE

    @classmethod
    def parse(cls, value: str) -> Field60:
        """A peer's field 60; the error's path names the first subfield that is not there."""
        at = 0
        for name, width in PARTS_60:
            part = value[at:at + width]
            if len(part) != width or not part.isascii() or not part.isdigit():
                raise DecodeError("field 60 must start with 11 digits (60.1, 60.2, 60.3)",
                                  field=60, path=name)
            at += width
        return cls(value[0:2], value[2:8], value[8:11])

    def format(self) -> str:
        for (name, width), value in zip(PARTS_60, (self.type_code, self.batch, self.nmic), strict=True):
            if len(value) != width or not value.isdigit():
                raise EncodeError(f"{name} must be {width} digits", field=60, path=name)
        return f"{self.type_code}{self.batch}{self.nmic}"


@dataclass(frozen=True, slots=True)
class KeySet:
    """A 60.3 key-set code: which working keys, their clear lengths, and field 53 with a PIN."""

    code: str
    keys: tuple[tuple[str, int], ...]
    security_control: str

    def mak_length(self, dialect: Dialect) -> int:
        """The MAK's clear length: `cup` MACs under a single-length MAK whatever the set."""
        length = dict(self.keys)["MAK"]
        return 8 if dialect.single_length_mak else length

    def layout(self) -> int:
        """Field 62's size: every slot is as long as the set's key length, each with a KCV."""
        return sum(length + KCV_SIZE for _, length in self.keys)


KEY_SETS: Final[dict[str, KeySet]] = {
    "001": KeySet("001", (("PIK", 8), ("MAK", 8)), "2000000000000000"),
    "003": KeySet("003", (("PIK", 16), ("MAK", 16)), "2600000000000000"),
    "004": KeySet("004", (("PIK", 16), ("MAK", 16), ("TDK", 16)), "2600000000000000"),
}


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A working key as field 62 carries it: ciphertext under the TMK and its 4-byte check value."""

    usage: str
    ciphertext: bytes
    kcv: bytes

    def __repr__(self) -> str:
        return f"WrappedKey({self.usage}, {len(self.ciphertext)} bytes, kcv={self.kcv.hex().upper()})"


def key_set(code: str, error: type[ProtocolError] = DecodeError) -> KeySet:
    """The key set a 60.3 code names; `error` says whose code it was (a peer's by default)."""
    try:
        return KEY_SETS[code]
    except KeyError:
        raise error(f"unknown key set {code!r}; known: {', '.join(KEY_SETS)}",
                    field=60, path="60.3") from None


def parse_key_set(data: bytes, code: str, dialect: Dialect) -> list[WrappedKey]:
    """Split field 62 into wrapped keys. A wrong size or non-zero MAK padding is refused here:
    the terminal treats it as a corrupted download (K3) and keeps its old keys."""
    ks = key_set(code)
    if len(data) != ks.layout():
        raise DecodeError(
            f"key set {code} needs {ks.layout()} bytes, got {len(data)}", field=62, offset=0,
        )
    out: list[WrappedKey] = []
    pos = 0
    for usage, slot in ks.keys:
        ciphertext = data[pos:pos + slot]
        if usage == "MAK" and ks.mak_length(dialect) < slot:
            size = ks.mak_length(dialect)
            if any(ciphertext[size:]):
                raise DecodeError("single-length MAK padding must be zero bytes",
                                    field=62, offset=pos + size)
            ciphertext = ciphertext[:size]
        out.append(WrappedKey(usage, ciphertext, data[pos + slot:pos + slot + KCV_SIZE]))
        pos += slot + KCV_SIZE
    return out


def build_key_set(keys: list[WrappedKey], code: str) -> bytes:
    """Field 62 from wrapped keys in the set's order; a short MAK is padded with zero bytes."""
    ks = key_set(code, EncodeError)
    by_usage = {k.usage: k for k in keys}
    parts: list[bytes] = []
    for usage, slot in ks.keys:
        if usage not in by_usage:
            raise EncodeError(f"key set {code} needs a {usage}", field=62)
        k = by_usage[usage]
        if len(k.ciphertext) > slot or len(k.kcv) != KCV_SIZE:
            raise EncodeError(f"{usage} does not fit key set {code}", field=62)
        parts.append(k.ciphertext.ljust(slot, b"\0") + k.kcv)
    return b"".join(parts)

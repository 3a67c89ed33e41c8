"""Structured fields by name: field 60's subfields and field 62's key-set layouts (PROTOCOL.md §2-3).

Both sides read and write these through one definition, so the terminal and the host can never
disagree on where a key or a check value starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from protocol.dialects import FIELD_60_PARTS
from protocol.errors import DecodeError, EncodeError, ProtocolError
from protocol.mask import mask_pan
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
class KeySetLayout:
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


KEY_SETS: Final[dict[str, KeySetLayout]] = {
    "001": KeySetLayout("001", (("PIK", 8), ("MAK", 8)), "2000000000000000"),
    "003": KeySetLayout("003", (("PIK", 16), ("MAK", 16)), "2600000000000000"),
    "004": KeySetLayout("004", (("PIK", 16), ("MAK", 16), ("TDK", 16)), "2600000000000000"),
}


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A working key as field 62 carries it: ciphertext under the TMK and its 4-byte check value."""

    usage: str
    ciphertext: bytes
    kcv: bytes

    def __repr__(self) -> str:
        return f"WrappedKey({self.usage}, {len(self.ciphertext)} bytes, kcv={self.kcv.hex().upper()})"


def key_set(code: str, error: type[ProtocolError] = DecodeError) -> KeySetLayout:
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
                raise DecodeError(
                    f"a MAK of {slot} bytes where {dialect.name}'s MAC takes one of {size} "
                    f"(MAK({size}) then {slot - size} zero bytes); single-length MAK padding "
                    "must be zero bytes", field=62, offset=pos + size)
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


# --- PROTOCOL.md §7: fields 48, 54 and 61 ------------------------------------------------------

TYPE_INQUIRY: Final = "01"
TYPE_VOID: Final = "23"
TYPE_REFUND: Final = "25"
NMIC_SETTLE: Final = "201"
NMIC_UPLOAD_END: Final = "202"


def _digits(value: str, width: int, field: int, path: str) -> str:
    """A part of a structured field: exactly `width` ASCII digits, else a peer's format error."""
    if len(value) != width or not value.isascii() or not value.isdigit():
        raise DecodeError(f"{path} must be {width} digits", field=field, path=path)
    return value


def _split(value: str, layout: tuple[tuple[str, int], ...], field: int) -> list[str]:
    """`value` cut by a layout of (path, width) parts, each checked; the whole must fit exactly."""
    if len(value) != sum(width for _, width in layout):
        raise DecodeError(f"field {field} must be {sum(w for _, w in layout)} digits, "
                          f"not {len(value)}", field=field)
    parts, at = [], 0
    for path, width in layout:
        parts.append(_digits(value[at:at + width], width, field, path))
        at += width
    return parts


ORIGINAL_LAYOUT: Final = (("61.1", 6), ("61.2", 6), ("61.3", 4))
"""Field 61 of a void (batch, STAN) and of a refund (batch, STAN, MMDD of the original's 0210)."""


@dataclass(frozen=True, slots=True)
class OriginalData:
    """Which transaction of the same terminal a void or refund names (field 61)."""

    batch: str
    stan: str
    date: str = ""  # MMDD; a refund's, not a void's

    @classmethod
    def parse(cls, value: str) -> OriginalData:
        """12 digits (void) or 16 (refund); more or fewer are a format error."""
        layout = ORIGINAL_LAYOUT if len(value) > 12 else ORIGINAL_LAYOUT[:2]
        return cls(*_split(value, layout, 61))

    def format(self) -> str:
        return f"{self.batch}{self.stan}{self.date}"


ACCOUNT_DEFAULT: Final = "10"
AMOUNT_LEDGER: Final = "02"


@dataclass(frozen=True, slots=True)
class Balance:
    """Field 54 of an inquiry's 0210: `1002156C000000012345` (C credit, D a negative balance)."""

    currency: str
    amount: int  # minor units, negative for D
    account_type: str = ACCOUNT_DEFAULT
    amount_type: str = AMOUNT_LEDGER

    def format(self) -> str:
        sign = "D" if self.amount < 0 else "C"
        return f"{self.account_type}{self.amount_type}{self.currency}{sign}{abs(self.amount):012d}"

    @classmethod
    def parse(cls, value: str) -> Balance:
        if len(value) != 20 or value[7] not in "CD":
            raise DecodeError("field 54 must be 20 characters with C or D at the 8th", field=54)
        account, kind, currency = (_digits(value[a:a + w], w, 54, p) for p, a, w in
                                   (("54.1", 0, 2), ("54.2", 2, 2), ("54.3", 4, 3)))
        amount = int(_digits(value[8:], 12, 54, "54.5"))
        return cls(currency, -amount if value[7] == "D" else amount, account, kind)


TOTALS_HALF: Final = (("amount debit", 12), ("count debit", 3), ("amount credit", 12),
                      ("count credit", 3), ("code", 1))
TOTALS_LAYOUT: Final = tuple((f"48.{i + 1} {name}", w) for i, (name, w) in
                             enumerate(TOTALS_HALF + TOTALS_HALF))
"""Field 48 of a 0500/0510: domestic cards' totals and code, then the same for foreign cards."""
SETTLE_UNCHECKED, SETTLE_BALANCED, SETTLE_UNBALANCED = "0", "1", "2"


@dataclass(frozen=True, slots=True)
class Half:
    debit_amount: int = 0
    debit_count: int = 0
    credit_amount: int = 0
    credit_count: int = 0
    code: str = SETTLE_UNCHECKED

    def same_totals(self, other: Half) -> bool:
        return (self.debit_amount, self.debit_count, self.credit_amount, self.credit_count) == (
            other.debit_amount, other.debit_count, other.credit_amount, other.credit_count)

    def format(self) -> str:
        if not (0 <= self.debit_count <= 999 and 0 <= self.credit_count <= 999):
            raise EncodeError("a settlement count must fit 3 digits", field=48)
        return (f"{self.debit_amount:012d}{self.debit_count:03d}"
                f"{self.credit_amount:012d}{self.credit_count:03d}{self.code}")


@dataclass(frozen=True, slots=True)
class SettlementTotals:
    """Field 48 of a settlement (62 digits): what a batch's debits and credits came to."""

    domestic: Half = Half()
    foreign: Half = Half()

    @classmethod
    def parse(cls, value: str) -> SettlementTotals:
        parts = _split(value, TOTALS_LAYOUT, 48)
        halves = []
        for first in (0, 5):
            a, b, c, d, code = parts[first:first + 5]
            if code not in (SETTLE_UNCHECKED, SETTLE_BALANCED, SETTLE_UNBALANCED):
                raise DecodeError("a settlement code must be 0, 1 or 2", field=48,
                                  path=TOTALS_LAYOUT[first + 4][0])
            halves.append(Half(int(a), int(b), int(c), int(d), code))
        return cls(*halves)

    def format(self) -> str:
        return self.domestic.format() + self.foreign.format()


UPLOAD_RECORD_LAYOUT: Final = (("type", 2), ("stan", 6), ("pan", 20), ("amount", 12))
"""One transaction in a 0320's field 48 (CUP POS batch upload of magnetic-stripe transactions:
n2 count, then up to 8 records of 40 digits; 2 + 8 x 40 = 322, the field's CUP maximum)."""
UPLOAD_RECORDS_MAX: Final = 8
UPLOAD_RECORD_SIZE: Final = sum(w for _, w in UPLOAD_RECORD_LAYOUT)


@dataclass(frozen=True, slots=True)
class UploadRecord:
    """A transaction as the terminal reports it: its 60.1 type code, STAN, card and amount."""

    type_code: str
    stan: str
    pan: str
    amount: int

    def __repr__(self) -> str:  # a record holds a PAN: never shown whole
        return f"UploadRecord({self.type_code}, {self.stan}, {mask_pan(self.pan)}, {self.amount})"

    def format(self) -> str:
        if not (self.pan.isascii() and self.pan.isdigit() and 0 < len(self.pan) <= 20
                and self.pan[0] != "0"):
            raise EncodeError("an upload record's PAN must be 1-20 digits, not starting 0",
                              field=48)
        for (path, width), value in zip(UPLOAD_RECORD_LAYOUT[:2], (self.type_code, self.stan),
                                        strict=True):
            if len(value) != width or not value.isascii() or not value.isdigit():
                raise EncodeError(f"an upload record's {path} must be {width} digits", field=48)
        if not 0 <= self.amount < 10**12:
            raise EncodeError("an upload record's amount must fit 12 digits", field=48)
        return f"{self.type_code}{self.stan}{self.pan:0>20}{self.amount:012d}"


def parse_upload(value: str) -> list[UploadRecord]:
    """Field 48 of a 0320: the count (n2, 1-8) and exactly that many records."""
    count = int(_digits(value[:2], 2, 48, "48.count"))
    if not 1 <= count <= UPLOAD_RECORDS_MAX or len(value) != 2 + count * UPLOAD_RECORD_SIZE:
        raise DecodeError(f"field 48 of a batch upload must hold 1-{UPLOAD_RECORDS_MAX} records "
                          f"of {UPLOAD_RECORD_SIZE} digits after their count", field=48)
    records = []
    for at in range(2, len(value), UPLOAD_RECORD_SIZE):
        kind, stan, pan, amount = _split(value[at:at + UPLOAD_RECORD_SIZE], UPLOAD_RECORD_LAYOUT, 48)
        records.append(UploadRecord(kind, stan, pan.lstrip("0"), int(amount)))
    return records


def format_upload(records: list[UploadRecord]) -> str:
    if not 1 <= len(records) <= UPLOAD_RECORDS_MAX:
        raise EncodeError(f"a batch upload carries 1-{UPLOAD_RECORDS_MAX} records", field=48)
    return f"{len(records):02d}" + "".join(r.format() for r in records)

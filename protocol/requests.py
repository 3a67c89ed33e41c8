"""The requests of a terminal's day (PROTOCOL.md §3, §7) as pure functions, and what their
answers carry back.

One builder per transaction, so every terminal (the emulator, the test clients, the load
generator) puts the same fields in the same shape. Each returns an unsigned `Message`: MAC it
with `protocol.macing.sign(codec, message, mak)`. Nothing here reads a clock, a key or a file.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from protocol.errors import DecodeError
from protocol.fields import (
    NMIC_NONE,
    NMIC_SETTLE,
    NMIC_UPLOAD_END,
    SETTLE_BALANCED,
    TYPE_INQUIRY,
    TYPE_PURCHASE,
    TYPE_REFUND,
    TYPE_SIGN_ON,
    TYPE_VOID,
    UPLOAD_RECORDS_MAX,
    Balance,
    Field60,
    Half,
    OriginalData,
    SettlementTotals,
    UploadRecord,
    format_upload,
)
from protocol.message import FieldValue, Message

PURCHASE_CODE, INQUIRY_CODE, VOID_CODE = "000000", "310000", "200000"
REFUND_CODE = VOID_CODE  # a refund is a 0220 with the void's processing code (§7's table)
REVERSAL_ENTRY_MODE = "010"
# Field 39 of a 0400: why the terminal reverses (PROTOCOL.md §7).
REVERSAL_NO_ANSWER, REVERSAL_BAD_ANSWER, REVERSAL_OTHER = "98", "96", "06"
# Journal kinds, for `batch_totals`.
PURCHASE, VOID, REFUND = "purchase", "void", "refund"


@dataclass(frozen=True, slots=True)
class Station:
    """Who sends: terminal (41), merchant (42), the open batch (60.2) and currency (49)."""

    tid: str
    merchant: str
    batch: str = "000001"
    currency: str = "156"

    def field60(self, type_code: str, nmic: str = NMIC_NONE) -> str:
        return _field60(type_code, self.batch, nmic)


@functools.lru_cache(maxsize=64)
def _field60(type_code: str, batch: str, nmic: str) -> str:
    """Checked and formatted once per batch and kind, not once per message (a fleet's echo
    tests and purchases all carry the same one)."""
    return Field60(type_code, batch, nmic).format()


@dataclass(frozen=True, slots=True)
class ChipData:
    """What a chip card adds to a purchase: field 55 (BER-TLV, `protocol.emv.purchase_tags`)
    and field 23, the card sequence number."""

    icc: bytes
    sequence: str = "001"

    def __repr__(self) -> str:
        return f"ChipData({len(self.icc)} bytes, sequence={self.sequence})"


@dataclass(frozen=True, slots=True)
class CardEntry:
    """The card as read: keyed (PAN and expiry), swiped (track 2) or inserted (chip: PAN and
    expiry with field 55), with a PIN block or not."""

    pan: str
    expiry: str  # YYMM
    track2: str | None = None  # `PAN=YYMM...`: a swiped card
    pin_block: bytes | None = None
    security_control: str | None = None  # field 53, which travels with a PIN block
    chip: ChipData | None = None

    def __repr__(self) -> str:  # never the PAN, track or PIN block
        return f"CardEntry({self.pan[:6]}..., swiped={self.track2 is not None}, " \
               f"pin={self.pin_block is not None})"


@dataclass(frozen=True, slots=True)
class Reference:
    """A transaction as a later void, refund or reversal names it: batch and STAN (field 61),
    and from its approval RRN (37), authorisation code (38) and date (13, MMDD)."""

    batch: str
    stan: str
    rrn: str = ""
    auth: str = ""
    date: str = ""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """A transaction as the terminal's journal holds it, for its settlement totals."""

    kind: str  # PURCHASE, VOID or REFUND
    amount: int
    approved: bool = True
    reversed: bool = False


def sign_on(station: Station, stan: str, key_set: str, at: tuple[str, str], operator: str
            ) -> Message:
    """The 0800 asking for working keys of `key_set` (60.3): 12 and 13 the terminal's time and
    date (`at`: hhmmss, MMDD; nothing here reads a clock), 63 the operator (§3)."""
    hhmmss, mmdd = at
    return Message("0800", {11: stan, 12: hhmmss, 13: mmdd, 41: station.tid,
                            42: station.merchant, 60: station.field60(TYPE_SIGN_ON, key_set),
                            63: f"{operator} "})


def network(station: Station, stan: str, nmic: str) -> Message:
    """An 0820 of network management: 60.3 says which (echo test, sign-off)."""
    return Message("0820", {11: stan, 41: station.tid, 42: station.merchant,
                            60: station.field60(TYPE_SIGN_ON, nmic)})


def card_fields(card: CardEntry) -> dict[int, FieldValue]:
    """2 and 14 (keyed) or 35 (swiped), or 2, 14, 23 and 55 (chip, entry mode `05`); 22 the
    entry mode; 26, 52 and 53 with a PIN (§3)."""
    fields: dict[int, FieldValue] = {}
    if card.track2 is not None:
        fields[35] = card.track2
        mode = "02"
    elif card.chip is not None:
        fields[2], fields[14] = card.pan, card.expiry
        fields[23], fields[55] = card.chip.sequence, card.chip.icc
        mode = "05"
    else:
        fields[2], fields[14] = card.pan, card.expiry
        mode = "01"
    if card.pin_block is not None:
        if card.security_control is None:
            raise ValueError("a PIN block travels with field 53 (its security control)")
        fields[22] = mode + "1"
        fields[26], fields[52], fields[53] = "12", card.pin_block, card.security_control
    else:
        fields[22] = mode + "2"
    return fields


def _financial(station: Station, stan: str, code: str, type_code: str, card: CardEntry,
               amount: int | None) -> dict[int, FieldValue]:
    fields: dict[int, FieldValue] = {3: code, 11: stan, 25: "00", 41: station.tid,
                                     42: station.merchant, 49: station.currency,
                                     60: station.field60(type_code)}
    if amount is not None:
        fields[4] = f"{amount:012d}"
    fields.update(card_fields(card))
    return fields


def purchase(station: Station, stan: str, card: CardEntry, amount: int) -> Message:
    return Message("0200", _financial(station, stan, PURCHASE_CODE, TYPE_PURCHASE, card, amount))


def balance_inquiry(station: Station, stan: str, card: CardEntry) -> Message:
    """A 0200 without field 4; the answer's field 54 is the balance (`balance`)."""
    return Message("0200", _financial(station, stan, INQUIRY_CODE, TYPE_INQUIRY, card, None))


def void(station: Station, stan: str, card: CardEntry, amount: int, original: Reference
         ) -> Message:
    """A 0200 naming the purchase by 61 (batch, STAN) and by its RRN (37) and code (38)."""
    fields = _financial(station, stan, VOID_CODE, TYPE_VOID, card, amount)
    fields[37] = original.rrn
    if original.auth:
        fields[38] = original.auth
    fields[61] = OriginalData(original.batch, original.stan).format()
    return Message("0200", fields)


def refund(station: Station, stan: str, card: CardEntry, amount: int, original: Reference
           ) -> Message:
    """A 0220 naming the purchase by 61 (batch, STAN, MMDD of its 0210's field 13)."""
    if not original.date:
        raise ValueError("a refund names its original's date (MMDD of its answer's field 13)")
    fields = _financial(station, stan, REFUND_CODE, TYPE_REFUND, card, amount)
    fields[61] = OriginalData(original.batch, original.stan, original.date).format()
    return Message("0220", fields)


def reversal(original: Message, reason: str, auth_code: str | None = None) -> Message:
    """The 0400 of a purchase or void left unconfirmed: its STAN, batch, card (2 and 14, never
    track 2), amount and codes as the original had them, 22 = `010`, 39 the reason, and 38
    when an answer brought one."""
    fields = original.fields
    if 2 in fields:
        pan, expiry = original.text(2), original.text(14)
    else:
        pan, _, rest = original.text(35).partition("=")
        expiry = rest[:4]
    out: dict[int, FieldValue] = {n: fields[n] for n in (3, 4, 11, 25, 41, 42, 49, 60)
                                  if n in fields}
    out.update({2: pan, 14: expiry, 22: REVERSAL_ENTRY_MODE, 39: reason})
    if auth_code:
        out[38] = auth_code
    return Message("0400", out)


def settlement(station: Station, stan: str, operator: str, totals: SettlementTotals) -> Message:
    """The 0500 of the open batch: field 48 the terminal's totals (`batch_totals`)."""
    return Message("0500", {11: stan, 41: station.tid, 42: station.merchant,
                            48: totals.format(), 49: station.currency,
                            60: station.field60(TYPE_SIGN_ON, NMIC_SETTLE), 63: operator})


def batch_upload(station: Station, stan: str, records: list[UploadRecord], last: bool
                 ) -> Message:
    """One 0320 of up to 8 records; the last of an upload has 60.3 `202`."""
    nmic = NMIC_UPLOAD_END if last else NMIC_SETTLE
    return Message("0320", {11: stan, 41: station.tid, 42: station.merchant,
                            48: format_upload(records), 60: station.field60(TYPE_SIGN_ON, nmic)})


def batch_uploads(station: Station, stans: Iterator[str], records: list[UploadRecord]
                  ) -> list[Message]:
    """A whole batch's upload, 8 records a message, each with the next STAN from `stans`."""
    if not records:
        raise ValueError("a batch upload needs at least one record")
    chunks = [records[i:i + UPLOAD_RECORDS_MAX] for i in range(0, len(records), UPLOAD_RECORDS_MAX)]
    return [batch_upload(station, next(stans), chunk, i == len(chunks) - 1)
            for i, chunk in enumerate(chunks)]


# --- what the answers carry ------------------------------------------------------------------------


def reference(request: Message, response: Message) -> Reference:
    """How a later void, refund or reversal names the transaction `response` approved."""
    return Reference(Field60.parse(request.text(60)).batch, request.text(11), response.text(37),
                     response.text(38), response.text(13))


def balance(response: Message) -> Balance:
    """Field 54 of an inquiry's approval; DecodeError when absent or malformed."""
    if 54 not in response.fields:
        raise DecodeError("an approved inquiry carries field 54", field=54)
    return Balance.parse(response.text(54))


def settlement_result(response: Message) -> SettlementTotals:
    """Field 48 of a 0510: the totals with each half's code (1 agreed, 2 did not)."""
    if 48 not in response.fields:
        raise DecodeError("a 0510 carries field 48", field=48)
    return SettlementTotals.parse(response.text(48))


def is_balanced(result: SettlementTotals) -> bool:
    """Both halves agreed: the batch is closed and the next one starts (60.2 + 1)."""
    return result.domestic.code == result.foreign.code == SETTLE_BALANCED


def batch_totals(journal: Iterable[JournalEntry]) -> SettlementTotals:
    """The terminal's field 48 (PROTOCOL.md §7): debits are its approved purchases, voided ones
    included; credits its approved voids and refunds; reversed transactions count in neither."""
    debit = credit = debits = credits = 0
    for entry in journal:
        if not entry.approved or entry.reversed:
            continue
        if entry.kind == PURCHASE:
            debit, debits = debit + entry.amount, debits + 1
        elif entry.kind in (VOID, REFUND):
            credit, credits = credit + entry.amount, credits + 1
        else:
            raise ValueError(f"unknown journal kind {entry.kind!r}")
    return SettlementTotals(Half(debit, debits, credit, credits))

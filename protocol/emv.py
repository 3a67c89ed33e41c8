"""EMV chip data (field 55) by name: the tags a purchase carries, and what of them may be shown.

Names follow EMV 4.3 Book 3 Annex A and the PBOC 3.0 / UnionPay IC card terminal specification
(the same tags). The cardholder's data among them (PAN, track 2 equivalent, name, track 1 and
track 2 discretionary data) is masked like the magnetic-stripe fields (PROTOCOL.md §6); the rest
(cryptogram, counters, TVR) identifies a transaction, not a card, and is shown. Validating the
ARQC is the issuer's job and out of this project's scope.
"""

from __future__ import annotations

from collections.abc import Mapping

from protocol import tlv
from protocol.mask import mask_pan

TAG_NAMES: dict[str, str] = {
    "4F": "Application identifier (AID)",
    "50": "Application label",
    "57": "Track 2 equivalent data",
    "5A": "Application PAN",
    "5F20": "Cardholder name",
    "5F24": "Application expiration date",
    "5F2A": "Transaction currency code",
    "5F34": "PAN sequence number",
    "82": "Application interchange profile",
    "84": "Dedicated file name",
    "8A": "Authorisation response code",
    "91": "Issuer authentication data",
    "95": "Terminal verification results",
    "9A": "Transaction date",
    "9B": "Transaction status information",
    "9C": "Transaction type",
    "9F02": "Amount, authorised",
    "9F03": "Amount, other",
    "9F09": "Application version number",
    "9F10": "Issuer application data",
    "9F1A": "Terminal country code",
    "9F1E": "Interface device serial number",
    "9F1F": "Track 1 discretionary data",
    "9F26": "Application cryptogram (ARQC)",
    "9F27": "Cryptogram information data",
    "9F33": "Terminal capabilities",
    "9F34": "CVM results",
    "9F35": "Terminal type",
    "9F36": "Application transaction counter",
    "9F37": "Unpredictable number",
    "9F41": "Transaction sequence counter",
    "9F63": "Card product identification",
    "9F6B": "Track 2 data",
    "9F74": "Electronic cash issuer authorisation code",
    "DF31": "Issuer script results",
}
SENSITIVE: frozenset[str] = frozenset({"5A", "57", "5F20", "9F1F", "9F6B"})


def show(tag: str, value: bytes) -> str:
    """A tag's value as a log may show it: the PAN as first six and last four, the rest of the
    cardholder's data and every template (its inner tags are not read here) by size only,
    anything else as hex."""
    if int(tag[:2], 16) & 0x20:  # a constructed tag (70, 77, BF0C...) may hold 57 or 5A inside
        return f"<template masked, {len(value)} bytes>"
    if tag == "5A":
        return mask_pan(value.hex().upper().rstrip("F"))
    if tag in SENSITIVE:
        return f"<{TAG_NAMES[tag].lower()} masked, {len(value)} bytes>"
    return value.hex().upper()


def describe_tags(data: bytes, field: int = 55) -> list[dict[str, str]]:
    """Field 55 tag by tag, named and masked; raises DecodeError (with the tag's path) when the
    data is not BER-TLV."""
    return [{"tag": tag, "name": TAG_NAMES.get(tag, "unknown tag"), "value": show(tag, value)}
            for tag, value in tlv.parse(data, field)]


def purchase_tags(amount: str, currency: str, date: str, unpredictable: bytes, atc: int,
                  cryptogram: bytes, country: str = "0156", pan_sequence: str = "01") -> bytes:
    """The field 55 of a chip purchase, with the tag set a CUP/PBOC terminal sends for an online
    authorisation (ARQC). `amount` is 12 digits, `currency` and `country` 4 (n3 with a leading
    0), `date` YYMMDD; what a real card computes (the cryptogram, its counter) is passed in."""
    values: Mapping[str, bytes] = {
        "9F26": cryptogram,
        "9F27": b"\x80",                          # ARQC
        "9F10": bytes.fromhex("07010103A0A802010A010000000000"),  # issuer application data
        "9F37": unpredictable,
        "9F36": atc.to_bytes(2, "big"),
        "95": bytes(5),                           # TVR: nothing failed
        "9A": bytes.fromhex(date),
        "9C": b"\x00",                            # goods and services
        "9F02": bytes.fromhex(amount),
        "5F2A": bytes.fromhex(currency),
        "82": bytes.fromhex("7C00"),              # AIP: SDA, DDA, cardholder verification, risk management
        "9F1A": bytes.fromhex(country),
        "9F03": bytes(6),
        "9F33": bytes.fromhex("E0E1C8"),          # terminal capabilities
        "9F34": bytes.fromhex("420300"),          # CVM: online PIN, successful
        "9F35": b"\x22",                          # attended, offline with online capability
        "84": bytes.fromhex("A000000333010101"),  # UnionPay debit AID
        "9F09": bytes.fromhex("0030"),
        "9F41": atc.to_bytes(4, "big"),
        "5F34": bytes.fromhex(pan_sequence),
    }
    return tlv.build(values.items())

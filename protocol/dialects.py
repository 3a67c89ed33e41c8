"""The built-in dialects, written down as tables.

`iso87` is ISO 8583:1987's data-element table for all 128 fields, with the three overrides
PROTOCOL.md §1 makes (44 `ans..25`, 53 `n16`, 62 `b...999`). `cup` is the subset of fields a
China UnionPay-style POS terminal uses, with CUP's packing; docs/protocol.md gives the sources.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from protocol.errors import SpecError
from protocol.spec import Dialect, FieldSpec, Subfield, dialect_from_data, read_spec_file

# number: (name, notation, mask). Notation as in the standard: kind, then ".."/"..." for LL/LLL,
# then the length. `b` lengths are in bytes here (ISO writes b64 for 8 bytes).
ISO87_TABLE: dict[int, tuple[str, str, str | None]] = {
    2: ("Primary account number", "n..19", "pan"),
    3: ("Processing code", "n6", None),
    4: ("Amount, transaction", "n12", None),
    5: ("Amount, settlement", "n12", None),
    6: ("Amount, cardholder billing", "n12", None),
    7: ("Transmission date and time", "n10", None),
    8: ("Amount, cardholder billing fee", "n8", None),
    9: ("Conversion rate, settlement", "n8", None),
    10: ("Conversion rate, cardholder billing", "n8", None),
    11: ("System trace audit number", "n6", None),
    12: ("Time, local transaction", "n6", None),
    13: ("Date, local transaction", "n4", None),
    14: ("Date, expiration", "n4", None),
    15: ("Date, settlement", "n4", None),
    16: ("Date, conversion", "n4", None),
    17: ("Date, capture", "n4", None),
    18: ("Merchant type", "n4", None),
    19: ("Acquiring institution country code", "n3", None),
    20: ("PAN extended, country code", "n3", None),
    21: ("Forwarding institution country code", "n3", None),
    22: ("Point of service entry mode", "n3", None),
    23: ("Application PAN sequence number", "n3", None),
    24: ("Network international identifier", "n3", None),
    25: ("Point of service condition code", "n2", None),
    26: ("Point of service capture code", "n2", None),
    27: ("Authorizing identification response length", "n1", None),
    28: ("Amount, transaction fee", "xn9", None),
    29: ("Amount, settlement fee", "xn9", None),
    30: ("Amount, transaction processing fee", "xn9", None),
    31: ("Amount, settlement processing fee", "xn9", None),
    32: ("Acquiring institution identification code", "n..11", None),
    33: ("Forwarding institution identification code", "n..11", None),
    34: ("Primary account number, extended", "ns..28", "pan"),
    35: ("Track 2 data", "z..37", "track"),
    36: ("Track 3 data", "n...104", "track"),
    37: ("Retrieval reference number", "an12", None),
    38: ("Authorization identification response", "an6", None),
    39: ("Response code", "an2", None),
    40: ("Service restriction code", "an3", None),
    41: ("Card acceptor terminal identification", "ans8", None),
    42: ("Card acceptor identification code", "ans15", None),
    43: ("Card acceptor name/location", "ans40", None),
    44: ("Additional response data", "ans..25", None),
    45: ("Track 1 data", "an..76", "track"),
    46: ("Additional data - ISO", "an...999", None),
    47: ("Additional data - national", "an...999", None),
    48: ("Additional data - private", "an...999", "pan"),  # a batch upload's records hold PANs
    49: ("Currency code, transaction", "an3", None),
    50: ("Currency code, settlement", "an3", None),
    51: ("Currency code, cardholder billing", "an3", None),
    52: ("Personal identification number data", "b8", "pin"),
    53: ("Security related control information", "n16", None),
    54: ("Additional amounts", "an...120", None),
    55: ("Reserved ISO (ICC data in later versions)", "ans...999", "icc"),
    56: ("Reserved ISO", "ans...999", None),
    57: ("Reserved national", "ans...999", None),
    58: ("Reserved national", "ans...999", None),
    59: ("Reserved national", "ans...999", None),
    60: ("Reserved national", "ans...999", None),
    61: ("Reserved private", "ans...999", None),
    62: ("Reserved private (working keys)", "b...999", "key"),
    63: ("Reserved private", "ans...999", None),
    64: ("Message authentication code", "b8", "mac"),
    65: ("Bitmap, tertiary", "b8", None),
    66: ("Settlement code", "n1", None),
    67: ("Extended payment code", "n2", None),
    68: ("Receiving institution country code", "n3", None),
    69: ("Settlement institution country code", "n3", None),
    70: ("Network management information code", "n3", None),
    71: ("Message number", "n4", None),
    72: ("Message number, last", "n4", None),
    73: ("Date, action", "n6", None),
    74: ("Credits, number", "n10", None),
    75: ("Credits, reversal number", "n10", None),
    76: ("Debits, number", "n10", None),
    77: ("Debits, reversal number", "n10", None),
    78: ("Transfer, number", "n10", None),
    79: ("Transfer, reversal number", "n10", None),
    80: ("Inquiries, number", "n10", None),
    81: ("Authorizations, number", "n10", None),
    82: ("Credits, processing fee amount", "n12", None),
    83: ("Credits, transaction fee amount", "n12", None),
    84: ("Debits, processing fee amount", "n12", None),
    85: ("Debits, transaction fee amount", "n12", None),
    86: ("Credits, amount", "n16", None),
    87: ("Credits, reversal amount", "n16", None),
    88: ("Debits, amount", "n16", None),
    89: ("Debits, reversal amount", "n16", None),
    90: ("Original data elements", "n42", None),
    91: ("File update code", "an1", None),
    92: ("File security code", "an2", None),
    93: ("Response indicator", "an5", None),
    94: ("Service indicator", "an7", None),
    95: ("Replacement amounts", "an42", None),
    96: ("Message security code", "b8", None),
    97: ("Amount, net settlement", "xn17", None),
    98: ("Payee", "ans25", None),
    99: ("Settlement institution identification code", "n..11", None),
    100: ("Receiving institution identification code", "n..11", None),
    101: ("File name", "ans..17", None),
    102: ("Account identification 1", "ans..28", None),
    103: ("Account identification 2", "ans..28", None),
    104: ("Transaction description", "ans...100", None),
    **{n: ("Reserved ISO", "ans...999", None) for n in range(105, 112)},
    **{n: ("Reserved national", "ans...999", None) for n in range(112, 120)},
    **{n: ("Reserved private", "ans...999", None) for n in range(120, 128)},
    128: ("Message authentication code", "b8", "mac"),
}

# The fields a CUP-style POS terminal exchanges, with CUP's types where they differ from 1987.
# 43, 46, 51, 56, 57 and 59 appear in published CUP frames (merchant name, QR code data, TLV,
# location) and keep the 1987 types; their contents are the acquirer's.
CUP_TABLE: dict[int, tuple[str, str, str | None]] = {
    **{n: ISO87_TABLE[n] for n in (
        2, 3, 4, 11, 12, 13, 14, 15, 22, 23, 25, 26, 32, 35, 37, 38, 39, 41, 42, 43, 44, 46, 49,
        51, 52, 53, 56, 57, 59, 62, 64,
    )},
    36: ("Track 3 data", "z...104", "track"),
    48: ("Additional data - private", "n...322", "pan"),  # batch upload records: PANs
    54: ("Balance amount", "an...20", None),
    55: ("IC card data", "b...255", "icc"),  # its TLVs carry the PAN and track 2 equivalent
    58: ("PBOC electronic data", "ans...100", None),
    60: ("Reserved private (60.1 type, 60.2 batch, 60.3 network code)", "n...17", None),
    61: ("Original message data", "n...29", None),
    63: ("Reserved private (operator)", "ans...163", None),
}


# Per-field settings beyond the notation: CUP terminals send field 22 (entry mode) left-aligned,
# `021` as `02 10`, while field 23 stays right-aligned (PROTOCOL.md §1; 40 published CUP frames
# from 20 sources agree).
# Field 60's parts (CUP POS field 60: 60.1-60.3 are the contract's, PROTOCOL.md §3; 60.4-60.7
# are CUP's terminal capability, IC condition, partial-approval flag and account type), read as
# far as a value goes. `cup`'s field 55 (b...255) is BER-TLV chip data.
FIELD_60_PARTS = (
    Subfield("60.1 message type code", 2), Subfield("60.2 batch number", 6),
    Subfield("60.3 network management code", 3), Subfield("60.4 terminal read capability", 1),
    Subfield("60.5 IC card condition code", 1), Subfield("60.6 partial approval flag", 1),
    Subfield("60.7 account type", 3),
)
COMMON_SETTINGS: dict[int, dict[str, Any]] = {60: {"subfields": FIELD_60_PARTS}}
CUP_SETTINGS: dict[int, dict[str, Any]] = {
    **COMMON_SETTINGS, 22: {"align": "left"}, 23: {"align": "right"}, 55: {"tlv": True},
}


def parse_notation(number: int, name: str, notation: str, mask: str | None) -> FieldSpec:
    """`n..19` -> FieldSpec(kind="n", length=19, prefix=2): keeps the tables readable."""
    digits_at = next(i for i, c in enumerate(notation) if c.isdigit() or c == ".")
    kind, rest = notation[:digits_at], notation[digits_at:]
    prefix = len(rest) - len(rest.lstrip("."))
    return FieldSpec(number, name, kind, int(rest.lstrip(".")), {0: 0, 2: 2, 3: 3}[prefix], mask)


def table_fields(table: dict[int, tuple[str, str, str | None]],
                 settings: dict[int, dict[str, Any]] | None = None) -> dict[int, FieldSpec]:
    fields = {n: parse_notation(n, *table[n]) for n in sorted(table)}
    for n, values in (settings or {}).items():
        fields[n] = replace(fields[n], **values)
    return fields


ISO87 = Dialect(
    name="iso87",
    mti_encoding="ascii",
    digit_encoding="ascii",
    prefix_encoding="ascii",
    fields=table_fields(ISO87_TABLE, COMMON_SETTINGS),
    mac="x9.19",
    description="ISO 8583:1987, ASCII digits and lengths, 2-byte length frame, X9.19 MAC",
)

CUP = Dialect(
    name="cup",
    mti_encoding="bcd",
    digit_encoding="bcd",
    prefix_encoding="bcd",
    fields=table_fields(CUP_TABLE, CUP_SETTINGS),
    tpdu=True,
    header=bytes.fromhex("603100000000"),
    mac="cup-ecb",
    single_length_mak=True,
    description="China UnionPay-style POS: BCD digits, TPDU and header, CUP ECB MAC",
)

BUILTIN: dict[str, Dialect] = {d.name: d for d in (ISO87, CUP)}


def get_dialect(name: str) -> Dialect:
    """A built-in dialect by name, or a spec file when `name` is a path to .json/.toml."""
    if name in BUILTIN:
        return BUILTIN[name]
    if name.endswith((".json", ".toml")):
        return load_dialect(name)
    raise SpecError(f"unknown dialect {name!r}; built in: {', '.join(BUILTIN)}, or a .json/.toml spec file")


def load_dialect(path: str | Path) -> Dialect:
    """Load a dialect from a `.json` or `.toml` file; `base = "iso87"` inherits a built-in one.

    It lives here, beside the built-ins it may inherit from, so that `protocol.spec` (what a
    dialect is) never needs `protocol.dialects` (which dialects exist)."""
    data = read_spec_file(path)
    base_name = data.get("base") if isinstance(data, Mapping) else None
    base = None
    if base_name is not None:
        # Only built-in dialects can be inherited: a file naming a file could name itself.
        if not isinstance(base_name, str) or base_name not in BUILTIN:
            raise SpecError(f"dialect spec: base: must name a built-in dialect ({', '.join(BUILTIN)}), "
                            f"not {base_name!r}")
        base = BUILTIN[base_name]
    return dialect_from_data(data, base)

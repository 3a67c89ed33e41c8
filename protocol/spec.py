"""Dialects as plain data: what a field is, how digits and lengths are packed, how frames look.

A dialect is a value, not code, so a user can describe a host's variant in a JSON or TOML file
and both programs speak it without a line of Python. `load_dialect` is strict: a spec file that
cannot describe a wire format is refused with the entry and the reason, never half-loaded.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from protocol.errors import SpecError

KINDS = frozenset({"n", "a", "an", "ans", "ns", "z", "b", "xn"})
"""`xn` is ISO 8583's `x+n`: a C/D sign character followed by digits (fields 28-31, 97)."""
ENCODINGS = frozenset({"ascii", "bcd"})
MASKS = frozenset({"pan", "track", "icc", "pin", "key", "mac"})
MAC_ALGORITHMS = frozenset({"x9.19", "cup-ecb"})
ALIGNMENTS = frozenset({"left", "right"})
PREFIXES = {"fixed": 0, "LL": 2, "LLL": 3}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One data element. `length` is the fixed length, or the maximum for LL/LLL fields.

    Lengths count characters for text and digit kinds and bytes for `b`: the unit a person reads
    in a spec table (`n..19`, `b64` is written here as 8 bytes).
    """

    number: int
    name: str
    kind: str
    length: int
    prefix: int = 0
    mask: str | None = None
    align: str | None = None
    """Where an odd count of BCD digits sits in its bytes: `left` (pad nibble last) or `right`
    (pad nibble first). None is the contract's default: fixed right, variable left. CUP's field
    22 is the exception that makes this a per-field setting (PROTOCOL.md §1: `021` is `02 10`)."""

    def right_aligned(self) -> bool:
        return self.align == "right" if self.align else not self.prefix

    def notation(self) -> str:
        dots = {0: "", 2: "..", 3: "..."}[self.prefix]
        return f"{self.kind}{dots}{self.length}"


@dataclass(frozen=True)
class Dialect:
    """The whole wire shape both sides must agree on (PROTOCOL.md §1)."""

    name: str
    mti_encoding: str
    digit_encoding: str
    prefix_encoding: str
    fields: Mapping[int, FieldSpec]
    tpdu: bool = False
    header: bytes = b""
    mac: str = "x9.19"
    single_length_mak: bool = False
    """True where the dialect's MAC runs under a single-length MAK whatever the key set."""
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def with_header(self, header: bytes) -> Dialect:
        return replace(self, header=header)


def _fail(entry: str, reason: str) -> SpecError:
    return SpecError(f"dialect spec: {entry}: {reason}")


def field_from_data(number: int, data: Mapping[str, Any]) -> FieldSpec:
    """One FieldSpec from a spec-file entry: `{"type": "n", "max": 19, "prefix": "LL"}`."""
    entry = f"fields.{number}"
    if not isinstance(data, Mapping):
        raise _fail(entry, "must be a table/object")
    unknown = set(data) - {"name", "type", "length", "max", "prefix", "mask", "align"}
    if unknown:
        raise _fail(entry, f"unknown key(s) {sorted(unknown)}")
    kind = data.get("type")
    if kind not in KINDS:
        raise _fail(entry, f"type must be one of {sorted(KINDS)}, not {kind!r}")
    prefix_name = data.get("prefix", "fixed")
    if prefix_name not in PREFIXES:
        raise _fail(entry, f"prefix must be one of {sorted(PREFIXES)}, not {prefix_name!r}")
    prefix = PREFIXES[prefix_name]
    if prefix == 0:
        if "length" not in data or "max" in data:
            raise _fail(entry, "a fixed field takes 'length' (and no 'max')")
        length = data["length"]
    else:
        if "max" not in data or "length" in data:
            raise _fail(entry, f"an {prefix_name} field takes 'max' (and no 'length')")
        length = data["max"]
    limit = {0: 9999, 2: 99, 3: 999}[prefix]
    if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= limit:
        raise _fail(entry, f"length must be an integer from 1 to {limit}, not {length!r}")
    mask = data.get("mask")
    if mask is not None and mask not in MASKS:
        raise _fail(entry, f"mask must be one of {sorted(MASKS)}, not {mask!r}")
    align = data.get("align")
    if align is not None and align not in ALIGNMENTS:
        raise _fail(entry, f"align must be one of {sorted(ALIGNMENTS)}, not {align!r}")
    name = data.get("name", f"Field {number}")
    if not isinstance(name, str):
        raise _fail(entry, "name must be a string")
    return FieldSpec(number, name, kind, length, prefix, mask, align)


def field_to_data(spec: FieldSpec) -> dict[str, Any]:
    prefix = {v: k for k, v in PREFIXES.items()}[spec.prefix]
    out: dict[str, Any] = {"name": spec.name, "type": spec.kind, "prefix": prefix}
    out["length" if spec.prefix == 0 else "max"] = spec.length
    if spec.mask:
        out["mask"] = spec.mask
    if spec.align:
        out["align"] = spec.align
    return out


def dialect_from_data(data: Mapping[str, Any], base: Dialect | None = None) -> Dialect:
    """A Dialect from parsed JSON/TOML; with `base`, what is not given is inherited."""
    if not isinstance(data, Mapping):
        raise _fail("top level", "must be a table/object")
    allowed = {
        "name", "base", "description", "mti", "digits", "prefixes", "tpdu", "header", "mac",
        "single_length_mak", "fields",
    }
    unknown = set(data) - allowed
    if unknown:
        raise _fail("top level", f"unknown key(s) {sorted(unknown)}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise _fail("name", "a non-empty string is required")

    def setting(key: str, default: Any, choices: frozenset[str] | None = None) -> Any:
        value = data.get(key, default)
        if value is None:
            raise _fail(key, "is required (or give a 'base' dialect)")
        if choices is not None and value not in choices:
            raise _fail(key, f"must be one of {sorted(choices)}, not {value!r}")
        return value

    mti = setting("mti", base.mti_encoding if base else None, ENCODINGS)
    digits = setting("digits", base.digit_encoding if base else None, ENCODINGS)
    prefixes = setting("prefixes", base.prefix_encoding if base else None, ENCODINGS)
    mac = setting("mac", base.mac if base else "x9.19", MAC_ALGORITHMS)
    tpdu = data.get("tpdu", base.tpdu if base else False)
    if not isinstance(tpdu, bool):
        raise _fail("tpdu", "must be true or false")
    single = data.get("single_length_mak", base.single_length_mak if base else False)
    if not isinstance(single, bool):
        raise _fail("single_length_mak", "must be true or false")
    header_hex = data.get("header", base.header.hex() if base else "")
    try:
        header = bytes.fromhex(header_hex)
    except (TypeError, ValueError):
        raise _fail("header", "must be a string of hex digits") from None
    if header and not tpdu:
        raise _fail("header", "a header needs a TPDU in this project's framing")

    fields: dict[int, FieldSpec] = dict(base.fields) if base else {}
    raw_fields = data.get("fields", {})
    if not isinstance(raw_fields, Mapping):
        raise _fail("fields", "must be a table/object keyed by field number")
    for key, value in raw_fields.items():
        try:
            number = int(key)
        except (TypeError, ValueError):
            raise _fail(f"fields.{key}", "the key must be a field number") from None
        if not 2 <= number <= 128:
            raise _fail(f"fields.{key}", "field numbers run from 2 to 128 (1 is the bitmap)")
        if value is None or value is False:
            fields.pop(number, None)
            continue
        fields[number] = field_from_data(number, value)
    if not fields:
        raise _fail("fields", "a dialect needs at least one field")
    description = data.get("description", "")
    return Dialect(
        name=name, mti_encoding=mti, digit_encoding=digits, prefix_encoding=prefixes,
        fields=dict(sorted(fields.items())), tpdu=tpdu, header=header, mac=mac,
        single_length_mak=single, description=str(description),
    )


def dialect_to_data(dialect: Dialect) -> dict[str, Any]:
    """A dialect as JSON-ready data: how a user starts a spec file of their own."""
    return {
        "name": dialect.name,
        "description": dialect.description,
        "mti": dialect.mti_encoding,
        "digits": dialect.digit_encoding,
        "prefixes": dialect.prefix_encoding,
        "tpdu": dialect.tpdu,
        "header": dialect.header.hex(),
        "mac": dialect.mac,
        "single_length_mak": dialect.single_length_mak,
        "fields": {str(n): field_to_data(f) for n, f in dialect.fields.items()},
    }


def read_spec_file(path: str | Path) -> Any:
    """A spec file's parsed data (TOML by its suffix, else JSON), or the SpecError that says why not."""
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise SpecError(f"dialect spec {p}: cannot read: {exc.strerror}") from None
    try:
        return tomllib.loads(text.decode("utf-8")) if p.suffix.lower() == ".toml" else json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        kind = p.suffix.lstrip(".") or "JSON"
        raise SpecError(f"dialect spec {p}: not valid {kind}: {exc}") from None

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
DIGIT_KINDS = frozenset({"n", "z"})
ENCODINGS = frozenset({"ascii", "bcd", "ebcdic"})
"""How MTI and digits travel: ASCII characters, packed BCD, or EBCDIC (code page 037) characters."""
TEXT_ENCODINGS = frozenset({"ascii", "ebcdic"})
PREFIX_ENCODINGS = frozenset({"ascii", "bcd", "ebcdic", "binary"})
FIELD_ENCODINGS = frozenset({"ascii", "bcd", "ebcdic", "binary", "gbk"})
"""`gbk`: Chinese merchant names and messages (43, 63 in CUP frames); lengths count bytes."""
GBK_KINDS = frozenset({"an", "ans", "ns"})
BITMAPS = frozenset({"binary", "hex"})
LENGTH_HEADERS = frozenset({"binary2", "binary4", "ascii4", "bcd2", "none"})
COUNTS = frozenset({"digits", "bytes"})
PADS = frozenset({"0", "F"})
MASKS = frozenset({"pan", "track", "icc", "pin", "key", "mac"})
MAC_ALGORITHMS = frozenset({"x9.19", "cup-ecb"})
ALIGNMENTS = frozenset({"left", "right"})
PREFIXES = {"fixed": 0, "L": 1, "LL": 2, "LLL": 3, "LLLL": 4}
DOTS = {0: "", 1: ".", 2: "..", 3: "...", 4: "...."}


@dataclass(frozen=True, slots=True)
class Subfield:
    """One fixed-length part of a structured field (60.1, 60.2, ...), in characters."""

    name: str
    length: int


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One data element. `length` is the fixed length, or the maximum for L..LLLL fields.

    Lengths count characters for text and digit kinds and bytes for `b`: the unit a person reads
    in a spec table (`n..19`, `b64` is written here as 8 bytes). Every setting below left at None
    takes the dialect's default, so a spec file says only where a device differs.
    """

    number: int
    name: str
    kind: str
    length: int
    prefix: int = 0
    """Digits of the length prefix: 0 fixed, 1 to 4 for L to LLLL."""
    mask: str | None = None
    align: str | None = None
    """Where an odd count of BCD digits sits in its bytes: `left` (pad nibble last) or `right`
    (pad nibble first). None is the contract's default: fixed right, variable left. CUP's field
    22 is the exception that makes this a per-field setting (PROTOCOL.md §1: `021` is `02 10`)."""
    encoding: str | None = None
    """ascii, bcd (n and z only), ebcdic, binary (b only), gbk (text; counts bytes); None: the
    dialect's digits or text."""
    prefix_encoding: str | None = None
    counts: str | None = None
    """What the length prefix counts: `digits` (characters, digits, or bytes of `b`) or `bytes`
    on the wire; they differ only for BCD. None: digits."""
    pad: str | None = None
    """The BCD pad nibble, `0` or `F`; None: 0."""
    subfields: tuple[Subfield, ...] = ()
    """Parts read in order, as many as the value holds (`protocol.subfields`)."""
    tlv: bool = False
    """The value is BER-TLV (field 55's chip data): shown tag by tag, by name."""

    def right_aligned(self) -> bool:
        return self.align == "right" if self.align else not self.prefix

    def notation(self) -> str:
        return f"{self.kind}{DOTS[self.prefix]}{self.length}"


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
    text_encoding: str = "ascii"
    """How `a`/`an`/`ans`/`ns`/`xn` characters travel: ascii or ebcdic (cp037)."""
    bitmap: str = "binary"
    """`binary`: 8 raw bytes a bitmap; `hex`: 16 hex characters in the text encoding."""
    length_header: str = "binary2"
    """What precedes each TCP frame: binary2/binary4 (big-endian), ascii4, bcd2, or none."""
    length_includes_self: bool = False

    def with_header(self, header: bytes) -> Dialect:
        return replace(self, header=header)

    def encoding_of(self, spec: FieldSpec) -> str:
        """A field's data encoding, its own setting or the dialect's default for its kind."""
        if spec.encoding:
            return spec.encoding
        if spec.kind == "b":
            return "binary"
        return self.digit_encoding if spec.kind in DIGIT_KINDS else self.text_encoding

    def prefix_encoding_of(self, spec: FieldSpec) -> str:
        return spec.prefix_encoding or self.prefix_encoding


def prefix_width(prefix: int, encoding: str) -> int:
    """Bytes a length prefix of `prefix` digits takes: a digit a byte in text, two in BCD, and a
    binary L/LL one byte, LLL/LLLL two (the usual reading of `LLVAR` in binary devices)."""
    if not prefix:
        return 0
    if encoding in TEXT_ENCODINGS:
        return prefix
    if encoding == "bcd":
        return (prefix + 1) // 2
    return 1 if prefix <= 2 else 2


def _fail(entry: str, reason: str) -> SpecError:
    return SpecError(f"dialect spec: {entry}: {reason}")


def _choice(data: Mapping[str, Any], key: str, choices: frozenset[str], entry: str) -> Any:
    value = data.get(key)
    if value is not None and value not in choices:
        raise _fail(entry, f"{key} must be one of {sorted(choices)}, not {value!r}")
    return value


FIELD_KEYS = frozenset({"name", "type", "length", "max", "prefix", "mask", "align", "encoding",
                        "prefix_encoding", "counts", "pad", "subfields", "tlv"})


def field_from_data(number: int, data: Mapping[str, Any]) -> FieldSpec:
    """One FieldSpec from a spec-file entry: `{"type": "n", "max": 19, "prefix": "LL"}`."""
    entry = f"fields.{number}"
    if not isinstance(data, Mapping):
        raise _fail(entry, "must be a table/object")
    unknown = set(data) - FIELD_KEYS
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
    limit = 9999 if prefix == 0 else 10 ** prefix - 1
    if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= limit:
        raise _fail(entry, f"length must be an integer from 1 to {limit}, not {length!r}")
    mask = _choice(data, "mask", MASKS, entry)
    align = _choice(data, "align", ALIGNMENTS, entry)
    encoding = _choice(data, "encoding", FIELD_ENCODINGS, entry)
    if encoding == "bcd" and kind not in DIGIT_KINDS:
        raise _fail(entry, f"encoding bcd packs digits: it needs type n or z, not {kind}")
    if encoding == "gbk" and kind not in GBK_KINDS:
        raise _fail(entry, f"encoding gbk is for text (an, ans, ns), not {kind}")
    if (encoding == "binary") != (kind == "b") and encoding is not None:
        raise _fail(entry, "encoding binary is for type b, and type b is always binary")
    prefix_encoding = _choice(data, "prefix_encoding", PREFIX_ENCODINGS, entry)
    counts = _choice(data, "counts", COUNTS, entry)
    pad = _choice(data, "pad", PADS, entry)
    if (prefix_encoding or counts) and not prefix:
        raise _fail(entry, "prefix_encoding and counts need a length prefix (L to LLLL)")
    name = data.get("name", f"Field {number}")
    if not isinstance(name, str):
        raise _fail(entry, "name must be a string")
    subfields = _subfields(data.get("subfields", []), entry, kind)
    is_tlv = data.get("tlv", False)
    if not isinstance(is_tlv, bool) or (is_tlv and kind != "b"):
        raise _fail(entry, "tlv is true or false, and true only for a b field")
    return FieldSpec(number, name, kind, length, prefix, mask, align, encoding, prefix_encoding,
                     counts, pad, subfields, is_tlv)


def _subfields(data: Any, entry: str, kind: str) -> tuple[Subfield, ...]:
    if not isinstance(data, list):
        raise _fail(entry, "subfields must be a list of {name, length}")
    if data and kind == "b":
        raise _fail(entry, "subfields split characters: a b field has none")
    out = []
    for i, part in enumerate(data, start=1):
        where = f"{entry}.subfields[{i}]"
        if not isinstance(part, Mapping) or set(part) - {"name", "length"}:
            raise _fail(where, "must be {name, length}")
        length = part.get("length")
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise _fail(where, f"length must be a positive integer, not {length!r}")
        out.append(Subfield(str(part.get("name", f"part {i}")), length))
    return tuple(out)


OPTIONAL_FIELD_SETTINGS = ("mask", "align", "encoding", "prefix_encoding", "counts", "pad", "tlv")


def field_to_data(spec: FieldSpec) -> dict[str, Any]:
    prefix = {v: k for k, v in PREFIXES.items()}[spec.prefix]
    out: dict[str, Any] = {"name": spec.name, "type": spec.kind, "prefix": prefix}
    out["length" if spec.prefix == 0 else "max"] = spec.length
    for key in OPTIONAL_FIELD_SETTINGS:
        if getattr(spec, key):
            out[key] = getattr(spec, key)
    if spec.subfields:
        out["subfields"] = [{"name": p.name, "length": p.length} for p in spec.subfields]
    return out


TOP_KEYS = frozenset({
    "name", "base", "description", "mti", "digits", "prefixes", "text", "bitmap", "length",
    "length_includes_self", "tpdu", "header", "mac", "single_length_mak", "fields",
})


def dialect_from_data(data: Mapping[str, Any], base: Dialect | None = None) -> Dialect:
    """A Dialect from parsed JSON/TOML; with `base`, what is not given is inherited."""
    if not isinstance(data, Mapping):
        raise _fail("top level", "must be a table/object")
    unknown = set(data) - TOP_KEYS
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

    def flag(key: str, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            raise _fail(key, "must be true or false")
        return value

    mti = setting("mti", base.mti_encoding if base else None, ENCODINGS)
    digits = setting("digits", base.digit_encoding if base else None, ENCODINGS)
    prefixes = setting("prefixes", base.prefix_encoding if base else None, PREFIX_ENCODINGS)
    text = setting("text", base.text_encoding if base else "ascii", TEXT_ENCODINGS)
    bitmap = setting("bitmap", base.bitmap if base else "binary", BITMAPS)
    length_header = setting("length", base.length_header if base else "binary2", LENGTH_HEADERS)
    includes_self = flag("length_includes_self", base.length_includes_self if base else False)
    if includes_self and length_header == "none":
        raise _fail("length_includes_self", "needs a length header (length is none)")
    mac = setting("mac", base.mac if base else "x9.19", MAC_ALGORITHMS)
    tpdu = flag("tpdu", base.tpdu if base else False)
    single = flag("single_length_mak", base.single_length_mak if base else False)
    header_hex = data.get("header", base.header.hex() if base else "")
    try:
        header = bytes.fromhex(header_hex)
    except (TypeError, ValueError):
        raise _fail("header", "must be a string of hex digits") from None

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
    for spec in fields.values():
        _check_combination(spec, digits, text, prefixes)
    description = data.get("description", "")
    return Dialect(
        name=name, mti_encoding=mti, digit_encoding=digits, prefix_encoding=prefixes,
        fields=dict(sorted(fields.items())), tpdu=tpdu, header=header, mac=mac,
        single_length_mak=single, description=str(description), text_encoding=text,
        bitmap=bitmap, length_header=length_header, length_includes_self=includes_self,
    )


def _check_combination(spec: FieldSpec, digits: str, text: str, prefixes: str) -> None:
    """What a field's settings mean only together with the dialect's defaults."""
    entry = f"fields.{spec.number}"
    encoding = spec.encoding or (
        "binary" if spec.kind == "b" else digits if spec.kind in DIGIT_KINDS else text
    )
    if (spec.align or spec.pad) and encoding != "bcd":
        raise _fail(entry, "align and pad place a BCD pad nibble: this field is not BCD")
    prefix_encoding = spec.prefix_encoding or prefixes
    if spec.prefix and prefix_encoding == "binary" and spec.length > (255 if spec.prefix <= 2 else 65535):
        raise _fail(entry, f"a binary {spec.prefix}-digit prefix cannot count to {spec.length}")


def dialect_to_data(dialect: Dialect) -> dict[str, Any]:
    """A dialect as JSON-ready data: how a user starts a spec file of their own."""
    return {
        "name": dialect.name,
        "description": dialect.description,
        "mti": dialect.mti_encoding,
        "digits": dialect.digit_encoding,
        "prefixes": dialect.prefix_encoding,
        "text": dialect.text_encoding,
        "bitmap": dialect.bitmap,
        "length": dialect.length_header,
        "length_includes_self": dialect.length_includes_self,
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

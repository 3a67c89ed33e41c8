"""Dialects loaded from JSON and TOML files: inheritance, and bad files refused by entry."""

from __future__ import annotations

import json

import pytest

from protocol.codec import Codec
from protocol.dialects import CUP, ISO87, get_dialect, load_dialect
from protocol.errors import SpecError
from protocol.framing import Framing
from protocol.message import Message
from protocol.spec import dialect_from_data, dialect_to_data

MIXED_TOML = """
name = "mixed"
description = "ASCII MTI and prefixes, BCD digits, TPDU with a 2-byte header"
mti = "ascii"
digits = "bcd"
prefixes = "ascii"
tpdu = true
header = "4142"
mac = "cup-ecb"

[fields.2]
type = "n"
max = 19
prefix = "LL"
mask = "pan"

[fields.4]
name = "Amount"
type = "n"
length = 5

[fields.35]
type = "z"
max = 37
prefix = "LL"
mask = "track"

[fields.41]
type = "ans"
length = 8
"""


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_toml_dialect(tmp_path):
    d = load_dialect(write(tmp_path, "mixed.toml", MIXED_TOML))
    assert d.name == "mixed"
    assert (d.mti_encoding, d.digit_encoding, d.prefix_encoding) == ("ascii", "bcd", "ascii")
    assert d.tpdu and d.header == b"AB" and d.mac == "cup-ecb"
    assert sorted(d.fields) == [2, 4, 35, 41]
    assert d.fields[4].name == "Amount" and d.fields[4].notation() == "n5"
    assert d.fields[2].mask == "pan" and d.fields[2].notation() == "n..19"
    codec = Codec(d)
    msg = Message("0200", {2: "123", 4: "12345", 35: "12=3", 41: "T1      "})
    data = codec.encode(msg)
    # ASCII MTI; n5 in BCD right-aligned; LL ASCII prefix counting digits, BCD left-aligned
    assert data == (b"0200" + bytes.fromhex("5000000020800000") + b"03" + bytes.fromhex("1230")
                    + bytes.fromhex("012345") + b"04" + bytes.fromhex("12D3") + b"T1      ")
    assert codec.decode(data) == msg
    assert Framing(d).frame(data)[2:9] == bytes.fromhex("6000000000") + b"AB"


def test_load_json_dialect_with_base_inheritance(tmp_path):
    spec = {
        "name": "cup-variant",
        "base": "cup",
        "header": "603200000000",
        "fields": {
            "44": {"type": "ans", "max": 40, "prefix": "LL"},
            "63": None,
            "5": {"type": "n", "length": 12},
        },
    }
    d = load_dialect(write(tmp_path, "v.json", json.dumps(spec)))
    assert d.name == "cup-variant"
    assert d.header == bytes.fromhex("603200000000") and d.tpdu
    assert (d.mti_encoding, d.digit_encoding, d.mac) == ("bcd", "bcd", "cup-ecb")
    assert d.fields[44].notation() == "ans..40"
    assert 63 not in d.fields and 5 in d.fields
    assert d.fields[2] == CUP.fields[2]
    # the built-in is untouched
    assert CUP.fields[44].notation() == "ans..25" and 63 in CUP.fields
    assert Codec(d).encode(Message("0200", {5: "1"}))[-6:] == bytes.fromhex("000000000001")


def test_toml_base_iso87_can_remove_with_false(tmp_path):
    d = load_dialect(write(tmp_path, "x.toml", 'name = "x"\nbase = "iso87"\n[fields]\n128 = false\n'))
    assert 128 not in d.fields and len(d.fields) == 126
    assert d.fields[62] == ISO87.fields[62]


def test_dialect_to_data_round_trips(tmp_path):
    for builtin in (ISO87, CUP):
        path = write(tmp_path, f"{builtin.name}.json", json.dumps(dialect_to_data(builtin)))
        loaded = load_dialect(path)
        assert dict(loaded.fields) == dict(builtin.fields)
        assert loaded.header == builtin.header and loaded.tpdu == builtin.tpdu
        assert loaded.single_length_mak == builtin.single_length_mak


def test_get_dialect_accepts_a_spec_path(tmp_path):
    path = write(tmp_path, "mixed.toml", MIXED_TOML)
    assert get_dialect(str(path)).name == "mixed"


BASE = '"name": "bad", "mti": "ascii", "digits": "ascii", "prefixes": "ascii"'
GOOD_FIELD = '"2": {"type": "n", "max": 19, "prefix": "LL"}'


@pytest.mark.parametrize(("text", "entry"), [
    ('{' + BASE + ', "fields": {"2": {"type": "q", "length": 2}}}', "fields.2"),
    ('{' + BASE + ', "fields": {"3": {"type": "n", "length": 6, "max": 6}}}', "fields.3"),
    ('{' + BASE + ', "fields": {"3": {"type": "n"}}}', "fields.3"),
    ('{' + BASE + ', "fields": {"3": {"type": "n", "length": 0}}}', "fields.3"),
    ('{' + BASE + ', "fields": {"3": {"type": "n", "length": "6"}}}', "fields.3"),
    ('{' + BASE + ', "fields": {"2": {"type": "n", "max": 100, "prefix": "LL"}}}', "fields.2"),
    # LLLL, EBCDIC and a header without a TPDU became spec options (issue 18): what is refused
    # now is a fifth length digit, an unknown encoding and a header of odd hex digits.
    ('{' + BASE + ', "fields": {"2": {"type": "n", "max": 19, "prefix": "LLLLL"}}}', "fields.2"),
    ('{' + BASE + ', "fields": {"2": {"type": "n", "max": 19, "prefix": "LL", "mask": "x"}}}', "fields.2"),
    ('{' + BASE + ', "fields": {"2": {"type": "n", "max": 19, "prefix": "LL", "colour": 1}}}', "fields.2"),
    ('{' + BASE + ', "fields": {"2": "n..19"}}', "fields.2"),
    ('{' + BASE + ', "fields": {"1": {"type": "b", "length": 8}}}', "fields.1"),
    ('{' + BASE + ', "fields": {"129": {"type": "b", "length": 8}}}', "fields.129"),
    ('{' + BASE + ', "fields": {"two": {"type": "b", "length": 8}}}', "fields.two"),
    ('{' + BASE + ', "fields": []}', "fields"),
    ('{' + BASE + ', "fields": {}}', "fields"),
    ('{"name": "bad", "mti": "ebcdyc", "digits": "ascii", "prefixes": "ascii", "fields": {' + GOOD_FIELD
     + '}}', "mti"),
    ('{"name": "bad", "mti": "ascii", "prefixes": "ascii", "fields": {' + GOOD_FIELD + '}}', "digits"),
    ('{' + BASE + ', "header": "zz", "tpdu": true, "fields": {' + GOOD_FIELD + '}}', "header"),
    ('{' + BASE + ', "header": "603", "fields": {' + GOOD_FIELD + '}}', "header"),
    ('{' + BASE + ', "tpdu": "yes", "fields": {' + GOOD_FIELD + '}}', "tpdu"),
    ('{' + BASE + ', "mac": "md5", "fields": {' + GOOD_FIELD + '}}', "mac"),
    ('{' + BASE + ', "fieldz": {}}', "top level"),
    ('{"mti": "ascii", "base": "iso87"}', "name"),
    ('{"name": "x", "base": "iso99"}', "base"),
    ('["iso87"]', "top level"),
])
def test_bad_json_spec_names_the_entry(tmp_path, text, entry):
    path = write(tmp_path, "bad.json", text)
    with pytest.raises(SpecError) as info:
        load_dialect(path)
    assert f": {entry}: " in str(info.value)


@pytest.mark.parametrize(("text", "entry"), [
    ('name = "t"\nbase = "cup"\n[fields.48]\ntype = "n"\nmax = 1000\nprefix = "LLL"\n', "fields.48"),
    ('name = "t"\nbase = "cup"\nsingle_length_mak = 1\n', "single_length_mak"),
    ('name = ""\nbase = "cup"\n', "name"),
    ('name = "t"\nbase = "cup"\n[fields.2]\ntype = "n"\nlength = true\n', "fields.2"),
])
def test_bad_toml_spec_names_the_entry(tmp_path, text, entry):
    with pytest.raises(SpecError) as info:
        load_dialect(write(tmp_path, "bad.toml", text))
    assert f": {entry}: " in str(info.value)


def test_unparsable_and_missing_files(tmp_path):
    with pytest.raises(SpecError, match="not valid json"):
        load_dialect(write(tmp_path, "broken.json", '{"name": '))
    with pytest.raises(SpecError, match="not valid toml"):
        load_dialect(write(tmp_path, "broken.toml", "name = \n"))
    with pytest.raises(SpecError, match="cannot read"):
        load_dialect(tmp_path / "missing.json")
    (tmp_path / "latin.toml").write_bytes(b'name = "\xe9"\n')
    with pytest.raises(SpecError, match="not valid"):
        load_dialect(tmp_path / "latin.toml")


@pytest.mark.parametrize("base", ["5", '["iso87"]', "true"])
def test_non_string_base_is_a_spec_error(tmp_path, base):
    # Regression: a non-string 'base' used to reach get_dialect and raise AttributeError or
    # TypeError instead of SpecError.
    with pytest.raises(SpecError) as info:
        load_dialect(write(tmp_path, "b.json", '{"name": "x", "base": ' + base + "}"))
    assert ": base: " in str(info.value)


def test_base_naming_itself_is_a_spec_error(tmp_path, monkeypatch):
    # Regression: 'base' used to accept a spec path, so a file naming itself recursed until
    # RecursionError. Only built-in dialects can be inherited now.
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "self.json", '{"name": "x", "base": "self.json"}')
    with pytest.raises(SpecError, match="base: must name a built-in dialect"):
        load_dialect("self.json")


def test_dialect_from_data_without_base_needs_encodings():
    with pytest.raises(SpecError, match="mti: is required"):
        dialect_from_data({"name": "x", "fields": {"2": {"type": "n", "length": 2}}})

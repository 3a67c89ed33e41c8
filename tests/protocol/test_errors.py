"""Errors say whose fault they are (ours to encode, the peer's to decode) and where, by path."""

from __future__ import annotations

import subprocess
import sys

import pytest

from protocol.codec import codec_for, get_codec
from protocol.dialects import CUP, ISO87, load_dialect
from protocol.errors import DecodeError, EncodeError, FramingError, ProtocolError
from protocol.fields import Field60, build_key_set, key_set, parse_key_set
from protocol.framing import FrameReader, Framing, length_prefixed
from protocol.message import Message


def test_encode_errors_are_ours_and_name_the_field():
    with pytest.raises(EncodeError) as info:
        get_codec("iso87").encode(Message("0200", {4: "12x"}))
    assert not isinstance(info.value, DecodeError) and isinstance(info.value, ProtocolError)
    assert info.value.path == "4" and info.value.partial is None
    with pytest.raises(EncodeError) as info:
        get_codec("cup").encode(Message("02A0", {}))
    assert info.value.path == "MTI"


def test_decode_errors_are_the_peers_with_path_offset_and_partial():
    codec = get_codec("iso87")
    good = codec.encode(Message("0200", {3: "000000", 11: "000042", 62: b"\x01" * 24}))
    with pytest.raises(DecodeError) as info:
        codec.decode(good[:-3])  # field 62 cut short
    exc = info.value
    assert not isinstance(exc, EncodeError)
    assert exc.path == "62" and exc.field == 62 and exc.offset is not None
    assert exc.partial is not None and exc.partial.fields == {3: "000000", 11: "000042"}
    with pytest.raises(DecodeError) as info:
        codec.decode(b"02A0")
    assert info.value.path == "MTI"


def test_subfield_paths():
    with pytest.raises(DecodeError) as info:
        Field60.parse("0000000100")  # 60.3 one digit short
    assert info.value.path == "60.3" and info.value.field == 60
    assert str(info.value).startswith("field 60.3: ")
    with pytest.raises(EncodeError) as info:
        Field60("0", "000001", "003").format()
    assert info.value.path == "60.1"
    with pytest.raises(DecodeError) as info:
        key_set("009")
    assert info.value.path == "60.3"
    with pytest.raises(EncodeError) as info:
        build_key_set([], "009")
    assert info.value.path == "60.3"
    with pytest.raises(DecodeError) as info:
        parse_key_set(b"\0" * 39, "003", CUP)
    assert info.value.path == "62"


def test_framing_errors_keep_their_family_and_say_whose():
    with pytest.raises(FramingError) as info:
        length_prefixed(b"x" * 70000)
    assert isinstance(info.value, EncodeError)
    with pytest.raises(FramingError) as info:
        FrameReader(100).feed(b"\x01\x00")
    assert isinstance(info.value, DecodeError) and info.value.path == "length"


def test_bare_message_and_whole_frame_are_named_not_blamed_on_the_tpdu_id():
    framing = Framing(CUP)
    message = get_codec("cup").encode(Message("0800", {11: "000001"}))
    with pytest.raises(DecodeError, match="bare message") as info:
        framing.unframe(message + bytes(11))
    assert "MTI 0800" in str(info.value)
    frame = framing.frame(message)
    with pytest.raises(DecodeError, match="a whole frame") as info:
        framing.unframe(frame)
    with pytest.raises(DecodeError, match="TPDU id must be 0x60, got 0x61"):
        framing.unframe(bytes.fromhex("61FFFF0000603100000000") + message)


def test_codec_is_cached_by_dialect_identity(tmp_path):
    assert codec_for(CUP) is get_codec("cup") and codec_for(ISO87) is codec_for(ISO87)
    path = tmp_path / "d.json"
    path.write_text('{"name": "d", "base": "iso87"}', encoding="utf-8")
    loaded = load_dialect(path)
    assert codec_for(loaded) is codec_for(loaded)
    assert codec_for(load_dialect(path)) is not codec_for(loaded)


def test_spec_does_not_import_dialects():
    """The cycle stays broken: importing what a dialect is does not load which dialects exist."""
    code = "import sys, protocol.spec; print('protocol.dialects' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_describe_names_a_wrong_length_prefix():
    from protocol.describe import describe

    frame = Framing(CUP).frame(get_codec("cup").encode(Message("0800", {11: "000001"})))
    bad = (len(frame) - 1).to_bytes(2, "big") + frame[2:]
    desc = describe(bad, CUP)
    n = len(frame) - 2
    assert desc.error == f"length: the 2-byte length prefix says {n + 1} bytes follow, {n} do"
    assert describe(frame, CUP).error is None

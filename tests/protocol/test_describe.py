"""`python -m protocol describe` as a user runs it: a real process, hex in, masked fields out."""

from __future__ import annotations

import json
import subprocess
import sys

from protocol.codec import get_codec
from protocol.dialects import get_dialect
from protocol.framing import Framing, Tpdu
from protocol.message import Message

PAN = "6225880212345678"
TRACK2 = "6225880212345678=27121011234567"
PIN_BLOCK = bytes.fromhex("0412AC89ABCDEF67")
MAC = bytes.fromhex("A1B2C3D4E5F60718")
KEYS = bytes(range(1, 25))


def purchase() -> Message:
    return Message("0200", {
        2: PAN, 3: "000000", 4: "000000001234", 11: "000042", 22: "021", 25: "00",
        35: TRACK2, 41: "TERM0001", 42: "MERCHANT0000001", 49: "156", 52: PIN_BLOCK,
        53: "2600000000000000", 60: "22000001000", 62: KEYS, 64: MAC,
    })


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "protocol", "describe", *args],
        input=stdin.decode() if stdin else None, capture_output=True, text=True, timeout=30,
    )


def secrets_in(text: str) -> list[str]:
    needles = [PAN, TRACK2, "27121011234567", PIN_BLOCK.hex(), MAC.hex(), KEYS.hex()]
    lowered = text.lower()
    return [n for n in needles if n.lower() in lowered]


def test_describe_masks_every_sensitive_field_in_both_dialects() -> None:
    for name in ("iso87", "cup"):
        dialect = get_dialect(name)
        frame = Framing(dialect).frame(get_codec(name).encode(purchase()), Tpdu(1, 2))
        result = run("--dialect", name, frame.hex())
        assert result.returncode == 0, result.stderr
        assert "622588******5678" in result.stdout
        assert "Track 2 data" in result.stdout
        assert secrets_in(result.stdout) == []


def test_describe_json_from_stdin() -> None:
    frame = Framing(get_dialect("iso87")).frame(get_codec("iso87").encode(purchase()))
    result = run("--json", "-", stdin=frame.hex().encode())
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["mti"] == "0200" and data["framed"] is True
    assert data["fields"]["2"]["value"] == "622588******5678"
    assert data["fields"]["41"]["value"] == "TERM0001"
    assert secrets_in(result.stdout) == []


def test_describe_reports_a_broken_frame_with_field_and_offset() -> None:
    wire = get_codec("iso87").encode(purchase())
    cut = wire[:40]
    result = run(cut.hex())
    assert result.returncode == 1
    assert "error" in result.stdout and "offset" in result.stdout
    assert "Traceback" not in result.stderr

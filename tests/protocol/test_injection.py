"""The key-injection file: what the host writes, the terminal, fuzzer and fleet read."""

from __future__ import annotations

import json

import pytest

from protocol.crypto.keys import Key
from protocol.injection import InjectionError, decode_injection, encode_injection

# A fixed double-length key with odd parity in every byte (0x01, 0x23, ... patterns).
TMK = Key("TDES", "TMK", bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"))


def test_what_the_host_writes_the_terminal_reads() -> None:
    read = decode_injection(encode_injection("TERM0001", "MERCHANT0000001", TMK), "f")
    assert (read.tid, read.merchant, read.tmk.material) == ("TERM0001", "MERCHANT0000001", TMK.material)


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"kcv": "000000"}, "check value"), ({"key": "0023456789ABCDEFFEDCBA9876543210"}, "parity"),
     ({"key_type": "PIK"}, "no TMK"), ({"key": "zz"}, "no valid TMK")],
)
def test_a_damaged_file_is_refused_without_quoting_the_key(change: dict[str, str], reason: str) -> None:
    doc = json.loads(encode_injection("TERM0001", "MERCHANT0000001", TMK))
    doc.update(change)
    with pytest.raises(InjectionError, match=reason) as info:
        decode_injection(json.dumps(doc).encode(), "tmk.json")
    assert TMK.material.hex().upper() not in str(info.value)
    assert TMK.material.hex().upper()[:16] not in str(info.value)


def test_bytes_that_are_no_json_are_one_clear_error() -> None:
    with pytest.raises(InjectionError, match="not a readable injection file"):
        decode_injection(b"\xff\x00", "tmk.json")

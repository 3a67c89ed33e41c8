"""PIN block validation: every invalid block is a PinBlockError, whatever made it invalid."""

import pytest

from protocol.crypto import (
    Key,
    PinBlockError,
    build_pin_block,
    decrypt_pin_block,
    encrypt_pin_block,
    parse_pin_block,
)

H = bytes.fromhex
PAN = "4012345678909"  # ANSI X9.24-1:2009 A.4
PIK = Key("TDES", "PIK", H("0123456789ABCDEFFEDCBA9876543210"))


@pytest.mark.parametrize(
    "clear",
    [
        "241274EDCBA9876F",  # control nibble 2: format 2 is not accepted here
        "031274EDCBA9876F",  # PIN length 3
        "0D1274EDCBA9876F",  # PIN length 13
        "04127AEDCBA9876F",  # a PIN digit above 9 (after the PAN XOR)
        "041274EDCBA9876E",  # a fill nibble that is not F
        "041274EDCBA987",  # short
    ],
)
def test_invalid_format0_blocks(clear: str) -> None:
    with pytest.raises(PinBlockError):
        parse_pin_block(H(clear), PAN)


def test_wrong_pan_or_key_is_invalid() -> None:
    block = encrypt_pin_block(PIK, "1234", PAN)
    with pytest.raises(PinBlockError):
        decrypt_pin_block(PIK, block, "4012345678919")  # the PAN change lands on the fill
    with pytest.raises(PinBlockError):
        decrypt_pin_block(Key("TDES", "PIK", bytes(16)), block, PAN)


def test_format_rules() -> None:
    field1 = build_pin_block("1234", None, 1, rng=lambda n: bytes(range(n)))
    assert field1.hex().upper().startswith("141234") and parse_pin_block(field1) == "1234"
    field3 = build_pin_block("12345", PAN, 3, rng=lambda n: bytes(n))
    assert parse_pin_block(field3, PAN) == "12345"
    with pytest.raises(PinBlockError):
        build_pin_block("1234", PAN, 2)
    with pytest.raises(PinBlockError):
        build_pin_block("12a4", PAN)
    with pytest.raises(PinBlockError):
        build_pin_block("1234", "41111111x1111")
    with pytest.raises(PinBlockError):
        build_pin_block("1234", None, 0)
    with pytest.raises(PinBlockError):
        build_pin_block("1234", None, 4, rng=lambda n: b"")


def test_key_and_format_must_agree() -> None:
    aes = Key("AES", "PIK", bytes(16))
    with pytest.raises(PinBlockError):
        encrypt_pin_block(aes, "1234", PAN, 0)
    with pytest.raises(PinBlockError):
        encrypt_pin_block(PIK, "1234", PAN, 4)
    with pytest.raises(PinBlockError):
        encrypt_pin_block(bytes(12), "1234", PAN, 0)
    with pytest.raises(PinBlockError):
        decrypt_pin_block(PIK, bytes(12), PAN)
    with pytest.raises(PinBlockError):
        decrypt_pin_block(aes, encrypt_pin_block(PIK, "1234", PAN), PAN)


def test_a_host_limited_to_format_0_refuses_a_valid_format_1_block() -> None:
    format1 = encrypt_pin_block(PIK, "1234", None, fmt=1, rng=lambda n: bytes(range(n)))
    assert decrypt_pin_block(PIK, format1, PAN) == "1234"
    with pytest.raises(PinBlockError, match="format 1 is not accepted"):
        decrypt_pin_block(PIK, format1, PAN, formats=(0,))
    format0 = encrypt_pin_block(PIK, "1234", PAN)
    assert decrypt_pin_block(PIK, format0, PAN, formats=(0,)) == "1234"

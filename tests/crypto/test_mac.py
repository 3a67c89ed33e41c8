"""MAC behaviours beyond the published vectors: the CUP ECB MAC against the text of
PROTOCOL.md §1, dialect dispatch, padding and verification."""

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from hypothesis import given
from hypothesis import strategies as st

from protocol.crypto import (
    DIALECT_MACS,
    Key,
    KeyMaterialError,
    MacError,
    cup_ecb_mac,
    dialect_mac,
    pad,
    verify_mac,
    x919_mac,
)


def cup_ecb_mac_from_the_contract(key: bytes, data: bytes) -> bytes:
    """PROTOCOL.md §1 `cup`, step by step, on ``cryptography`` alone."""
    des = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    data = data + bytes(-len(data) % 8)
    folded = bytearray(8)
    for i in range(0, len(data), 8):
        for j in range(8):
            folded[j] ^= data[i + j]
    expanded = bytes(folded).hex().upper().encode()
    first = des.update(expanded[:8])
    second = des.update(bytes(a ^ b for a, b in zip(first, expanded[8:], strict=True)))
    return second.hex().upper().encode()[:8]


@given(key=st.binary(min_size=8, max_size=8), data=st.binary(max_size=300))
def test_cup_ecb_mac_follows_the_contract(key: bytes, data: bytes) -> None:
    mac = cup_ecb_mac(key, data)
    assert mac == cup_ecb_mac_from_the_contract(key, data)
    assert len(mac) == 8 and mac.decode().upper() == mac.decode()


def test_dialect_mac_dispatch() -> None:
    key16 = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    assert set(DIALECT_MACS) == {"x9.19", "cup-ecb"}
    assert dialect_mac("x9.19", key16, b"abc") == x919_mac(key16, b"abc")
    assert dialect_mac("x9.19", Key("TDES", "MAK", key16), b"abc") == x919_mac(key16, b"abc")
    assert dialect_mac("cup-ecb", key16[:8], b"abc") == cup_ecb_mac(key16[:8], b"abc")
    with pytest.raises(MacError):
        dialect_mac("X9.19", key16, b"abc")
    with pytest.raises(KeyMaterialError):
        cup_ecb_mac(key16, b"abc")


def test_padding_methods() -> None:
    # ISO/IEC 9797-1 padding methods 1 to 3 as the standard defines them.
    assert pad(b"", 1) == bytes(8)
    assert pad(b"12345678", 1) == b"12345678"
    assert pad(b"123", 1) == b"123" + bytes(5)
    assert pad(b"12345678", 2) == b"12345678\x80" + bytes(7)
    assert pad(b"123", 3) == bytes(7) + b"\x18" + b"123" + bytes(5)
    assert pad(b"", 3) == bytes(8)
    with pytest.raises(MacError):
        pad(b"", 4)


def test_verify_mac() -> None:
    assert verify_mac(b"\x01" * 8, b"\x01" * 8)
    assert not verify_mac(b"\x01" * 8, b"\x01" * 7 + b"\x00")
    assert not verify_mac(b"\x01" * 8, b"\x01" * 4)

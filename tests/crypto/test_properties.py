"""Property tests: round trips, tamper detection, and error texts free of key material."""

from collections.abc import Callable

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from protocol.crypto import (
    CryptoError,
    Key,
    KeyBlockError,
    KeyMaterialError,
    MacError,
    PinBlockError,
    combine_components,
    cup_ecb_mac,
    decrypt_pin_block,
    dialect_mac,
    encrypt_pin_block,
    fix_parity,
    iso9797_mac,
    kcv,
    tr31,
    unwrap_ecb,
    verify_mac,
    wrap_ecb,
    x919_mac,
)

KEY_SHAPES = [("DES", 8), ("TDES", 16), ("TDES", 24), ("AES", 16), ("AES", 24), ("AES", 32)]
# TR-31 version -> the KBPK shapes it accepts.
KBPK_SHAPES = {
    "A": [("DES", 8), ("TDES", 16), ("TDES", 24)],
    "B": [("TDES", 16), ("TDES", 24)],
    "C": [("DES", 8), ("TDES", 16), ("TDES", 24)],
    "D": [("AES", 16), ("AES", 24), ("AES", 32)],
}


@st.composite
def keys(draw: st.DrawFn, shapes: list[tuple[str, int]] = KEY_SHAPES, usage: str = "K0") -> Key:
    algorithm, length = draw(st.sampled_from(shapes))
    material = draw(st.binary(min_size=length, max_size=length))
    if algorithm != "AES":
        material = fix_parity(material)
    return Key(algorithm, usage, material)


des_keys = keys([("DES", 8), ("TDES", 16), ("TDES", 24)])
tr31_versions = st.sampled_from(sorted(KBPK_SHAPES))
optional_blocks = st.lists(
    st.tuples(
        st.sampled_from(["KS", "KC", "HM", "10"]),
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300),
    ),
    max_size=3,
)


@given(version=tr31_versions, data=st.data(), key=keys(), blocks=optional_blocks)
def test_tr31_round_trip(version: str, data: st.DataObject, key: Key, blocks: list) -> None:
    kbpk = data.draw(keys(KBPK_SHAPES[version]))
    block = tr31.wrap(kbpk, key, "M3", version=version, optional_blocks=tuple(blocks), version_number="07")
    header, back = tr31.unwrap(kbpk, block)
    assert back.material == key.material and back.algorithm == key.algorithm
    assert (header.version, header.key_usage, header.version_number) == (version, "M3", "07")
    assert header.optional_blocks == tuple(blocks)
    assert len(block) == int(block[1:5])


@given(version=tr31_versions, data=st.data(), key=keys())
def test_tr31_any_flipped_bit_is_detected(version: str, data: st.DataObject, key: Key) -> None:
    kbpk = data.draw(keys(KBPK_SHAPES[version]))
    block = tr31.wrap(kbpk, key, "P0", version=version, optional_blocks=(("KS", "0123"),))
    position = data.draw(st.integers(0, len(block) - 1))
    bit = data.draw(st.integers(0, 6))
    tampered = block[:position] + chr(ord(block[position]) ^ (1 << bit)) + block[position + 1 :]
    with pytest.raises(KeyBlockError):
        tr31.unwrap(kbpk, tampered)


@given(version=tr31_versions, data=st.data(), key=keys())
def test_tr31_wrong_kbpk_is_detected(version: str, data: st.DataObject, key: Key) -> None:
    kbpk = data.draw(keys(KBPK_SHAPES[version]))
    other = Key(kbpk.algorithm, "K0", data.draw(st.binary(min_size=kbpk.length, max_size=kbpk.length)))
    assume(fix_parity(other.material) != fix_parity(kbpk.material))  # DES ignores parity bits
    block = tr31.wrap(kbpk, key, "P0", version=version)
    with pytest.raises(KeyBlockError):
        tr31.unwrap(other, block)


@given(kek=des_keys, key=des_keys)
def test_ecb_round_trip(kek: Key, key: Key) -> None:
    wrapped = wrap_ecb(kek, key)
    assert unwrap_ecb(kek, wrapped, key.usage, key.algorithm, expected_kcv=key.kcv(4)) == key


@given(kek=des_keys, key=des_keys, data=st.data())
def test_ecb_any_flipped_bit_is_detected(kek: Key, key: Key, data: st.DataObject) -> None:
    """ECB has no integrity: parity and the 4-byte check value of field 62 catch the flip."""
    wrapped = bytearray(wrap_ecb(kek, key))
    wrapped[data.draw(st.integers(0, len(wrapped) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(KeyMaterialError):
        unwrap_ecb(kek, bytes(wrapped), key.usage, key.algorithm, expected_kcv=key.kcv(4))


MACS: list[tuple[Callable[[bytes, bytes], bytes], list[tuple[str, int]]]] = [
    (lambda k, d: iso9797_mac(k, d, 1, 1), [("DES", 8), ("TDES", 16), ("TDES", 24)]),
    (lambda k, d: iso9797_mac(k, d, 1, 2), [("TDES", 16)]),
    (lambda k, d: iso9797_mac(k, d, 3, 3), [("TDES", 16)]),
    (lambda k, d: x919_mac(k, d), [("DES", 8), ("TDES", 16)]),
    (lambda k, d: x919_mac(k, d, 2), [("TDES", 16)]),
    (cup_ecb_mac, [("DES", 8)]),
]


@pytest.mark.parametrize(("mac", "shapes"), MACS)
@given(data=st.data(), message=st.binary(min_size=1, max_size=300))
def test_mac_any_flipped_bit_is_detected(
    mac: Callable[[bytes, bytes], bytes],
    shapes: list[tuple[str, int]],
    data: st.DataObject,
    message: bytes,
) -> None:
    key = data.draw(keys(shapes)).material
    expected = mac(key, message)
    assert verify_mac(expected, mac(key, message))  # the cached context restarts cleanly
    tampered = bytearray(message)
    tampered[data.draw(st.integers(0, len(message) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    assert not verify_mac(expected, mac(key, bytes(tampered)))


@given(
    fmt=st.sampled_from([0, 1, 3, 4]),
    pin=st.from_regex(r"[0-9]{4,12}", fullmatch=True),
    pan=st.from_regex(r"[0-9]{12,19}", fullmatch=True),
    data=st.data(),
)
def test_pin_block_round_trip(fmt: int, pin: str, pan: str, data: st.DataObject) -> None:
    shapes = [s for s in KEY_SHAPES if (s[0] == "AES") == (fmt == 4)]
    key = data.draw(keys(shapes, usage="PIK"))
    block = encrypt_pin_block(key, pin, pan, fmt)
    assert len(block) == (16 if fmt == 4 else 8)
    assert decrypt_pin_block(key, block, pan) == pin


# Every error a bad input provokes must keep key material out of its text.
def _provoke_errors(key: Key, other: Key) -> list[CryptoError]:
    m = key.material
    attempts: list[Callable[[], object]] = [
        lambda: Key("TDES", "X", m + b"\x00"),
        lambda: Key("DES", "X", m),
        lambda: kcv(m + b"\x00"),
        lambda: kcv(m, 0),
        lambda: combine_components([(m, "00"), (m, None)]),
        lambda: combine_components([(m, None), (m[:-1], None)]),
        lambda: combine_components([(m, None), (m, None)], m[:3].hex()),
        lambda: unwrap_ecb(other, m, "PIK"),
        lambda: unwrap_ecb(other, m[:5], "PIK"),
        lambda: unwrap_ecb(other, wrap_ecb(other, key), "PIK", key.algorithm, expected_kcv=m[:4]),
        lambda: iso9797_mac(m + b"\x01", b"data"),
        lambda: iso9797_mac(m, b"data", 2),
        lambda: iso9797_mac(m, b"data", 1, 4),
        lambda: cup_ecb_mac(m + m, b"data"),
        lambda: dialect_mac(m.hex(), m, b"data"),
        lambda: tr31.unwrap(other, tr31.wrap(key, key, "K0", version="D")),
        lambda: tr31.unwrap(key, tr31.wrap(key, key, "K0", version="D")[:-2] + "00"),
        lambda: tr31.unwrap(key, m.hex()),
        lambda: tr31.unwrap(key, "D0048K0AE00E0000" + m.hex().upper()),
        lambda: tr31.wrap(key, key, m.hex()[:2]),
        lambda: tr31.wrap(key, key, "K0", optional_blocks=(("KS", m.hex() + "\x01"),)),
        lambda: encrypt_pin_block(m, m.hex()[:4], "1234567890123", 0),
        lambda: decrypt_pin_block(other, m[:8], "1234567890123"),
        lambda: decrypt_pin_block(m, m, "1234567890123"),
        lambda: decrypt_pin_block(key, m[:8] if len(m) > 8 else m + m, m.hex()),
    ]
    errors = []
    for attempt in attempts:
        try:
            attempt()
        except CryptoError as error:
            errors.append(error)
    return errors


@settings(max_examples=30)
@given(key=keys([("TDES", 16), ("AES", 16)]), other=keys([("TDES", 24)]))
def test_errors_never_carry_key_material(key: Key, other: Key) -> None:
    errors = _provoke_errors(key, other)
    assert len(errors) >= 20
    for error in errors:
        assert isinstance(error, ValueError)
        text = f"{error!s} {error!r} {error.args!r}"
        for material in (key.material, other.material):
            for needle in (material.hex(), material.hex().upper(), repr(material)[2:-1]):
                assert needle[:12] not in text, type(error).__name__


def test_error_types() -> None:
    with pytest.raises(MacError):
        dialect_mac("sha1", bytes(8), b"")
    with pytest.raises(PinBlockError):
        encrypt_pin_block(bytes(16), "12", "1234567890123")

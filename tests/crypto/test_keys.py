"""Keys, parity, check values, components and TDES-ECB wrapping: behaviour and errors."""

import pytest

from protocol.crypto import (
    ComponentError,
    CryptoError,
    Key,
    KeyMaterialError,
    check_des_key,
    combine_components,
    fix_parity,
    generate_key,
    has_odd_parity,
    kcv,
    unwrap_ecb,
    wrap_ecb,
)

H = bytes.fromhex
# TR-31:2018 A.7.2.1's TDES key F039121BEC83D26B169BDCD5B22AAF8F (published KCV CB9DEA) with
# odd parity set by hand: DES ignores parity bits, so the KCV stays CB9DEA.
TR31_KEY = H("F138131AEC83D36B169BDCD5B32AAE8F")


def counting_rng(n: int) -> bytes:
    return bytes(range(n))


def test_repr_and_str_show_usage_length_kcv_never_material() -> None:
    key = Key("TDES", "MAK", TR31_KEY)
    for text in (repr(key), str(key), f"{key}", f"{key!r}"):
        assert "MAK" in text and "16 bytes" in text and "CB9DEA" in text
        assert TR31_KEY.hex() not in text.lower()
    assert key.length == 16


@pytest.mark.parametrize(
    ("algorithm", "length"),
    [("DES", 8), ("TDES", 16), ("TDES", 24), ("AES", 16), ("AES", 24), ("AES", 32)],
)
def test_generate_key(algorithm: str, length: int) -> None:
    key = generate_key(algorithm, length, "PIK", counting_rng)
    assert key.length == length and key.usage == "PIK" and key.algorithm == algorithm
    if algorithm == "AES":
        assert key.material == counting_rng(length)
    else:
        assert has_odd_parity(key.material)
        assert key.material == fix_parity(counting_rng(length))


@pytest.mark.parametrize(("algorithm", "length"), [("DES", 16), ("TDES", 8), ("AES", 8), ("X", 8)])
def test_generate_key_rejects_bad_lengths(algorithm: str, length: int) -> None:
    with pytest.raises(KeyMaterialError):
        generate_key(algorithm, length, "PIK", counting_rng)


def test_generate_key_rejects_short_rng() -> None:
    with pytest.raises(KeyMaterialError):
        generate_key("TDES", 16, "PIK", lambda n: bytes(n - 1))


def test_parity() -> None:
    # 0x01 has one bit set (odd), 0x00 none (even): fixing sets the low bit.
    assert has_odd_parity(H("0101010101010101"))
    assert not has_odd_parity(H("0001010101010101"))
    assert fix_parity(H("0000000000000000")) == H("0101010101010101")
    assert fix_parity(H("FEFEFEFEFEFEFEFE")) == H("FEFEFEFEFEFEFEFE")
    check_des_key(TR31_KEY)
    with pytest.raises(KeyMaterialError, match="parity"):
        check_des_key(H("0001010101010101"))
    with pytest.raises(KeyMaterialError, match="bytes"):
        check_des_key(bytes(9))


def test_key_rejects_bad_length_and_algorithm() -> None:
    with pytest.raises(KeyMaterialError):
        Key("TDES", "MAK", bytes(8))
    with pytest.raises(KeyMaterialError):
        Key("RSA", "MAK", bytes(8))
    with pytest.raises(KeyMaterialError):
        Key("DES", "MAK", "0123456789ABCDEF")  # type: ignore[arg-type]
    assert Key("DES", "MAK", bytearray(8)).material == bytes(8)


def test_kcv_rejects_bad_inputs() -> None:
    with pytest.raises(KeyMaterialError):
        kcv(bytes(7))
    with pytest.raises(CryptoError):
        kcv(bytes(8), 9)
    with pytest.raises(KeyMaterialError):
        kcv(bytes(8), 3, "AES")


def _components(key: bytes, n: int) -> list[bytes]:
    """Odd-parity components of `key`, as a ceremony hands them out."""
    parts = [fix_parity(bytes((i * 37 + j * 11) & 0xFF for j in range(len(key)))) for i in range(1, n)]
    last = key
    for part in parts:
        last = bytes(a ^ b for a, b in zip(last, part, strict=True))
    return [*parts, fix_parity(last)]


@pytest.mark.parametrize("count", [2, 3])
def test_combine_components(count: int) -> None:
    parts = _components(TR31_KEY, count)
    given = [(p, kcv(p, 3).hex()) for p in parts]  # lower case accepted
    key = combine_components(given, "CB9DEA")
    assert key.material == TR31_KEY and key.usage == "TMK" and key.algorithm == "TDES"
    assert combine_components([(p, None) for p in parts]).material == TR31_KEY


def test_combine_components_sets_odd_parity_and_refuses_a_component_without_it() -> None:
    parts = _components(TR31_KEY, 2)
    combined = bytes(a ^ b for a, b in zip(*parts, strict=True))
    assert not has_odd_parity(combined)  # two odd-parity components XOR to even parity
    assert combine_components([(p, None) for p in parts], "CB9DEA").material == TR31_KEY
    parts[1] = bytes([parts[1][0] ^ 1]) + parts[1][1:]  # flip one parity bit only: same KCV
    assert kcv(parts[1]) == kcv(_components(TR31_KEY, 2)[1])
    with pytest.raises(ComponentError, match="component 1 does not have odd parity") as info:
        combine_components([(p, kcv(p, 3).hex()) for p in parts])
    assert info.value.index == 1


@pytest.mark.parametrize("bad", [0, 1, 2])
def test_combine_components_names_the_failing_component(bad: int) -> None:
    parts = _components(TR31_KEY, 3)
    given = [(p, kcv(p, 3).hex().upper()) for p in parts]
    given[bad] = (given[bad][0], "000000")
    with pytest.raises(ComponentError, match=f"component {bad} ") as info:
        combine_components(given)
    assert info.value.index == bad


def test_combine_components_expected_kcv_mismatch() -> None:
    with pytest.raises(ComponentError, match="combined") as info:
        combine_components([(p, None) for p in _components(TR31_KEY, 2)], "000000")
    assert info.value.index is None


@pytest.mark.parametrize(
    "components",
    [
        [(bytes(16), None)],
        [(bytes(16), None)] * 4,
        [(bytes(16), None), (bytes(8), None)],
        [(bytes(10), None), (bytes(10), None)],
        [(bytes(16), "XYZ"), (bytes(16), None)],
    ],
)
def test_combine_components_rejects_malformed(components: list[tuple[bytes, str | None]]) -> None:
    with pytest.raises(ComponentError):
        combine_components(components)


def test_wrap_unwrap_ecb() -> None:
    tmk = generate_key("TDES", 16, "TMK", counting_rng)
    mak = Key("TDES", "MAK", TR31_KEY)
    wrapped = wrap_ecb(tmk, mak)
    assert len(wrapped) == 16 and wrapped != TR31_KEY
    back = unwrap_ecb(tmk, wrapped, "MAK", expected_kcv=mak.kcv(4))
    assert back == mak
    single = Key("DES", "MAK", TR31_KEY[:8])
    assert unwrap_ecb(tmk, wrap_ecb(tmk, single), "MAK", "DES") == single


def test_unwrap_ecb_rejects() -> None:
    tmk = generate_key("TDES", 16, "TMK", counting_rng)
    wrapped = wrap_ecb(tmk, Key("TDES", "PIK", TR31_KEY))
    with pytest.raises(KeyMaterialError, match="check value"):
        unwrap_ecb(tmk, wrapped, "PIK", expected_kcv=b"\x00\x00\x00\x00")
    with pytest.raises(KeyMaterialError):
        unwrap_ecb(tmk, wrapped[:8], "PIK")
    with pytest.raises(KeyMaterialError):
        unwrap_ecb(tmk, wrapped, "PIK", "AES")
    even = wrap_ecb(tmk, Key("TDES", "PIK", bytes(16)))  # zero bytes have even parity
    with pytest.raises(KeyMaterialError, match="parity"):
        unwrap_ecb(tmk, even, "PIK")
    aes = Key("AES", "K0", bytes(16))
    with pytest.raises(KeyMaterialError):
        wrap_ecb(aes, Key("TDES", "PIK", TR31_KEY))
    with pytest.raises(KeyMaterialError):
        wrap_ecb(tmk, aes)

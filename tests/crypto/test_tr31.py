"""TR-31 parsing is strict: every malformed field is refused, with no key data in the error."""

import pytest

from protocol.crypto import Key, KeyBlockError, KeyBlockMacError, tr31

H = bytes.fromhex
# TR-31:2018 A.7.4 (AES KBPK, version D block), restated in openemv/tr31 tr31_decrypt_test.c.
KBPK = Key("AES", "K0", H("88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6"))
BLOCK = (
    "D0112P0AE00E0000B82679114F470F540165EDFBF7E250FCEA43F810D215F8D207E2E417C07156A27E8E31DA05"
    "F7425509593D03A457DC34"
)
# TR-31:2018 A.7.3.1 (version C with a KS optional block).
C_KBPK = Key("TDES", "K0", H("B8ED59E0A279A295E9F5ED7944FD06B9"))
C_BLOCK = "C0096B0TX12S0100KS1800604B120F9292800000BFB9B689CB567E66FC3FEE5AD5F52161FC6545B9D60989015D02155C"


def with_char(block: str, position: int, char: str) -> str:
    return block[:position] + char + block[position + 1 :]


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (BLOCK.lower(), "ASCII|version|length|field"),
        (BLOCK[:-1], "length"),
        (BLOCK + "0", "length"),
        ("D0015P0AE00E000", "at least 16"),
        ("D011", "at least 16"),
        (with_char(BLOCK, 0, "E"), "version"),
        (with_char(BLOCK, 2, "X"), "key block length"),
        (with_char(BLOCK, 5, "p"), "key usage"),
        (with_char(BLOCK, 7, "a"), "algorithm"),
        (with_char(BLOCK, 8, "e"), "mode of use"),
        (with_char(BLOCK, 11, "X"), "exportability"),
        (with_char(BLOCK, 13, "A"), "number of optional blocks"),
        (with_char(BLOCK, 15, "X"), "reserved"),
        (with_char(BLOCK, 40, "b"), "uppercase hex"),
        (with_char(BLOCK, 111, "z"), "uppercase hex"),
        (with_char(BLOCK, 20, "é"), "ASCII"),
        (with_char(BLOCK, 13, "1"), "optional block"),
        (BLOCK[:16] + BLOCK[48:], "length"),
        (with_char(C_BLOCK, 19, "F"), "optional block"),
        (with_char(C_BLOCK, 18, "9"), "optional block"),
        (with_char(C_BLOCK, 13, "2"), "optional block"),
    ],
)
def test_malformed_blocks_are_refused(block: str, message: str) -> None:
    kbpk = C_KBPK if block[0] == "C" else KBPK
    with pytest.raises(KeyBlockError, match=message) as info:
        tr31.unwrap(kbpk, block)
    assert "B82679114F47" not in str(info.value) and "BFB9B689" not in str(info.value)


def test_mac_failure_is_its_own_error() -> None:
    with pytest.raises(KeyBlockMacError, match="MAC"):
        tr31.unwrap(KBPK, with_char(BLOCK, 8, "D"))  # mode of use E -> D: header is MACed
    with pytest.raises(KeyBlockMacError):
        tr31.unwrap(Key("AES", "K0", bytes(32)), BLOCK)


def test_kbpk_must_suit_the_version() -> None:
    with pytest.raises(KeyBlockError, match="KBPK"):
        tr31.unwrap(C_KBPK, BLOCK)
    with pytest.raises(KeyBlockError, match="KBPK"):
        tr31.wrap(KBPK, C_KBPK, "K0", version="B")
    with pytest.raises(KeyBlockError, match="KBPK"):
        tr31.wrap(Key("DES", "K0", bytes(8)), C_KBPK, "K0", version="B")


def test_header_parse_without_kbpk() -> None:
    header, length = tr31.parse_header(C_BLOCK)
    assert length == 40
    assert header == tr31.Header("C", "B0", "T", "X", "12", "S", (("KS", "00604B120F9292800000"),))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"usage": "p0"}, "key usage"),
        ({"usage": "P"}, "key usage"),
        ({"mode_of_use": "EE"}, "mode of use"),
        ({"version_number": "1"}, "key version number"),
        ({"exportability": "X"}, "exportability"),
        ({"version": "Z"}, "version"),
        ({"optional_blocks": (("K", "1"),)}, "ID"),
        ({"optional_blocks": (("KS", "\n"),)}, "printable"),
        ({"optional_blocks": (("KS", "0" * 9990),)}, "9999"),
        ({"optional_blocks": tuple(("KS", "") for _ in range(100))}, "99"),
        ({"rng": lambda n: b""}, "random"),
    ],
)
def test_wrap_refuses_bad_parameters(kwargs: dict, message: str) -> None:
    kwargs = {"usage": "P0", **kwargs}
    with pytest.raises(KeyBlockError, match=message):
        tr31.wrap(KBPK, C_KBPK, **kwargs)


def test_defaults_and_masking() -> None:
    key = Key("TDES", "M3", H("0123456789ABCDEFFEDCBA9876543210"))
    block = tr31.wrap(KBPK, key)
    assert block.startswith("D0112M3TN00N0000")
    masked = tr31.wrap(KBPK, key, masked_length=32)
    assert len(masked) == len(block) + 32 and tr31.unwrap(KBPK, masked)[1] == key
    assert tr31.wrap(C_KBPK, key).startswith("B")
    header, back = tr31.unwrap(KBPK, block, usage="MAK")
    assert header.key_usage == "M3" and back.usage == "MAK"
    with pytest.raises(KeyBlockError, match="key usage"):
        tr31.wrap(KBPK, Key("TDES", "MAK", key.material))

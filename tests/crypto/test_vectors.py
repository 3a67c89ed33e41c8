"""Known-answer tests against published vectors only; each vector cites its source.

No expected value here was produced by posemu's code.
"""

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.hazmat.primitives.ciphers.algorithms import AES

from protocol.crypto import (
    Key,
    aes_cmac,
    build_pin_block,
    iso9797_mac,
    kcv,
    pan_field,
    parse_pin_block,
    tdes_cmac,
    tr31,
    x919_mac,
)
from protocol.crypto.tr31 import _derive

H = bytes.fromhex

# ISO/IEC 9797-1:2011 Annex B (B.2: MAC algorithm 1, B.4: MAC algorithm 3), single DES key
# K = 0123456789ABCDEF, K' = FEDCBA9876543210; the annex prints 32-bit MACs.
# Restated in openemv/crypto test/crypto_tdes2_retail_mac_test.c (B.4, padding 1).
ANNEX_K = H("0123456789ABCDEF")
ANNEX_K2 = H("FEDCBA9876543210")
DATA1 = b"Now is the time for all "
DATA2 = b"Now is the time for it"
ISO9797_ANNEX_B = [
    # (algorithm, data, padding, MAC (first 32 bits))
    (1, DATA1, 1, "70A30640"),  # B.2
    (1, DATA1, 2, "10E1F0F1"),  # B.2
    (1, DATA1, 3, "2C58FB8F"),  # B.2
    (1, DATA2, 1, "E45B3AD2"),  # B.2
    (1, DATA2, 2, "A924C721"),  # B.2
    (1, DATA2, 3, "B1ECD6FC"),  # B.2
    (3, DATA1, 1, "A1C72E74"),  # B.4
    (3, DATA1, 2, "E9086230"),  # B.4
    (3, DATA1, 3, "AB059463"),  # B.4
    (3, DATA2, 1, "2E2B1428"),  # B.4
    (3, DATA2, 2, "5A692CE6"),  # B.4
    (3, DATA2, 3, "C59F7EED"),  # B.4
]


@pytest.mark.parametrize(("algorithm", "data", "padding", "expected"), ISO9797_ANNEX_B)
def test_iso9797_annex_b(algorithm: int, data: bytes, padding: int, expected: str) -> None:
    key = ANNEX_K if algorithm == 1 else ANNEX_K + ANNEX_K2
    assert iso9797_mac(key, data, algorithm, padding)[:4].hex().upper() == expected


def test_x919_is_algorithm_3_of_annex_b4() -> None:
    # ISO/IEC 9797-1:2011 B.4 (= ANSI X9.19 retail MAC), padding 1.
    assert x919_mac(ANNEX_K + ANNEX_K2, DATA1)[:4] == H("A1C72E74")
    assert x919_mac(Key("TDES", "MAK", ANNEX_K + ANNEX_K2), DATA2)[:4] == H("2E2B1428")


def test_x919_single_key_is_algorithm_1() -> None:
    # PROTOCOL.md §2: an 8-byte MAK means K1 = K2, i.e. ISO 9797-1 algorithm 1 under DES;
    # expected values: ISO/IEC 9797-1:2011 B.2 (algorithm 1, padding 1).
    assert x919_mac(ANNEX_K, DATA1)[:4] == H("70A30640")
    assert x919_mac(ANNEX_K, DATA2)[:4] == H("E45B3AD2")


# RFC 4493 section 4 / NIST SP 800-38B D.1 (AES-128 CMAC); also ISO/IEC 9797-1:2011 B.6.2.
AES_CMAC_KEY = H("2B7E151628AED2A6ABF7158809CF4F3C")
AES_CMAC_VECTORS = [
    (b"", "BB1D6929E95937287FA37D129B756746"),
    (H("6BC1BEE22E409F96E93D7E117393172A"), "070A16B46B4D4144F79BDD9DD04A287C"),
]


@pytest.mark.parametrize(("data", "expected"), AES_CMAC_VECTORS)
def test_aes_cmac_rfc4493(data: bytes, expected: str) -> None:
    assert aes_cmac(AES_CMAC_KEY, data) == H(expected)


# NIST SP 800-38B Appendix D (CMAC-TDES examples), restated in openemv/crypto
# test/crypto_tdes_cmac_test.c.
SP800_38B_MSG = H("6BC1BEE22E409F96E93D7E117393172AAE2D8A571E03AC9C9EB76FAC45AF8E51")
TDES_CMAC_VECTORS = [
    ("0123456789ABCDEF23456789ABCDEF01456789ABCDEF0123", 0, "7DB0D37DF936C550"),
    ("0123456789ABCDEF23456789ABCDEF01456789ABCDEF0123", 16, "30239CF1F52E6609"),
    ("0123456789ABCDEF23456789ABCDEF01456789ABCDEF0123", 20, "6C9F3EE4923F6BE2"),
    ("0123456789ABCDEF23456789ABCDEF01456789ABCDEF0123", 32, "99429BD0BF7904E5"),
    ("0123456789ABCDEF23456789ABCDEF01", 0, "79CE52A7F786A960"),
    ("0123456789ABCDEF23456789ABCDEF01", 16, "CC18A0B79AF2413B"),
    ("0123456789ABCDEF23456789ABCDEF01", 20, "C06D377ECD101969"),
    ("0123456789ABCDEF23456789ABCDEF01", 32, "9CD33580F9B64DFB"),
]


@pytest.mark.parametrize(("key", "length", "expected"), TDES_CMAC_VECTORS)
def test_tdes_cmac_sp800_38b(key: str, length: int, expected: str) -> None:
    assert tdes_cmac(H(key), SP800_38B_MSG[:length]) == H(expected)


# Check values.
KCV_VECTORS = [
    # NIST SP 800-17 Table A.2 (variable key known answer test, plaintext 0): the ciphertext of
    # eight zero bytes is the key's full check value.
    ("DES", "8001010101010101", "95A8D72813DAA94D"),
    ("DES", "4001010101010101", "0EEC1487DD8C26D5"),
    # TR-31:2018 A.7.2.1, A.7.2.2, A.7.3.1, A.7.3.2: the wrapped TDES keys and their KCVs
    # (restated in openemv/tr31 test/tr31_decrypt_test.c).
    ("TDES", "F039121BEC83D26B169BDCD5B22AAF8F", "CB9DEA"),
    ("TDES", "3F419E1CB7079442AA37474C2EFBF8B8", "57C409"),
    ("TDES", "EDB380DD340BC2620247D445F5B8D678", "F4B08D"),
    ("TDES", "E8BC63E5479455E26577F715D587FE68", "9A4212"),
    # TR-31:2018 A.7.4: the same 16 bytes as an AES-128 key; KCV = AES-CMAC of a zero block
    # (ANSI X9.24-1:2017).
    ("AES", "3F419E1CB7079442AA37474C2EFBF8B8", "08793E"),
]


@pytest.mark.parametrize(("algorithm", "material", "expected"), KCV_VECTORS)
def test_kcv_published(algorithm: str, material: str, expected: str) -> None:
    assert kcv(H(material), len(expected) // 2, algorithm) == H(expected)
    if len(expected) == 6:
        assert Key(algorithm, "K0", H(material)).kcv_hex == expected


# TR-31:2018 Annex A examples (restated in openemv/tr31 test/tr31_decrypt_test.c and
# test/tr31_crypto_test.c): (KBPK algorithm, KBPK, key block, clear key, KBEK, KBAK).
TR31_ANNEX_A = [
    (  # A.7.2.1, version A
        "TDES",
        "89E88CF7931444F334BD7547FC3F380C",
        "A0072P0TE00E0000F5161ED902807AF26F1D62263644BD24192FDB3193C730301CEE8701",
        "F039121BEC83D26B169BDCD5B22AAF8F",
        "CCADC9B2D65101B671F83002B97A7D49",
        "C4A5C1BADE5909BE79F0380AB1727541",
    ),
    (  # A.7.2.2, version B
        "TDES",
        "DD7515F2BFC17F85CE48F3CA25CB21F6",
        "B0080P0TE00E000094B420079CC80BA3461F86FE26EFC4A3B8E4FA4C5F5341176EED7B727B8A248E",
        "3F419E1CB7079442AA37474C2EFBF8B8",
        "698832F8778A7CFCBC79559DAB07B88A",
        "DD6CEEC1782D8453671BF8358AF9DB47",
    ),
    (  # A.7.3.1, version C with a KS optional block
        "TDES",
        "B8ED59E0A279A295E9F5ED7944FD06B9",
        "C0096B0TX12S0100KS1800604B120F9292800000BFB9B689CB567E66FC3FEE5AD5F52161FC6545B9D60989015D02155C",
        "EDB380DD340BC2620247D445F5B8D678",
        "FDA81CA5E73CE7D0ACB0A83C01B843FC",
        "F5A014ADEF34EFD8A4B8A03409B04BF4",
    ),
    (  # A.7.3.2, version B with a KS optional block
        "TDES",
        "1D22BF32387C600AD97F9B97A51311AC",
        "B0104B0TX12S0100KS1800604B120F9292800000BB68BE8680A400D9191AD4ECE45B6E6C0D21C4738A52"
        "190E248719E24B433627",
        "E8BC63E5479455E26577F715D587FE68",
        "BCE8E2AD5D4489FD0EA5236A884DAC58",
        "1F9B2BDAF969C7B8B6C933AC7B9C6894",
    ),
    (  # A.7.4, version D (AES-256 KBPK, AES-128 key)
        "AES",
        "88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6",
        "D0112P0AE00E0000B82679114F470F540165EDFBF7E250FCEA43F810D215F8D207E2E417C07156A27E8E"
        "31DA05F7425509593D03A457DC34",
        "3F419E1CB7079442AA37474C2EFBF8B8",
        "396C9382A6E2E66A088774E1D6E46541F5EAD67D7204F8DD0D7AE8FDA334D3AC",
        "4EF24317696213840451890756757E573E0673483888F9B7F9B7517827F95022",
    ),
]


@pytest.mark.parametrize(("alg", "kbpk", "block", "key", "kbek", "kbak"), TR31_ANNEX_A)
def test_tr31_annex_a_unwrap(alg: str, kbpk: str, block: str, key: str, kbek: str, kbak: str) -> None:
    header, unwrapped = tr31.unwrap(Key(alg, "K0", H(kbpk)), block)
    assert unwrapped.material == H(key)
    assert header.version == block[0]
    assert header.key_usage == block[5:7]
    assert header.algorithm == block[7]
    assert header.mode_of_use == block[8]
    assert header.version_number == block[9:11]
    assert header.exportability == block[11]
    if block[12:14] == "01":
        assert header.optional_blocks == (("KS", "00604B120F9292800000"),)
        assert header.optional_block("KS") == "00604B120F9292800000"


@pytest.mark.parametrize(("alg", "kbpk", "block", "key", "kbek", "kbak"), TR31_ANNEX_A)
def test_tr31_annex_a_key_derivation(alg: str, kbpk: str, block: str, key: str, kbek: str, kbak: str) -> None:
    assert _derive(block[0], H(kbpk)) == (H(kbek), H(kbak))


@pytest.mark.parametrize(("alg", "kbpk", "block", "key", "kbek", "kbak"), TR31_ANNEX_A)
def test_tr31_annex_a_wrap_reproduces_block(
    alg: str, kbpk: str, block: str, key: str, kbek: str, kbak: str
) -> None:
    """Wrapping the annex key with the annex padding gives the annex block, byte for byte.

    The padding is recovered with ``cryptography`` alone from the published KBEK, so nothing of
    posemu's computes an input or an expected value here.
    """
    header_length = 16 + (24 if block[12:14] == "01" else 0)
    mac_chars = {"A": 8, "B": 16, "C": 8, "D": 32}[block[0]]
    encrypted = H(block[header_length:-mac_chars])
    if block[0] == "D":
        cipher = Cipher(AES(H(kbek)), modes.CBC(H(block[-mac_chars:])))
    else:
        iv = block[:8].encode() if block[0] in "AC" else H(block[-mac_chars:])
        cipher = Cipher(TripleDES(H(kbek) + H(kbek)[:8]), modes.CBC(iv))
    clear = cipher.decryptor().update(encrypted)
    padding = clear[2 + len(H(key)) :]
    header, _ = tr31.parse_header(block)
    wrapped = tr31.wrap(
        Key(alg, "K0", H(kbpk)),
        Key("AES" if header.algorithm == "A" else "TDES", "K0", H(key)),
        header.key_usage,
        version=header.version,
        mode_of_use=header.mode_of_use,
        version_number=header.version_number,
        exportability=header.exportability,
        optional_blocks=header.optional_blocks,
        rng=lambda n: padding[:n],
    )
    assert wrapped == block


# ISO 9564-1 format 0: ANSI X9.24-1:2009 A.4 (DUKPT test data): PIN 1234, PAN 4012345678909,
# clear PIN block 041274EDCBA9876F (restated in openemv/pinblock test/pinblock_format0_test.c).
def test_pin_block_format0_x924_1_a4() -> None:
    assert build_pin_block("1234", "4012345678909") == H("041274EDCBA9876F")
    assert parse_pin_block(H("041274EDCBA9876F"), "4012345678909") == "1234"


# ISO 9564-1 format 4: ANSI X9.24-3:2017 supplement test vectors (AES PIN block format 4):
# PIN 1234 -> PIN field 441234AAAAAAAAAA + 8 random bytes; PAN 4111111111111111 -> PAN field
# 44111111111111111000000000000000 (restated in openemv/pinblock test/pinblock_format4_test.c).
def test_pin_block_format4_x924_3_fields() -> None:
    field = build_pin_block("1234", None, 4, rng=lambda n: b"\x5a" * n)
    assert field[:8] == H("441234AAAAAAAAAA")
    assert pan_field("4111111111111111", 4) == H("44111111111111111000000000000000")
    assert parse_pin_block(field) == "1234"

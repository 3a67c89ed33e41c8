"""Key generation refuses weak keys and draws again.

The weak and semi-weak DES keys are the published list of FIPS 74 (1981) §3.6, repeated in NIST
SP 800-67 Rev. 2 §3.3.2; written out here again (not imported) so the test checks the table."""

import itertools

import pytest

from host.hsm import new_working_set
from protocol.crypto import Key, KeyMaterialError, generate_key, has_odd_parity, key_weakness
from protocol.dialects import get_dialect
from protocol.fields import KEY_SETS

H = bytes.fromhex
WEAK = ["0101010101010101", "FEFEFEFEFEFEFEFE", "E0E0E0E0F1F1F1F1", "1F1F1F1F0E0E0E0E"]
SEMI_WEAK_PAIRS = [
    ("01FE01FE01FE01FE", "FE01FE01FE01FE01"), ("1FE01FE00EF10EF1", "E01FE01FF10EF10E"),
    ("01E001E001F101F1", "E001E001F101F101"), ("1FFE1FFE0EFE0EFE", "FE1FFE1FFE0EFE0E"),
    ("011F011F010E010E", "1F011F010E010E01"), ("E0FEE0FEF1FEF1FE", "FEE0FEE0FEF1FEF1"),
]
GOOD = H("F138131AEC83D36B169BDCD5B32AAE8F")  # TR-31:2018 A.7.2.1's key, parity set


def draws(*blocks: bytes):
    """An rng giving `blocks` in turn (each exactly the size asked), then failing the test."""
    queue = list(blocks)

    def rng(n: int) -> bytes:
        assert queue, "drew more keys than the test supplied"
        block = queue.pop(0)
        assert len(block) == n
        return block
    return rng


def test_published_weak_keys_are_their_own_inverse() -> None:
    """The list itself is right: a weak key encrypting twice gives the plaintext back, and each
    semi-weak key undoes its partner (which is what makes them weak)."""
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    def enc(key: bytes, block: bytes) -> bytes:
        e = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
        return e.update(block) + e.finalize()
    block = H("0123456789ABCDEF")
    for k in WEAK:
        assert enc(H(k), enc(H(k), block)) == block
    for a, b in SEMI_WEAK_PAIRS:
        assert enc(H(b), enc(H(a), block)) == block


@pytest.mark.parametrize("weak", WEAK + [k for pair in SEMI_WEAK_PAIRS for k in pair])
@pytest.mark.parametrize("length", [8, 16, 24])
def test_weak_and_semi_weak_keys_are_drawn_again(weak: str, length: int) -> None:
    # the weak key in every position of the key, with its parity bits cleared (as a raw draw)
    bad = bytes(b & 0xFE for b in H(weak))
    for position in range(length // 8):
        parts = [GOOD[8:16] if i % 2 else GOOD[:8] for i in range(length // 8)]
        parts[position] = bad
        drawn = b"".join(parts)
        assert key_weakness(drawn) is not None
        key = generate_key("DES" if length == 8 else "TDES", length, "PIK",
                           draws(drawn, GOOD[:length] if length != 24 else GOOD + GOOD[:8][::-1]))
        assert key_weakness(key.material) is None and has_odd_parity(key.material)


@pytest.mark.parametrize("drawn", [GOOD[:8] * 2, GOOD[:8] * 3, GOOD + GOOD[8:16], GOOD[:8] * 2 + GOOD[8:]])
def test_equal_parts_are_single_des_and_drawn_again(drawn: bytes) -> None:
    again = GOOD if len(drawn) == 16 else GOOD + H("0123456789ABCDEF")
    key = generate_key("TDES", len(drawn), "MAK", draws(drawn, again))
    assert key_weakness(drawn) == "single DES (equal key parts)"
    assert key.material != drawn


def test_a_working_key_equal_to_its_tmk_is_drawn_again() -> None:
    tmk = Key("TDES", "TMK", GOOD)
    other = H("0123456789ABCDEFFEDCBA9876543210")
    # every working key first draws the TMK's own material (parity cleared), then `other`
    rng = draws(*itertools.chain.from_iterable((bytes(b & 0xFE for b in GOOD), other)
                                              for _ in range(3)))
    working = new_working_set(KEY_SETS["004"], get_dialect("iso87"), 1, 0.0, 60.0, rng, tmk)
    for key in (working.pik, working.mak, working.tdk):
        assert key is not None
        assert key.material != GOOD and key_weakness(key.material) is None


def test_a_random_source_that_keeps_giving_weak_keys_is_refused() -> None:
    with pytest.raises(KeyMaterialError, match="broken"):
        generate_key("TDES", 16, "TMK", lambda n: bytes(n))


def test_aes_keys_are_not_parity_fixed_nor_checked() -> None:
    assert generate_key("AES", 16, "KBPK", lambda n: bytes(n)).material == bytes(16)

"""TDES-ECB wrapping of working keys under the TMK (field 62 of the 0810).

ECB under a KEK is what CUP-style sign-on uses; it binds nothing (no usage, no integrity), which is
why each key travels with its check value and why the receiver checks length and parity.
"""

import hmac

from protocol.crypto.ciphers import des_ecb
from protocol.crypto.errors import KeyMaterialError
from protocol.crypto.keys import DES_ALGORITHMS, KEY_LENGTHS, Key, check_des_key


def _check_kek(kek: Key) -> None:
    if kek.algorithm not in DES_ALGORITHMS:
        raise KeyMaterialError(f"{kek.algorithm} KEK cannot wrap with TDES-ECB")


def wrap_ecb(kek: Key, key: Key) -> bytes:
    """Encrypt a DES/TDES key under a DES/TDES KEK, each 8-byte half independently."""
    _check_kek(kek)
    if key.algorithm not in DES_ALGORITHMS:
        raise KeyMaterialError(f"{key.algorithm} key cannot be wrapped with TDES-ECB")
    return des_ecb(kek.material).encrypt(key.material)


def unwrap_ecb(
    kek: Key,
    ciphertext: bytes,
    usage: str,
    algorithm: str = "TDES",
    *,
    expected_kcv: bytes | None = None,
) -> Key:
    """Decrypt a key wrapped by ``wrap_ecb`` and check its length, odd parity and, when given,
    the check value that travelled with it (any failure: ``KeyMaterialError``, key error K3).

    ECB carries no integrity of its own: the check value is what detects a corrupted ciphertext.
    """
    _check_kek(kek)
    if algorithm not in DES_ALGORITHMS:
        raise KeyMaterialError(f"{algorithm} key cannot be unwrapped with TDES-ECB")
    if len(ciphertext) not in KEY_LENGTHS[algorithm]:
        raise KeyMaterialError(f"wrapped {algorithm} key of {len(ciphertext)} bytes")
    material = des_ecb(kek.material).decrypt(ciphertext)
    check_des_key(material)
    key = Key(algorithm, usage, material)
    if expected_kcv is not None and not hmac.compare_digest(key.kcv(len(expected_kcv)), expected_kcv):
        raise KeyMaterialError(f"unwrapped {usage} does not match its check value")
    return key

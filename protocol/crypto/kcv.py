"""Key check values (ANSI X9.24-1).

DES/TDES: the leftmost bytes of E(K, eight zero bytes). AES: the leftmost bytes of AES-CMAC of a
block of zero bytes (ANSI X9.24-1:2017), since an ECB encryption of a zero block would hand an
attacker a known plaintext/ciphertext pair usable against the key itself.
"""

from protocol.crypto.ciphers import cmac, des_ecb
from protocol.crypto.errors import CryptoError, KeyMaterialError

_DES_ZERO = bytes(8)
_AES_ZERO = bytes(16)
_DEFAULT_ALGORITHM = {8: "DES", 16: "TDES", 24: "TDES", 32: "AES"}
_MAX_LENGTH = {"DES": 8, "TDES": 8, "AES": 16}


def kcv(material: bytes, n: int = 3, algorithm: str | None = None) -> bytes:
    """Check value of ``material``, ``n`` bytes (3 shown to people, 4 in field 62).

    Without ``algorithm`` a 16- or 24-byte key is taken as TDES (this project's keys are TDES
    unless said otherwise); pass ``"AES"`` for AES-128/192 keys.
    """
    algorithm = algorithm or _DEFAULT_ALGORITHM.get(len(material))
    if algorithm not in _MAX_LENGTH:
        raise KeyMaterialError(f"no check value for a {len(material)}-byte key")
    if not 1 <= n <= _MAX_LENGTH[algorithm]:
        raise CryptoError(f"check value length {n} out of range for {algorithm}")
    if algorithm == "AES":
        if len(material) not in (16, 24, 32):
            raise KeyMaterialError(f"AES key of {len(material)} bytes")
        return cmac("AES", material, _AES_ZERO)[:n]
    if len(material) not in (8, 16, 24):
        raise KeyMaterialError(f"{algorithm} key of {len(material)} bytes")
    return des_ecb(material).encrypt(_DES_ZERO)[:n]

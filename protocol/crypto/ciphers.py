"""Block-cipher contexts, cached per key.

Building a ``Cipher`` and its context costs about ten times a call on a context that already
exists, and the MAC and check-value paths run for every message; so ECB contexts and CMAC bases
are kept per key material (bounded LRU caches). Key material lives in process memory anyway
(PROTOCOL.md §2 allows working keys cached once unwrapped); nothing here shows it in a repr.

The ``cryptography`` package only offers DES as TripleDES; it is given 24-byte keys (K1K1K1 for
single DES, K1K2K1 for double length), since shorter keys raise a deprecation warning.
"""

import threading
from functools import lru_cache

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import BlockCipherAlgorithm, Cipher, modes
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.cmac import CMAC

CACHE_SIZE = 8192  # a host with 1,000 terminals holds ~3,000 working keys at once


def tdes24(material: bytes) -> bytes:
    """Expand a DES or TDES key to the 24-byte form ``cryptography`` accepts without warning."""
    if len(material) == 8:
        return material * 3
    if len(material) == 16:
        return material + material[:8]
    return material


def xor(a: bytes, b: bytes) -> bytes:
    """XOR of two equal-length byte strings, via big integers (one C-level operation)."""
    return (int.from_bytes(a) ^ int.from_bytes(b)).to_bytes(len(a))


class Ecb:
    """An encryptor and a decryptor in ECB mode for one key, safe to share between threads.

    ECB over whole blocks leaves no state in a context, so one context serves every call; the
    lock only keeps two threads out of the same native context at once.
    """

    __slots__ = ("_dec", "_enc", "_lock", "block_size")

    def __init__(self, algorithm: BlockCipherAlgorithm) -> None:
        cipher = Cipher(algorithm, modes.ECB())
        self._enc = cipher.encryptor()
        self._dec = cipher.decryptor()
        self._lock = threading.Lock()
        self.block_size = algorithm.block_size // 8

    def __repr__(self) -> str:
        return f"<Ecb block_size={self.block_size}>"

    def encrypt(self, data: bytes) -> bytes:
        with self._lock:
            return self._enc.update(data)

    def decrypt(self, data: bytes) -> bytes:
        with self._lock:
            return self._dec.update(data)

    def cbc_encrypt(self, iv: bytes, data: bytes) -> bytes:
        """CBC on top of the cached ECB context: cheaper than a new CBC cipher per call for the
        few blocks a key block holds."""
        n = self.block_size
        out = []
        prev = int.from_bytes(iv)
        for i in range(0, len(data), n):
            block = self.encrypt((int.from_bytes(data[i : i + n]) ^ prev).to_bytes(n))
            out.append(block)
            prev = int.from_bytes(block)
        return b"".join(out)

    def cbc_decrypt(self, iv: bytes, data: bytes) -> bytes:
        """CBC decryption is ECB decryption XORed with the ciphertext shifted by one block."""
        plain = self.decrypt(data)
        return xor(plain, iv + data[: -self.block_size])


@lru_cache(maxsize=CACHE_SIZE)
def des_ecb(material: bytes) -> Ecb:
    """ECB contexts for a DES (8) or TDES (16/24 byte) key."""
    return Ecb(TripleDES(tdes24(material)))


@lru_cache(maxsize=CACHE_SIZE)
def aes_ecb(material: bytes) -> Ecb:
    """ECB contexts for an AES-128/192/256 key."""
    return Ecb(AES(material))


@lru_cache(maxsize=CACHE_SIZE)
def _cmac_base(algorithm: str, material: bytes) -> CMAC:
    cipher = AES(material) if algorithm == "AES" else TripleDES(tdes24(material))
    return CMAC(cipher)


def cmac(algorithm: str, material: bytes, data: bytes) -> bytes:
    """CMAC (NIST SP 800-38B) under an AES or TDES key; copies a cached, keyed base context."""
    ctx = _cmac_base(algorithm, material).copy()
    ctx.update(data)
    return ctx.finalize()

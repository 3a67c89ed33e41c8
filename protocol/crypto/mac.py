"""MACs: ISO/IEC 9797-1 algorithms 1 and 3 (ANSI X9.19), the CUP "ECB" MAC, CMAC.

ISO 9797-1 MACs run on a CBC context that lives as long as its key (cached per key): CBC keeps the
last ciphertext block as its chaining value, so the next message's first block is XORed with
that block to start from a zero IV again. One native call then covers the whole message.
"""

import hmac
import threading
from collections.abc import Callable
from functools import lru_cache, partial
from typing import NoReturn

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from protocol.crypto.ciphers import CACHE_SIZE, cmac, des_ecb, tdes24, xor
from protocol.crypto.errors import KeyMaterialError, MacError
from protocol.crypto.keys import Key, material_of

BLOCK = 8


def pad(data: bytes, method: int, block: int = BLOCK) -> bytes:
    """ISO/IEC 9797-1 padding methods 1 (zeros), 2 (0x80 then zeros) and 3 (length block first).

    Method 1 pads an empty message to one zero block: the standard asks for a positive number of
    blocks.
    """
    if method == 1:
        return data + bytes(-len(data) % block if data else block)
    if method == 2:
        data += b"\x80"
        return data + bytes(-len(data) % block)
    if method == 3:
        return (len(data) * 8).to_bytes(block) + data + bytes(-len(data) % block)
    raise MacError(f"unknown ISO 9797-1 padding method {method}")


class _CbcMac:
    """CBC-MAC with a chaining cipher for all blocks but the last and a final cipher for the
    last: both are the key itself for algorithm 1, K1 and K1-K2-K1 (EDE) for algorithm 3.

    The final cipher is this context's own ECB encryptor (not the shared ``des_ecb`` one), so a
    MAC takes one lock for both native calls: every message of a host pays for this twice.
    """

    __slots__ = ("_chain", "_final", "_last", "_lock")

    def __init__(self, chain: bytes, final: bytes) -> None:
        self._chain = Cipher(TripleDES(chain), modes.CBC(bytes(BLOCK))).encryptor()
        self._final = Cipher(TripleDES(tdes24(final)), modes.ECB()).encryptor()
        self._last = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "<CbcMac>"

    def compute(self, padded: bytes) -> bytes:
        """The MAC of data already padded to whole blocks (at least one)."""
        cut = len(padded) - BLOCK
        last_block = int.from_bytes(padded[cut:])
        with self._lock:
            if cut:
                first = (int.from_bytes(padded[:BLOCK]) ^ self._last).to_bytes(BLOCK)
                out = self._chain.update(first + padded[BLOCK:cut])
                self._last = chained = int.from_bytes(out[-BLOCK:])
                last_block ^= chained
            return self._final.update(last_block.to_bytes(BLOCK))

    def compute_method1(self, data: bytes) -> bytes:
        """``compute(pad(data, 1))`` in one call: the path of every message MAC."""
        rest = len(data) % BLOCK
        if rest or not data:
            data += bytes(BLOCK - rest)
        cut = len(data) - BLOCK
        last_block = int.from_bytes(data[cut:])
        with self._lock:
            if cut:
                first = (int.from_bytes(data[:BLOCK]) ^ self._last).to_bytes(BLOCK)
                out = self._chain.update(first + data[BLOCK:cut])
                self._last = chained = int.from_bytes(out[-BLOCK:])
                last_block ^= chained
            return self._final.update(last_block.to_bytes(BLOCK))


@lru_cache(maxsize=CACHE_SIZE)
def _cbc_mac(material: bytes, algorithm: int) -> _CbcMac:
    """The MAC context of a key: cached on the raw key so a hit costs one dictionary lookup."""
    if algorithm == 1:
        if len(material) not in (8, 16, 24):
            raise KeyMaterialError(f"MAC algorithm 1 key of {len(material)} bytes")
        return _CbcMac(tdes24(material), tdes24(material))
    if algorithm == 3:
        if len(material) not in (8, 16):
            raise KeyMaterialError(f"MAC algorithm 3 key of {len(material)} bytes")
        k1, k2 = material[:8], material[8:] or material
        return _CbcMac(k1 * 3, k1 + k2 + k1)
    raise MacError(f"unsupported ISO 9797-1 MAC algorithm {algorithm}")


def iso9797_mac(key: Key | bytes, data: bytes, algorithm: int = 1, padding: int = 1) -> bytes:
    """ISO/IEC 9797-1 MAC algorithm 1 or 3 with DES-based keys; the full 8-byte MAC.

    Algorithm 1 is CBC-MAC under the key (DES or TDES). Algorithm 3 (ANSI X9.19 retail MAC)
    runs single DES under K1 and ends with D(K2), E(K1); an 8-byte key means K1 = K2, which makes
    it algorithm 1 under single DES (key set 001 in iso87).
    """
    return _cbc_mac(material_of(key), algorithm).compute(pad(data, padding))


def x919_mac(key: Key | bytes, data: bytes, padding: int = 1) -> bytes:
    """ANSI X9.19 retail MAC = ISO/IEC 9797-1 MAC algorithm 3, 8 bytes."""
    return iso9797_mac(key, data, 3, padding)


def cup_ecb_mac(key: Key | bytes, data: bytes) -> bytes:
    """The CUP "ECB" MAC of PROTOCOL.md §1: 8 ASCII hex characters.

    XOR of all 8-byte blocks (the last zero-padded), expanded to 16 uppercase hex characters;
    E(first 8) under the single-length MAK, XOR the last 8, E again, expand, keep 8 characters.
    """
    material = material_of(key)
    if len(material) != 8:
        raise KeyMaterialError(f"CUP ECB MAC key of {len(material)} bytes (expected 8)")
    data += bytes(-len(data) % BLOCK)
    folded = 0
    for i in range(0, len(data), BLOCK):
        folded ^= int.from_bytes(data[i : i + BLOCK])
    expanded = folded.to_bytes(BLOCK).hex().upper().encode("ascii")
    ecb = des_ecb(material)
    step = ecb.encrypt(expanded[:BLOCK])
    result = ecb.encrypt(xor(step, expanded[BLOCK:]))
    return result.hex().upper().encode("ascii")[:BLOCK]


def aes_cmac(key: Key | bytes, data: bytes) -> bytes:
    """AES-CMAC (NIST SP 800-38B), 16 bytes."""
    material = material_of(key)
    if len(material) not in (16, 24, 32):
        raise KeyMaterialError(f"AES key of {len(material)} bytes")
    return cmac("AES", material, data)


def tdes_cmac(key: Key | bytes, data: bytes) -> bytes:
    """TDES-CMAC (NIST SP 800-38B), 8 bytes."""
    material = material_of(key)
    if len(material) not in (8, 16, 24):
        raise KeyMaterialError(f"TDES key of {len(material)} bytes")
    return cmac("TDES", material, data)


DIALECT_MACS: dict[str, Callable[[Key | bytes, bytes], bytes]] = {
    "x9.19": x919_mac,
    "cup-ecb": cup_ecb_mac,
}


def dialect_mac(name: str, key: Key | bytes, data: bytes) -> bytes:
    """The 8-byte field 64 value of a dialect's MAC algorithm (``DIALECT_MACS``)."""
    if name not in DIALECT_MACS:
        _unknown_dialect_mac()
    return dialect_mac_function(name, material_of(key))(data)


def _unknown_dialect_mac() -> NoReturn:
    # The name is not echoed: a caller's mistake could put anything there, even a key.
    known = ", ".join(DIALECT_MACS)
    raise MacError(f"unknown dialect MAC algorithm (known: {known})")


@lru_cache(maxsize=CACHE_SIZE)
def dialect_mac_function(name: str, material: bytes) -> Callable[[bytes], bytes]:
    """``data -> dialect_mac(name, material, data)``, with the name looked up and the key's
    context built once: a host MACs two messages per purchase under the same few keys, and
    the layers between the name and the cipher cost as much as the cipher.

    Raises as ``dialect_mac`` would, for an unknown name or a key of the wrong length.
    """
    algorithm = DIALECT_MACS.get(name)
    if algorithm is None:
        _unknown_dialect_mac()
    if algorithm is x919_mac and len(material) in (8, 16):
        return _cbc_mac(material, 3).compute_method1
    return partial(algorithm, material)


def verify_mac(expected: bytes, actual: bytes) -> bool:
    """Constant-time comparison, so a forger learns nothing from response times."""
    return hmac.compare_digest(expected, actual)

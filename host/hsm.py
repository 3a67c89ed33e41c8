"""The key operations the host performs, as an HSM's command set would name them.

Every use of clear key material by the host goes through here: generating TMKs and their
ceremony components, issuing working keys, wrapping them for field 62, sealing keys under the
LMK as TR-31 blocks, checking and making MACs, and decrypting PIN blocks. The rest of the host
handles `Key` values whose text forms show only check values.
"""

from __future__ import annotations

from dataclasses import dataclass

from host.clock import Rng
from host.state import ACTIVE, WorkingSet
from protocol import macing
from protocol.crypto import (
    CryptoError,
    Key,
    decrypt_pin_block,
    fix_parity,
    generate_key,
    tr31,
    wrap_ecb,
)
from protocol.crypto.ciphers import xor
from protocol.fields import KCV_SIZE, KeySet, WrappedKey, build_key_set
from protocol.spec import Dialect

TMK_LENGTH = 16
# TR-31 key usage and mode of use of what the host seals: K0 key-encryption key, P0 PIN
# encryption, M3 ISO 9797-1 MAC algorithm 3 (X9.19; the CUP MAC is built on the same DES), D0
# data encryption; B = encrypt and decrypt (wrap and unwrap), C = generate and verify.
TR31_USAGE = {"TMK": ("K0", "B"), "PIK": ("P0", "B"), "MAK": ("M3", "C"), "TDK": ("D0", "B")}


class PinBlockInvalid(ValueError):
    """The PIN block does not decrypt to a valid ISO 9564 format 0 block (key error K3)."""


# --- TMKs and the key ceremony -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Component:
    material: bytes
    kcv: str


def new_tmk(rng: Rng) -> Key:
    return generate_key("TDES", TMK_LENGTH, "TMK", rng)


def split_components(tmk: Key, count: int, rng: Rng) -> list[Component]:
    """`count` odd-parity components whose XOR, parity-fixed, is the TMK (PROTOCOL.md §2)."""
    if count not in (2, 3):
        raise ValueError("a TMK is split into 2 or 3 components")
    parts = [generate_key("TDES", TMK_LENGTH, "TMK component", rng).material
             for _ in range(count - 1)]
    last = tmk.material
    for part in parts:
        last = xor(last, part)
    parts.append(fix_parity(last))
    return [Component(p, Key("TDES", "TMK component", p).kcv_hex) for p in parts]


# --- working keys --------------------------------------------------------------------------------

def new_working_set(
    key_set: KeySet, dialect: Dialect, generation: int, now: float, lifetime: float, rng: Rng,
) -> WorkingSet:
    """The working keys of one sign-on; the MAK as long as the dialect's MAC needs."""
    lengths = dict(key_set.keys)
    lengths["MAK"] = key_set.mak_length(dialect)
    keys = {usage: generate_key("DES" if n == 8 else "TDES", n, usage, rng)
            for usage, n in lengths.items()}
    return WorkingSet(generation, key_set.code, ACTIVE, now, lifetime,
                      keys["PIK"], keys["MAK"], keys.get("TDK"))


def new_key_like(key: Key, rng: Rng) -> Key:
    """A fresh key of the same shape: for `keys rotate`, and for `keys tamper`'s wrong MAK."""
    return generate_key(key.algorithm, key.length, key.usage, rng)


def field62(tmk: Key, working: WorkingSet, key_set: KeySet) -> bytes:
    """Each working key under the TMK (TDES-ECB) with its 4-byte check value, in the set's order."""
    keys = {"PIK": working.pik, "MAK": working.mak, "TDK": working.tdk}
    wrapped = [
        WrappedKey(usage, wrap_ecb(tmk, key), key.kcv(KCV_SIZE))
        for usage, _ in key_set.keys
        if (key := keys[usage]) is not None
    ]
    return build_key_set(wrapped, key_set.code)


# --- sealing under the LMK -----------------------------------------------------------------------

def seal(lmk: bytes, usage: str, key: Key, rng: Rng) -> str:
    """The key as a TR-31 version D block under the LMK: what the database stores."""
    code, mode = TR31_USAGE[usage]
    return tr31.wrap(Key("AES", "KBPK", lmk), key, code, version="D", mode_of_use=mode, rng=rng)


def unseal(lmk: bytes, usage: str, block: str) -> Key:
    """Open a sealed key; a block that fails its MAC under the LMK raises (never a wrong key)."""
    _, key = tr31.unwrap(Key("AES", "KBPK", lmk), block, usage)
    return key


# --- MACs and PINs -------------------------------------------------------------------------------

# The protocol package's own functions, under the names of this command set (no wrapper call:
# every purchase checks one MAC and makes another).
mac_verifies = macing.verify
"""(codec, encoded, mak) -> True when field 64 is present and is the MAC under `mak`."""
mac_sign = macing.sign
"""(codec, message, mak) -> the message encoded with its MAC under `mak` in field 64."""
mac_sign_in_place = macing.sign_in_place
"""(codec, message holding field 64, mak) -> the same, without copying the message's fields."""


PIN_FORMATS = (0,)
"""PROTOCOL.md §1: PINs travel as ISO 9564 format 0 under the PIK."""


def decrypt_pin(pik: Key, block: bytes, pan: str) -> str:
    """The PIN of a valid ISO 9564 format 0 block (§1, §4: anything else is K3, whatever the cause)."""
    try:
        return decrypt_pin_block(pik, block, pan, formats=PIN_FORMATS)
    except CryptoError:
        raise PinBlockInvalid("PIN block does not decrypt to a valid ISO 9564 block") from None

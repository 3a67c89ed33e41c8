"""ISO 9564-1 PIN blocks, formats 0, 1, 3 (8 bytes, DES/TDES) and 4 (16 bytes, AES).

A block that fails validation after decryption is a ``PinBlockError`` whatever the cause (wrong
PIK, tampered block, wrong PAN): the host answers it with key error K3. No error text carries the
PIN, the PAN or the block.
"""

import os
import re
from collections.abc import Collection

from protocol.clock import Rng
from protocol.crypto.ciphers import Ecb, aes_ecb, des_ecb, xor
from protocol.crypto.errors import PinBlockError
from protocol.crypto.keys import Key, material_of

_PIN = re.compile(r"[0-9]{4,12}")
# Format -> the fill nibbles a valid block may hold after the PIN (one choice: a fixed fill;
# several: random fill drawn from them).
_FILL: dict[int, str] = {0: "F", 1: "0123456789ABCDEF", 3: "ABCDEF", 4: "A"}
# Format -> clear block length in bytes.
_FORMAT_LENGTH = {0: 8, 1: 8, 3: 8, 4: 16}
# Formats whose clear block is the PIN field XOR the PAN field (format 4 binds the PAN in its
# encryption instead).
_PAN_FORMATS = frozenset({0, 3})


def _check_pin(pin: str) -> None:
    if not isinstance(pin, str) or not _PIN.fullmatch(pin):
        raise PinBlockError("PIN must be 4 to 12 decimal digits")


def _check_pan(pan: str | None) -> str:
    # The same test as a fullmatch of [0-9]{1,19}, without the regex call: a host runs
    # it on every purchase with a PIN.
    if not isinstance(pan, str) or not (0 < len(pan) <= 19 and pan.isascii() and pan.isdigit()):
        raise PinBlockError("PAN must be 1 to 19 decimal digits")
    return pan


def _random_nibbles(rng: Rng, count: int, alphabet: str) -> str:
    return "".join(alphabet[b % len(alphabet)] for b in rng(count))


def pan_field(pan: str, fmt: int = 0) -> bytes:
    """The PAN block XORed into a format 0/3 block (0000 + the 12 rightmost PAN digits before the
    check digit) or format 4's 16-byte PAN field (length indicator M, PAN, zero fill)."""
    pan = _check_pan(pan)
    if fmt == 4:
        digits = pan.rjust(12, "0")
        return bytes.fromhex((str(len(digits) - 12) + digits).ljust(32, "0"))
    return bytes.fromhex("0000" + pan[:-1][-12:].rjust(12, "0"))


def build_pin_block(pin: str, pan: str | None = None, fmt: int = 0, rng: Rng = os.urandom) -> bytes:
    """The clear block of format 0, 1 or 3 (PIN field XOR PAN field where the format has one),
    or format 4's clear 16-byte PIN field (the PAN enters only during encryption)."""
    _check_pin(pin)
    if fmt not in _FILL:
        raise PinBlockError(f"unsupported PIN block format {fmt}")
    alphabet = _FILL[fmt]
    fill = alphabet * 14 if len(alphabet) == 1 else _random_nibbles(rng, 14, alphabet)
    field = bytes.fromhex(f"{fmt}{len(pin):X}{pin}{fill}"[:16])
    if fmt == 4:
        tail = rng(8)
        if len(tail) != 8:
            raise PinBlockError("random source returned the wrong number of bytes")
        return field + tail
    if fmt in _PAN_FORMATS:
        field = xor(field, pan_field(_check_pan(pan)))
    return field


def parse_pin_block(block: bytes, pan: str | None = None, formats: Collection[int] | None = None) -> str:
    """The PIN of a clear block (format read from its control nibble), after checking control,
    length, digits and fill; format 0 and 3 need the PAN. `formats` limits what is accepted:
    a host that agreed on format 0 refuses a valid format 1 block as a mismatch."""
    size = len(block)
    if size != 8 and size != 16:
        raise PinBlockError(f"PIN block of {size} bytes")
    fmt = block[0] >> 4
    if _FORMAT_LENGTH.get(fmt) != size:
        raise PinBlockError("invalid PIN block control field")
    if formats is not None and fmt not in formats:
        raise PinBlockError(f"PIN block format {fmt} is not accepted here")
    if fmt in _PAN_FORMATS:
        # The PAN field (pan_field) as a number: its nibbles are the PAN's digits, so the digits
        # read as hex are the field; one XOR of integers instead of bytes and a hex round trip.
        # (8 bytes: formats 0 and 3 are single blocks.)
        digits = _check_pan(pan)[-13:-1]
        nibbles = f"{int.from_bytes(block) ^ int(digits or '0', 16):016X}"
    else:
        nibbles = block[:8].hex().upper()
    length = int(nibbles[1], 16)
    pin, fill = nibbles[2 : 2 + length], nibbles[2 + length :]
    # strip() leaves nothing exactly when every fill nibble is one the format allows.
    if not 4 <= length <= 12 or not pin.isdigit() or fill.strip(_FILL[fmt]):
        raise PinBlockError("invalid PIN block")
    return pin


def _cipher_for(key: Key | bytes, fmt: int) -> Ecb:
    material = material_of(key)
    aes = fmt == 4
    if isinstance(key, Key) and (key.algorithm == "AES") != aes:
        raise PinBlockError(f"PIN block format {fmt} cannot be enciphered under a {key.algorithm} key")
    if aes and len(material) in (16, 24, 32):
        return aes_ecb(material)
    if not aes and len(material) in (8, 16, 24):
        return des_ecb(material)
    raise PinBlockError(f"PIN block format {fmt} cannot use a {len(material)}-byte key")


def encrypt_pin_block(
    key: Key | bytes, pin: str, pan: str | None = None, fmt: int = 0, rng: Rng = os.urandom
) -> bytes:
    """Build and encipher a PIN block: ECB under the PIK for formats 0/1/3; format 4 enciphers
    the PIN field, XORs the PAN field, and enciphers again (ISO 9564-1:2017 format 4)."""
    clear = build_pin_block(pin, pan, fmt, rng)
    ecb = _cipher_for(key, fmt)
    if fmt == 4:
        return ecb.encrypt(xor(ecb.encrypt(clear), pan_field(_check_pan(pan), 4)))
    return ecb.encrypt(clear)


def decrypt_pin_block(key: Key | bytes, block: bytes, pan: str | None = None,
                      formats: Collection[int] | None = None) -> str:
    """Decipher and validate a PIN block (8 bytes: formats 0/1/3; 16 bytes: format 4) and return
    the PIN; any failure is a ``PinBlockError``."""
    if len(block) == 16:
        ecb = _cipher_for(key, 4)
        clear = ecb.decrypt(xor(ecb.decrypt(block), pan_field(_check_pan(pan), 4)))
    elif len(block) == 8:
        clear = _cipher_for(key, 0).decrypt(block)
    else:
        raise PinBlockError(f"enciphered PIN block of {len(block)} bytes")
    return parse_pin_block(clear, pan, formats)


__all__ = [
    "build_pin_block",
    "decrypt_pin_block",
    "encrypt_pin_block",
    "pan_field",
    "parse_pin_block",
]

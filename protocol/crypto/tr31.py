"""TR-31 / ANSI X9.143 key blocks, versions A, B, C and D.

A key block binds a key to its header (usage, algorithm, mode of use, ...) under a key block
protection key (KBPK). Version D (AES) is how the host and the terminal keep keys at rest.
Versions A and C derive their keys by variant (KBPK XOR 0x45 / 0x4D), encrypt in TDES-CBC with
the header's first 8 characters as IV and MAC the ciphertext (ISO 9797-1 algorithm 1, 4 bytes).
Versions B and D derive their keys with CMAC (NIST SP 800-108 counter mode), MAC the clear key
data with CMAC and use that MAC as the CBC IV.

Parsing is strict: exact lengths, uppercase hex, digits where digits belong. Error text names the
field at fault but never quotes key data or MACs.
"""

import hmac
import os
import re
from dataclasses import dataclass
from functools import lru_cache

from protocol.clock import Rng
from protocol.crypto.ciphers import CACHE_SIZE, aes_ecb, cmac, des_ecb, xor
from protocol.crypto.errors import KeyBlockError, KeyBlockMacError
from protocol.crypto.keys import Key
from protocol.crypto.mac import iso9797_mac


@dataclass(frozen=True)
class _Version:
    block: int  # cipher block size in bytes
    mac_length: int  # bytes
    kbpk_algorithms: frozenset[str]
    kbpk_lengths: tuple[int, ...]


VERSIONS: dict[str, _Version] = {
    "A": _Version(8, 4, frozenset({"DES", "TDES"}), (8, 16, 24)),
    "B": _Version(8, 8, frozenset({"TDES"}), (16, 24)),
    "C": _Version(8, 4, frozenset({"DES", "TDES"}), (8, 16, 24)),
    "D": _Version(16, 16, frozenset({"AES"}), (16, 24, 32)),
}
# Key algorithm <-> header byte 7.
ALGORITHM_CODES: dict[str, str] = {"DES": "D", "TDES": "T", "AES": "A"}
_ALGORITHMS_BY_CODE = {code: name for name, code in ALGORITHM_CODES.items()}
# Key derivation input of versions B and D (TR-31:2018 5.3.2.1 / 5.3.2.3): algorithm indicator
# and derived key length in bits, by KBPK length.
_DERIVATION: dict[tuple[str, int], tuple[int, int]] = {
    ("B", 16): (0x0000, 128),
    ("B", 24): (0x0001, 192),
    ("D", 16): (0x0002, 128),
    ("D", 24): (0x0003, 192),
    ("D", 32): (0x0004, 256),
}
_ENCRYPTION, _AUTHENTICATION = 0x0000, 0x0001
_EXPORTABILITY = frozenset("ENS")
_CODE = re.compile(r"[0-9A-Z]+")
_DIGITS = re.compile(r"[0-9]+")
_UPPER_HEX = re.compile(r"[0-9A-F]*")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_PADDING_BLOCK = "PB"


@dataclass(frozen=True)
class Header:
    """The readable part of a key block. ``optional_blocks`` excludes the padding block (PB)."""

    version: str
    key_usage: str
    algorithm: str
    mode_of_use: str
    version_number: str = "00"
    exportability: str = "N"
    optional_blocks: tuple[tuple[str, str], ...] = ()
    reserved: str = "00"

    def optional_block(self, block_id: str) -> str | None:
        """The data of an optional block, or None."""
        return next((data for bid, data in self.optional_blocks if bid == block_id), None)

    def render(self, key_data_chars: int) -> str:
        """The header text (with optional blocks and padding) for a block whose encrypted key
        data takes ``key_data_chars`` hex characters."""
        spec = _version(self.version)
        parts = [_render_optional(bid, data) for bid, data in self.optional_blocks]
        count = len(parts)
        body = "".join(parts)
        if body and len(body) % spec.block:
            parts.append(_render_optional(_PADDING_BLOCK, "0" * (-(len(body) + 4) % spec.block)))
            count += 1
        if count > 99:
            raise KeyBlockError(f"{count} optional blocks (at most 99)")
        optional = "".join(parts)
        total = 16 + len(optional) + key_data_chars + 2 * spec.mac_length
        if total > 9999:
            raise KeyBlockError(f"key block of {total} characters (at most 9999)")
        return (
            f"{self.version}{total:04d}{self.key_usage}{self.algorithm}{self.mode_of_use}"
            f"{self.version_number}{self.exportability}{count:02d}{self.reserved}{optional}"
        )


def _render_optional(block_id: str, data: str) -> str:
    if len(block_id) != 2 or not _CODE.fullmatch(block_id):
        raise KeyBlockError("optional block ID must be 2 uppercase letters or digits")
    if not _PRINTABLE.fullmatch(data):
        raise KeyBlockError(f"optional block {block_id} data must be printable ASCII")
    if len(data) + 4 <= 0xFF:
        return f"{block_id}{len(data) + 4:02X}{data}"
    return f"{block_id}0002{len(data) + 10:04X}{data}"


def _version(version: str) -> _Version:
    try:
        return VERSIONS[version]
    except KeyError:
        raise KeyBlockError(f"unsupported key block version {version!r}") from None


def _field(block: str, start: int, end: int, pattern: re.Pattern[str], name: str) -> str:
    value = block[start:end]
    if len(value) != end - start or not pattern.fullmatch(value):
        raise KeyBlockError(f"malformed key block field: {name}")
    return value


def parse_header(block: str) -> tuple[Header, int]:
    """Parse and strictly check a key block's header; returns it and its length in characters
    (optional blocks included). The length field must equal the length of ``block``."""
    if not isinstance(block, str) or not block.isascii() or len(block) < 16:
        raise KeyBlockError("key block must be ASCII text of at least 16 characters")
    spec = _version(block[0])
    length = int(_field(block, 1, 5, _DIGITS, "key block length"))
    if length != len(block):
        raise KeyBlockError(f"key block length field says {length}, block has {len(block)}")
    usage = _field(block, 5, 7, _CODE, "key usage")
    algorithm = _field(block, 7, 8, _CODE, "algorithm")
    mode = _field(block, 8, 9, _CODE, "mode of use")
    version_number = _field(block, 9, 11, _CODE, "key version number")
    exportability = block[11]
    if exportability not in _EXPORTABILITY:
        raise KeyBlockError("malformed key block field: exportability")
    count = int(_field(block, 12, 14, _DIGITS, "number of optional blocks"))
    reserved = _field(block, 14, 16, _DIGITS, "reserved")
    pos, blocks = 16, []
    for _ in range(count):
        block_id = _field(block, pos, pos + 2, _CODE, "optional block ID")
        size = int(_field(block, pos + 2, pos + 4, _UPPER_HEX, "optional block length"), 16)
        data_start = pos + 4
        if size == 0:  # extended length: length of length, then the length
            width = 2 * int(_field(block, pos + 4, pos + 6, _UPPER_HEX, "optional block length"), 16)
            if width == 0:
                raise KeyBlockError("malformed key block field: optional block length")
            data_start = pos + 6 + width
            size = int(_field(block, pos + 6, data_start, _UPPER_HEX, "optional block length"), 16)
        if size < data_start - pos or pos + size > len(block):
            raise KeyBlockError(f"optional block {block_id} length out of range")
        data = _field(block, data_start, pos + size, _PRINTABLE, "optional block data")
        if block_id != _PADDING_BLOCK:
            blocks.append((block_id, data))
        pos += size
    if (pos - 16) % spec.block:
        raise KeyBlockError("optional blocks do not fill whole cipher blocks")
    header = Header(block[0], usage, algorithm, mode, version_number, exportability, tuple(blocks), reserved)
    return header, pos


@lru_cache(maxsize=CACHE_SIZE)
def _derive(version: str, kbpk: bytes) -> tuple[bytes, bytes]:
    """The key block encryption and authentication keys (KBEK, KBAK) of a KBPK."""
    if version in ("A", "C"):
        return xor(kbpk, b"\x45" * len(kbpk)), xor(kbpk, b"\x4d" * len(kbpk))
    indicator, bits = _DERIVATION[version, len(kbpk)]
    algorithm = "AES" if version == "D" else "TDES"
    block = VERSIONS[version].block
    calls = -(-len(kbpk) // block)

    def derive(purpose: int) -> bytes:
        out = b"".join(
            cmac(
                algorithm,
                kbpk,
                bytes([counter]) + purpose.to_bytes(2) + b"\x00" + indicator.to_bytes(2) + bits.to_bytes(2),
            )
            for counter in range(1, calls + 1)
        )
        return out[: len(kbpk)]

    return derive(_ENCRYPTION), derive(_AUTHENTICATION)


def _seal(version: str, kbpk: bytes, header: bytes, clear: bytes) -> tuple[bytes, bytes]:
    """Encrypted key data and MAC of a block (see the module docstring for the two bindings)."""
    kbek, kbak = _derive(version, kbpk)
    if version in ("A", "C"):
        encrypted = des_ecb(kbek).cbc_encrypt(header[:8], clear)
        return encrypted, iso9797_mac(kbak, header + encrypted, 1)[: VERSIONS[version].mac_length]
    algorithm, ecb = ("AES", aes_ecb(kbek)) if version == "D" else ("TDES", des_ecb(kbek))
    mac = cmac(algorithm, kbak, header + clear)
    return ecb.cbc_encrypt(mac, clear), mac


def _open(version: str, kbpk: bytes, header: bytes, encrypted: bytes, mac: bytes) -> bytes:
    """Clear key data of a block whose MAC verifies, else ``KeyBlockMacError``."""
    kbek, kbak = _derive(version, kbpk)
    if version in ("A", "C"):
        expected = iso9797_mac(kbak, header + encrypted, 1)[: VERSIONS[version].mac_length]
        clear = des_ecb(kbek).cbc_decrypt(header[:8], encrypted)
    else:
        algorithm, ecb = ("AES", aes_ecb(kbek)) if version == "D" else ("TDES", des_ecb(kbek))
        clear = ecb.cbc_decrypt(mac, encrypted)
        expected = cmac(algorithm, kbak, header + clear)
    if not hmac.compare_digest(expected, mac):
        raise KeyBlockMacError("key block MAC does not verify under this KBPK")
    return clear


def _check_kbpk(spec: _Version, version: str, kbpk: Key) -> None:
    if kbpk.algorithm not in spec.kbpk_algorithms or kbpk.length not in spec.kbpk_lengths:
        raise KeyBlockError(
            f"a {kbpk.length}-byte {kbpk.algorithm} KBPK cannot protect version {version} blocks"
        )


def wrap(
    kbpk: Key,
    key: Key,
    usage: str | None = None,
    *,
    version: str | None = None,
    mode_of_use: str = "N",
    version_number: str = "00",
    exportability: str = "N",
    optional_blocks: tuple[tuple[str, str], ...] = (),
    masked_length: int | None = None,
    rng: Rng = os.urandom,
) -> str:
    """Wrap ``key`` in a key block under ``kbpk``.

    ``usage`` defaults to ``key.usage`` (which must then be a 2-character TR-31 usage code);
    ``version`` defaults to D under an AES KBPK and B under a TDES one. ``masked_length`` pads the
    key data as if the key had that many bytes, hiding e.g. double- versus triple-length TDES.
    """
    version = version or ("D" if kbpk.algorithm == "AES" else "B")
    spec = _version(version)
    _check_kbpk(spec, version, kbpk)
    header = Header(
        version,
        usage if usage is not None else key.usage,
        ALGORITHM_CODES[key.algorithm],
        mode_of_use,
        version_number,
        exportability,
        tuple(optional_blocks),
    )
    for value, size, name in (
        (header.key_usage, 2, "key usage"),
        (header.mode_of_use, 1, "mode of use"),
        (header.version_number, 2, "key version number"),
    ):
        if len(value) != size or not _CODE.fullmatch(value):
            raise KeyBlockError(f"{name} must be {size} uppercase letters or digits")
    if exportability not in _EXPORTABILITY:
        raise KeyBlockError("exportability must be E, N or S")
    padded_length = max(masked_length or 0, key.length)
    pad = -(2 + padded_length) % spec.block + padded_length - key.length
    clear = (key.length * 8).to_bytes(2) + key.material + rng(pad)
    if len(clear) != 2 + key.length + pad:
        raise KeyBlockError("random source returned the wrong number of bytes")
    text = header.render(2 * len(clear)).encode("ascii")
    encrypted, mac = _seal(version, kbpk.material, text, clear)
    return text.decode("ascii") + encrypted.hex().upper() + mac.hex().upper()


def unwrap(kbpk: Key, block: str, usage: str | None = None) -> tuple[Header, Key]:
    """Check and open a key block: strict parse, MAC verified (``KeyBlockMacError``), key
    returned with ``usage`` or, by default, the header's key usage."""
    header, header_length = parse_header(block)
    spec = VERSIONS[header.version]
    _check_kbpk(spec, header.version, kbpk)
    body = block[header_length:]
    mac_chars = 2 * spec.mac_length
    data_chars = len(body) - mac_chars
    if data_chars <= 0 or data_chars % (2 * spec.block) or not _UPPER_HEX.fullmatch(body):
        raise KeyBlockError("key data and MAC must be uppercase hex of whole cipher blocks")
    encrypted = bytes.fromhex(body[:data_chars])
    mac = bytes.fromhex(body[data_chars:])
    clear = _open(header.version, kbpk.material, block[:header_length].encode("ascii"), encrypted, mac)
    bits = int.from_bytes(clear[:2])
    if bits % 8 or 2 + bits // 8 > len(clear):
        raise KeyBlockError("key length in the key data is invalid")
    algorithm = _ALGORITHMS_BY_CODE.get(header.algorithm)
    if algorithm is None:
        raise KeyBlockError(f"unsupported key algorithm {header.algorithm!r}")
    material = clear[2 : 2 + bits // 8]
    return header, Key(algorithm, usage if usage is not None else header.key_usage, material)


__all__ = [
    "ALGORITHM_CODES",
    "VERSIONS",
    "Header",
    "parse_header",
    "unwrap",
    "wrap",
]

"""The key-injection file: how a TMK leaves the host's key ceremony and reaches a terminal.

One home for the format, because two programs that share nothing but the contract must agree on
it: `pos-host terminal add --out` writes it, `pos-terminal load-tmk --file`, `pos-fuzz --keys`
and `pos-fleet` read it. JSON with `format`, `tid`, `merchant`, `key_type` ("TMK"),
`algorithm`, `key` (hex) and `kcv` (6 hex digits).

The file holds a clear TMK (PROTOCOL.md §2), so it is read once, checked against its own check
value and parity, and the operator is told to delete it; its content never reaches an error
message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from protocol.crypto.components import kcv_matches
from protocol.crypto.errors import CryptoError
from protocol.crypto.keys import Key, check_des_key

INJECTION_FORMAT = "posemu-key-injection-1"


class InjectionError(Exception):
    """The file cannot be used; the message never quotes key material."""


@dataclass(frozen=True)
class Injection:
    tid: str | None
    tmk: Key
    merchant: str | None = None


def encode_injection(tid: str, merchant: str, tmk: Key) -> bytes:
    """The file's bytes; the caller writes them to a file it created with mode 0600."""
    document = {
        "format": INJECTION_FORMAT,
        "tid": tid,
        "merchant": merchant,
        "key_type": "TMK",
        "algorithm": tmk.algorithm,
        "key": tmk.material.hex().upper(),
        "kcv": tmk.kcv_hex,
    }
    return (json.dumps(document, indent=2) + "\n").encode()


def decode_injection(data: bytes, source: str) -> Injection:
    """The TMK of a file's bytes, checked; `source` names the file in errors."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise InjectionError(f"{source}: not a readable injection file ({type(exc).__name__})") \
            from None
    if not isinstance(doc, dict):
        raise InjectionError(f"{source}: not an injection file")
    if doc.get("key_type") != "TMK":
        raise InjectionError(f"{source}: holds no TMK (key_type {doc.get('key_type')!r})")
    try:
        key = Key(str(doc.get("algorithm", "TDES")), "TMK", bytes.fromhex(str(doc["key"])))
        check_des_key(key.material)  # length and odd parity: a KCV cannot see parity bits
    except (KeyError, ValueError, CryptoError):
        raise InjectionError(f"{source}: no valid TMK in the file (length or parity)") from None
    expected = doc.get("kcv")
    if not expected or not kcv_matches(key.material, key.algorithm, str(expected)):
        raise InjectionError(f"{source}: the TMK does not match the file's check value")
    tid, merchant = doc.get("tid"), doc.get("merchant")
    return Injection(str(tid) if tid else None, key, str(merchant) if merchant else None)


def read_injection_file(path: Path) -> Injection:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InjectionError(f"{path}: no such injection file") from None
    except OSError as exc:
        raise InjectionError(f"{path}: not a readable injection file ({type(exc).__name__})") \
            from None
    return decode_injection(data, str(path))

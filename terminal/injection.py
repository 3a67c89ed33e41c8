"""Reading the key-injection file `pos-host terminal add --out FILE` writes.

Its format is host.admin.write_injection_file's: JSON with `format`, `tid`, `merchant`,
`key_type` ("TMK"), `algorithm`, `key` (hex) and `kcv` (6 hex digits).

The file holds a clear TMK, so it is read once, checked against its own check value, and the
operator is told to delete it; its content never reaches an error message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from protocol.crypto.components import kcv_matches
from protocol.crypto.errors import CryptoError
from protocol.crypto.keys import Key, check_des_key


class InjectionError(Exception):
    """The file cannot be used; the message never quotes key material."""


@dataclass(frozen=True)
class Injection:
    tid: str | None
    tmk: Key


def read_injection_file(path: Path) -> Injection:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InjectionError(f"{path}: no such injection file") from None
    except (OSError, ValueError) as exc:
        raise InjectionError(f"{path}: not a readable injection file ({type(exc).__name__})") \
            from None
    if not isinstance(doc, dict):
        raise InjectionError(f"{path}: not an injection file")
    if doc.get("key_type") != "TMK":
        raise InjectionError(f"{path}: holds no TMK (key_type {doc.get('key_type')!r})")
    try:
        key = Key(str(doc.get("algorithm", "TDES")), "TMK", bytes.fromhex(str(doc["key"])))
        check_des_key(key.material)  # length and odd parity: a KCV cannot see parity bits
    except (KeyError, ValueError, CryptoError):
        raise InjectionError(f"{path}: no valid TMK in the file (length or parity)") from None
    expected = doc.get("kcv")
    if not expected or not kcv_matches(key.material, key.algorithm, str(expected)):
        raise InjectionError(f"{path}: the TMK does not match the file's check value")
    tid = doc.get("tid")
    return Injection(str(tid) if tid else None, key)

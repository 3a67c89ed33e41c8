"""The terminal's key memory: TR-31 key blocks under a device storage key, replaced atomically.

The storage key (AES-256, its own file of mode 0600) stands in for a PED's tamper-protected
master key. Each key is kept as a TR-31 version D block, which binds the key to its usage and
carries its own MAC; the file as a whole is MACed too, so that generations, times and check
values cannot be altered or blocks swapped between files without the load noticing. Any failure
to load is reported as a `KeystoreError`, which the terminal shows as key error 14 `K1`: a key
memory it cannot trust is a key memory it does not have.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.clock import Rng
from protocol.crypto import tr31
from protocol.crypto.keys import Key
from terminal.fsops import REAL_OPS, FsOps, atomic_replace, write_secret_once

FORMAT = 1
STORAGE_KEY_BYTES = 32
WORKING_KEYS = ("PIK", "MAK", "TDK")
ALL_KEYS = ("TMK", *WORKING_KEYS)
# TR-31 key usages (ANSI X9.143 table): K0 key-encryption key, P0 PIN encryption,
# M3 ISO 9797-1 MAC algorithm 3, D0 data encryption. Usage binds the block: a MAK block cannot be
# loaded back as a PIK.
TR31_USAGE = {"TMK": "K0", "PIK": "P0", "MAK": "M3", "TDK": "D0"}
_INTEGRITY_LABEL = b"posemu terminal keystore integrity v1"


class KeystoreError(Exception):
    """The keystore cannot be used; `reason` is short enough for a field-44-style message."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class StoredKey:
    """A clear key in memory with what the terminal knows about it."""

    key: Key
    generation: int
    installed_at: float

    @property
    def kcv_hex(self) -> str:
        return self.key.kcv_hex


@dataclass(frozen=True)
class KeySet:
    """Everything the keystore holds. `serial` counts replaces, so a test can tell sets apart."""

    keys: Mapping[str, StoredKey] = field(default_factory=dict)
    key_set: str | None = None
    serial: int = 0

    @property
    def tmk(self) -> StoredKey | None:
        return self.keys.get("TMK")

    def working(self) -> dict[str, StoredKey]:
        return {name: k for name, k in self.keys.items() if name in WORKING_KEYS}

    def with_tmk(self, tmk: StoredKey) -> KeySet:
        """A new TMK makes every working key useless (they were sent under the old one)."""
        return KeySet({"TMK": tmk}, None, self.serial + 1)

    def with_working(self, keys: Mapping[str, StoredKey], key_set: str) -> KeySet:
        kept = {name: k for name, k in self.keys.items() if name not in WORKING_KEYS}
        return KeySet({**kept, **keys}, key_set, self.serial + 1)

    def without_working(self) -> KeySet:
        kept = {name: k for name, k in self.keys.items() if name not in WORKING_KEYS}
        return KeySet(kept, None, self.serial + 1)


@dataclass(frozen=True)
class KeyStatus:
    """What `status` may show of a key: never its material."""

    name: str
    present: bool
    generation: int | None = None
    installed_at: float | None = None
    kcv: str | None = None


def _new_storage_key(rng: Rng) -> bytes:
    return rng(STORAGE_KEY_BYTES).hex().encode() + b"\n"


def load_storage_key(path: Path) -> Key:
    try:
        material = bytes.fromhex(path.read_bytes().strip().decode("ascii"))  # ASCII spaces only
    except FileNotFoundError as exc:
        raise KeystoreError("storage key lost", str(path)) from exc
    except (OSError, ValueError) as exc:
        raise KeystoreError("storage key bad", type(exc).__name__) from exc
    if len(material) != STORAGE_KEY_BYTES:
        raise KeystoreError("storage key bad", "wrong length")
    return Key("AES", "K0", material)


def _integrity_key(storage_key: Key) -> bytes:
    return hmac.new(storage_key.material, _INTEGRITY_LABEL, hashlib.sha256).digest()


def encode_keyset(keyset: KeySet, storage_key: Key, rng: Rng = os.urandom) -> bytes:
    """One line of canonical JSON, then its HMAC: any byte changed anywhere is caught."""
    entries = {
        name: {
            "block": tr31.wrap(storage_key, stored.key, TR31_USAGE[name], rng=rng),
            "generation": stored.generation,
            "installed_at": stored.installed_at,
            "kcv": stored.kcv_hex,
        }
        for name, stored in sorted(keyset.keys.items())
    }
    body = {"format": FORMAT, "serial": keyset.serial, "key_set": keyset.key_set,
            "keys": entries}
    line = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return line + b"\n" + _mac(storage_key, line).encode() + b"\n"


def _mac(storage_key: Key, line: bytes) -> str:
    return hmac.new(_integrity_key(storage_key), line, hashlib.sha256).hexdigest()


def decode_keyset(data: bytes, storage_key: Key) -> KeySet:
    """Check everything before trusting anything: the file MAC, then each block's own MAC,
    usage and check value."""
    line, _, rest = data.partition(b"\n")
    # Bytes against bytes: compare_digest refuses a str with a non-ASCII character (TypeError),
    # and one damaged byte in the MAC line must be K1 like any other.
    if not hmac.compare_digest(rest.rstrip(b"\n"), _mac(storage_key, line).encode()):
        reason = "keystore corrupt" if line else "keystore empty"
        raise KeystoreError(reason, "integrity check failed")
    try:
        doc = json.loads(line)
        if doc["format"] != FORMAT:
            raise KeystoreError("keystore corrupt", f"unknown format {doc['format']!r}")
        keys = {name: _open_entry(name, entry, storage_key) for name, entry in doc["keys"].items()}
        return KeySet(keys, doc["key_set"], int(doc["serial"]))
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        raise KeystoreError("keystore corrupt", "malformed content") from exc


def _open_entry(name: str, entry: Mapping[str, Any], storage_key: Key) -> StoredKey:
    try:
        _header, key = tr31.unwrap(storage_key, str(entry["block"]))
    except ValueError as exc:  # KeyBlockError, KeyBlockMacError, KeyMaterialError: all damage
        raise KeystoreError("keystore corrupt", f"{name} block fails its check") from exc
    if name not in TR31_USAGE or key.usage != TR31_USAGE[name]:
        raise KeystoreError("keystore corrupt", f"{name} block has the wrong usage")
    if key.kcv_hex != entry["kcv"]:
        raise KeystoreError("keystore corrupt", f"{name} check value differs")
    return StoredKey(
        Key(key.algorithm, name, key.material),
        int(entry["generation"]),
        float(entry["installed_at"]),
    )


@dataclass(frozen=True)
class Keystore:
    """The key memory of one terminal folder."""

    path: Path
    storage_key_path: Path
    ops: FsOps = REAL_OPS
    rng: Rng = os.urandom

    def create(self) -> None:
        """A fresh terminal: a new storage key and an empty, valid keystore."""
        write_secret_once(self.storage_key_path, _new_storage_key(self.rng))
        self.save(KeySet())

    def reset(self) -> None:
        """A new storage key and an empty keystore: what re-injecting keys into a device whose
        key memory failed amounts to. Whatever the old files held is unreadable afterwards."""
        atomic_replace(self.storage_key_path, _new_storage_key(self.rng), self.ops)
        self.save(KeySet())

    def load(self) -> KeySet:
        storage_key = load_storage_key(self.storage_key_path)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError as exc:
            raise KeystoreError("keystore missing", str(self.path)) from exc
        except OSError as exc:
            raise KeystoreError("keystore unreadable", exc.strerror or type(exc).__name__) from exc
        return decode_keyset(data, storage_key)

    def save(self, keyset: KeySet) -> None:
        storage_key = load_storage_key(self.storage_key_path)
        atomic_replace(self.path, encode_keyset(keyset, storage_key, self.rng), self.ops)


def key_status(keyset: KeySet) -> list[KeyStatus]:
    rows = []
    for name in ALL_KEYS:
        stored = keyset.keys.get(name)
        if stored is None:
            rows.append(KeyStatus(name, False))
        else:
            rows.append(KeyStatus(name, True, stored.generation, stored.installed_at, stored.kcv_hex))
    return rows

"""The pending reversal (PROTOCOL.md §7): what the terminal sent and could not confirm.

Before a purchase or a void leaves, the terminal writes down, durably, that it is pending; only
an answer with a valid MAC clears it. A power cut between the request and its answer leaves the
record on disk, and the next financial transaction sends its reversal first, so money the host
may have moved is never lost. The record holds the card number and expiry (a reversal carries
fields 2 and 14, never track 2), so it is sealed like the keys: AES-GCM under a key derived from
the terminal's storage key, written with the same atomic replace. A record that fails its seal
is never dropped in silence: every financial command refuses until a person looks at it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocol.clock import Rng
from protocol.mask import mask_pan
from protocol.requests import REVERSAL_BAD_ANSWER, REVERSAL_NO_ANSWER, REVERSAL_OTHER
from terminal.fsops import REAL_OPS, FsOps, atomic_replace
from terminal.keystore import KeystoreError, load_storage_key

FORMAT: Final = 1
NONCE_BYTES: Final = 12
_SEAL_LABEL: Final = b"posemu terminal pending reversal v1"
_PURPOSE: Final = b"pending reversal"
CARD_PURPOSE: Final = b"ledger card"

# Field 39 of a reversal (PROTOCOL.md §7): why the terminal reverses.
NO_ANSWER: Final = REVERSAL_NO_ANSWER
BAD_ANSWER: Final = REVERSAL_BAD_ANSWER
OTHER: Final = REVERSAL_OTHER
REASONS: Final = {NO_ANSWER: "no answer in time", BAD_ANSWER: "an answer that failed its MAC "
                  "or did not decode", OTHER: "an answer that was not this request's"}
MAX_TRIES: Final = 3
"""How many times one command sends a reversal that gets no answer before it gives up."""


class PendingError(Exception):
    """pending.json exists but cannot be read or fails its seal: a reversal may be lost."""


@dataclass(frozen=True)
class PendingReversal:
    """The original request's fields a reversal repeats (2, 3, 4, 14, 25, 41, 42, 49, 60 and
    38 once an answer brought one), its STAN and why it is reversed.

    `fields` holds the card number in clear: this value lives in memory and sealed on disk,
    and its repr shows nothing of it.
    """

    kind: str
    stan: int
    batch: int
    amount: int
    fields: dict[int, str]
    reason: str = NO_ANSWER
    tries: int = 0
    at: float = 0.0

    @property
    def masked_pan(self) -> str:
        return mask_pan(self.fields.get(2, ""))

    def with_reason(self, reason: str) -> PendingReversal:
        return replace(self, reason=reason)

    def tried(self) -> PendingReversal:
        return replace(self, tries=self.tries + 1)

    def summary(self) -> dict[str, Any]:
        """What `status` and `--json` may show: the card masked, nothing else secret."""
        return {"kind": self.kind, "stan": self.stan, "batch": self.batch, "amount": self.amount,
                "pan": self.masked_pan, "reason": self.reason,
                "reason_text": REASONS.get(self.reason, ""), "tries": self.tries, "at": self.at}

    def __repr__(self) -> str:
        return (f"PendingReversal({self.kind}, stan={self.stan}, batch={self.batch}, "
                f"pan={self.masked_pan}, reason={self.reason})")


def _seal_key(storage_key: bytes, purpose: bytes) -> bytes:
    """A key of its own for each purpose, never the storage key itself."""
    return hmac.new(storage_key, _SEAL_LABEL + b" " + purpose, hashlib.sha256).digest()


def seal_blob(storage_key: bytes, clear: bytes, purpose: bytes, rng: Rng = os.urandom) -> str:
    """AES-GCM under a key derived from the storage key: the nonce, then the ciphertext and
    its tag, as hex. `purpose` binds the blob to its use (a sealed card cannot pass for a
    sealed reversal)."""
    nonce = rng(NONCE_BYTES)
    return (nonce + AESGCM(_seal_key(storage_key, purpose)).encrypt(nonce, clear, purpose)).hex()


def open_blob(storage_key: bytes, blob: str, purpose: bytes) -> bytes:
    """The clear bytes, or PendingError when any byte differs from what was sealed."""
    try:
        data = bytes.fromhex(blob)
        nonce, sealed = data[:NONCE_BYTES], data[NONCE_BYTES:]
        return AESGCM(_seal_key(storage_key, purpose)).decrypt(nonce, sealed, purpose)
    except InvalidTag:
        raise PendingError("it fails its seal (damaged, or sealed under another storage key)") \
            from None
    except (ValueError, TypeError):
        raise PendingError("its content is malformed") from None


def seal(record: PendingReversal, storage_key: bytes, rng: Rng = os.urandom) -> bytes:
    body = asdict(record)
    body["fields"] = {str(n): v for n, v in record.fields.items()}
    clear = json.dumps(body, sort_keys=True).encode()
    blob = seal_blob(storage_key, clear, _PURPOSE, rng)
    return json.dumps({"format": FORMAT, "sealed": blob}).encode() + b"\n"


def unseal(data: bytes, storage_key: bytes) -> PendingReversal:
    try:
        outer = json.loads(data)
        if outer["format"] != FORMAT:
            raise ValueError("unknown format")
        doc = json.loads(open_blob(storage_key, outer["sealed"], _PURPOSE))
        doc["fields"] = {int(n): str(v) for n, v in doc["fields"].items()}
        return PendingReversal(**doc)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise PendingError("its content is malformed") from None


@dataclass(frozen=True)
class PendingStore:
    """The one pending reversal of a terminal folder (a terminal has at most one: it sends it
    before anything else that could leave another)."""

    path: Path
    storage_key_path: Path
    ops: FsOps = REAL_OPS
    rng: Rng = os.urandom

    def _storage_key(self) -> bytes:
        try:
            return load_storage_key(self.storage_key_path).material
        except KeystoreError as exc:
            raise PendingError(f"{self.path}: the storage key cannot be read ({exc})") from None

    def load(self) -> PendingReversal | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PendingError(f"{self.path} is unreadable ({exc.strerror})") from None
        try:
            return unseal(data, self._storage_key())
        except PendingError as exc:
            raise PendingError(f"{self.path}: a pending reversal cannot be read: {exc}; check the "
                               "host's record of that transaction (`pos-host batch show`) "
                               "before removing the file") from None

    def save(self, record: PendingReversal) -> None:
        """Durable (fsynced, then renamed, then the folder fsynced) before the request leaves."""
        atomic_replace(self.path, seal(record, self._storage_key(), self.rng), self.ops)

    def clear(self) -> None:
        """Only after an answer with a valid MAC; the folder is fsynced so the removal holds."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

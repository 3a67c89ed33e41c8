"""The local master key (LMK) and the secrets the host derives from it.

The LMK file is the stand-in for an HSM's master key (PROTOCOL.md §2): the only clear key
material the host keeps on disk. Everything else secret is either a TR-31 block under the LMK
(keys) or a one-way value keyed by a key derived from the LMK (PIN verification values, the
index under which a PAN is found, the fingerprint of a remembered request), so a copy of the
database without the LMK file reveals no key, PAN or PIN, and cannot be searched for them.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from hashlib import blake2b
from pathlib import Path
from typing import Any, Protocol

from protocol.clock import Rng
from protocol.crypto import Key, kcv

LMK_LENGTH = 32  # AES-256: the key-block protection key of TR-31 version D.


class LmkError(RuntimeError):
    """The LMK file is missing, unreadable, the wrong size, readable by others, or not the LMK
    the database was made under."""


def check_value(lmk: bytes) -> str:
    """The LMK's check value (AES-CMAC KCV, 6 hex digits), kept in the database so that a wrong
    `lmk.key` is refused at start instead of answering every message 96 or sealing new keys
    under a key the old ones do not open. It identifies the key; it cannot recover it."""
    return kcv(lmk, 3, "AES").hex().upper()


def write_lmk(path: Path, material: bytes) -> bytes:
    """Write an LMK (mode 0600, flushed to disk before anything is sealed under it), never over
    an existing file."""
    if len(material) != LMK_LENGTH:
        raise LmkError(f"an LMK is {LMK_LENGTH} bytes, not {len(material)}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(material)
        out.flush()
        os.fsync(out.fileno())
    return material


def load_lmk(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode & 0o777
        material = path.read_bytes()
    except OSError as exc:
        raise LmkError(f"cannot read the LMK file {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise LmkError(f"the LMK file {path} is readable by others (mode {mode:o}); chmod 600 it")
    if len(material) != LMK_LENGTH:
        raise LmkError(f"the LMK file {path} does not hold a {LMK_LENGTH}-byte key")
    return material


class SealingKey(Protocol):
    """An LMK held where the host cannot read it (a PKCS#11 token, `host.pkcs11.TokenLmk`): it
    seals and opens keys itself. A file LMK is plain bytes, sealed with in this process."""

    check_value: str
    extractable: bool

    def seal(self, usage: str, key: Key) -> str: ...

    def unseal(self, usage: str, block: str) -> Key: ...


Lmk = bytes | SealingKey


def lmk_check_value(lmk: Lmk) -> str:
    return check_value(lmk) if isinstance(lmk, bytes) else lmk.check_value


def _derive(lmk: bytes, label: bytes) -> bytes:
    return hmac.digest(lmk, b"posemu host v1 " + label, "sha256")


@dataclass(frozen=True, slots=True)
class Vault:
    """The LMK and its derived keys; `repr` never shows material.

    Every one-way value is keyed BLAKE2b (RFC 7693, a PRF under its key; hashlib's own code,
    several times cheaper per call than HMAC through OpenSSL 3). PIN verification value =
    BLAKE2b(PVK; PAN "|" PIN): like a Visa PVV it is only as strong as the secrecy of its key,
    which never leaves this process and the LMK file; it is cheap enough to compute on every
    purchase (a PBKDF2 would cost milliseconds per transaction and protect nothing more while
    the key is secret).

    Each keyed hash starts from a copy of a state that has already absorbed its key (the same
    digest as `blake2b(data, key=...)`): a purchase computes three of them, and the key block is
    a third of each one's work.
    """

    lmk: Lmk
    root: bytes
    pvk: bytes
    pan_key: bytes
    digest_key: bytes
    _pvk_state: Any = field(init=False, repr=False, compare=False)
    _pan_state: Any = field(init=False, repr=False, compare=False)
    _digest_state: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_pvk_state", blake2b(key=self.pvk, digest_size=32))
        object.__setattr__(self, "_pan_state", blake2b(key=self.pan_key, digest_size=32))
        object.__setattr__(self, "_digest_state", blake2b(key=self.digest_key, digest_size=16))

    @classmethod
    def from_lmk(cls, lmk: Lmk, root: bytes | None = None) -> Vault:
        """The derived keys come from `root`: the first file LMK itself (so databases made
        before rotation existed open unchanged), or a random secret kept sealed under the LMK in
        the database (a token LMK, which cannot be read, or any LMK after `lmk rotate`). A
        rotation re-seals the root, so card PAN references and PIN values stay valid."""
        if root is None:
            if not isinstance(lmk, bytes):
                raise LmkError("a token LMK needs the database's sealed root secret")
            root = lmk
        return cls(
            lmk=lmk,
            root=root,
            pvk=_derive(root, b"pin verification"),
            pan_key=_derive(root, b"pan index"),
            digest_key=_derive(root, b"request fingerprint"),
        )

    @property
    def check_value(self) -> str:
        return lmk_check_value(self.lmk)

    @property
    def backup_key(self) -> bytes:
        """The key a backup file's MAC is made under: only a host with this LMK verifies it."""
        return _derive(self.root, b"backup mac")

    @property
    def audit_key(self) -> bytes:
        """The key of the audit trail's MAC chain and of the operators' rows (host.audit)."""
        return _derive(self.root, b"audit mac")

    def pan_ref(self, pan: str) -> str:
        """The key a card is stored and found under, in place of its PAN."""
        h = self._pan_state.copy()
        h.update(pan.encode("ascii"))
        return h.hexdigest()

    def pin_value(self, pan: str, pin: str) -> str:
        h = self._pvk_state.copy()
        h.update(f"{pan}|{pin}".encode("ascii"))
        return h.hexdigest()

    def pin_matches(self, pvv: str, pan: str, pin: str) -> bool:
        return hmac.compare_digest(pvv, self.pin_value(pan, pin))

    def request_ref(self, message: bytes) -> bytes:
        """Fingerprint of a request's bytes for duplicate detection; keyed, since they hold a PAN."""
        h = self._digest_state.copy()
        h.update(message)
        return h.digest()

    def __repr__(self) -> str:
        return "Vault(<LMK and derived keys>)"


# --- clear components for custodians -------------------------------------------------------------

COMPONENT_FORMAT = "posemu-lmk-component-1"


def split_lmk(lmk: bytes, count: int, rng: Rng) -> list[bytes]:
    """`count` random components whose XOR is the LMK: any fewer than all reveal nothing."""
    if count not in (2, 3):
        raise LmkError("an LMK is split into 2 or 3 components")
    parts = [rng(LMK_LENGTH) for _ in range(count - 1)]
    last = lmk
    for part in parts:
        last = bytes(a ^ b for a, b in zip(last, part, strict=True))
    return [*parts, last]


def component_document(material: bytes, index: int, count: int, lmk: bytes) -> dict[str, Any]:
    """One custodian's file: the component and its check value, and the LMK's, so that the
    rebuilt key is checked as a whole too."""
    return {"format": COMPONENT_FORMAT, "index": index, "of": count,
            "component": material.hex().upper(), "kcv": check_value(material),
            "lmk_kcv": check_value(lmk)}


def combine_lmk(documents: list[dict[str, Any]]) -> bytes:
    """The LMK from every custodian's component, each checked against its own check value and
    the result against the LMK's; a refusal names the component, never its value."""
    if not documents:
        raise LmkError("no LMK components given")
    count = documents[0].get("of")
    indexes = sorted(d.get("index") for d in documents)
    if any(d.get("format") != COMPONENT_FORMAT for d in documents):
        raise LmkError("not an LMK component file (format is not " + COMPONENT_FORMAT + ")")
    if count not in (2, 3) or indexes != list(range(1, count + 1)):
        raise LmkError(f"LMK components {indexes} given; all {count} are needed, each once")
    if len({d.get("lmk_kcv") for d in documents}) != 1:
        raise LmkError("the components are of different LMKs (their LMK check values differ)")
    lmk = bytes(LMK_LENGTH)
    for doc in documents:
        try:
            material = bytes.fromhex(doc["component"])
        except (KeyError, TypeError, ValueError):
            raise LmkError(f"LMK component {doc['index']} is not hex") from None
        if len(material) != LMK_LENGTH or not hmac.compare_digest(check_value(material),
                                                                  str(doc.get("kcv"))):
            raise LmkError(f"LMK component {doc['index']} fails its check value: mistyped?")
        lmk = bytes(a ^ b for a, b in zip(lmk, material, strict=True))
    if not hmac.compare_digest(check_value(lmk), str(documents[0]["lmk_kcv"])):
        raise LmkError("the components do not combine to the LMK of their check value")
    return lmk

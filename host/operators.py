"""Operators' credentials: scrypt (RFC 7914) through hashlib, which OpenSSL provides.

A credential is stored as `scrypt$LOG2N$R$P$SALT$HASH`: the cost goes with each hash, so a
later posemu may raise the default and old hashes still verify (`operator passwd` re-hashes at
the new cost). The default, N = 2**15, r = 8, p = 1 (32 MiB, tens of milliseconds), is
OWASP's minimum for scrypt; `POSEMU_SCRYPT_LOG2N` lowers it for a test suite only (10 to 20
accepted) and every hash made then records its own low cost.

An unknown name is checked against a dummy hash at the default cost, so a refusal costs the
same time whether or not the name exists (`host.access`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from host.clock import Rng

ROLES = ("administrator", "custodian", "auditor", "operator")
"""`custodian` is the key custodian of the guide; docs/operations.md lists what each may do."""
COST_ENV = "POSEMU_SCRYPT_LOG2N"
DEFAULT_LOG2N, R, P = 15, 8, 1
SALT_BYTES, HASH_BYTES = 16, 32
MIN_PASSWORD = 8
_NAME = re.compile(r"[a-z][a-z0-9._-]{0,31}")
RESERVED = frozenset({"lab", "host"})  # the audit trail's names for no login and the host itself


class CredentialError(ValueError):
    """A name, role or password that cannot be used."""


@dataclass(frozen=True, slots=True)
class Operator:
    name: str
    role: str
    credential: str  # the scrypt string: never shown
    created: float


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or name in RESERVED:
        raise CredentialError(f"operator name {name[:40]!r} is not valid: 1 to 32 of a-z, 0-9, "
                              f". _ - starting with a letter, not lab or host")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise CredentialError(f"role {role[:40]!r} is not one of {', '.join(ROLES)}")
    return role


def cost(environ: Mapping[str, str]) -> int:
    text = environ.get(COST_ENV)
    if not text:
        return DEFAULT_LOG2N
    if not (text.isascii() and text.isdigit()) or not 10 <= int(text) <= 20:
        raise CredentialError(f"${COST_ENV} is a whole number from 10 to 20")
    return int(text)


def _scrypt(password: str, salt: bytes, log2n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=1 << log2n, r=r, p=p,
                          maxmem=256 * r * (1 << log2n) + (1 << 20), dklen=HASH_BYTES)


def hash_password(password: str, rng: Rng, log2n: int = DEFAULT_LOG2N) -> str:
    if len(password) < MIN_PASSWORD:
        raise CredentialError(f"a password has at least {MIN_PASSWORD} characters")
    salt = rng(SALT_BYTES)
    digest = _scrypt(password, salt, log2n, R, P)
    return f"scrypt${log2n}${R}${P}${salt.hex()}${digest.hex()}"


def verify_password(credential: str, password: str) -> bool:
    """Constant-time comparison; a malformed credential verifies nothing (after the same work
    as a real one at the default cost, so it is not told apart by time either)."""
    try:
        scheme, log2n, r, p, salt, digest = credential.split("$")
        if scheme != "scrypt":
            raise ValueError(scheme)
        expected = bytes.fromhex(digest)
        actual = _scrypt(password, bytes.fromhex(salt), int(log2n), int(r), int(p))
    except ValueError:
        _scrypt(password, bytes(SALT_BYTES), DEFAULT_LOG2N, R, P)
        return False
    return hmac.compare_digest(expected, actual)


def dummy_credential(log2n: int) -> str:
    """What an unknown name is checked against: a fixed salt and a hash nothing matches."""
    return f"scrypt${log2n}${R}${P}${'00' * SALT_BYTES}${'00' * HASH_BYTES}"


def row_mac(key: bytes, name: str, role: str, credential: str) -> str:
    """Each operator row is MACed under the audit key: a role or credential edited in the file
    (a custodian made administrator by SQL) is refused at login."""
    return hmac.digest(key, f"operator|{name}|{role}|{credential}".encode(), "sha256").hex()


"""Slow salted password hashes (scrypt, RFC 7914, through hashlib and OpenSSL): the host's
operators and the terminal's supervisor password both use them.

A hash is stored as `scrypt$LOG2N$R$P$SALT$HASH`: the cost goes with each hash, so a later
posemu may raise the default and old hashes still verify (setting a password again re-hashes
at the new cost). The default, N = 2**15, r = 8, p = 1 (32 MiB, tens of milliseconds), is
OWASP's minimum for scrypt; `POSEMU_SCRYPT_LOG2N` lowers it for a test suite only (10 to 20
accepted), and every hash made then records its own low cost.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping

COST_ENV = "POSEMU_SCRYPT_LOG2N"
DEFAULT_LOG2N, R, P = 15, 8, 1
SALT_BYTES, HASH_BYTES = 16, 32
MIN_PASSWORD = 8


class PasswordError(ValueError):
    """A password or cost setting that cannot be used."""


def cost(environ: Mapping[str, str]) -> int:
    text = environ.get(COST_ENV)
    if not text:
        return DEFAULT_LOG2N
    if not (text.isascii() and text.isdigit()) or not 10 <= int(text) <= 20:
        raise PasswordError(f"${COST_ENV} is a whole number from 10 to 20")
    return int(text)


def _scrypt(password: str, salt: bytes, log2n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=1 << log2n, r=r, p=p,
                          maxmem=256 * r * (1 << log2n) + (1 << 20), dklen=HASH_BYTES)


def hash_password(password: str, rng: Callable[[int], bytes], log2n: int = DEFAULT_LOG2N) -> str:
    if len(password) < MIN_PASSWORD:
        raise PasswordError(f"a password has at least {MIN_PASSWORD} characters")
    salt = rng(SALT_BYTES)
    digest = _scrypt(password, salt, log2n, R, P)
    return f"scrypt${log2n}${R}${P}${salt.hex()}${digest.hex()}"


def verify_password(credential: str, password: str) -> bool:
    """Constant-time comparison; a malformed credential verifies nothing (after the same work
    as a real one at the default cost, so it is not told apart by time either)."""
    try:
        scheme, log2n, r, p, salt, digest = credential.split("$")
        if scheme != "scrypt" or not 10 <= int(log2n) <= 20:
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


def log2n_of(credential: str) -> int | None:
    """The cost a hash was made at (shown by `operator list`, so a low one is seen)."""
    parts = credential.split("$")
    return int(parts[1]) if len(parts) == 6 and parts[1].isdigit() else None

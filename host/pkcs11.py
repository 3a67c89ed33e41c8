"""The LMK inside a PKCS#11 token (SoftHSM2 in the tests; a network HSM's library the same way).

The token holds one AES-256 key, sensitive and non-extractable, allowed to wrap and unwrap and
nothing else. A key is sealed by the token with AES key wrap with padding (CKM_AES_KEY_WRAP_PAD,
NIST SP 800-38F KWP, RFC 5649) of a transient session object whose value is a small header
(format, usage, algorithm, length) followed by the key: KWP's integrity check then covers the usage too,
so a MAK's block does not open as a PIK. Every step that needs the LMK happens in the token;
what leaves it is the unwrapped working key, which the host caches in memory once (PROTOCOL.md
§2), so a purchase never crosses the PKCS#11 boundary.

A token that goes away (unplugged, network down, SoftHSM2's token folder gone) makes the next
operation raise `TokenError`; the one after that starts again from C_Initialize, finds the token
by label and logs in, so a serving host recovers by itself when the token is back.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import sqlite3
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from protocol.crypto import Key, KeyBlockMacError

DEFAULT_PIN_ENV = "POSEMU_HSM_PIN"
CONFIG_FILE = "hsm.json"
FORMAT = "KWP1"  # the prefix of a token-sealed block in the database, beside TR-31's "D"
_HEADER = b"posemu-kwp1|"
_ALGORITHMS = ("DES", "TDES", "AES")
T = TypeVar("T")


class TokenError(LookupError, sqlite3.OperationalError):
    """The token is absent, refuses the PIN, lacks the LMK, or was lost mid-operation.

    A LookupError to the handlers (the key cannot be had: the message is answered 96) and a
    failed write to the serving host's store (a key that cannot be sealed cannot be stored: the
    batch is rolled back and answered 96); nothing is lost, and the next try reconnects."""


@dataclass(frozen=True, slots=True)
class TokenConfig:
    """What `init --hsm pkcs11` records in the data folder (`hsm.json`): never the PIN."""

    module: str
    token: str
    pin_env: str = DEFAULT_PIN_ENV
    label: str = "posemu-lmk-1"  # the LMK object's label; `lmk rotate` makes the next one

    def save(self, folder: Path) -> None:
        fd = os.open(folder / CONFIG_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(self), out, indent=2)
            out.write("\n")

    @classmethod
    def load(cls, folder: Path) -> TokenConfig:
        try:
            return cls(**json.loads((folder / CONFIG_FILE).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise TokenError(f"cannot read {folder / CONFIG_FILE}: {exc}") from None


def read_pin(config: TokenConfig) -> str:
    """From the environment variable the host was set up with, else a prompt on a terminal;
    never from argv, and never logged."""
    pin = os.environ.get(config.pin_env)
    if pin:
        return pin
    if sys.stdin.isatty():
        return getpass.getpass(f"PIN of token {config.token!r}: ")
    raise TokenError(f"no PIN for token {config.token!r}: set ${config.pin_env} (or run on a "
                     f"terminal to be asked)")


def _pkcs11() -> Any:
    import pkcs11  # imported here: a host with a file LMK does not need the binding loaded

    return pkcs11


class TokenLmk:
    """The LMK as a token object; the sealing side of a host (`host.hsm.seal` dispatches here)."""

    extractable = False

    def __init__(self, config: TokenConfig, pin: str) -> None:
        self.config = config
        self.pin = pin  # kept to log in again after a token fault; never shown
        self._lock = threading.Lock()
        self._session: Any = None
        self._key: Any = None
        p11 = _pkcs11()
        try:
            self._lib = p11.lib(config.module)
        except (RuntimeError, OSError) as exc:
            raise TokenError(f"cannot load the PKCS#11 module {config.module}: "
                             f"{type(exc).__name__}") from None
        self._connect(fresh=False)
        self.check_value = self._call(self._check_value)

    def __repr__(self) -> str:
        return f"TokenLmk(token={self.config.token!r}, label={self.config.label!r})"

    # --- the session ---------------------------------------------------------------------------

    def _connect(self, fresh: bool) -> None:
        p11 = _pkcs11()
        what = f"token {self.config.token!r}"
        try:
            if fresh:
                self._lib.reinitialize()
            token = self._lib.get_token(token_label=self.config.token)
            try:
                self._session = token.open(user_pin=self.pin, rw=True)
            except p11.exceptions.UserAlreadyLoggedIn:
                # PKCS#11 logs in per process: a second LMK object of this token (`lmk
                # rotate`) opens its session under the first one's login.
                self._session = token.open(rw=True)
        except p11.exceptions.NoSuchToken:
            raise TokenError(f"{what} is not present (module {self.config.module})") from None
        except (p11.exceptions.PinIncorrect, p11.exceptions.PinLenRange,
                p11.exceptions.PinInvalid):
            raise TokenError(f"{what} refused the PIN (from ${self.config.pin_env})") from None
        except p11.exceptions.PinLocked:
            raise TokenError(f"{what} has locked its user PIN") from None
        except p11.exceptions.PKCS11Error as exc:
            raise TokenError(f"{what} cannot be opened: {type(exc).__name__}") from None
        try:
            self._key = self._session.get_key(label=self.config.label,
                                              object_class=p11.ObjectClass.SECRET_KEY)
        except p11.exceptions.NoSuchKey:
            self._drop()
            raise TokenError(f"{what} has no LMK {self.config.label!r}: wrong token?") from None
        except p11.exceptions.PKCS11Error as exc:
            self._drop()
            raise TokenError(f"{what} lost while finding its LMK: {type(exc).__name__}") from None

    def _drop(self) -> None:
        session, self._session, self._key = self._session, None, None
        if session is not None:
            try:
                session.close()
            except _pkcs11().exceptions.PKCS11Error:
                pass  # the session is already gone with the token

    def _alive(self) -> bool:
        try:
            self._session.get_key(label=self.config.label)
            return True
        except _pkcs11().exceptions.PKCS11Error:
            return False

    def _call(self, work: Callable[[], T]) -> T:
        """One operation; a token fault drops the session (the next call reconnects) and is a
        TokenError. A fault with the token still answering is the block's: KeyBlockMacError."""
        p11 = _pkcs11()
        with self._lock:
            if self._session is None:
                self._connect(fresh=True)
            try:
                return work()
            except p11.exceptions.PKCS11Error as exc:
                if self._alive():  # the token is there and said no: the block's fault
                    raise KeyBlockMacError(f"the token refused the operation "
                                           f"({type(exc).__name__}): a damaged sealed key, or "
                                           f"one sealed under another LMK") from None
                self._drop()
                raise TokenError(f"token {self.config.token!r} lost: {type(exc).__name__}; "
                                 f"retried on the next operation") from None

    def close(self) -> None:
        with self._lock:
            self._drop()

    # --- sealing -------------------------------------------------------------------------------

    def _secret(self, value: bytes) -> Any:
        p11 = _pkcs11()
        a = p11.Attribute
        return self._session.create_object({
            a.CLASS: p11.ObjectClass.SECRET_KEY, a.KEY_TYPE: p11.KeyType.GENERIC_SECRET,
            a.VALUE: value, a.TOKEN: False, a.EXTRACTABLE: True, a.SENSITIVE: False,
        })

    def _wrap(self, value: bytes) -> bytes:
        obj = self._secret(value)
        try:
            return bytes(self._key.wrap_key(obj, mechanism=_pkcs11().Mechanism.AES_KEY_WRAP_PAD))
        finally:
            obj.destroy()

    def _unwrap(self, wrapped: bytes) -> bytes:
        p11 = _pkcs11()
        a = p11.Attribute
        obj = self._key.unwrap_key(
            p11.ObjectClass.SECRET_KEY, p11.KeyType.GENERIC_SECRET, wrapped,
            mechanism=p11.Mechanism.AES_KEY_WRAP_PAD, store=False,
            template={a.EXTRACTABLE: True, a.SENSITIVE: False})
        try:
            return bytes(obj[a.VALUE])
        finally:
            obj.destroy()

    def _check_value(self) -> str:
        """KWP is deterministic: the wrap of a 16-byte zero value identifies the LMK (as a KCV
        does, and like one it cannot recover it); needs no rights beyond wrap."""
        return "T" + self._wrap(bytes(16))[:3].hex().upper()

    def seal(self, usage: str, key: Key) -> str:
        value = _HEADER + f"{usage}|{key.algorithm}|{key.length}|".encode() + key.material
        return FORMAT + self._call(lambda: self._wrap(value)).hex().upper()

    def unseal(self, usage: str, block: str) -> Key:
        if not block.startswith(FORMAT):
            raise KeyBlockMacError("not a token-sealed key (made under a file LMK?)")
        try:
            wrapped = bytes.fromhex(block[len(FORMAT):])
        except ValueError:
            raise KeyBlockMacError("a token-sealed key that is not hex") from None
        value = self._call(lambda: self._unwrap(wrapped))
        # The length is in the header because SoftHSM2 2.6 leaves KWP's zero padding on the
        # unwrapped value (RFC 5649 §3 says to strip it); a token that strips it works the same.
        parts = value.split(b"|", 4)
        if len(parts) != 5 or parts[0] + b"|" != _HEADER or parts[1] != usage.encode() \
                or parts[2].decode(errors="replace") not in _ALGORITHMS or not parts[3].isdigit():
            raise KeyBlockMacError(f"the token-sealed key is not a {usage}")
        length = int(parts[3])
        if len(parts[4]) < length or any(parts[4][length:]):
            raise KeyBlockMacError(f"the token-sealed {usage} is damaged")
        return Key(parts[2].decode(), usage, parts[4][:length])

    # --- the LMK's life ------------------------------------------------------------------------

    def create_lmk(self, label: str) -> None:
        """A new LMK object, generated by the token, that never leaves it."""
        _create(self._session, label)

    def destroy_lmk(self, label: str) -> None:
        p11 = _pkcs11()
        with self._lock, contextlib.suppress(p11.exceptions.NoSuchKey):
            self._session.get_key(label=label, object_class=p11.ObjectClass.SECRET_KEY).destroy()


def _create(session: Any, label: str) -> None:
    p11 = _pkcs11()
    a = p11.Attribute
    session.generate_key(p11.KeyType.AES, 256, label=label, store=True, template={
        a.SENSITIVE: True, a.EXTRACTABLE: False, a.WRAP: True, a.UNWRAP: True,
        a.ENCRYPT: False, a.DECRYPT: False, a.SIGN: False, a.VERIFY: False, a.PRIVATE: True,
    })


def create_token_lmk(config: TokenConfig, pin: str) -> TokenLmk:
    """`init --hsm pkcs11`: the LMK made inside the token (refused if one of that label is
    there: another host's LMK is never taken over), then opened."""
    p11 = _pkcs11()
    try:
        token = p11.lib(config.module).get_token(token_label=config.token)
        with token.open(user_pin=pin, rw=True) as session:
            try:
                session.get_key(label=config.label)
                raise TokenError(f"token {config.token!r} already has an LMK {config.label!r}: "
                                 f"another host's? init refuses to share it")
            except p11.exceptions.NoSuchKey:
                _create(session, config.label)
    except TokenError:
        raise
    except p11.exceptions.NoSuchToken:
        raise TokenError(f"token {config.token!r} is not present (module {config.module})") from None
    except p11.exceptions.PinIncorrect:
        raise TokenError(f"token {config.token!r} refused the PIN (from ${config.pin_env})") from None
    except (p11.exceptions.PKCS11Error, RuntimeError, OSError) as exc:
        raise TokenError(f"token {config.token!r}: {type(exc).__name__}") from None
    return TokenLmk(config, pin)

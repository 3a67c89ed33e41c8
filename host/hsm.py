"""The key operations the host performs, as an HSM's command set would name them.

Every use of clear key material by the host goes through here. `SecurityModule` is the
boundary a serving host keeps, after jPOS's SMAdapter: it owns every unsealed key, and the
handlers, views and caches name keys by `KeyHandle` only. `SoftwareSecurityModule` is the
default; a PKCS#11 backend implements the same few operations over token objects. The module
functions below it are the operator's ceremony tools (`pos-host terminal add`, `keys rotate`)
and the at-rest sealing the key database uses.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol, TypeVar

from host.lmk import Lmk
from host.state import (
    ACTIVE,
    RETIRED,
    KeyHandle,
    Sealed,
    StoredWorkingSet,
    Terminal,
    TerminalKeys,
    WorkingSet,
)
from protocol.clock import Rng
from protocol.crypto import (
    CryptoError,
    Key,
    KeyMaterialError,
    decrypt_pin_block,
    fix_parity,
    generate_key,
    tr31,
    wrap_ecb,
)
from protocol.crypto.ciphers import xor
from protocol.crypto.mac import dialect_mac_function
from protocol.fields import KCV_SIZE, KeySetLayout, WrappedKey, build_key_set
from protocol.spec import Dialect

TMK_LENGTH = 16
# TR-31 key usage and mode of use of what the host seals: K0 key-encryption key, P0 PIN
# encryption, M3 ISO 9797-1 MAC algorithm 3 (X9.19; the CUP MAC is built on the same DES), D0
# data encryption; B = encrypt and decrypt (wrap and unwrap), C = generate and verify.
# ROOT (the secret the LMK-derived keys come from, host.lmk.Vault) takes a numeric usage, which
# TR-31 leaves to proprietary use; N = no special restrictions.
TR31_USAGE = {"TMK": ("K0", "B"), "PIK": ("P0", "B"), "MAK": ("M3", "C"), "TDK": ("D0", "B"),
              "ROOT": ("01", "N")}


class PinBlockInvalid(ValueError):
    """The PIN block does not decrypt to a valid ISO 9564 format 0 block (key error K3)."""


# --- TMKs and the key ceremony -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Component:
    material: bytes
    kcv: str


def new_tmk(rng: Rng) -> Key:
    return generate_key("TDES", TMK_LENGTH, "TMK", rng)


def split_components(tmk: Key, count: int, rng: Rng) -> list[Component]:
    """`count` odd-parity components whose XOR, parity-fixed, is the TMK (PROTOCOL.md §2)."""
    if count not in (2, 3):
        raise ValueError("a TMK is split into 2 or 3 components")
    parts = [generate_key("TDES", TMK_LENGTH, "TMK component", rng).material
             for _ in range(count - 1)]
    last = tmk.material
    for part in parts:
        last = xor(last, part)
    parts.append(fix_parity(last))
    return [Component(p, Key("TDES", "TMK component", p).kcv_hex) for p in parts]


# --- working keys --------------------------------------------------------------------------------

def new_working_set(
    key_set: KeySetLayout, dialect: Dialect, generation: int, now: float, lifetime: float, rng: Rng,
    tmk: Key | None = None,
) -> StoredWorkingSet:
    """The working keys of one sign-on; the MAK as long as the dialect's MAC needs. None equals
    the TMK they are sent under (a key sent under itself)."""
    lengths = dict(key_set.keys)
    lengths["MAK"] = key_set.mak_length(dialect)
    avoid = frozenset() if tmk is None else frozenset({tmk.material})
    keys = {usage: generate_key("DES" if n == 8 else "TDES", n, usage, rng, avoid)
            for usage, n in lengths.items()}
    return WorkingSet(generation, key_set.code, ACTIVE, now, lifetime,
                      keys["PIK"], keys["MAK"], keys.get("TDK"))


def new_key_like(key: Key, rng: Rng) -> Key:
    """A fresh key of the same shape: for `keys rotate`, and for `keys tamper`'s wrong MAK."""
    return generate_key(key.algorithm, key.length, key.usage, rng)


def field62(tmk: Key, working: StoredWorkingSet, key_set: KeySetLayout) -> bytes:
    """Each working key under the TMK (TDES-ECB) with its 4-byte check value, in the set's order."""
    keys = {"PIK": working.pik, "MAK": working.mak, "TDK": working.tdk}
    wrapped = [
        WrappedKey(usage, wrap_ecb(tmk, key), key.kcv(KCV_SIZE))
        for usage, _ in key_set.keys
        if (key := keys[usage]) is not None
    ]
    return build_key_set(wrapped, key_set.code)


# --- sealing under the LMK -----------------------------------------------------------------------

def seal(lmk: Lmk, usage: str, key: Key, rng: Rng) -> str:
    """The key as a TR-31 version D block under a file LMK, or sealed by the token that holds
    the LMK (`host.pkcs11`): what the database stores."""
    if not isinstance(lmk, bytes):
        return lmk.seal(usage, key)
    code, mode = TR31_USAGE[usage]
    return tr31.wrap(Key("AES", "KBPK", lmk), key, code, version="D", mode_of_use=mode, rng=rng)


def unseal(lmk: Lmk, usage: str, block: str) -> Key:
    """Open a sealed key; a block that fails its MAC under the LMK raises (never a wrong key)."""
    if not isinstance(lmk, bytes):
        return lmk.unseal(usage, block)
    _, key = tr31.unwrap(Key("AES", "KBPK", lmk), block, usage)
    return key


A = TypeVar("A", Key, KeyHandle, Sealed)
B = TypeVar("B", Key, KeyHandle, Sealed)


def map_keys(keys: TerminalKeys[A], f: Callable[[A, str, int], B]) -> TerminalKeys[B]:
    """The same key state with each key replaced by `f(key, usage, generation)`."""
    tmk = keys.tmk
    return replace(  # type: ignore[return-value]
        keys,
        tmk=None if tmk is None else replace(tmk, key=f(tmk.key, tmk.usage, tmk.generation)),
        working=tuple(
            replace(w, pik=f(w.pik, "PIK", w.generation), mak=f(w.mak, "MAK", w.generation),
                    tdk=None if w.tdk is None else f(w.tdk, "TDK", w.generation))
            for w in keys.working))


def open_keys(lmk: Lmk, keys: TerminalKeys[Sealed]) -> TerminalKeys[Key]:
    """A terminal's sealed key state in the clear: for the operator's tools (`keys rotate` and
    `keys tamper` shape new keys on the old ones), never for serving (`SecurityModule.admit`)."""
    return map_keys(keys, lambda block, usage, _: unseal(lmk, usage, block))


# --- the security module --------------------------------------------------------------------

PIN_FORMATS = (0,)
"""PROTOCOL.md §1: PINs travel as ISO 9564 format 0 under the PIK."""


class IssuedSet(NamedTuple):
    """A sign-on's working keys: field 62 (each key under the TMK with its check value) for
    the terminal, and the keys for the database to seal (the change that stores them)."""

    field62: bytes
    stored: StoredWorkingSet


class SecurityModule(Protocol):
    """Every operation on a clear key, by handle (a PKCS#11 backend plugs in here).

    `admit` turns a terminal's key state read from the database into handles; its MAC
    contexts are bound then, so a MAC costs no per-call setup. A handle the module did not
    give raises `LookupError` (the host answers 96), never a wrong answer.
    """

    def admit(self, keys: TerminalKeys[Sealed] | TerminalKeys[Key]) -> Terminal:
        """The same state with every key replaced by its handle: sealed keys (as the database
        holds them) are opened inside the module, keys just made are taken as they are."""
        ...

    def admit_issued(self, terminal: Terminal, working: StoredWorkingSet, keep: int) -> Terminal:
        """The terminal's state once a sign-on's `working` is stored, without reopening the
        database: the new set active, the one active before retired, the newest `keep`."""
        ...

    def issue_working_set(self, tmk: KeyHandle, key_set: KeySetLayout, generation: int, now: float,
                          lifetime: float) -> IssuedSet:
        """New working keys (the MAK as long as the dialect's MAC needs), wrapped under `tmk`."""
        ...

    def generate_mac(self, mak: KeyHandle, data: bytes) -> bytes:
        """The dialect's 8-byte MAC of `data` (PROTOCOL.md §1)."""
        ...

    def verify_mac(self, mak: KeyHandle, data: bytes, mac: bytes) -> bool:
        """True when `mac` is the MAC of `data`; compared in constant time."""
        ...

    def decrypt_pin(self, pik: KeyHandle, block: bytes, pan: str) -> str:
        """The PIN of a valid ISO 9564 format 0 block; else `PinBlockInvalid`."""
        ...

    def seal(self, key: KeyHandle) -> str:
        """The key as a TR-31 version D block under the LMK."""
        ...

    def unseal(self, usage: str, generation: int, block: str) -> KeyHandle:
        """A sealed block opened inside the module; a block failing its MAC raises."""
        ...


class SoftwareSecurityModule:
    """The default module: keys in this process's memory, as an HSM holds them in its own.

    A key admitted again (every cache reload) keeps its handle; keys are held per owner (the
    terminal whose state admitted them), and a terminal's keys that left its state (older
    generations than the database keeps) are dropped at its next admission: the module holds
    what the database holds, not every key it ever saw.
    """

    def __init__(self, lmk: Lmk, rng: Rng, dialect: Dialect) -> None:
        self._lmk = lmk
        self._rng = rng
        self._dialect = dialect
        self._ids = itertools.count(1)
        self._keys: dict[int, Key] = {}
        self._handles: dict[tuple[str, bytes, str, int], KeyHandle] = {}
        self._owned: dict[str, set[tuple[str, bytes, str, int]]] = {}
        self._macs: dict[int, Callable[[bytes], bytes]] = {}

    def __repr__(self) -> str:
        return f"<SoftwareSecurityModule keys={len(self._keys)}>"

    def _hold(self, owner: str, key: Key, usage: str, generation: int,
              held: set[tuple[str, bytes, str, int]]) -> KeyHandle:
        index = (owner, key.material, usage, generation)
        held.add(index)
        handle = self._handles.get(index)
        if handle is None:
            handle = KeyHandle(next(self._ids), key.kcv_hex, generation, usage)
            self._handles[index] = handle
            self._keys[handle.id] = key
            if usage == "MAK":
                # A MAK this dialect cannot use gets no context: generate_mac/verify_mac then
                # raise LookupError (a 96), as a MAC under it would have raised before.
                with contextlib.suppress(CryptoError):
                    self._macs[handle.id] = dialect_mac_function(self._dialect.mac, key.material)
        return handle

    def admit(self, keys: TerminalKeys[Sealed] | TerminalKeys[Key]) -> Terminal:
        owner = keys.tid
        held: set[tuple[str, bytes, str, int]] = set()

        def hold(key: Sealed | Key, usage: str, generation: int) -> KeyHandle:
            clear = unseal(self._lmk, usage, key) if isinstance(key, str) else key
            return self._hold(owner, clear, usage, generation, held)

        admitted = map_keys(keys, hold)  # type: ignore[arg-type]
        for index in self._owned.get(owner, set()) - held:
            self._release(index)
        self._owned[owner] = held
        return admitted

    def admit_issued(self, terminal: Terminal, working: StoredWorkingSet, keep: int) -> Terminal:
        owner = terminal.tid
        held = self._owned.setdefault(owner, set())
        gen = working.generation
        new = WorkingSet(gen, working.key_set, working.state, working.created, working.lifetime,
                         self._hold(owner, working.pik, "PIK", gen, held),
                         self._hold(owner, working.mak, "MAK", gen, held),
                         None if working.tdk is None else self._hold(owner, working.tdk, "TDK", gen, held))
        sets = (new, *(replace(w, state=RETIRED) if w.state == ACTIVE else w for w in terminal.working))
        gone = {w.generation for w in sets[keep:]}
        for index in [i for i in held if i[2] != "TMK" and i[3] in gone]:
            held.discard(index)
            self._release(index)
        return replace(terminal, working=sets[:keep])

    def _release(self, index: tuple[str, bytes, str, int]) -> None:
        gone = self._handles.pop(index)
        del self._keys[gone.id]
        self._macs.pop(gone.id, None)

    def issue_working_set(self, tmk: KeyHandle, key_set: KeySetLayout, generation: int, now: float,
                          lifetime: float) -> IssuedSet:
        under = self._keys[tmk.id]
        stored = new_working_set(key_set, self._dialect, generation, now, lifetime, self._rng, under)
        return IssuedSet(field62(under, stored, key_set), stored)

    def generate_mac(self, mak: KeyHandle, data: bytes) -> bytes:
        return self._macs[mak.id](data)

    def verify_mac(self, mak: KeyHandle, data: bytes, mac: bytes) -> bool:
        """A MAK this dialect's MAC cannot use (a double-length one issued while the same data
        served `iso87`, tried under `cup`) verifies nothing: its MAC is a mismatch, not a 96.
        A handle the module never gave still raises."""
        function = self._macs.get(mak.id)
        if function is None:
            if mak.id not in self._keys:
                raise LookupError(f"no key handle {mak.id}")
            return False
        try:
            expected = function(data)
        except KeyMaterialError:
            return False
        return hmac.compare_digest(expected, mac)

    def decrypt_pin(self, pik: KeyHandle, block: bytes, pan: str) -> str:
        try:
            return decrypt_pin_block(self._keys[pik.id], block, pan, formats=PIN_FORMATS)
        except CryptoError:
            raise PinBlockInvalid("PIN block does not decrypt to a valid ISO 9564 block") from None

    def seal(self, key: KeyHandle) -> str:
        return seal(self._lmk, key.usage, self._keys[key.id], self._rng)

    def unseal(self, usage: str, generation: int, block: str) -> KeyHandle:
        """Held under no terminal (kept until the process ends): for an operator's key."""
        return self._hold("", unseal(self._lmk, usage, block), usage, generation,
                          self._owned.setdefault("", set()))

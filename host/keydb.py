"""The host's SQLite database: terminals, every key generation (as TR-31 blocks), cards, and the
requests already answered.

Durability: WAL with `synchronous=NORMAL`. A commit is atomic and survives a crash of the host
process; a power cut may lose the last commits (never tear one). That is the trade the issue
allows for a simulator: a lost approval record can at worst let a retransmission be approved
again after a power cut, never corrupt key state.

Concurrency: one writer at a time (SQLite's lock, `busy_timeout` for the CLI waiting on a
serving host). The serving host notices the CLI's commits through `PRAGMA data_version`, which
changes exactly when another connection committed, and then drops its cache of unwrapped keys.
"""

from __future__ import annotations

import hmac
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from host.clock import Rng
from host.hsm import seal, unseal
from host.lmk import Lmk, LmkError, Vault
from host.state import (
    ACTIVE,
    RETIRED,
    REVOKED,
    Card,
    Change,
    HeldKey,
    IssueWorkingKeys,
    Prior,
    Purchased,
    RevokeWorkingKeys,
    TerminalKeys,
    WorkingSet,
)
from protocol.crypto import CryptoError, Key

SCHEMA = """
CREATE TABLE IF NOT EXISTS terminals (
    number    INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: it keys the terminal's txns
    tid       TEXT NOT NULL UNIQUE,
    merchant  TEXT NOT NULL,
    created   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    tid        TEXT NOT NULL REFERENCES terminals(tid) ON DELETE CASCADE,
    usage      TEXT NOT NULL CHECK (usage IN ('TMK', 'PIK', 'MAK', 'TDK')),
    generation INTEGER NOT NULL,
    key_set    TEXT,                 -- 60.3 of the sign-on; NULL for a TMK
    block      TEXT NOT NULL,        -- TR-31 version D key block under the LMK
    kcv        TEXT NOT NULL,        -- 6 hex digits
    created    REAL NOT NULL,        -- seconds since the epoch
    lifetime   REAL NOT NULL,        -- seconds
    state      TEXT NOT NULL CHECK (state IN ('active', 'retired', 'revoked')),
    PRIMARY KEY (tid, usage, generation)
);
CREATE TABLE IF NOT EXISTS cards (
    pan_ref    TEXT PRIMARY KEY,     -- keyed BLAKE2b of the PAN under an LMK-derived key
    pan_masked TEXT NOT NULL,
    expiry     TEXT NOT NULL,        -- YYMM
    pvv        TEXT NOT NULL,        -- PIN verification value (see host.lmk.Vault)
    balance    INTEGER NOT NULL,     -- minor units
    currency   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS txns (   -- appended in time order: few pages written per commit
    ref         INTEGER NOT NULL,    -- terminal number, batch and STAN in one integer (txn_ref)
    request_ref BLOB NOT NULL,       -- keyed fingerprint of the request bytes
    response    BLOB NOT NULL        -- the response sent (its code, amount and time are in it),
);                                   -- sent again to a retransmission
CREATE UNIQUE INDEX IF NOT EXISTS txns_ref ON txns (ref);
"""
META_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (    -- facts about the database itself
    name  TEXT PRIMARY KEY,          -- 'lmk_kcv': the LMK's check value (host.lmk.check_value)
    value TEXT NOT NULL
);
"""
SCHEMA_VERSION = 3
"""`PRAGMA user_version` of a database this code made; another one is refused, not guessed at."""
UPGRADES_FROM = 2
"""The one older version opened, and upgraded in place (`_upgrade`)."""
APPLICATION_ID = 0x504F5348
"""`PRAGMA application_id` ("POSH"), set from version 3 on: another SQLite file is refused."""
_TABLES = frozenset({"terminals", "keys", "cards", "txns"})
TABLES = {UPGRADES_FROM: _TABLES, SCHEMA_VERSION: _TABLES | {"meta"}}

STAN_BITS = BATCH_BITS = 20  # 999999 < 2**20


def txn_ref(number: int, batch: str, stan: str) -> int:
    """One integer for (terminal, batch, STAN): the duplicate index then holds 8-byte integers
    that a terminal's purchases keep in order, and a group commit spends about 40% less CPU
    per row than with an index over three text columns (docs/host.md, Storage)."""
    return number << (BATCH_BITS + STAN_BITS) | int(batch) << STAN_BITS | int(stan)


def _ref_range(number: int, batch: str | None = None) -> tuple[int, int]:
    """The first and last `txn_ref` of a terminal, or of one batch of it."""
    if batch is None:
        return txn_ref(number, "0", "0"), txn_ref(number + 1, "0", "0") - 1
    first = txn_ref(number, batch, "0")
    return first, first + (1 << STAN_BITS) - 1

GENERATIONS_CHECKED = 10
"""Working-key generations a MAC is tried under (the current one and the nine before it)."""


class KeyDbError(RuntimeError):
    """An operator request the database refuses (unknown terminal, duplicate card, ...)."""


@dataclass(frozen=True, slots=True)
class KeyRow:
    """A key as `keys show` lists it: bookkeeping only, never material."""

    usage: str
    generation: int
    key_set: str | None
    kcv: str
    created: float
    lifetime: float
    state: str


@dataclass(frozen=True, slots=True)
class TerminalRow:
    tid: str
    merchant: str
    created: float


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


# --- what is checked before anything is written ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Found:
    """What a read-only look at a database file saw."""

    version: int
    lmk_kcv: str | None  # None in a version-2 database, which predates the check value
    meta: Mapping[str, str] = field(default_factory=dict)  # 'lmk_label' of a token LMK, ...


def _read_only(path: Path) -> sqlite3.Connection:
    """A connection that writes nothing, not even a `-wal` or `-shm` file: `immutable=1` when no
    connection has the database open (no `-wal` beside it), else `mode=ro` (the `-wal` and
    `-shm` of the connection that has it open are then read, not made)."""
    mode = "mode=ro" if path.with_name(path.name + "-wal").exists() else "immutable=1"
    return sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True, isolation_level=None)


def inspect(path: Path) -> Found:
    """Refuse a database this code did not make, or cannot read, before opening it for writing
    (which would switch a foreign file to WAL)."""
    try:
        conn = _read_only(path)
        try:
            application_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {name for name, in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
            meta = (dict(conn.execute("SELECT name, value FROM meta").fetchall())
                    if "meta" in tables else {})
            kcv_row = (meta["lmk_kcv"],) if "lmk_kcv" in meta else None
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise KeyDbError(f"{path} is not a host database ({exc})") from None
    if application_id not in (0, APPLICATION_ID):
        raise KeyDbError(f"{path} is not a host database (application id {application_id:#x})")
    if version == 0:
        raise KeyDbError(f"{path} has no schema version: made by an earlier posemu or not a "
                         f"host database; make a new one with `pos-host init`")
    if version > SCHEMA_VERSION:
        raise KeyDbError(f"{path} is a version {version} host database, newer than the version "
                         f"{SCHEMA_VERSION} this posemu reads: use the posemu that made it")
    if version not in (UPGRADES_FROM, SCHEMA_VERSION):
        raise KeyDbError(f"{path} is a version {version} host database; this posemu reads "
                         f"version {SCHEMA_VERSION}: make a new one with `pos-host init`")
    missing = TABLES[version] - tables
    if missing:
        raise KeyDbError(f"{path} is not a host database (no table {', '.join(sorted(missing))})")
    if version == SCHEMA_VERSION and (application_id != APPLICATION_ID or kcv_row is None):
        raise KeyDbError(f"{path} is damaged: a version {version} host database without its "
                         f"LMK check value")
    return Found(version, kcv_row[0] if kcv_row else None, meta)


def check_lmk(path: Path, found: Found, vault: Vault) -> None:
    """A wrong `lmk.key` is refused here, before any key is unsealed or sealed under it."""
    if found.lmk_kcv is not None and not hmac.compare_digest(found.lmk_kcv, vault.check_value):
        raise LmkError(f"the LMK file does not match {path} (LMK check value "
                       f"{vault.check_value}, the database's {found.lmk_kcv}): wrong lmk.key?")


def create(path: Path, vault: Vault, rng: Rng, meta: Mapping[str, str] | None = None) -> None:
    """A new, empty database with the LMK's check value: only `pos-host init` calls this."""
    conn = connect(path)
    try:
        conn.executescript(SCHEMA + META_SCHEMA)
        _stamp(conn, vault, {**(meta or {}), **_root_meta(vault, rng)})
    finally:
        conn.close()


def _root_meta(vault: Vault, rng: Rng) -> dict[str, str]:
    """The root of the derived keys sealed under the LMK, unless it is the LMK itself."""
    if vault.root is vault.lmk:
        return {}
    return {"root": seal(vault.lmk, "ROOT", Key("AES", "ROOT", vault.root), rng)}


def open_root(lmk: Lmk, meta: Mapping[str, str]) -> Vault:
    """The vault of a database: its derived keys from the root sealed in it, or from the LMK."""
    block = meta.get("root")
    return Vault.from_lmk(lmk, None if block is None else unseal(lmk, "ROOT", block).material)


def _stamp(conn: sqlite3.Connection, vault: Vault, meta: Mapping[str, str] | None = None) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('lmk_kcv', ?)", (vault.check_value,))
    conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", (meta or {}).items())
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    conn.execute("COMMIT")


def _upgrade(conn: sqlite3.Connection, path: Path, vault: Vault) -> None:
    """Version 2 -> 3: the check value is computed once every stored key opens under this LMK
    (the proof that it is the right one); if any does not, nothing is written."""
    for usage, block in conn.execute("SELECT usage, block FROM keys"):
        try:
            unseal(vault.lmk, usage, block)
        except (CryptoError, ValueError):
            raise LmkError(f"the LMK file does not open the keys in {path} (a version "
                           f"{UPGRADES_FROM} database, upgraded only under its own LMK): "
                           f"wrong lmk.key?") from None
    conn.executescript(META_SCHEMA)
    _stamp(conn, vault)


class KeyDb:
    """All SQL lives here; callers hold keys, cards and changes as values."""

    def __init__(self, path: Path, vault: Vault, rng: Rng) -> None:
        self.path = path
        self.rng = rng  # TR-31 padding
        found = inspect(path)
        check_lmk(path, found, vault)
        self.vault = open_root(vault.lmk, found.meta) if "root" in found.meta else vault
        self.meta = found.meta
        self.conn = connect(path)
        if found.version == UPGRADES_FROM:
            try:
                _upgrade(self.conn, path, vault)
            except BaseException:
                self.conn.close()
                raise
        self._card_sql = (
            "SELECT pan_ref, pan_masked, expiry, pvv, balance, currency FROM cards WHERE pan_ref=?"
        )

    def close(self) -> None:
        self.conn.close()

    def data_version(self) -> int:
        """Changes whenever another connection (the CLI) has committed since the last call."""
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # --- terminals -------------------------------------------------------------------------------

    def add_terminal(self, tid: str, merchant: str, tmk: Key, now: float, lifetime: float) -> None:
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM terminals WHERE tid=?", (tid,)).fetchone():
                raise KeyDbError(f"terminal {tid} already exists (terminal rekey gives a new TMK)")
            c.execute("INSERT INTO terminals (tid, merchant, created) VALUES (?, ?, ?)",
                      (tid, merchant, now))
            self._insert_key(tid, "TMK", tmk, 1, None, now, lifetime)

    def rekey_terminal(self, tid: str, tmk: Key, now: float, lifetime: float) -> int:
        """A new key ceremony: a new TMK generation; old TMKs retired, working keys revoked."""
        with self.transaction() as c:
            self._require(tid)
            gen = c.execute(
                "SELECT COALESCE(MAX(generation), 0) + 1 FROM keys WHERE tid=? AND usage='TMK'",
                (tid,),
            ).fetchone()[0]
            c.execute(
                "UPDATE keys SET state=? WHERE tid=? AND usage='TMK' AND state=?",
                (RETIRED, tid, ACTIVE),
            )
            self._set_working_state(tid, REVOKED)
            self._insert_key(tid, "TMK", tmk, gen, None, now, lifetime)
            return gen

    def remove_terminal(self, tid: str) -> None:
        with self.transaction() as c:
            number = self._require(tid)
            c.execute("DELETE FROM keys WHERE tid=?", (tid,))
            c.execute("DELETE FROM txns WHERE ref BETWEEN ? AND ?", _ref_range(number))
            c.execute("DELETE FROM terminals WHERE tid=?", (tid,))

    def terminals(self) -> list[TerminalRow]:
        rows = self.conn.execute("SELECT tid, merchant, created FROM terminals ORDER BY tid")
        return [TerminalRow(*r) for r in rows]

    def terminal_row(self, tid: str) -> TerminalRow:
        row = self.conn.execute(
            "SELECT tid, merchant, created FROM terminals WHERE tid=?", (tid,)
        ).fetchone()
        if row is None:
            raise KeyDbError(f"no terminal {tid}")
        return TerminalRow(*row)

    def key_rows(self, tid: str) -> list[KeyRow]:
        self._require(tid)
        rows = self.conn.execute(
            "SELECT usage, generation, key_set, kcv, created, lifetime, state FROM keys "
            "WHERE tid=? ORDER BY usage = 'TMK' DESC, generation DESC, usage",
            (tid,),
        )
        return [KeyRow(*r) for r in rows]

    def load_terminal(self, tid: str) -> TerminalKeys | None:
        """The terminal's key state with its keys unwrapped from their TR-31 blocks."""
        row = self.conn.execute("SELECT merchant, number FROM terminals WHERE tid=?",
                                (tid,)).fetchone()
        if row is None:
            return None
        rows = self.conn.execute(
            "SELECT usage, generation, key_set, block, created, lifetime, state FROM keys "
            "WHERE tid=? ORDER BY generation DESC",
            (tid,),
        ).fetchall()
        tmk: HeldKey | None = None
        generations: dict[int, dict[str, tuple]] = {}
        for usage, gen, key_set, block, created, lifetime, state in rows:
            if usage == "TMK":
                if tmk is None:
                    key = unseal(self.vault.lmk, "TMK", block)
                    tmk = HeldKey("TMK", gen, key, created, lifetime, state)
            else:
                generations.setdefault(gen, {})[usage] = (key_set, block, created, lifetime, state)
        working = []
        for gen in sorted(generations, reverse=True)[:GENERATIONS_CHECKED]:
            parts = generations[gen]
            key_set, _, created, lifetime, state = parts["MAK"]
            keys = {u: unseal(self.vault.lmk, u, p[1]) for u, p in parts.items()}
            working.append(
                WorkingSet(gen, key_set, state, created, lifetime,
                           keys["PIK"], keys["MAK"], keys.get("TDK"))
            )
        return TerminalKeys(tid, row[0], tmk, tuple(working), row[1])

    # --- operator actions on keys ----------------------------------------------------------------

    def rotate(self, tid: str, working: WorkingSet) -> None:
        with self.transaction():
            self._require(tid)
            self._issue(tid, working)

    def revoke_working(self, tid: str) -> int:
        with self.transaction():
            self._require(tid)
            return self._set_working_state(tid, REVOKED)

    def revoke_tmk(self, tid: str) -> None:
        with self.transaction() as c:
            self._require(tid)
            c.execute("UPDATE keys SET state=? WHERE tid=? AND usage='TMK'", (REVOKED, tid))
            self._set_working_state(tid, REVOKED)

    def expire_working(self, tid: str, now: float) -> int:
        """Cut the active working keys' lifetime short so that they are stale from `now` on."""
        with self.transaction() as c:
            self._require(tid)
            return c.execute(
                "UPDATE keys SET lifetime=MAX(0, ? - created) "
                "WHERE tid=? AND usage != 'TMK' AND state=?",
                (now, tid, ACTIVE),
            ).rowcount

    def replace_mak(self, tid: str, mak: Key) -> int:
        """`keys tamper`: the host's MAK of the current generation stops matching the terminal's."""
        with self.transaction() as c:
            self._require(tid)
            row = c.execute(
                "SELECT generation FROM keys WHERE tid=? AND usage='MAK' AND state=? "
                "ORDER BY generation DESC LIMIT 1",
                (tid, ACTIVE),
            ).fetchone()
            if row is None:
                raise KeyDbError(f"terminal {tid} has no active working keys to tamper with")
            c.execute(
                "UPDATE keys SET block=?, kcv=? WHERE tid=? AND usage='MAK' AND generation=?",
                (seal(self.vault.lmk, "MAK", mak, self.rng), mak.kcv_hex, tid, row[0]),
            )
            return row[0]

    # --- the LMK's lifecycle and backups -----------------------------------------------------------

    def reseal(self, new: Vault, meta: Mapping[str, str]) -> int:
        """`lmk rotate`: every stored key, and the root of the derived keys, sealed again under
        `new`'s LMK, with its check value, in one transaction: a kill at any point leaves the
        old set or the new one. The number of keys re-sealed."""
        with self.transaction() as c:
            rows = c.execute("SELECT rowid, usage, block FROM keys").fetchall()
            for rowid, usage, block in rows:
                key = unseal(self.vault.lmk, usage, block)
                c.execute("UPDATE keys SET block=? WHERE rowid=?",
                          (seal(new.lmk, usage, key, self.rng), rowid))
            c.execute("INSERT OR REPLACE INTO meta VALUES ('lmk_kcv', ?)", (new.check_value,))
            c.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                          {**meta, **_root_meta(new, self.rng)}.items())
        self.vault = new
        return len(rows)

    def snapshot(self) -> bytes:
        """The whole database as one consistent image, taken with SQLite's online backup while
        a host may be serving from it (its commits wait for no more than a page step)."""
        copy = sqlite3.connect(":memory:")
        try:
            self.conn.backup(copy)
            return copy.serialize()
        finally:
            copy.close()

    # --- cards -----------------------------------------------------------------------------------

    def add_card(self, card: Card) -> None:
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM cards WHERE pan_ref=?", (card.pan_ref,)).fetchone():
                raise KeyDbError(f"card {card.pan_masked} already exists")
            c.execute(
                "INSERT INTO cards VALUES (?, ?, ?, ?, ?, ?)",
                (card.pan_ref, card.pan_masked, card.expiry, card.pvv, card.balance,
                 card.currency),
            )

    def cards(self) -> list[Card]:
        rows = self.conn.execute(
            "SELECT pan_ref, pan_masked, expiry, pvv, balance, currency FROM cards "
            "ORDER BY pan_masked"
        )
        return [Card(*r) for r in rows]

    # --- the handlers' lookups (HostView, together with a cache of TerminalKeys) -----------------

    def card(self, pan_ref: str) -> Card | None:
        row = self.conn.execute(self._card_sql, (pan_ref,)).fetchone()
        return Card(*row) if row else None

    def stans(self, number: int, batch: str) -> set[str]:
        """The STANs already answered (and remembered) in one batch of one terminal."""
        rows = self.conn.execute("SELECT ref FROM txns WHERE ref BETWEEN ? AND ?",
                                 _ref_range(number, batch))
        return {f"{ref & ((1 << STAN_BITS) - 1):06d}" for ref, in rows}

    def prior(self, number: int, batch: str, stan: str) -> Prior | None:
        row = self.conn.execute("SELECT request_ref, response FROM txns WHERE ref=?",
                                (txn_ref(number, batch, stan),)).fetchone()
        return Prior(row[0], row[1]) if row else None

    # --- applying a handler's changes ------------------------------------------------------------

    def apply(self, changes: list[Change]) -> None:
        """Apply changes in the caller's transaction: key changes one by one, in order, the
        transactions as one `executemany` and the debits as one update per card (a batch of
        purchases costs two statements, not two per purchase)."""
        c = self.conn
        records = []
        debits: dict[str, int] = {}
        for change in changes:
            kind = type(change)
            if kind is Purchased:
                records.append((txn_ref(change.terminal, change.batch, change.stan),
                                change.request_ref, change.response))
                if change.debit:
                    debits[change.pan_ref] = debits.get(change.pan_ref, 0) + change.debit
            elif kind is IssueWorkingKeys:
                self._issue(change.tid, change.working)
            elif kind is RevokeWorkingKeys:
                self._set_working_state(change.tid, REVOKED)
            else:
                raise TypeError(f"unknown change {kind.__name__}")
        if records:
            c.executemany("INSERT INTO txns VALUES (?, ?, ?)", records)
        if debits:  # one update per card, however many purchases it made in the batch
            c.executemany("UPDATE cards SET balance = balance - ? WHERE pan_ref=?",
                          [(amount, ref) for ref, amount in debits.items()])

    # --- helpers ---------------------------------------------------------------------------------

    def _require(self, tid: str) -> int:
        """The terminal's number; an unknown terminal is refused."""
        row = self.conn.execute("SELECT number FROM terminals WHERE tid=?", (tid,)).fetchone()
        if row is None:
            raise KeyDbError(f"no terminal {tid}")
        return row[0]

    def _insert_key(
        self, tid: str, usage: str, key: Key, gen: int, key_set: str | None, now: float,
        lifetime: float,
    ) -> None:
        self.conn.execute(
            "INSERT INTO keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (tid, usage, gen, key_set, seal(self.vault.lmk, usage, key, self.rng), key.kcv_hex, now,
             lifetime, ACTIVE),
        )

    def _issue(self, tid: str, working: WorkingSet) -> None:
        self.conn.execute(
            "UPDATE keys SET state=? WHERE tid=? AND usage != 'TMK' AND state=?",
            (RETIRED, tid, ACTIVE),
        )
        keys: Mapping[str, Key | None] = {"PIK": working.pik, "MAK": working.mak,
                                          "TDK": working.tdk}
        for usage, key in keys.items():
            if key is not None:
                self._insert_key(tid, usage, key, working.generation, working.key_set,
                                 working.created, working.lifetime)

    def _set_working_state(self, tid: str, state: str) -> int:
        return self.conn.execute(
            "UPDATE keys SET state=? WHERE tid=? AND usage != 'TMK' AND state=?",
            (state, tid, ACTIVE),
        ).rowcount

"""The host's SQLite database: terminals, every key generation (as TR-31 blocks), cards, and the
requests already answered.

Durability: WAL with `synchronous=FULL`: a commit is atomic and returns only once the WAL is
fsynced (fdatasync), so a commit the host has answered survives a crash of the process, of the
OS and a power cut, as far as the disk honours the flush (docs/host.md, Durability). A serving
host may choose `normal` (`serve --sync normal`), which skips that fsync.

Concurrency: one writer at a time (SQLite's lock, `busy_timeout` for the CLI waiting on a
serving host). The serving host notices the CLI's commits through `PRAGMA data_version`, which
changes exactly when another connection committed, and then drops its cache of unwrapped keys.
"""

from __future__ import annotations

import hmac
import json
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from host import audit
from host.access import HOST, Actor, lab_actor
from host.hsm import open_keys, seal, unseal
from host.lmk import Lmk, LmkError, Vault
from host.operators import Operator, row_mac
from host.state import (
    ACTIVE,
    RETIRED,
    REVOKED,
    Answered,
    BatchState,
    BatchTotals,
    Card,
    Change,
    HeldKey,
    IssueWorkingKeys,
    KeyErrorSeen,
    Original,
    Prior,
    Reversed,
    RevokeWorkingKeys,
    Sealed,
    SealedTerminal,
    Settled,
    TerminalKeys,
    TxnRecord,
    Uploaded,
    UploadedRecord,
    WorkingSet,
)
from protocol.clock import Clock, Rng, system_clock
from protocol.crypto import CryptoError, Key

TXN_COLUMNS = (
    "mti TEXT NOT NULL DEFAULT '0200'",  # duplicates are matched within one MTI (PROTOCOL.md §7)
    "kind TEXT",  # purchase, inquiry, void, refund; NULL in a row remembered before version 4
    "rc TEXT",  # field 39 answered
    "pan_ref TEXT",  # the card (cards.pan_ref); NULL for a 56
    "amount INTEGER NOT NULL DEFAULT 0",  # field 4, minor units
    "rrn TEXT NOT NULL DEFAULT ''",  # fields 37, 38 and 13 of the response
    "auth TEXT NOT NULL DEFAULT ''",
    "date TEXT NOT NULL DEFAULT ''",
    "original INTEGER",  # ref of the purchase a void or refund names
    "reversed INTEGER NOT NULL DEFAULT 0",  # 1 once a 0400 undid it
)
"""Version 4's columns of `txns`, added in place to a version 3 table (`_upgrade`)."""
TXN_INSERT = ("INSERT INTO txns (ref, request_ref, response, mti, kind, rc, pan_ref, amount, rrn, "
              "auth, date, original) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
BATCH_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (  -- a batch the terminal settled (0500 answered)
    terminal  INTEGER NOT NULL,       -- terminals.number
    batch     TEXT NOT NULL,
    balanced  INTEGER NOT NULL,       -- both halves of field 48 agreed
    closed    INTEGER NOT NULL,       -- balanced, or its batch upload ended
    reported  TEXT NOT NULL,          -- field 48 as the terminal sent it
    host      TEXT NOT NULL,          -- the host's own totals, as field 48
    settled   REAL NOT NULL,
    PRIMARY KEY (terminal, batch)
);
CREATE TABLE IF NOT EXISTS uploads (  -- what the terminal reported in its batch upload
    terminal   INTEGER NOT NULL,
    batch      TEXT NOT NULL,
    stan       TEXT NOT NULL,         -- the transaction's STAN, as the record gives it
    type_code  TEXT NOT NULL,         -- its 60.1
    pan_ref    TEXT NOT NULL,
    pan_masked TEXT NOT NULL,
    amount     INTEGER NOT NULL,
    PRIMARY KEY (terminal, batch, type_code, stan)
);
"""
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
    response    BLOB NOT NULL,       -- the response sent, sent again to a retransmission
    """ + ",\n    ".join(TXN_COLUMNS) + """
);
CREATE INDEX IF NOT EXISTS txns_original ON txns (original) WHERE original IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS txns_ref_mti ON txns (ref, mti);
""" + BATCH_SCHEMA
META_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (    -- facts about the database itself
    name  TEXT PRIMARY KEY,          -- 'lmk_kcv': the LMK's check value (host.lmk.check_value)
    value TEXT NOT NULL
);
"""
AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS operators (  -- who may run key commands (host.access), from version 5
    name       TEXT PRIMARY KEY,
    role       TEXT NOT NULL,
    credential TEXT NOT NULL,          -- scrypt$LOG2N$R$P$SALT$HASH (host.operators)
    created    REAL NOT NULL,
    mac        TEXT NOT NULL           -- over name, role and credential, under the audit key
);
CREATE TABLE IF NOT EXISTS audit (      -- the chained audit trail (host.audit), from version 5
    seq        INTEGER PRIMARY KEY,    -- the entry's number, 1, 2, 3...
    at         REAL NOT NULL,
    event      TEXT NOT NULL,
    operator   TEXT NOT NULL,
    tid        TEXT,
    generation INTEGER,
    detail     TEXT NOT NULL,          -- JSON: command, second custodian, fault, reason
    mac        TEXT NOT NULL           -- HMAC-SHA256 over this entry and the previous MAC
);
CREATE INDEX IF NOT EXISTS audit_tid ON audit (tid, event);
"""
SCHEMA_VERSION = 5
"""`PRAGMA user_version` of a database this code made; another one is refused, not guessed at."""
UPGRADES_FROM = 2
"""The oldest version opened, and upgraded in place, version by version (`_upgrade`)."""
APPLICATION_ID = 0x504F5348
"""`PRAGMA application_id` ("POSH"), set from version 3 on: another SQLite file is refused."""
_TABLES = frozenset({"terminals", "keys", "cards", "txns"})
_V4 = _TABLES | {"meta", "batches", "uploads"}
TABLES = {2: _TABLES, 3: _TABLES | {"meta"}, 4: _V4, SCHEMA_VERSION: _V4 | {"operators", "audit"}}
ACCESS_CONTROL = "access_control"
"""The meta row that is 'on' when the host is in access-control mode (absent: lab mode)."""
AUDIT_HEAD = "audit_head"
"""The meta row of the audit trail's head (host.audit.head_value)."""

SYNC_MODES = {"full": "FULL", "normal": "NORMAL"}
"""`PRAGMA synchronous` settings a serving host may run with (docs/host.md, Durability)."""

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
class BatchRow:
    """A transaction as `batch show` lists it: the card masked, its state derived."""

    stan: str
    mti: str
    kind: str | None
    rc: str | None
    pan_masked: str | None
    amount: int
    rrn: str
    auth: str
    original: str | None  # "batch/STAN" a void or refund names
    reversed: bool
    voided: bool
    refunded: int

    @property
    def state(self) -> str:
        if self.rc != "00":
            return "declined" if self.rc else "answered"
        if self.reversed:
            return "reversed"
        if self.voided:
            return "voided"
        if self.refunded:
            return "refunded"
        return "approved"


@dataclass(frozen=True, slots=True)
class TerminalRow:
    tid: str
    merchant: str
    created: float


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # WAL: the commit returns once fsynced
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
    if version < UPGRADES_FROM:
        raise KeyDbError(f"{path} is a version {version} host database; this posemu reads "
                         f"version {SCHEMA_VERSION}: make a new one with `pos-host init`")
    missing = TABLES[version] - tables
    if missing:
        raise KeyDbError(f"{path} is not a host database (no table {', '.join(sorted(missing))})")
    if version > UPGRADES_FROM and (application_id != APPLICATION_ID or kcv_row is None):
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
        conn.executescript(SCHEMA + META_SCHEMA + AUDIT_SCHEMA)
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


def _stamp(conn: sqlite3.Connection, vault: Vault, meta: Mapping[str, str] | None = None,
           begin: bool = True) -> None:
    if begin:
        conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('lmk_kcv', ?)", (vault.check_value,))
    conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", (meta or {}).items())
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    conn.execute("COMMIT")


def _upgrade(conn: sqlite3.Connection, path: Path, vault: Vault, version: int) -> None:
    """Version 2 -> 3: the check value is computed once every stored key opens under this LMK
    (the proof that it is the right one); if any does not, nothing is written. Version 3 -> 4:
    what each remembered transaction was (`TXN_COLUMNS`; rows from before stay kind NULL,
    which no void, refund or settlement counts), duplicates per MTI, and the batch tables.
    Version 4 -> 5: the operators and audit tables, empty (the host stays in lab mode).
    One transaction: a failure leaves the database as it was."""
    if version < 3:
        for usage, block in conn.execute("SELECT usage, block FROM keys"):
            try:
                unseal(vault.lmk, usage, block)
            except (CryptoError, ValueError):
                raise LmkError(f"the LMK file does not open the keys in {path} (a version "
                               f"{version} database, upgraded only under its own LMK): "
                               f"wrong lmk.key?") from None
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in (META_SCHEMA + BATCH_SCHEMA + AUDIT_SCHEMA).split(";"):
            if statement.strip():
                conn.execute(statement)
        present = {row[1] for row in conn.execute("PRAGMA table_info(txns)")}
        for column in TXN_COLUMNS:
            if column.split()[0] not in present:
                conn.execute(f"ALTER TABLE txns ADD COLUMN {column}")
        conn.execute("DROP INDEX IF EXISTS txns_ref")
        conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS txns_ref_mti ON txns (ref, mti)")
        conn.execute("CREATE INDEX IF NOT EXISTS txns_original ON txns (original) "
                     "WHERE original IS NOT NULL")
        _stamp(conn, vault, begin=False)
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class KeyDb:
    """All SQL lives here; callers hold keys, cards and changes as values."""

    def __init__(self, path: Path, vault: Vault, rng: Rng, clock: Clock = system_clock) -> None:
        self.path = path
        self.rng = rng  # TR-31 padding
        self.clock = clock  # the time of an audit entry made without an Actor
        self.actor: Actor | None = None  # who runs the operator commands (host.access)
        found = inspect(path)
        check_lmk(path, found, vault)
        self.vault = open_root(vault.lmk, found.meta) if "root" in found.meta else vault
        self.meta = found.meta
        self.conn = connect(path)
        if found.version < SCHEMA_VERSION:
            try:
                _upgrade(self.conn, path, vault, found.version)
            except BaseException:
                self.conn.close()
                raise
        self._card_sql = (
            "SELECT pan_ref, pan_masked, expiry, pvv, balance, currency FROM cards WHERE pan_ref=?"
        )

    def close(self) -> None:
        self.conn.close()

    def set_synchronous(self, mode: str) -> None:
        """`full` (the default of every connection) or `normal` (no fsync at commit)."""
        self.conn.execute(f"PRAGMA synchronous={SYNC_MODES[mode]}")

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
            self._audit("ceremony", tid, 1, {"key": "TMK", "kcv": tmk.kcv_hex, "merchant": merchant})

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
            self._audit("ceremony", tid, gen, {"key": "TMK", "kcv": tmk.kcv_hex})
            return gen

    def remove_terminal(self, tid: str) -> None:
        with self.transaction() as c:
            number = self._require(tid)
            c.execute("DELETE FROM keys WHERE tid=?", (tid,))
            c.execute("DELETE FROM txns WHERE ref BETWEEN ? AND ?", _ref_range(number))
            c.execute("DELETE FROM batches WHERE terminal=?", (number,))
            c.execute("DELETE FROM uploads WHERE terminal=?", (number,))
            c.execute("DELETE FROM terminals WHERE tid=?", (tid,))
            self._audit("terminal removed", tid)

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

    def terminal_number(self, tid: str) -> int:
        """The terminal's permanent number (what its transactions are keyed by)."""
        return self._require(tid)

    def key_rows(self, tid: str) -> list[KeyRow]:
        self._require(tid)
        rows = self.conn.execute(
            "SELECT usage, generation, key_set, kcv, created, lifetime, state FROM keys "
            "WHERE tid=? ORDER BY usage = 'TMK' DESC, generation DESC, usage",
            (tid,),
        )
        return [KeyRow(*r) for r in rows]

    def fleet_key_rows(self) -> dict[str, list[KeyRow]]:
        """Every terminal's keys as `key_rows` lists them, in one query (schedules, reports)."""
        fleet: dict[str, list[KeyRow]] = {t.tid: [] for t in self.terminals()}
        rows = self.conn.execute(
            "SELECT tid, usage, generation, key_set, kcv, created, lifetime, state FROM keys "
            "ORDER BY tid, usage = 'TMK' DESC, generation DESC, usage")
        for tid, *row in rows:
            fleet.setdefault(tid, []).append(KeyRow(*row))
        return fleet

    def load_sealed(self, tid: str) -> SealedTerminal | None:
        """The terminal's key state as stored: every key still sealed, for the security module
        to open inside `admit` (nothing here unseals what a serving host uses)."""
        row = self.conn.execute("SELECT merchant, number FROM terminals WHERE tid=?",
                                (tid,)).fetchone()
        if row is None:
            return None
        rows = self.conn.execute(
            "SELECT usage, generation, key_set, block, created, lifetime, state FROM keys "
            "WHERE tid=? ORDER BY generation DESC",
            (tid,),
        ).fetchall()
        tmk: HeldKey[Sealed] | None = None
        generations: dict[int, dict[str, tuple]] = {}
        for usage, gen, key_set, block, created, lifetime, state in rows:
            if usage == "TMK":
                if tmk is None:
                    tmk = HeldKey("TMK", gen, block, created, lifetime, state)
            else:
                generations.setdefault(gen, {})[usage] = (key_set, block, created, lifetime, state)
        working = []
        for gen in sorted(generations, reverse=True)[:GENERATIONS_CHECKED]:
            parts = generations[gen]
            key_set, _, created, lifetime, state = parts["MAK"]
            blocks = {u: p[1] for u, p in parts.items()}
            working.append(
                WorkingSet(gen, key_set, state, created, lifetime,
                           blocks["PIK"], blocks["MAK"], blocks.get("TDK"))
            )
        return TerminalKeys(tid, row[0], tmk, tuple(working), row[1])

    def load_terminal(self, tid: str) -> TerminalKeys[Key] | None:
        """The terminal's key state opened in the clear (host.hsm.open_keys): for an operator's
        tools, which shape new keys on the old; a serving host admits `load_sealed` instead."""
        sealed = self.load_sealed(tid)
        return None if sealed is None else open_keys(self.vault.lmk, sealed)

    # --- operator actions on keys ----------------------------------------------------------------

    def rotate(self, tid: str, working: WorkingSet) -> None:
        with self.transaction():
            self._require(tid)
            self._issue(tid, working)
            self._audit("rotated", tid, working.generation, {"key": "WK"})

    def revoke_working(self, tid: str) -> int:
        with self.transaction():
            self._require(tid)
            count = self._set_working_state(tid, REVOKED)
            self._audit("revoked", tid, None, {"key": "WK", "keys": count})
            return count

    def revoke_tmk(self, tid: str) -> None:
        with self.transaction() as c:
            self._require(tid)
            c.execute("UPDATE keys SET state=? WHERE tid=? AND usage='TMK'", (REVOKED, tid))
            self._set_working_state(tid, REVOKED)
            self._audit("revoked", tid, None, {"key": "TMK"})

    def expire_working(self, tid: str, now: float) -> int:
        """Cut the active working keys' lifetime short so that they are stale from `now` on."""
        with self.transaction() as c:
            self._require(tid)
            count = c.execute(
                "UPDATE keys SET lifetime=MAX(0, ? - created) "
                "WHERE tid=? AND usage != 'TMK' AND state=?",
                (now, tid, ACTIVE),
            ).rowcount
            if count:
                self._audit("expired", tid, None, {"key": "WK", "expires": round(now, 1)})
            return count

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
            self._audit("tampered", tid, row[0], {"key": "MAK"})
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
            self._audit("lmk rotated", None, None, {"old_lmk_kcv": self.vault.check_value,
                                                    "lmk_kcv": new.check_value,
                                                    "keys": len(rows)})
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
            self._audit("card added", None, None, {"pan": card.pan_masked})

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

    def last_stan(self, number: int, batch: str) -> int:
        """The highest STAN remembered in one batch of one terminal (-1: none), from the
        index alone."""
        ref = self.conn.execute("SELECT MAX(ref) FROM txns WHERE ref BETWEEN ? AND ?",
                                _ref_range(number, batch)).fetchone()[0]
        return -1 if ref is None else ref & ((1 << STAN_BITS) - 1)

    def prior(self, number: int, batch: str, stan: str, mti: str = "0200") -> Prior | None:
        row = self.conn.execute("SELECT request_ref, response FROM txns WHERE ref=? AND mti=?",
                                (txn_ref(number, batch, stan), mti)).fetchone()
        return Prior(row[0], row[1]) if row else None

    def original(self, number: int, batch: str, stan: str) -> Original | None:
        """The 0200 at (terminal, batch, STAN) and what stands against it: an approved void not
        reversed, the refunds approved, and whether its batch is settled."""
        ref = txn_ref(number, batch, stan)
        row = self.conn.execute(
            "SELECT ref, kind, rc, pan_ref, amount, rrn, auth, date, reversed FROM txns "
            "WHERE ref=? AND mti='0200'", (ref,)).fetchone()
        if row is None:
            return None
        voided, refunded = self.conn.execute(
            "SELECT COALESCE(SUM(kind='void' AND NOT reversed), 0), "
            "COALESCE(SUM(CASE WHEN kind='refund' THEN amount ELSE 0 END), 0) "
            "FROM txns WHERE original=? AND rc='00'", (ref,)).fetchone()
        return Original(TxnRecord(*row[:8], bool(row[8])), bool(voided), refunded,
                        self.batch_state(number, batch).settled)

    def batch_state(self, number: int, batch: str) -> BatchState:
        row = self.conn.execute("SELECT closed FROM batches WHERE terminal=? AND batch=?",
                                (number, batch)).fetchone()
        return BatchState() if row is None else BatchState(True, bool(row[0]))

    def batch_totals(self, number: int, batch: str) -> BatchTotals:
        """PROTOCOL.md §7: debits are the batch's approved purchases (voided ones included),
        credits its approved voids and refunds; reversed transactions count in neither."""
        row = self.conn.execute(
            "SELECT COALESCE(SUM(CASE WHEN kind='purchase' THEN amount END), 0), "
            "COUNT(CASE WHEN kind='purchase' THEN 1 END), "
            "COALESCE(SUM(CASE WHEN kind IN ('void', 'refund') THEN amount END), 0), "
            "COUNT(CASE WHEN kind IN ('void', 'refund') THEN 1 END) "
            "FROM txns WHERE ref BETWEEN ? AND ? AND rc='00' AND NOT reversed",
            _ref_range(number, batch)).fetchone()
        return BatchTotals(*row)

    # --- what an operator sees of a batch and a card (pos-host batch show, card show) -----------

    def batches(self, tid: str) -> list[str]:
        """The batches a terminal has transactions or a settlement in, oldest first."""
        number = self._require(tid)
        first, last = _ref_range(number)
        refs = self.conn.execute("SELECT DISTINCT ref >> ? FROM txns WHERE ref BETWEEN ? AND ?",
                                 (STAN_BITS, first, last))
        found = {f"{b & ((1 << BATCH_BITS) - 1):06d}" for b, in refs}
        found |= {b for b, in self.conn.execute("SELECT batch FROM batches WHERE terminal=?",
                                                (number,))}
        return sorted(found)

    def batch_rows(self, tid: str, batch: str) -> list[BatchRow]:
        """Every remembered transaction of one batch with the card masked, in STAN order."""
        number = self._require(tid)
        rows = self.conn.execute(
            "SELECT t.ref, t.mti, t.kind, t.rc, c.pan_masked, t.amount, t.rrn, t.auth, "
            "t.original, t.reversed, "
            "(SELECT COUNT(*) FROM txns v WHERE v.original = t.ref AND v.kind='void' "
            " AND v.rc='00' AND NOT v.reversed), "
            "(SELECT COALESCE(SUM(r.amount), 0) FROM txns r WHERE r.original = t.ref "
            " AND r.kind='refund' AND r.rc='00') "
            "FROM txns t LEFT JOIN cards c ON c.pan_ref = t.pan_ref "
            "WHERE t.ref BETWEEN ? AND ? ORDER BY t.ref, t.mti", _ref_range(number, batch))
        mask = (1 << STAN_BITS) - 1
        return [BatchRow(f"{ref & mask:06d}", mti, kind, rc, masked, amount, rrn, auth,
                         None if orig is None else f"{orig >> STAN_BITS & ((1 << BATCH_BITS) - 1):06d}"
                         f"/{orig & mask:06d}", bool(rev), bool(voided), refunded)
                for ref, mti, kind, rc, masked, amount, rrn, auth, orig, rev, voided, refunded
                in rows]

    def settlement(self, tid: str, batch: str) -> tuple[BatchState, str | None, str | None]:
        """The batch's state and, once settled, field 48 as reported and as the host saw it."""
        number = self._require(tid)
        row = self.conn.execute("SELECT closed, reported, host FROM batches "
                                "WHERE terminal=? AND batch=?", (number, batch)).fetchone()
        if row is None:
            return BatchState(), None, None
        return BatchState(True, bool(row[0])), row[1], row[2]

    def uploads(self, tid: str, batch: str) -> list[UploadedRecord]:
        number = self._require(tid)
        rows = self.conn.execute("SELECT type_code, stan, pan_ref, pan_masked, amount FROM uploads "
                                 "WHERE terminal=? AND batch=? ORDER BY stan", (number, batch))
        return [UploadedRecord(*r) for r in rows]

    # --- applying a handler's changes ------------------------------------------------------------

    def apply(self, changes: list[Change]) -> None:
        """Apply changes in the caller's transaction: key changes one by one, in order, the
        transactions as one `executemany` and the balance changes as one update per card (a
        batch of purchases costs two statements, not two per purchase)."""
        c = self.conn
        records = []
        debits: dict[str, int] = {}
        for change in changes:
            kind = type(change)
            if kind is Answered:
                records.append((txn_ref(change.terminal, change.batch, change.stan),
                                change.request_ref, change.response, change.mti, change.kind,
                                change.rc, change.pan_ref, change.amount, change.rrn,
                                change.auth, change.date, change.original))
                if change.debit:
                    debits[change.pan_ref] = debits.get(change.pan_ref, 0) + change.debit
            elif kind is Reversed:
                c.execute("UPDATE txns SET reversed=1 WHERE ref=? AND mti='0200'", (change.ref,))
                debits[change.pan_ref] = debits.get(change.pan_ref, 0) + change.debit
            elif kind is Settled:
                c.execute(
                    "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (terminal, batch) DO UPDATE SET balanced=excluded.balanced, "
                    "closed=MAX(closed, excluded.closed), reported=excluded.reported, "
                    "host=excluded.host, settled=excluded.settled",
                    (change.terminal, change.batch, change.balanced, change.balanced,
                     change.reported, change.host, change.at))
            elif kind is Uploaded:
                c.executemany("INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?)",
                              [(change.terminal, change.batch, r.stan, r.type_code, r.pan_ref,
                                r.pan_masked, r.amount) for r in change.records])
                if change.last:
                    c.execute("UPDATE batches SET closed=1 WHERE terminal=? AND batch=?",
                              (change.terminal, change.batch))
            elif kind is IssueWorkingKeys:  # a sign-on: rare beside purchases, audited
                self._issue(change.tid, change.working)
                self._audit("issued", change.tid, change.working.generation,
                            {"key_set": change.working.key_set}, HOST, change.working.created)
            elif kind is RevokeWorkingKeys:
                self._set_working_state(change.tid, REVOKED)
                self._audit("revoked", change.tid, None, {"key": "WK", "by": "terminal"}, HOST)
            elif kind is KeyErrorSeen:
                self._key_error_seen(change)
            else:
                raise TypeError(f"unknown change {kind.__name__}")
        if records:
            c.executemany(TXN_INSERT, records)
        if debits:  # one update per card, however many purchases it made in the batch
            c.executemany("UPDATE cards SET balance = balance - ? WHERE pan_ref=?",
                          [(amount, ref) for ref, amount in debits.items() if amount])

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

    # --- operators, access control and the audit trail (host.access, host.audit) ---------------

    def access_control(self) -> bool:
        row = self.conn.execute("SELECT value FROM meta WHERE name=?", (ACCESS_CONTROL,)).fetchone()
        return row is not None and row[0] == "on"

    def set_access_control(self, on: bool) -> None:
        with self.transaction() as c:
            if on and not c.execute("SELECT 1 FROM operators WHERE role='administrator'").fetchone():
                raise KeyDbError("access control needs an administrator first (operator add)")
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                      (ACCESS_CONTROL, "on" if on else "off"))
            self._audit("access on" if on else "access off")

    def operator(self, name: str) -> Operator | None:
        """The operator of that name, if its row's MAC holds (an edited row is no operator)."""
        row = self.conn.execute("SELECT name, role, credential, created, mac FROM operators "
                                "WHERE name=?", (name,)).fetchone()
        if row is None or not hmac.compare_digest(
                row[4], row_mac(self.vault.audit_key, row[0], row[1], row[2])):
            return None
        return Operator(*row[:4])

    def operators(self) -> list[Operator]:
        rows = self.conn.execute("SELECT name, role, credential, created FROM operators "
                                 "ORDER BY name")
        return [Operator(*r) for r in rows]

    def add_operator(self, operator: Operator) -> None:
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM operators WHERE name=?", (operator.name,)).fetchone():
                raise KeyDbError(f"operator {operator.name} already exists")
            c.execute("INSERT INTO operators VALUES (?, ?, ?, ?, ?)",
                      (operator.name, operator.role, operator.credential, operator.created,
                       row_mac(self.vault.audit_key, operator.name, operator.role,
                               operator.credential)))
            self._audit("operator added", None, None, {"name": operator.name,
                                                       "role": operator.role})

    def remove_operator(self, name: str) -> None:
        with self.transaction() as c:
            row = c.execute("SELECT role FROM operators WHERE name=?", (name,)).fetchone()
            if row is None:
                raise KeyDbError(f"no operator {name}")
            admins = c.execute("SELECT COUNT(*) FROM operators WHERE role='administrator'"
                               ).fetchone()[0]
            if row[0] == "administrator" and admins == 1 and self.access_control():
                raise KeyDbError(f"{name} is the last administrator of a host under access "
                                 f"control: add another first")
            c.execute("DELETE FROM operators WHERE name=?", (name,))
            self._audit("operator removed", None, None, {"name": name})

    def set_credential(self, name: str, credential: str) -> None:
        with self.transaction() as c:
            row = c.execute("SELECT role FROM operators WHERE name=?", (name,)).fetchone()
            if row is None:
                raise KeyDbError(f"no operator {name}")
            c.execute("UPDATE operators SET credential=?, mac=? WHERE name=?",
                      (credential, row_mac(self.vault.audit_key, name, row[0], credential), name))
            self._audit("password changed", None, None, {"name": name})

    def record(self, event: str, tid: str | None = None, detail: Mapping[str, object] | None = None,
               operator: str | None = None) -> None:
        """An event that changes nothing else (a login, a refusal, a backup), in its own
        transaction."""
        with self.transaction():
            self._audit(event, tid, None, detail or {}, operator)

    def audit_entries(self) -> list[tuple[audit.Entry, bytes]]:
        """Every entry with its MAC, in stored order (`audit verify` walks them)."""
        rows = self.conn.execute("SELECT seq, at, event, operator, tid, generation, detail, mac "
                                 "FROM audit ORDER BY seq")
        return [(audit.Entry(seq, at, event, operator, tid, generation, _detail(detail)),
                 _unhex(mac)) for seq, at, event, operator, tid, generation, detail, mac in rows]

    def audit_head(self) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE name=?", (AUDIT_HEAD,)).fetchone()
        return None if row is None else row[0]

    def _key_error_seen(self, change: KeyErrorSeen) -> None:
        """One entry per generation (`kcv refused`: the one the terminal did not take;
        `expired`: the one it used past its life), however many 14s the terminal meets."""
        c = self.conn
        event = audit.KEY_ERROR_EVENTS[change.reason]
        current = c.execute("SELECT MAX(generation) FROM keys WHERE tid=? AND usage='MAK'",
                            (change.tid,)).fetchone()[0]
        last = c.execute("SELECT generation FROM audit WHERE tid=? AND event=? "
                         "ORDER BY seq DESC LIMIT 1", (change.tid, event)).fetchone()
        if current is not None and (last is None or last[0] != current):
            self._audit(event, change.tid, current, {"reason": change.reason}, HOST)

    def _audit(self, event: str, tid: str | None = None, generation: int | None = None,
               detail: Mapping[str, object] | None = None, operator: str | None = None,
               at: float | None = None) -> None:
        """Append one entry in the caller's transaction, chained from the head (host.audit)."""
        actor = self.actor or lab_actor("", self.clock())
        key = self.vault.audit_key
        last, previous = audit.parse_head(self.audit_head())
        shown = {} if operator == HOST else actor.detail()
        if not shown.get("command"):
            shown.pop("command", None)
        entry = audit.Entry(last + 1, actor.at if at is None else at, event,
                            operator or actor.operator, tid, generation, {**shown, **(detail or {})})
        mac = audit.entry_mac(key, previous, entry)
        self.conn.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                          (entry.seq, entry.at, entry.event, entry.operator, entry.tid,
                           entry.generation, json.dumps(dict(entry.detail), sort_keys=True),
                           mac.hex()))
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                          (AUDIT_HEAD, audit.head_value(key, entry.seq, mac)))


def _detail(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except ValueError:
        return {"unreadable": text[:40]}
    return value if isinstance(value, dict) else {"unreadable": str(value)[:40]}


def _unhex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except (TypeError, ValueError):
        return b""

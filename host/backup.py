"""One-file backups of the key database, and the restore test that proves each one opens.

A backup is `MAGIC`, one JSON header line (format, the LMK's check value, the image's size, the
token it needs if any: nothing secret), the database image taken with SQLite's online backup, and
an HMAC-SHA256 of all that under a key derived from the LMK (`Vault.backup_key`). Keys stay
sealed as the database holds them; card PANs are keyed references, PINs keyed values: the file
holds nothing in clear that the database does not (docs/host.md, Backups). Only a host with the
same LMK can verify it or restore from it.
"""

from __future__ import annotations

import hmac
import json
import os
import sqlite3
from dataclasses import asdict
from pathlib import Path
from typing import Any

from host.hsm import unseal
from host.keydb import KeyDb, open_root
from host.lmk import Lmk, lmk_check_value
from host.pkcs11 import TokenConfig
from protocol.crypto import CryptoError

MAGIC = b"posemu-backup-1\n"
FORMAT = "posemu-backup-1"
MAC_SIZE = 32
MAX_HEADER = 4096
_COUNTED = ("terminals", "keys", "cards", "txns")


class BackupError(RuntimeError):
    """A backup that cannot be trusted: changed, truncated, not a backup, or of another LMK."""


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.digest(key, body, "sha256")


def _counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in _COUNTED}


def write_backup(db: KeyDb, out: Path, token: TokenConfig | None) -> dict[str, Any]:
    """The file is created (never over another), written whole and flushed to disk."""
    image = db.snapshot()
    header = {"format": FORMAT, "lmk_kcv": db.vault.check_value, "bytes": len(image),
              "hsm": None if token is None else asdict(token)}
    body = MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + image
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BackupError(f"--out {out} already exists: name a new file") from None
    with os.fdopen(fd, "wb") as f:
        f.write(body + _mac(db.vault.backup_key, body))
        f.flush()
        os.fsync(f.fileno())
    conn = _open_image(image)
    try:
        return {"backup": str(out), "bytes": len(body) + MAC_SIZE, "lmk_kcv": header["lmk_kcv"],
                **_counts(conn)}
    finally:
        conn.close()


def read_header(data: bytes) -> tuple[dict[str, Any], bytes, bytes, bytes]:
    """Header, image, the MACed body and the MAC; refuses what is not whole."""
    if not data.startswith(MAGIC):
        raise BackupError("not a posemu backup (no header)")
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER)
    if end < 0:
        raise BackupError("backup header damaged or truncated")
    try:
        header = json.loads(data[len(MAGIC):end])
        size = int(header["bytes"])
    except (ValueError, KeyError, TypeError):
        raise BackupError("backup header damaged") from None
    if header.get("format") != FORMAT:
        raise BackupError(f"backup format {header.get('format')!r}, not {FORMAT}")
    body_end = end + 1 + size
    if len(data) != body_end + MAC_SIZE:
        raise BackupError(f"backup truncated or extended: {len(data)} bytes, expected "
                          f"{body_end + MAC_SIZE}")
    return header, data[end + 1:body_end], data[:body_end], data[body_end:]


def _open_image(image: bytes) -> sqlite3.Connection:
    """The image as an in-memory database. Its header says WAL (bytes 18 and 19 = 2, SQLite
    file format §1.3.3), which a memory database cannot open; read as rollback-journal format
    (1) it is the same database."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.deserialize(image[:18] + b"\x01\x01" + image[20:] if len(image) > 20 else image)
    except sqlite3.Error as exc:
        conn.close()
        raise BackupError(f"the backup's database image does not open ({exc})") from None
    return conn


def verify_backup(data: bytes, lmk: Lmk) -> dict[str, Any]:
    """The restore test: MAC, every key unsealed and its check value compared, counts."""
    header, image, body, mac = read_header(data)
    if not hmac.compare_digest(str(header.get("lmk_kcv")), lmk_check_value(lmk)):
        raise BackupError(f"the backup was made under another LMK (check value "
                          f"{header.get('lmk_kcv')}, this host's {lmk_check_value(lmk)})")
    conn = _open_image(image)
    try:
        try:
            meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
            vault = open_root(lmk, meta)
        except (sqlite3.Error, CryptoError, ValueError):
            raise BackupError("the backup was changed: its MAC does not verify") from None
        if not hmac.compare_digest(_mac(vault.backup_key, body), mac):
            raise BackupError("the backup was changed: its MAC does not verify")
        if conn.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            raise BackupError("the backup's database fails SQLite's integrity check")
        opened = 0
        for tid, usage, generation, block, kcv in conn.execute(
                "SELECT tid, usage, generation, block, kcv FROM keys"):
            try:
                key = unseal(lmk, usage, block)
            except (CryptoError, ValueError):
                raise BackupError(f"key {usage} generation {generation} of terminal {tid} does "
                                  f"not open under the LMK") from None
            if not hmac.compare_digest(key.kcv_hex, kcv):
                raise BackupError(f"key {usage} generation {generation} of terminal {tid} has "
                                  f"check value {key.kcv_hex}, the database says {kcv}")
            opened += 1
        return {"verified": True, "lmk_kcv": header["lmk_kcv"], "keys_opened": opened,
                "hsm": header.get("hsm") is not None, **_counts(conn)}
    finally:
        conn.close()


def restore_image(image: bytes, db_path: Path) -> None:
    """The image written as the folder's new `host.db` (never over one): through a temporary
    file, flushed, then renamed, so a kill leaves no half database."""
    tmp = db_path.with_name(db_path.name + ".restoring")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(image)
        f.flush()
        os.fsync(f.fileno())
    if db_path.exists():
        tmp.unlink()
        raise BackupError(f"{db_path} exists: restore only into a folder without a host database")
    os.link(tmp, db_path)  # fails if one appeared meanwhile, unlike a rename
    tmp.unlink()

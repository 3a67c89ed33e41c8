"""Where the host keeps its LMK and database, and how a data folder comes to exist.

Layout: `lmk.key` (32 random bytes, mode 0600) and `host.db` (SQLite, WAL: `-wal` and `-shm`
beside it) in a folder of mode 0700. Nothing else is written there.
"""

from __future__ import annotations

import os
from pathlib import Path

from host.clock import Rng
from host.keydb import KeyDb, connect
from host.lmk import Vault, create_lmk, load_lmk

ENV_VAR = "POSEMU_HOST_DATA"
DEFAULT_DATA = Path(".posemu/host")
LMK_FILE = "lmk.key"
DB_FILE = "host.db"


class DataError(RuntimeError):
    """The data folder is missing or not a host's."""


def resolve(data: str | None) -> Path:
    """--data, else $POSEMU_HOST_DATA, else .posemu/host (relative to the working directory)."""
    return Path(data or os.environ.get(ENV_VAR) or DEFAULT_DATA)


def init_data(path: Path, rng: Rng) -> bool:
    """Create the folder, LMK and database; False (and nothing touched) if they exist."""
    lmk_path = path / LMK_FILE
    if lmk_path.exists():
        return False
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    create_lmk(lmk_path, rng)
    db_path = path / DB_FILE
    db_path.touch(mode=0o600)  # SQLite gives its -wal and -shm files the database's mode
    os.chmod(db_path, 0o600)
    connect(db_path).close()
    return True


def open_data(path: Path, rng: Rng) -> KeyDb:
    lmk_path = path / LMK_FILE
    if not lmk_path.exists():
        raise DataError(f"no host data in {path}: run `pos-host init --data {path}` first")
    return KeyDb(path / DB_FILE, Vault.from_lmk(load_lmk(lmk_path)), rng)

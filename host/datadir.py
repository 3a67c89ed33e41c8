"""Where the host keeps its LMK and database, and how a data folder comes to exist.

Layout: `lmk.key` (32 random bytes, mode 0600) and `host.db` (SQLite, WAL: `-wal` and `-shm`
beside it) in a folder of mode 0700. Nothing else is written there.

Only `init` makes a database (and `restore`, which brings one back). Every other command opens
what is there and refuses, in one line and before writing anything, a folder without its LMK or
database, an empty or foreign `host.db`, a newer schema, or an LMK that is not the one the
database was made under (docs/host.md, Data checks).
"""

from __future__ import annotations

import os
from pathlib import Path

from host.clock import Rng
from host.keydb import KeyDb, create
from host.lmk import Vault, create_lmk, load_lmk

ENV_VAR = "POSEMU_HOST_DATA"
DEFAULT_DATA = Path(".posemu/host")
LMK_FILE = "lmk.key"
DB_FILE = "host.db"


class DataError(RuntimeError):
    """The data folder is missing or not a host's."""


def resolve(data: str | None) -> Path:
    """--data, else $POSEMU_HOST_DATA, else .posemu/host (relative to the working directory).
    An empty --data is refused, not taken for the default."""
    if data is not None and (not data.strip() or "\0" in data):
        raise DataError(f"--data {data!r} is not a folder name")
    return Path(data or os.environ.get(ENV_VAR) or DEFAULT_DATA)


def init_data(path: Path, rng: Rng) -> None:
    """Create the folder, LMK and database; refuse (touching nothing) where a host, or any part
    of one, already is: `init` never replaces an LMK, whose loss loses every key."""
    lmk_path, db_path = path / LMK_FILE, path / DB_FILE
    present = [p.name for p in (lmk_path, db_path) if p.exists()]
    if present:
        raise DataError(f"a host already exists in {path} ({', '.join(present)}): "
                        f"`pos-host init` never replaces one")
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    made: list[Path] = []
    try:
        vault = Vault.from_lmk(create_lmk(lmk_path, rng))
        made.append(lmk_path)
        fd = os.open(db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)  # SQLite gives its -wal and -shm files the database's mode
        made.append(db_path)
        create(db_path, vault)
    except BaseException:
        for made_path in made:
            made_path.unlink(missing_ok=True)
        raise


def open_data(path: Path, rng: Rng) -> KeyDb:
    lmk_path, db_path = path / LMK_FILE, path / DB_FILE
    if not lmk_path.exists():
        if db_path.exists():
            raise DataError(f"{path} has a host database but no LMK file {LMK_FILE}: "
                            f"restore it (the keys cannot be opened without it)")
        raise DataError(f"no host data in {path}: run `pos-host init --data {path}` first")
    if not db_path.exists():
        raise DataError(f"no host database {db_path} beside the LMK: restore it; only "
                        f"`pos-host init` makes one (in a new folder)")
    if db_path.stat().st_size == 0:
        raise DataError(f"{db_path} is empty, not a host database: restore it; only "
                        f"`pos-host init` makes one (in a new folder)")
    return KeyDb(db_path, Vault.from_lmk(load_lmk(lmk_path)), rng)

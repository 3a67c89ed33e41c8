"""Where the host keeps its LMK and database, and how a data folder comes to exist.

Layout: `lmk.key` (32 random bytes, mode 0600), or `hsm.json` (the PKCS#11 token that holds
the LMK), and `host.db` (SQLite, WAL: `-wal` and `-shm` beside it) in a folder of mode 0700;
`lmk.key.new` only during `lmk rotate`. A serving host holds a shared flock on the folder itself.

Only `init` makes a database (and `restore`, which brings one back). Every other command opens
what is there and refuses, in one line and before writing anything, a folder without its LMK or
database, an empty or foreign `host.db`, a newer schema, or an LMK that is not the one the
database was made under (docs/host.md, Data checks).
"""

from __future__ import annotations

import fcntl
import hmac
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from host.keydb import KeyDb, create, inspect, open_root
from host.lmk import LMK_LENGTH, Lmk, LmkError, Vault, check_value, load_lmk, write_lmk
from host.pkcs11 import CONFIG_FILE, TokenConfig, TokenLmk, create_token_lmk, read_pin
from protocol.clock import Rng

ENV_VAR = "POSEMU_HOST_DATA"
DEFAULT_DATA = Path(".posemu/host")
LMK_FILE = "lmk.key"
NEW_LMK_FILE = "lmk.key.new"  # only while `lmk rotate` runs (or a kill interrupted it)
DB_FILE = "host.db"


class DataError(RuntimeError):
    """The data folder is missing or not a host's."""


def resolve(data: str | None) -> Path:
    """--data, else $POSEMU_HOST_DATA, else .posemu/host (relative to the working directory).
    An empty --data is refused, not taken for the default."""
    if data is not None and (not data.strip() or "\0" in data):
        raise DataError(f"--data {data!r} is not a folder name")
    return Path(data or os.environ.get(ENV_VAR) or DEFAULT_DATA)


def _refuse_existing(path: Path) -> None:
    present = [p.name for p in (path / LMK_FILE, path / DB_FILE, path / CONFIG_FILE) if p.exists()]
    if present:
        raise DataError(f"a host already exists in {path} ({', '.join(present)}): "
                        f"`pos-host init` never replaces one")


def make_folder(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def _new_db(db_path: Path, vault: Vault, rng: Rng, meta: dict[str, str] | None = None) -> None:
    fd = os.open(db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)  # SQLite gives its -wal and -shm files the database's mode
    create(db_path, vault, rng, meta)


def init_data(path: Path, rng: Rng, lmk: bytes | None = None) -> None:
    """Create the folder, LMK and database; refuse (touching nothing) where a host, or any part
    of one, already is: `init` never replaces an LMK, whose loss loses every key. `lmk`: one
    rebuilt from custodians' components (`init --lmk-components`), else a new random one."""
    lmk_path, db_path = path / LMK_FILE, path / DB_FILE
    _refuse_existing(path)
    make_folder(path)
    made: list[Path] = []
    try:
        vault = Vault.from_lmk(write_lmk(lmk_path, lmk if lmk is not None else rng(LMK_LENGTH)))
        made.append(lmk_path)
        _new_db(db_path, vault, rng)
        made.append(db_path)
    except BaseException:
        for made_path in made:
            made_path.unlink(missing_ok=True)
        raise


def init_token_data(path: Path, rng: Rng, config: TokenConfig, pin: str) -> TokenLmk:
    """`init --hsm pkcs11`: the LMK generated inside the token, `hsm.json` (module, token
    label, PIN variable: no secret) and a database whose keys the token seals."""
    _refuse_existing(path)
    make_folder(path)
    token = create_token_lmk(config, pin)
    try:
        vault = Vault.from_lmk(token, rng(LMK_LENGTH))
        _new_db(path / DB_FILE, vault, rng, {"lmk_label": config.label})
        config.save(path)
    except BaseException:
        (path / DB_FILE).unlink(missing_ok=True)
        token.destroy_lmk(config.label)
        token.close()
        raise
    return token


def open_lmk(path: Path) -> Lmk:
    """The folder's LMK: its token (PIN from the environment or a prompt), else `lmk.key`, after
    finishing or undoing a rotation a kill interrupted (`host.lifecycle`)."""
    db_path = path / DB_FILE
    if (path / CONFIG_FILE).exists():
        config = TokenConfig.load(path)
        label = inspect(db_path).meta.get("lmk_label", config.label) if db_path.exists() else config.label
        return TokenLmk(replace(config, label=label), read_pin(config))
    settle_rotation(path)
    return load_lmk(path / LMK_FILE)


def open_data(path: Path, rng: Rng) -> KeyDb:
    lmk_path, db_path = path / LMK_FILE, path / DB_FILE
    token = (path / CONFIG_FILE).exists()
    if not token and not lmk_path.exists() and not (path / NEW_LMK_FILE).exists():
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
    lmk = open_lmk(path)
    found = inspect(db_path)
    return KeyDb(db_path, open_root(lmk, found.meta) if "root" in found.meta else Vault.from_lmk(lmk), rng)


def settle_rotation(path: Path) -> None:
    """A file-LMK rotation writes `lmk.key.new`, re-seals every key in one transaction, then
    renames the new file over `lmk.key`. A kill between leaves both files: the database's check
    value says which one its keys are under; that one becomes `lmk.key`, the other goes."""
    new_path, lmk_path, db_path = path / NEW_LMK_FILE, path / LMK_FILE, path / DB_FILE
    if not new_path.exists():
        return
    stored = inspect(db_path).lmk_kcv if db_path.exists() else None
    try:
        new = load_lmk(new_path)
    except LmkError:
        new_path.unlink()  # killed while writing it: the database never saw it
        return
    if stored is not None and hmac.compare_digest(stored, check_value(new)):
        os.replace(new_path, lmk_path)
        sync_folder(path)
    else:
        new_path.unlink()


def sync_folder(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def folder_lock(path: Path, exclusive: bool) -> Iterator[None]:
    """`serve` holds a shared lock on the data folder itself (flock on its directory: no file
    is made), `lmk rotate` and `restore` need it alone: a host serving under the old LMK would
    otherwise seal new keys under it after the rotation."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"a host is serving from {path}: stop it first" if exclusive else
                            f"{path} is being rotated or restored: wait for it") from None
        yield
    finally:
        os.close(fd)

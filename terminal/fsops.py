"""Atomic file replacement, with every system call behind a small table.

A terminal that loses power while it writes its keys must come back with the old set or the new
set, never a mix. The POSIX recipe is: write a temporary file, fsync it, rename it over the old
one, fsync the folder (the rename lives in the folder's data). Each step goes through `FsOps` so
a test can stop the sequence at any step, or record it, and check the order.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

FILE_MODE = 0o600


@dataclass(frozen=True)
class FsOps:
    """The system calls of a replace; swap one to inject a crash or record the sequence."""

    open_file: Callable[[str], int]
    write: Callable[[int, bytes], int]
    fsync: Callable[[int], None]
    close: Callable[[int], None]
    rename: Callable[[str, str], None]
    open_dir: Callable[[str], int]


def _open_file(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)


def _open_dir(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


REAL_OPS = FsOps(
    open_file=_open_file,
    write=os.write,
    fsync=os.fsync,
    close=os.close,
    rename=os.replace,
    open_dir=_open_dir,
)


CRASH_ENV = "POSEMU_CRASH_AT"
"""`FILE:STEP` (e.g. `keystore.json:rename`): the process kills itself (SIGKILL, as a power cut
would stop it) just before that step of that file's replace: `write`, `fsync`, `rename` or
`dirsync`. How a scenario cuts the power during a key write from outside the process."""


def crash_point(path: Path, step: str) -> None:
    if os.environ.get(CRASH_ENV) == f"{path.name}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def temp_path(path: Path) -> Path:
    """One fixed temporary name per file: a leftover from a crash is simply overwritten."""
    return path.with_name(path.name + ".tmp")


def atomic_replace(path: Path, data: bytes, ops: FsOps = REAL_OPS) -> None:
    """Make `path` hold `data`, durably, or leave it as it was.

    The data is fsynced before the rename (or the rename could become durable before the data
    it points at), and the folder after it (or the rename itself could be lost).
    """
    tmp = temp_path(path)
    fd = ops.open_file(str(tmp))
    try:
        view = memoryview(data)
        crash_point(path, "write")
        while view:
            view = view[ops.write(fd, view) :]
        crash_point(path, "fsync")
        ops.fsync(fd)
    finally:
        ops.close(fd)
    crash_point(path, "rename")
    ops.rename(str(tmp), str(path))
    crash_point(path, "dirsync")
    dir_fd = ops.open_dir(str(path.parent))
    try:
        ops.fsync(dir_fd)
    finally:
        ops.close(dir_fd)


def write_secret_once(path: Path, data: bytes) -> None:
    """Create a file only its owner can read, refusing to overwrite one (a storage key is never
    replaced: the keys under it would become unreadable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = _open_dir(str(path.parent))
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


LOCK_FILE = ".lock"
LOCK_POLL = 0.05


def lock_file(folder: Path) -> Path:
    return folder / LOCK_FILE


def _open_lock(folder: Path) -> int | None:
    """The lock file's descriptor. `init` creates the file, so a command never has to (a
    refused command changes no file); in a folder that cannot be written, an existing lock is
    opened read-only (flock needs no write access), and a missing one means no lock: nothing
    can write there anyway, so there is no write to serialise."""
    path = lock_file(folder)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    except (PermissionError, IsADirectoryError) as exc:
        first = exc
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise
        first = exc
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError:
        raise first from None


@contextmanager
def exclusive(folder: Path, wait: float) -> Iterator[None]:
    """One command at a time per terminal, as on a real device: two commands racing would reuse
    a STAN or lose a key update. Waits at most `wait` seconds for the other command to finish."""
    fd = _open_lock(folder)
    if fd is None:
        yield
        return
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"another pos-terminal command is still using {folder} "
                        f"after {wait:g} s"
                    ) from None
                time.sleep(LOCK_POLL)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock

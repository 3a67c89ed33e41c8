"""The keystore: what it keeps, what it refuses to load, and that a replace is all or nothing.

Two kinds of crash are tested. A SIGKILL at random instants during replaces (the process dies,
the page cache survives) shows that a reader never sees a mix. A crash injected at every step of
the replace sequence, replayed against a model disk that forgets whatever was not fsynced, shows
that the data and the folder are fsynced in the right order. Neither is a real power loss.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from protocol.crypto.keys import Key, fix_parity
from terminal.fsops import REAL_OPS, FsOps, atomic_replace, temp_path
from terminal.keystore import KeySet, Keystore, KeystoreError, StoredKey, key_status

KILLS = 200


def material(label: str, serial: int, length: int = 16) -> bytes:
    return fix_parity(hashlib.sha256(f"{label}{serial}".encode()).digest()[:length])


def keyset_for(serial: int) -> KeySet:
    """A key set whose every key is derived from `serial`: a mix of two sets is detectable."""
    keys = {
        "TMK": StoredKey(Key("TDES", "TMK", material("TMK", serial)), serial, 1000.0 + serial),
        "PIK": StoredKey(Key("TDES", "PIK", material("PIK", serial)), serial, 2000.0 + serial),
        "MAK": StoredKey(Key("TDES", "MAK", material("MAK", serial)), serial, 3000.0 + serial),
        "TDK": StoredKey(Key("TDES", "TDK", material("TDK", serial)), serial, 4000.0 + serial),
    }
    return KeySet(keys, "004", serial)


def assert_whole(keyset: KeySet) -> int:
    expected = keyset_for(keyset.serial)
    assert keyset.key_set == expected.key_set
    assert set(keyset.keys) == set(expected.keys)
    for name, stored in keyset.keys.items():
        assert stored.key.material == expected.keys[name].key.material, name
        assert stored.generation == expected.keys[name].generation
        assert stored.installed_at == expected.keys[name].installed_at
    return keyset.serial


@pytest.fixture
def store(tmp_path: Path) -> Keystore:
    keystore = Keystore(tmp_path / "keystore.json", tmp_path / "storage.key")
    keystore.create()
    return keystore


def test_round_trip_keeps_keys_and_bookkeeping(store: Keystore) -> None:
    store.save(keyset_for(7))
    assert assert_whole(store.load()) == 7
    rows = {row.name: row for row in key_status(store.load())}
    assert rows["MAK"].kcv == keyset_for(7).keys["MAK"].kcv_hex
    assert rows["MAK"].generation == 7


def test_files_are_private_and_hold_no_clear_key(store: Keystore) -> None:
    store.save(keyset_for(1))
    assert store.storage_key_path.stat().st_mode & 0o777 == 0o600
    assert store.path.stat().st_mode & 0o777 == 0o600
    text = store.path.read_bytes()
    for stored in keyset_for(1).keys.values():
        assert stored.key.material.hex().encode() not in text.lower()
        assert stored.key.material not in text


def test_a_new_terminal_has_a_valid_empty_keystore(store: Keystore) -> None:
    assert store.load() == KeySet()


def test_storage_key_is_never_overwritten(store: Keystore) -> None:
    with pytest.raises(FileExistsError):
        store.create()


@pytest.mark.parametrize("position", [0, 1, 17, 100, 250, -70, -2])
def test_any_flipped_byte_fails_the_integrity_check(store: Keystore, position: int) -> None:
    store.save(keyset_for(3))
    data = bytearray(store.path.read_bytes())
    data[position] ^= 0x01
    store.path.write_bytes(bytes(data))
    with pytest.raises(KeystoreError) as info:
        store.load()
    assert info.value.reason == "keystore corrupt"


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda s: s.path.unlink(), "keystore missing"),
        (lambda s: s.path.write_bytes(b""), "keystore empty"),
        (lambda s: s.path.write_bytes(s.path.read_bytes()[:200]), "keystore corrupt"),
        (lambda s: s.path.write_bytes(b"\x00" * 4096), "keystore corrupt"),
        (lambda s: s.storage_key_path.unlink(), "storage key lost"),
        (lambda s: s.storage_key_path.write_text("zz"), "storage key bad"),
        (lambda s: s.storage_key_path.write_text("00" * 32), "keystore corrupt"),
    ],
)
def test_damage_is_a_reason_never_a_traceback(
    store: Keystore, damage: Callable[[Keystore], None], reason: str
) -> None:
    store.save(keyset_for(2))
    damage(store)
    with pytest.raises(KeystoreError) as info:
        store.load()
    assert info.value.reason == reason


def test_an_unreadable_keystore_is_reported(store: Keystore) -> None:
    if os.geteuid() == 0:
        store.path.unlink()
        store.path.mkdir()  # root reads any file; a folder in its place is unreadable as a file
    else:
        store.path.chmod(0)
    with pytest.raises(KeystoreError) as info:
        store.load()
    assert info.value.reason == "keystore unreadable"


def test_reset_replaces_a_damaged_storage_key(store: Keystore) -> None:
    store.storage_key_path.write_text("garbage")
    store.reset()
    assert store.load() == KeySet()


# --- SIGKILL at random instants ---------------------------------------------------------------


def _replace_forever(store: Keystore, first: int, report: int) -> None:
    """Replace the keystore again and again, saying on `report` after each completed replace."""
    serial = first
    while True:
        serial += 1
        store.save(keyset_for(serial))
        os.write(report, b".")


def _reports(fd: int, want: int, seconds: float) -> int:
    """Read completion reports until `want` have come (or `seconds` pass, or the pipe closes)."""
    got = 0
    deadline = time.monotonic() + seconds
    while got < want and (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 64)
        if not chunk:
            break
        got += len(chunk)
    return got


def test_sigkill_during_replaces_leaves_old_or_new_never_a_mix(store: Keystore) -> None:
    """One child replaces the keystore in a loop and is killed at a random instant after a random
    number of completed replaces; the next load must give one whole set, never older than the
    last replace the child reported complete."""
    rng = random.Random(1405)
    store.save(keyset_for(1))
    seen = 1
    for _ in range(KILLS):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            try:
                os.close(read_end)
                _replace_forever(store, seen, write_end)
            finally:
                os._exit(1)
        os.close(write_end)
        try:
            done = _reports(read_end, rng.randint(0, 2), 10.0)
            time.sleep(rng.uniform(0, 0.004))  # then somewhere inside the next replace, or not
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            done += _reports(read_end, 1 << 30, 1.0)  # what it reported before it died
        finally:
            os.close(read_end)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        serial = assert_whole(store.load())
        assert serial >= seen + done, "a replace reported complete was lost"
        seen = serial
    assert seen > KILLS // 2, "the child completed replaces between the kills"


# --- a crash injected at every step, against a disk that forgets what was not fsynced ---------


class Crash(Exception):
    """The machine stops here."""


@dataclass
class ModelDisk:
    """A folder as a journaling filesystem may leave it after a power cut.

    Names and file contents are volatile until fsynced: a file's data by fsync of the file, the
    names in the folder by fsync of the folder. A rename may also reach the disk on its own
    (the filesystem flushes metadata when it likes), but never brings the data with it.
    """

    names: dict[str, int] = field(default_factory=dict)
    data: dict[int, bytes] = field(default_factory=dict)
    durable_names: dict[str, int] = field(default_factory=dict)
    durable_data: dict[int, bytes] = field(default_factory=dict)
    fds: dict[int, tuple[str, int | None]] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)
    crash_at: int | None = None
    next_inode: int = 1

    def step(self, name: str, target: str) -> None:
        if self.crash_at is not None and len(self.log) == self.crash_at:
            raise Crash(f"{name} {target}")
        self.log.append((name, target))

    def seed(self, path: str, content: bytes) -> None:
        inode = self._inode()
        self.names[path] = self.durable_names[path] = inode
        self.data[inode] = self.durable_data[inode] = content

    def _inode(self) -> int:
        self.next_inode += 1
        return self.next_inode

    def open_file(self, path: str) -> int:
        self.step("open", path)
        inode = self._inode()
        self.names[path] = inode
        self.data[inode] = b""
        fd = 100 + len(self.fds)
        self.fds[fd] = (path, inode)
        return fd

    def write(self, fd: int, chunk: bytes) -> int:
        path, inode = self.fds[fd]
        self.step("write", path)
        assert inode is not None
        self.data[inode] += bytes(chunk)
        return len(chunk)

    def fsync(self, fd: int) -> None:
        path, inode = self.fds[fd]
        if inode is None:
            self.step("fsync-dir", path)
            self.durable_names = dict(self.names)
        else:
            self.step("fsync", path)
            self.durable_data[inode] = self.data[inode]

    def close(self, fd: int) -> None:
        path, _ = self.fds[fd]
        self.step("close", path)

    def rename(self, source: str, target: str) -> None:
        self.step("rename", f"{source}->{target}")
        self.names[target] = self.names.pop(source)

    def open_dir(self, path: str) -> int:
        self.step("open-dir", path)
        fd = 100 + len(self.fds)
        self.fds[fd] = (path, None)
        return fd

    def ops(self) -> FsOps:
        return FsOps(self.open_file, self.write, self.fsync, self.close, self.rename,
                     self.open_dir)

    def after_power_cut(self, path: str) -> list[bytes | None]:
        """What `path` may hold after a power cut: with the folder as last fsynced, or with
        every rename done so far already on disk; file data only as fsynced."""
        worlds = []
        for names in (self.durable_names, self.names):
            inode = names.get(path)
            worlds.append(None if inode is None else self.durable_data.get(inode, b""))
        return worlds


OLD, NEW = b"old keys\n" * 50, b"new keys\n" * 60
TARGET = "/term/keystore.json"


def run_until_crash(crash_at: int | None) -> ModelDisk:
    disk = ModelDisk(crash_at=crash_at)
    disk.seed(TARGET, OLD)
    with contextlib.suppress(Crash):
        atomic_replace(Path(TARGET), NEW, disk.ops())
    return disk


def test_replace_sequence_fsyncs_data_before_rename_and_folder_after() -> None:
    disk = run_until_crash(None)
    tmp = str(temp_path(Path(TARGET)))
    names = [name for name, _ in disk.log]
    assert names[0] == "open" and disk.log[0][1] == tmp
    order = [entry for entry in disk.log if entry[0] != "write"]
    assert order == [
        ("open", tmp), ("fsync", tmp), ("close", tmp),
        ("rename", f"{tmp}->{TARGET}"),
        ("open-dir", "/term"), ("fsync-dir", "/term"), ("close", "/term"),
    ]
    assert disk.after_power_cut(TARGET) == [NEW, NEW], "once replace returns, the new set is durable"


def test_a_crash_at_every_step_leaves_the_old_or_the_new_content() -> None:
    steps = len(run_until_crash(None).log)
    assert steps >= 7
    for crash_at in range(steps + 1):
        disk = run_until_crash(crash_at)
        for world in disk.after_power_cut(TARGET):
            assert world in (OLD, NEW), f"crash before step {crash_at}: {world!r:.40}"


def test_the_model_catches_a_replace_without_fsync() -> None:
    """The model is strict enough to fail a broken sequence: skip the data fsync and a power
    cut right after the rename can leave an empty keystore."""
    disk = ModelDisk()
    disk.seed(TARGET, OLD)
    atomic_replace(Path(TARGET), NEW, replace(disk.ops(), fsync=lambda fd: None))
    assert b"" in disk.after_power_cut(TARGET)


def test_a_real_keystore_survives_a_crash_at_every_step(tmp_path: Path) -> None:
    """The same injection on the real filesystem, through the Keystore itself: after a crash
    at any step, the next load gives the set before or the set being written."""
    store = Keystore(tmp_path / "keystore.json", tmp_path / "storage.key")
    store.create()
    store.save(keyset_for(1))
    calls: list[str] = []

    def failing(name: str, crash_at: int) -> Callable[..., object]:
        real = getattr(REAL_OPS, name)

        def op(*args: object) -> object:
            if len(calls) >= crash_at:
                if name == "close":  # the process is dead: its descriptors close with it
                    real(*args)
                raise Crash(name)
            calls.append(name)
            return real(*args)

        return op

    crash_at, completed = 0, False
    while not completed:
        calls.clear()
        before = store.load().serial
        ops = FsOps(*(failing(name, crash_at) for name in FsOps.__dataclass_fields__))
        try:
            replace(store, ops=ops).save(keyset_for(before + 1))
            completed = True
        except Crash:
            pass
        after = assert_whole(store.load())
        assert after in (before, before + 1)
        assert after == before + 1 or not completed
        crash_at += 1
    assert crash_at >= 7, "every step of the sequence was interrupted once"


def test_an_injected_rng_makes_the_keystore_reproducible(tmp_path: Path) -> None:
    files = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        store = Keystore(tmp_path / name / "keystore.json", tmp_path / name / "storage.key",
                         rng=random.Random(7).randbytes)
        store.create()
        store.save(keyset_for(4))
        files.append((store.storage_key_path.read_bytes(), store.path.read_bytes()))
    assert files[0] == files[1]

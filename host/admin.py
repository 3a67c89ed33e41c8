"""Operator commands as functions: a data folder, a clock and an RNG in; a JSON-ready dict out.

The CLI only parses arguments and prints what these return, so tests call the same code the
operator runs. No result ever holds key material, except a key ceremony's components, which
exist to be shown once.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from host import backup, datadir, hsm, report
from host import lmk as lmk_mod
from host.access import Actor
from host.keydb import KeyDb, KeyDbError, KeyRow
from host.pkcs11 import CONFIG_FILE, TokenConfig, TokenLmk, read_pin
from host.state import ACTIVE, Card, WorkingSet
from protocol.amounts import format_amount, parse_amount
from protocol.clock import Rng
from protocol.crypto import Key
from protocol.injection import encode_injection
from protocol.mask import mask_pan

DEFAULT_TMK_LIFETIME = 365 * 24 * 3600.0
_TID = re.compile(r"[\x21-\x2e\x30-\x5b\x5d-\x7e]{1,8}")  # printable ASCII but / and \
_MID = re.compile(r"[\x21-\x7e]{1,15}")
_PAN = re.compile(r"[0-9]{12,19}")
_PIN = re.compile(r"[0-9]{4,12}")
_EXPIRY = re.compile(r"[0-9]{2}(0[1-9]|1[0-2])")
_CURRENCY = re.compile(r"[0-9]{3}")


class UsageError(ValueError):
    """An argument the operator must correct."""


# What a refusal may say about the value: never a PIN, a PAN only masked (PROTOCOL.md §6).
_SHOWN = {"PAN": lambda v: f"({len(v)} characters)", "PIN": lambda v: ""}


def _check(pattern: re.Pattern[str], value: str, what: str, rule: str) -> str:
    if not pattern.fullmatch(value):
        shown = _SHOWN.get(what, repr)(value)
        raise UsageError(f"{what} {shown} is not valid: {rule}".replace("  ", " "))
    return value


def check_tid(tid: str) -> str:
    """Every command that names a terminal checks the name first: a TID is also a folder name
    on the terminal's side, so no path separator."""
    return _check(_TID, tid, "terminal id", "1 to 8 printable ASCII characters, no / or \\")


# --- terminals and their key ceremony ------------------------------------------------------------


def ceremony(tid: str, merchant: str, tmk: Key, components: list[hsm.Component]) -> dict[str, Any]:
    """What `terminal add --json` prints: exactly tid, merchant, tmk_kcv and the components."""
    return {
        "tid": tid,
        "merchant": merchant,
        "tmk_kcv": tmk.kcv_hex,
        "components": [{"component": c.material.hex().upper(), "kcv": c.kcv} for c in components],
    }


def add_terminal(
    db: KeyDb, tid: str, merchant: str, components: int, now: float, rng: Rng,
    lifetime: float = DEFAULT_TMK_LIFETIME,
) -> tuple[dict[str, Any], Key]:
    check_tid(tid)
    _check(_MID, merchant, "merchant id", "1 to 15 printable ASCII characters")
    tmk = hsm.new_tmk(rng)
    parts = hsm.split_components(tmk, components, rng)
    db.add_terminal(tid, merchant, tmk, now, lifetime)
    return ceremony(tid, merchant, tmk, parts), tmk


def rekey_terminal(
    db: KeyDb, tid: str, components: int, now: float, rng: Rng,
    lifetime: float = DEFAULT_TMK_LIFETIME,
) -> tuple[dict[str, Any], Key]:
    """A new key ceremony for a known terminal: the remedy for a TMK key error (K1/K2 TMK)."""
    row = db.terminal_row(check_tid(tid))
    tmk = hsm.new_tmk(rng)
    parts = hsm.split_components(tmk, components, rng)
    db.rekey_terminal(tid, tmk, now, lifetime)
    return ceremony(tid, row.merchant, tmk, parts), tmk


def claim_injection_file(path: Path) -> int:
    """Create the key-injection file (mode 0600) before the database changes, never over an
    existing file (another terminal's unloaded TMK may be in it); its descriptor."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"--out {path} already exists: it may hold another terminal's TMK; "
                         f"name a new file") from None
    except OSError as exc:
        raise UsageError(f"--out {path}: {exc.strerror}") from None


def write_injection_file(fd: int, tid: str, merchant: str, tmk: Key) -> None:
    """The TMK as one key in the claimed file (PROTOCOL.md §2); the operator deletes it."""
    with os.fdopen(fd, "wb") as out:
        out.write(encode_injection(tid, merchant, tmk))


def _key_row(row: KeyRow, now: float) -> dict[str, Any]:
    expires = row.created + row.lifetime
    return {
        "usage": row.usage,
        "generation": row.generation,
        "key_set": row.key_set,
        "kcv": row.kcv,
        "state": row.state,
        "age_s": round(now - row.created, 1),
        "lifetime_s": round(row.lifetime, 1),
        "stale": now >= expires,
    }


def list_terminals(db: KeyDb) -> list[dict[str, Any]]:
    return [{"tid": t.tid, "merchant": t.merchant, "created": t.created} for t in db.terminals()]


def show_keys(db: KeyDb, tid: str, now: float) -> dict[str, Any]:
    check_tid(tid)
    row = db.terminal_row(tid)
    return {"tid": tid, "merchant": row.merchant,
            "keys": [_key_row(k, now) for k in db.key_rows(tid)]}


def remove_terminal(db: KeyDb, tid: str) -> dict[str, Any]:
    check_tid(tid)
    db.remove_terminal(tid)
    return {"tid": tid, "removed": True}


# --- making each key error on purpose ------------------------------------------------------------


def expire_keys(db: KeyDb, tid: str, now: float) -> dict[str, Any]:
    check_tid(tid)
    count = db.expire_working(tid, now)
    if not count:
        raise KeyDbError(f"terminal {tid} has no active working keys to expire")
    return {"tid": tid, "expired": count, "expect": "K2 WK expired"}


def rotate_keys(db: KeyDb, tid: str, now: float, lifetime: float, rng: Rng) -> dict[str, Any]:
    """A new generation shaped like the current one, which the terminal is not told about."""
    check_tid(tid)
    keys = db.load_terminal(tid)
    if keys is None:
        raise KeyDbError(f"no terminal {tid}")
    current = keys.current
    if current is None:
        raise KeyDbError(f"terminal {tid} has no active working keys to rotate")
    fresh = WorkingSet(
        keys.next_generation, current.key_set, ACTIVE, now, lifetime,
        hsm.new_key_like(current.pik, rng), hsm.new_key_like(current.mak, rng),
        hsm.new_key_like(current.tdk, rng) if current.tdk else None,
    )
    db.rotate(tid, fresh)
    return {"tid": tid, "generation": fresh.generation, "expect": "K2 MAK missed rotation"}


def revoke_keys(db: KeyDb, tid: str, tmk: bool) -> dict[str, Any]:
    check_tid(tid)
    if tmk:
        db.revoke_tmk(tid)
        return {"tid": tid, "revoked": "TMK", "expect": "K1 TMK revoked"}
    db.revoke_working(tid)
    return {"tid": tid, "revoked": "WK", "expect": "K1 WK revoked/signed off"}


def tamper_keys(db: KeyDb, tid: str, rng: Rng) -> dict[str, Any]:
    check_tid(tid)
    keys = db.load_terminal(tid)
    if keys is None:
        raise KeyDbError(f"no terminal {tid}")
    if keys.current is None:
        raise KeyDbError(f"terminal {tid} has no active working keys to tamper with")
    generation = db.replace_mak(tid, hsm.new_key_like(keys.current.mak, rng))
    return {"tid": tid, "generation": generation, "expect": "K3 MAK mismatch"}


# --- planned renewal and key health (docs/host.md, Key schedule and health) ---------------------


def key_schedule(db: KeyDb, now: float, within: float) -> list[dict[str, Any]]:
    return report.schedule(db.fleet_key_rows(), now, within)


def rotate_all(db: KeyDb, now: float, older_than: float, grace: float) -> list[dict[str, Any]]:
    """A planned bulk rotation: every terminal whose working keys are at least `older_than`
    old has them made due within `grace` (their lifetime cut to end then). A host serving with
    `--renew-before` at least `grace` then asks each one, in its next answer, to sign on, so
    the new keys come the way a terminal expects (unlike `keys rotate TID`, the fault that
    makes a generation it is never told about). One entry per terminal, the skipped ones too."""
    done = []
    for tid, rows in db.fleet_key_rows().items():
        _, wk = report.current_keys(rows)
        entry: dict[str, Any] = {"tid": tid}
        if wk is None:
            entry.update(action="skipped", why="no working keys")
        elif now - wk.created < older_than:
            entry.update(action="skipped", why="younger than --older-than",
                         age_s=round(now - wk.created, 1))
        elif wk.created + wk.lifetime <= now + grace:
            entry.update(action="skipped", why="already due", generation=wk.generation,
                         expires=round(wk.created + wk.lifetime, 1))
        else:
            db.expire_working(tid, now + grace)
            entry.update(action="due", generation=wk.generation, age_s=round(now - wk.created, 1),
                         expires=round(now + grace, 1))
        done.append(entry)
    return done


def key_report(db: KeyDb, log_lines: list[str], now: float, since: float,
               within: float) -> dict[str, Any]:
    return report.key_report(db.fleet_key_rows(), report.read_events(log_lines), now, since,
                             within)


# --- cards ---------------------------------------------------------------------------------------


def parse_balance(text: str) -> int:
    """A card's opening balance: the one amount rule (`protocol.amounts`), zero allowed."""
    try:
        return parse_amount(text, allow_zero=True)
    except ValueError as exc:
        raise UsageError(f"balance: {exc}") from None


def add_card(
    db: KeyDb, pan: str, expiry: str, pin: str, balance: str, currency: str = "156",
) -> dict[str, Any]:
    _check(_PAN, pan, "PAN", "12 to 19 digits")
    _check(_EXPIRY, expiry, "expiry (YYMM)", "YYMM with a month from 01 to 12")
    _check(_PIN, pin, "PIN", "4 to 12 digits")
    _check(_CURRENCY, currency, "currency code", "3 digits")
    vault = db.vault
    card = Card(vault.pan_ref(pan), mask_pan(pan), expiry, vault.pin_value(pan, pin),
                parse_balance(balance), currency)
    db.add_card(card)
    return card_dict(card)


def card_dict(card: Card) -> dict[str, Any]:
    return {"pan": card.pan_masked, "expiry": card.expiry,
            "balance": f"{card.balance / 100:.2f}", "currency": card.currency}


def list_cards(db: KeyDb) -> list[dict[str, Any]]:
    return [card_dict(c) for c in db.cards()]


# --- batches (PROTOCOL.md §7) ----------------------------------------------------------------------

_BATCH = re.compile(r"[0-9]{1,6}")


def show_card(db: KeyDb, pan: str) -> dict[str, Any]:
    """A card's balance now (the host's view after every approved transaction)."""
    _check(_PAN, pan, "PAN", "12 to 19 digits")
    card = db.card(db.vault.pan_ref(pan))
    if card is None:
        raise KeyDbError(f"no card {mask_pan(pan)}")
    return card_dict(card)


def show_batch(db: KeyDb, tid: str, batch: str | None) -> dict[str, Any]:
    """The host's view of one batch (the newest when none is named): its settlement state, its
    totals as the host counts them for settlement, and each transaction with its state."""
    check_tid(tid)
    if batch is None:
        known = db.batches(tid)
        if not known:
            raise KeyDbError(f"terminal {tid} has no batch yet")
        batch = known[-1]
    else:
        _check(_BATCH, batch, "batch", "1 to 6 digits")
        batch = f"{int(batch):06d}"
    rows = db.batch_rows(tid, batch)
    state, reported, host = db.settlement(tid, batch)
    debit, debits, credit, credits = db.batch_totals(db.terminal_number(tid), batch)
    return {
        "tid": tid, "batch": batch,
        "state": "closed" if state.closed else "settled" if state.settled else "open",
        "totals": {"debit_count": debits, "debit_amount": format_amount(debit),
                   "credit_count": credits, "credit_amount": format_amount(credit)},
        "settlement": None if reported is None else {"reported": reported, "host": host},
        "uploaded": len(db.uploads(tid, batch)),
        "transactions": [
            {"stan": r.stan, "mti": r.mti, "kind": r.kind or "unknown", "rc": r.rc or "",
             "state": r.state, "pan": r.pan_masked or "", "amount": format_amount(r.amount),
             "rrn": r.rrn, "auth": r.auth, "original": r.original or "",
             "refunded": format_amount(r.refunded)}
            for r in rows
        ],
    }


# --- the LMK's lifecycle and backups -------------------------------------------------------------


def lmk_components(db: KeyDb, count: int, out: Path, rng: Rng) -> dict[str, Any]:
    """The file LMK as `count` clear components, one file each (mode 0600, in a new folder) for
    its custodian; refused for a token's LMK, which never leaves the token."""
    lmk = db.vault.lmk
    if not isinstance(lmk, bytes):
        raise UsageError("the LMK is inside the token and not extractable: back it up by the "
                         "token's own means (its vendor's backup or cloning to another token)")
    if count not in (2, 3):
        raise UsageError("--components is 2 or 3")
    try:
        out.mkdir(mode=0o700)
    except FileExistsError:
        raise UsageError(f"--out {out} exists: components go into a new folder") from None
    except OSError as exc:
        raise UsageError(f"--out {out}: {exc.strerror}") from None
    files = []
    for index, material in enumerate(lmk_mod.split_lmk(lmk, count, rng), start=1):
        path = out / f"lmk-component-{index}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(lmk_mod.component_document(material, index, count, lmk), f, indent=2)
            f.write("\n")
        files.append(str(path))
    return {"lmk_kcv": db.vault.check_value, "components": count, "files": files}


def read_components(paths: list[Path]) -> bytes:
    """`init --lmk-components`: files, or folders of `lmk-component-*.json`, rebuilt to the LMK."""
    documents = []
    for path in paths:
        files = sorted(path.glob("lmk-component-*.json")) if path.is_dir() else [path]
        for file in files:
            try:
                documents.append(json.loads(file.read_text()))
            except (OSError, ValueError) as exc:
                raise UsageError(f"{file}: not an LMK component file ({type(exc).__name__})") from None
    return lmk_mod.combine_lmk(documents)


def rotate_lmk(path: Path, rng: Rng, actor: Actor | None = None) -> dict[str, Any]:
    """A new LMK and every stored key re-sealed under it in one transaction (`KeyDb.reseal`).
    File LMK: `lmk.key.new` is written and flushed first and renamed over `lmk.key` after the
    commit; `datadir.settle_rotation` finishes or undoes a rotation a kill interrupted. Token:
    the new LMK is a new token object, the database names it (`lmk_label`), the old one is
    destroyed after the commit."""
    with datadir.folder_lock(path, exclusive=True):
        db = datadir.open_data(path, rng)
        db.actor = actor  # the re-sealing's audit entry names who rotated (host.access)
        try:
            old = db.vault
            meta: dict[str, str] = {}
            if isinstance(old.lmk, bytes):
                new_lmk: lmk_mod.Lmk = lmk_mod.write_lmk(path / datadir.NEW_LMK_FILE,
                                                         rng(lmk_mod.LMK_LENGTH))
            else:
                token = old.lmk
                assert isinstance(token, TokenLmk)
                label = _next_label(token.config.label)
                token.destroy_lmk(label)  # left by a rotation killed before its commit
                token.create_lmk(label)
                new_lmk = TokenLmk(replace(token.config, label=label), token.pin)
                meta = {"lmk_label": label}
            try:
                resealed = db.reseal(lmk_mod.Vault.from_lmk(new_lmk, old.root), meta)
            except BaseException:
                if isinstance(new_lmk, bytes):
                    (path / datadir.NEW_LMK_FILE).unlink(missing_ok=True)
                else:
                    token.destroy_lmk(label)
                raise
            if isinstance(new_lmk, bytes):
                os.replace(path / datadir.NEW_LMK_FILE, path / datadir.LMK_FILE)
                datadir.sync_folder(path)
            else:
                token.destroy_lmk(token.config.label)
                new_lmk.close()
            return {"rotated": True, "old_lmk_kcv": old.check_value,
                    "lmk_kcv": lmk_mod.lmk_check_value(new_lmk), "keys_resealed": resealed}
        finally:
            db.close()


def _next_label(label: str) -> str:
    stem, _, number = label.rpartition("-")
    return f"{stem}-{int(number) + 1}" if number.isdigit() else f"{label}-2"


def make_backup(db: KeyDb, path: Path, out: Path) -> dict[str, Any]:
    token = TokenConfig.load(path) if (path / CONFIG_FILE).exists() else None
    if token is not None:
        token = replace(token, label=db.meta.get("lmk_label", token.label))
    return backup.write_backup(db, out, token)


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None


def verify_backup(path: Path, file: Path) -> dict[str, Any]:
    """Checked under the host's own LMK (the folder's file or token)."""
    lmk = datadir.open_lmk(path)
    try:
        return {"backup": str(file), **backup.verify_backup(_read_file(file), lmk)}
    finally:
        if isinstance(lmk, TokenLmk):
            lmk.close()


def restore(file: Path, path: Path, lmk_file: Path | None, module: str | None = None,
            ) -> dict[str, Any]:
    """Into a folder without a database: the LMK from --lmk (copied in), the folder's own
    `lmk.key`, or the token the backup names, through the PKCS#11 library the operator names
    (`--module`: a header is not trusted before its MAC is checked, and loading a library runs
    its code); verified in full before anything is written."""
    data = _read_file(file)
    header, image, _, _ = backup.read_header(data)
    if header.get("hsm") is not None:
        if module is None:
            raise UsageError(f"this backup's LMK is in token {header['hsm'].get('token')!r}: "
                             f"give --module PATH (its PKCS#11 library) to restore it")
        header["hsm"] = {**header["hsm"], "module": module}
    elif module is not None:
        raise UsageError("--module is for a backup whose LMK is in a token; this one's is a file")
    if (path / datadir.DB_FILE).exists():
        raise UsageError(f"{path} already has a host database: restore into a new folder")
    datadir.make_folder(path)
    with datadir.folder_lock(path, exclusive=True):
        token = header.get("hsm")
        lmk: lmk_mod.Lmk
        if token is not None:
            config = TokenConfig(**token)
            lmk = TokenLmk(config, read_pin(config))
        elif lmk_file is not None:
            lmk = lmk_mod.load_lmk(lmk_file)
        else:
            lmk = lmk_mod.load_lmk(path / datadir.LMK_FILE)
        try:
            result = backup.verify_backup(data, lmk)
            if token is not None:
                config.save(path)
            elif lmk_file is not None and not (path / datadir.LMK_FILE).exists():
                assert isinstance(lmk, bytes)
                lmk_mod.write_lmk(path / datadir.LMK_FILE, lmk)
            backup.restore_image(image, path / datadir.DB_FILE)
        finally:
            if isinstance(lmk, TokenLmk):
                lmk.close()
    return {"restored": str(path), **result}

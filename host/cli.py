"""pos-host: the acquirer host's command line. Argument parsing and printing only; the work is
in host.admin (operator commands) and host.server (serving)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import itertools
import json
import os
import re
import signal
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn, TextIO

from host import access, admin
from host import operators as ops
from host.access import AccessDenied, Actor, Login
from host.audit import verify as verify_trail
from host.backup import BackupError
from host.clock import CLOCK_OFFSET_ENV, serving_clock
from host.connections import (
    FD_HEADROOM,
    FRAME_TIMEOUT,
    IDLE_TIMEOUT,
    Limits,
    default_max_connections,
)
from host.datadir import DataError, folder_lock, init_data, init_token_data, open_data, resolve
from host.handlers import DEFAULT_KEY_LIFETIME, HandlerConfig
from host.keydb import SYNC_MODES, KeyDb, KeyDbError
from host.lmk import LmkError, check_value
from host.logs import MessageLog
from host.operators import Operator
from host.pkcs11 import DEFAULT_PIN_ENV, TokenConfig, TokenError, read_pin
from host.rules import HITS_FILE, RuleBook, RulesError, describe, load_rules
from host.top import TopError, metrics_url, render, scrape, summarize
from protocol import ladder, passwords
from protocol.clock import system_clock, system_rng
from protocol.codec import codec_for
from protocol.codes import KEY_ERROR, RESPONSE_CODES
from protocol.crypto import CryptoError
from protocol.dialects import get_dialect, load_dialect
from protocol.errors import SpecError
from protocol.fields import KEY_SETS
from protocol.framing import Framing
from protocol.passwords import PasswordError
from protocol.pcap import LINKTYPE_USER0, LinkCapture, PcapTap, open_capture
from protocol.spec import Dialect
from protocol.trace import TraceOptions
from protocol.transport.bridge import run_bridge
from protocol.transport.serial import (
    PTY,
    PortSpecError,
    add_port_arguments,
    parse_port_spec,
    spec_from_arguments,
)

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
_DURATION = re.compile(r"([0-9]{1,12}(?:\.[0-9]{1,6})?)([smhd]?)")  # ASCII digits: no inf, no ١٢
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = 100 * 365 * 86400.0
_RESPONSE_CODE = re.compile(r"[0-9A-Z]{2}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def duration(text: str) -> float:
    """`90`, `90s`, `30m`, `24h`, `7d` -> seconds; at most 100 years."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 30m, 24h or 7d")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_DURATION:
        raise argparse.ArgumentTypeError(f"{text!r} is longer than 100 years")
    return seconds


def one_line(text: str) -> str:
    """Every refusal is one line: a newline or other unprintable character a user typed into an
    argument is shown escaped, not printed."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class OneLineParser(argparse.ArgumentParser):
    """argparse's refusals in one line (the usage is what --help is for); subparsers inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {one_line(message)}\n")


def response_code(text: str) -> str:
    if not _RESPONSE_CODE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a 2-character response code")
    if text in RESPONSE_CODES and text != KEY_ERROR:
        # 00 would turn every key error into an unMACed approval, 94 into a duplicate...
        raise argparse.ArgumentTypeError(f"{text} already means {RESPONSE_CODES[text]!r}")
    return text


def key_sets(text: str) -> frozenset[str]:
    chosen = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = chosen - KEY_SETS.keys()
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(f"key sets are {', '.join(KEY_SETS)}, comma-separated")
    return chosen


def env_name(text: str) -> str:
    """A variable's name; what is not one is refused without being shown (it may be a PIN or a
    password typed in its place)."""
    if not _ENV_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError("that option names an environment variable (letters, "
                                          "digits and _, not starting with a digit)")
    return text


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def dialect_arg(text: str) -> Dialect:
    """A built-in dialect name, or a JSON/TOML spec file."""
    try:
        return get_dialect(text)
    except KeyError:
        pass
    try:
        return load_dialect(text)
    except SpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --- output --------------------------------------------------------------------------------------


def emit(args: argparse.Namespace, result: Any, text: Callable[[Any], str]) -> None:
    if args.json:
        print(json.dumps(result))
    else:
        print(text(result))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _ceremony_text(result: dict[str, Any]) -> str:
    lines = [f"terminal {result['tid']}  merchant {result['merchant']}",
             f"TMK check value: {result['tmk_kcv']}"]
    for i, part in enumerate(result["components"], 1):
        lines.append(f"component {i}: {part['component']}  check value {part['kcv']}")
    lines.append("Give each component to its own custodian; this is the only time they are shown.")
    return "\n".join(lines)


def _keys_text(result: dict[str, Any]) -> str:
    return f"terminal {result['tid']}  merchant {result['merchant']}\n" + _table(
        result["keys"],
        ["usage", "generation", "key_set", "kcv", "state", "age_s", "lifetime_s", "stale"],
    )


def _said(result: dict[str, Any]) -> str:
    return "  ".join(f"{k}: {v}" for k, v in result.items())


# --- commands ------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    path = resolve(args.data)
    result: dict[str, Any] = {"data": str(path), "created": True}
    first = _first_administrator(args) if args.access_control else None
    if args.hsm == "pkcs11":
        if not args.module or not args.token or args.lmk_components:
            raise admin.UsageError("--hsm pkcs11 needs --module PATH and --token LABEL (and no "
                                   "--lmk-components: a token makes its own LMK)")
        config = TokenConfig(args.module, args.token, args.pin_env)
        token = init_token_data(path, system_rng, config, read_pin(config))
        result.update(hsm="pkcs11", token=args.token, lmk_kcv=token.check_value)
        token.close()
    else:
        if args.module or args.token:
            raise admin.UsageError("--module and --token go with --hsm pkcs11")
        lmk = admin.read_components([Path(p) for p in args.lmk_components]) \
            if args.lmk_components else None
        init_data(path, system_rng, lmk)
        if lmk is not None:  # the custodians compare it with their components' LMK check value
            result.update(lmk_kcv=check_value(lmk))
    _start_trail(args, path, first)
    if first is not None:  # a lab host's output is as it always was
        result.update(access=access.mode_text(True), administrator=first.name)
    emit(args, result, lambda r: f"created: {r['data']}" + (
        f" (LMK check value {r['lmk_kcv']})" if "lmk_kcv" in r else "") + (
        f"; {r['access']}, administrator {r['administrator']}" if "access" in r else ""))
    return EXIT_OK


def _first_administrator(args: argparse.Namespace) -> Operator:
    """`init --access-control --operator NAME`: the first administrator, hashed before anything
    is made (a refused password leaves no folder behind)."""
    name = _given(args, "operator")
    if name is None:
        raise admin.UsageError("init --access-control needs --operator NAME: the first "
                               "administrator (password from --new-password-env or a prompt)")
    ops.check_name(name)
    now = system_clock()
    return Operator(name, access.ADMIN, _new_credential(args), now)


def _start_trail(args: argparse.Namespace, path: Path, first: Operator | None) -> None:
    """The trail's first entries: the host made, and under access control its administrator."""
    db = open_data(path, system_rng)
    try:
        db.actor = Actor(first.name if first else access.LAB, None, "init", system_clock())
        db.record("host created", detail={"lmk_kcv": db.vault.check_value})
        if first is not None:
            db.add_operator(first)
            db.set_access_control(True)
    finally:
        _close(db)


def _with_db(work: Callable[[argparse.Namespace, KeyDb], int]) -> Callable[[argparse.Namespace], int]:
    return _with_db_path(lambda args, db, _path: work(args, db))


def _with_db_path(work: Callable[[argparse.Namespace, KeyDb, Path], int],
                  ) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        path = resolve(args.data)
        db = open_data(path, system_rng)
        try:
            _login(args, db)
            return work(args, db, path)
        finally:
            _close(db)
    return run


def _close(db: KeyDb) -> None:
    db.close()
    if not isinstance(db.vault.lmk, bytes):
        db.vault.lmk.close()


# --- operators and access control (docs/operations.md) -------------------------------------------

PASSWORD_ENV = "POSEMU_OPERATOR_PASSWORD"
SECOND_PASSWORD_ENV = "POSEMU_SECOND_PASSWORD"
NEW_PASSWORD_ENV = "POSEMU_NEW_PASSWORD"


def command_name(args: argparse.Namespace) -> str:
    """The command as the permission table (host.access.RULES) names it."""
    name = " ".join(p for p in (args.command, getattr(args, "action", None)) if p)
    if (name == "keys revoke" and args.tmk) or (name == "keys rotate" and args.all):
        name += " --tmk" if name == "keys revoke" else " --all"
    return name


def _given(args: argparse.Namespace, name: str) -> Any:
    return getattr(args, name, None)


def _secret(variable: str, prompt: str) -> Callable[[], str]:
    """A password from the environment, else asked on the terminal (never from argv)."""
    def read() -> str:
        value = os.environ.get(variable)
        if value is not None:
            return value
        if sys.stdin.isatty():
            return getpass.getpass(prompt)
        raise AccessDenied(f"no password: set ${variable} or run at a terminal")
    return read


def _new_credential(args: argparse.Namespace) -> str:
    """A new password (from --new-password-env, else asked twice), hashed at the cost set."""
    variable = _given(args, "new_password_env") or NEW_PASSWORD_ENV
    password = os.environ.get(variable)
    if password is None:
        if not sys.stdin.isatty():
            raise admin.UsageError(f"the new password: set ${variable} or run at a terminal")
        password = getpass.getpass("new password: ")
        if getpass.getpass("again: ") != password:
            raise admin.UsageError("the two passwords differ; nothing changed")
    return passwords.hash_password(password, system_rng, passwords.cost(os.environ))


def _login(args: argparse.Namespace, db: KeyDb) -> Actor | None:
    """Who runs this command: `lab` on a lab host, else the operator(s) named, checked against
    their hashes (`access on` checks its administrator on a lab host too). A refusal is
    audited, then raised as one line."""
    name = command_name(args)
    if name not in access.RULES:
        return None  # serve: the host's own work
    now = system_clock()
    on = db.access_control()
    if not on and name != "access on":
        db.actor = access.lab_actor(name, now)
        return db.actor
    first, second = _given(args, "operator"), _given(args, "second_operator")
    login = Login(first, second,
                  _secret(_given(args, "password_env") or PASSWORD_ENV,
                          f"password of {access.shown_name(first or '')}: "),
                  _secret(_given(args, "second_password_env") or SECOND_PASSWORD_ENV,
                          f"password of {access.shown_name(second or '')}: "))
    try:
        actor = access.authenticate(name, login, db.operator, now, passwords.cost(os.environ), on)
    except AccessDenied as exc:
        refused = exc if str(exc).startswith("refused (") else access.refusal(on, str(exc))
        named = access.shown_name(login.operator) if login.operator else "-"
        db.actor = Actor(named.strip("'"), None, name, now)
        db.record("refused", detail={"reason": str(refused)})
        raise refused from None
    db.actor = actor
    db.record("login")
    return actor


def _checked(work: Callable[[argparse.Namespace, Actor | None], int],
             ) -> Callable[[argparse.Namespace], int]:
    """For a command that opens the database itself (lmk rotate, backup verify): the login is
    checked, and audited, first."""
    def run(args: argparse.Namespace) -> int:
        db = open_data(resolve(args.data), system_rng)
        try:
            actor = _login(args, db)
        finally:
            _close(db)
        return work(args, actor)
    return run


def _operator_dict(operator: Operator) -> dict[str, Any]:
    return {"name": operator.name, "role": operator.role, "created": operator.created,
            "cost_log2n": passwords.log2n_of(operator.credential)}


@_with_db
def cmd_operator_add(args: argparse.Namespace, db: KeyDb) -> int:
    operator = Operator(ops.check_name(args.name), ops.check_role(args.role),
                        _new_credential(args), system_clock())
    db.add_operator(operator)
    emit(args, _operator_dict(operator), _said)
    return EXIT_OK


@_with_db
def cmd_operator_remove(args: argparse.Namespace, db: KeyDb) -> int:
    db.remove_operator(ops.check_name(args.name))
    emit(args, {"name": args.name, "removed": True}, _said)
    return EXIT_OK


@_with_db
def cmd_operator_list(args: argparse.Namespace, db: KeyDb) -> int:
    emit(args, [_operator_dict(o) for o in db.operators()],
         lambda rows: _table(rows, ["name", "role", "created", "cost_log2n"]))
    return EXIT_OK


@_with_db
def cmd_operator_passwd(args: argparse.Namespace, db: KeyDb) -> int:
    """One's own password, or, as administrator, anyone's."""
    actor = db.actor
    name = ops.check_name(args.name)
    if actor is not None and actor.role not in (None, access.ADMIN) and actor.operator != name:
        message = f"refused ({access.mode_text(True)}): only an administrator sets another's password"
        db.record("refused", detail={"reason": message})
        raise AccessDenied(message)
    db.set_credential(name, _new_credential(args))
    emit(args, {"name": name, "changed": True}, _said)
    return EXIT_OK


@_with_db
def cmd_access_on(args: argparse.Namespace, db: KeyDb) -> int:
    if db.access_control():
        raise admin.UsageError("access control is already on")
    db.set_access_control(True)
    emit(args, {"access": access.mode_text(True)}, _said)
    return EXIT_OK


@_with_db
def cmd_access_off(args: argparse.Namespace, db: KeyDb) -> int:
    if not db.access_control():
        raise admin.UsageError(f"{access.mode_text(False)} already")
    db.set_access_control(False)
    emit(args, {"access": access.mode_text(False)}, _said)
    return EXIT_OK


@_with_db
def cmd_access_show(args: argparse.Namespace, db: KeyDb) -> int:
    emit(args, {"access": access.mode_text(db.access_control()),
                "operators": len(db.operators())}, _said)
    return EXIT_OK


def _entry_text(row: dict[str, Any]) -> str:
    detail = " ".join(f"{k}={v}" for k, v in sorted(row["detail"].items()))
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row["at"]))
    parts = [f"{row['seq']:>6}", when, row["event"], f"by {row['operator']}"]
    parts += [f"tid {row['tid']}"] if row["tid"] else []
    parts += [f"gen {row['generation']}"] if row["generation"] is not None else []
    return "  ".join(parts + ([detail] if detail else []))


@_with_db
def cmd_audit_show(args: argparse.Namespace, db: KeyDb) -> int:
    since = None if args.since is None else system_clock() - args.since
    rows = [entry.as_dict() for entry, _ in db.audit_entries()
            if (args.tid is None or entry.tid == args.tid) and (since is None or entry.at >= since)]
    emit(args, rows, lambda r: "\n".join(_entry_text(row) for row in r) or "(no entries)")
    return EXIT_OK


@_with_db
def cmd_audit_verify(args: argparse.Namespace, db: KeyDb) -> int:
    verdict = verify_trail(db.vault.audit_key, db.audit_entries(), db.audit_head())
    result = {"good": verdict.good, "entries": verdict.entries, "broken_at": verdict.broken_at,
              "problem": verdict.problem}
    emit(args, result, lambda r: f"audit trail good: {r['entries']} entries, chain and head "
                                 f"verified" if r["good"] else
                                 f"audit trail BROKEN at entry {r['broken_at']}: {r['problem']}")
    return EXIT_OK if verdict.good else EXIT_ERROR


@_with_db_path
def cmd_lmk_components(args: argparse.Namespace, db: KeyDb, path: Path) -> int:
    result = admin.lmk_components(db, args.components, Path(args.out), system_rng)
    db.record("lmk components", detail={"components": result["components"],
                                        "lmk_kcv": result["lmk_kcv"]})
    emit(args, result, lambda r: f"wrote {r['components']} LMK components (LMK check value "
                                 f"{r['lmk_kcv']}): " + ", ".join(r["files"])
                                 + "; give each to its own custodian and delete the folder")
    return EXIT_OK


@_checked
def cmd_lmk_rotate(args: argparse.Namespace, actor: Actor | None) -> int:
    result = admin.rotate_lmk(resolve(args.data), system_rng, actor)
    emit(args, result, lambda r: f"LMK rotated: {r['old_lmk_kcv']} -> {r['lmk_kcv']}, "
                                 f"{r['keys_resealed']} keys re-sealed")
    return EXIT_OK


def _counts_text(r: dict[str, Any]) -> str:
    return (f"{r['terminals']} terminals, {r['keys']} keys, {r['cards']} cards, {r['txns']} "
            f"transactions (LMK check value {r['lmk_kcv']})")


@_with_db_path
def cmd_backup(args: argparse.Namespace, db: KeyDb, path: Path) -> int:
    if args.out is None:
        raise admin.UsageError("backup needs --out FILE (or `backup verify FILE`)")
    result = admin.make_backup(db, path, Path(args.out))
    db.record("backup", detail={"file": Path(args.out).name, "keys": result["keys"]})
    emit(args, result, lambda r: f"backed up to {r['backup']}: " + _counts_text(r))
    return EXIT_OK


@_checked
def cmd_backup_verify(args: argparse.Namespace, actor: Actor | None) -> int:
    result = admin.verify_backup(resolve(args.data), Path(args.file))
    emit(args, result, lambda r: f"verified {r['backup']}: MAC good, {r['keys_opened']} keys "
                                 f"opened with matching check values; " + _counts_text(r))
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    if getattr(args, "data", None) is None:
        raise admin.UsageError("restore needs --data DIR (the folder to restore into)")
    path = resolve(args.data)
    before = set(os.listdir(path)) if path.is_dir() else None
    result = admin.restore(Path(args.file), path, Path(args.lmk) if args.lmk else None,
                           args.module)
    try:  # the operators are the backup's own: checked once it is restored, undone if refused
        _with_db(lambda _args, db: db.record("restored", detail={"file": Path(args.file).name})
                 or EXIT_OK)(args)
    except AccessDenied:
        _undo_restore(path, before)
        raise
    emit(args, result, lambda r: f"restored {r['restored']}: " + _counts_text(r))
    return EXIT_OK


def _undo_restore(path: Path, before: set[str] | None) -> None:
    """A restore its custodians were refused for leaves the folder as it was: the files it made
    (the database, and the LMK or token file it copied in) are removed."""
    for name in set(os.listdir(path)) - (before or set()):
        (path / name).unlink(missing_ok=True)
    if before is None:
        path.rmdir()


def _ceremony(args: argparse.Namespace, make: Callable[[], tuple[dict[str, Any], Any]]) -> int:
    """The --out file is claimed (created, never over another) before the database changes, and
    removed again if the ceremony is refused: a refused command leaves no file behind."""
    out = Path(args.out) if args.out else None
    fd = admin.claim_injection_file(out) if out else None
    try:
        result, tmk = make()
    except BaseException:
        if out is not None and fd is not None:
            os.close(fd)
            out.unlink(missing_ok=True)
        raise
    emit(args, result, _ceremony_text)
    if out is not None and fd is not None:
        admin.write_injection_file(fd, result["tid"], result["merchant"], tmk)
        print(f"wrote the key-injection file {out} (mode 0600): it holds the clear TMK; "
              "delete it once the terminal has loaded it", file=sys.stderr)
    return EXIT_OK


@_with_db
def cmd_terminal_add(args: argparse.Namespace, db: KeyDb) -> int:
    return _ceremony(args, lambda: admin.add_terminal(
        db, args.tid, args.merchant, args.components, system_clock(), system_rng,
        args.tmk_lifetime))


@_with_db
def cmd_terminal_rekey(args: argparse.Namespace, db: KeyDb) -> int:
    return _ceremony(args, lambda: admin.rekey_terminal(
        db, args.tid, args.components, system_clock(), system_rng, args.tmk_lifetime))


@_with_db
def cmd_terminal_list(args: argparse.Namespace, db: KeyDb) -> int:
    emit(args, admin.list_terminals(db), lambda r: _table(r, ["tid", "merchant", "created"]))
    return EXIT_OK


@_with_db
def cmd_keys_show(args: argparse.Namespace, db: KeyDb) -> int:
    emit(args, admin.show_keys(db, args.tid, system_clock()), _keys_text)
    return EXIT_OK


@_with_db
def cmd_terminal_remove(args: argparse.Namespace, db: KeyDb) -> int:
    emit(args, admin.remove_terminal(db, args.tid), _said)
    return EXIT_OK


@_with_db
def cmd_keys_expire(args: argparse.Namespace, db: KeyDb) -> int:
    emit(args, admin.expire_keys(db, args.tid, system_clock()), _said)
    return EXIT_OK


@_with_db
def cmd_keys_rotate(args: argparse.Namespace, db: KeyDb) -> int:
    if args.all:
        if args.tid is not None or args.older_than is None:
            raise admin.UsageError("keys rotate --all takes --older-than DURATION and no TID")
        rotated = admin.rotate_all(db, system_clock(), args.older_than, args.grace)
        emit(args, rotated, lambda rows: "\n".join(_said(r) for r in rows) or "(no terminals)")
        return EXIT_OK
    if args.tid is None or args.older_than is not None:
        raise admin.UsageError("keys rotate takes a TID (or --all --older-than DURATION)")
    result = admin.rotate_keys(db, args.tid, system_clock(), args.key_lifetime, system_rng)
    emit(args, result, _said)
    return EXIT_OK


@_with_db
def cmd_keys_schedule(args: argparse.Namespace, db: KeyDb) -> int:
    emit(args, admin.key_schedule(db, system_clock(), args.within), lambda rows: _table(
        rows, ["tid", "keys", "generation", "age_s", "expires_in_s", "expired"]))
    return EXIT_OK


def _report_text(result: dict[str, Any]) -> str:
    rows = [{"tid": t["tid"],
             "tmk_expires_in_s": (t["tmk"] or {}).get("expires_in_s", "-"),
             "wk_expires_in_s": (t["working_keys"] or {}).get("expires_in_s", "-"),
             "last_sign_on": t["last_sign_on"] or "-", "14s": t["key_errors"],
             "blocked": f"{t['blocked_sales']} / {t['blocked_amount']}",
             "to_approval_s": "-" if t["first_14_to_approval_s"] is None
             else t["first_14_to_approval_s"],
             "at_risk": "; ".join(t["at_risk"]) or "-"} for t in result["terminals"]]
    fleet = result["fleet"]
    causes = ", ".join(f"{c['reason']} x{c['count']}" for c in fleet["most_frequent_causes"])
    return "\n".join([
        _table(rows, list(rows[0]) if rows else ["tid"]),
        f"fleet: {fleet['terminals']} terminals, {len(fleet['at_risk'])} at risk "
        f"({', '.join(fleet['at_risk']) or 'none'}); {fleet['key_errors']} key errors blocked "
        f"{fleet['blocked_sales']} sales ({fleet['blocked_amount']})",
        f"most frequent causes: {causes or 'none'}"])


@_with_db
def cmd_report_keys(args: argparse.Namespace, db: KeyDb) -> int:
    lines: list[str] = []
    if args.log:
        with open(args.log, encoding="utf-8", errors="replace") as log:
            lines = log.readlines()
    emit(args, admin.key_report(db, lines, system_clock(), args.since, args.within), _report_text)
    return EXIT_OK


@_with_db
def cmd_keys_revoke(args: argparse.Namespace, db: KeyDb) -> int:
    emit(args, admin.revoke_keys(db, args.tid, args.tmk), _said)
    return EXIT_OK


@_with_db
def cmd_keys_tamper(args: argparse.Namespace, db: KeyDb) -> int:
    emit(args, admin.tamper_keys(db, args.tid, system_rng), _said)
    return EXIT_OK


@_with_db
def cmd_card_add(args: argparse.Namespace, db: KeyDb) -> int:
    pin = args.pin if args.pin_env is None else os.environ.get(args.pin_env)
    if pin is None:
        raise admin.UsageError(f"--pin-env {args.pin_env}: that variable is not set")
    result = admin.add_card(db, args.pan, args.expiry, pin, args.balance, args.currency)
    emit(args, result, _said)
    return EXIT_OK


@_with_db
def cmd_card_list(args: argparse.Namespace, db: KeyDb) -> int:
    emit(args, admin.list_cards(db), lambda r: _table(r, ["pan", "expiry", "balance", "currency"]))
    return EXIT_OK


@_with_db
def cmd_card_show(args: argparse.Namespace, db: KeyDb) -> int:
    emit(args, admin.show_card(db, args.pan), _said)
    return EXIT_OK


def _batch_text(result: dict[str, Any]) -> str:
    totals = result["totals"]
    lines = [f"terminal {result['tid']}  batch {result['batch']}  {result['state']}",
             f"debits {totals['debit_count']} {totals['debit_amount']}  "
             f"credits {totals['credit_count']} {totals['credit_amount']}"
             + (f"  uploaded {result['uploaded']}" if result["uploaded"] else "")]
    lines.append(_table(result["transactions"],
                        ["stan", "kind", "rc", "state", "pan", "amount", "auth", "original"]))
    return "\n".join(lines)


@_with_db
def cmd_batch_show(args: argparse.Namespace, db: KeyDb) -> int:
    emit(args, admin.show_batch(db, args.tid, args.batch), _batch_text)
    return EXIT_OK


def _open_log(path: str | None) -> TextIO:
    """The log holds masked PANs and the host's traffic: created mode 0600, appended to."""
    if path is None:
        return sys.stderr
    if not path:
        raise admin.UsageError("--log '' is not a file name")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8")


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _timeout(text: str) -> float:
    seconds = duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a timeout must be above zero")
    return seconds


def _check_ports(specs: list[str]) -> None:
    """A spec that cannot parse, or a device path that is not there, fails the start in one
    line instead of a serving host that logs the failure and runs on without the port."""
    for spec in specs:
        try:
            port = parse_port_spec(spec).port
        except PortSpecError as exc:
            raise admin.UsageError(f"--serial {spec}: {exc}") from None
        problem = _port_problem(port)
        if problem:
            raise admin.UsageError(f"--serial {spec}: {problem}")


def _port_problem(port: str) -> str | None:
    """Why a port cannot be served, as far as can be told without opening it (opening a real
    line toggles its modem lines): a device path must be a character device, a URL one of
    pyserial's schemes. A reachable-looking URL that fails later is logged by the server."""
    if port == PTY:
        return None
    if "://" in port:
        import serial as pyserial  # pyserial only for the commands that serve a port

        try:
            pyserial.serial_for_url(port, do_not_open=True)
        except (ValueError, pyserial.SerialException) as exc:
            return str(exc)
        return None
    try:
        is_device = stat.S_ISCHR(os.stat(port).st_mode)
    except (OSError, ValueError) as exc:
        return f"{port}: {getattr(exc, 'strerror', None) or exc}"
    return None if is_device else f"{port} is not a serial device"


def cmd_serve(args: argparse.Namespace) -> int:
    if args.tcp is None and not args.serial:
        raise admin.UsageError("serve needs --tcp HOST:PORT and/or --serial SPEC")
    path = resolve(args.data)
    if path.is_dir():
        with folder_lock(path, exclusive=False):
            return _with_db(_serve)(args)
    return _with_db(_serve)(args)


def _captures(path: str | None, tcp: bool, serial: bool) -> tuple[PcapTap | None, LinkCapture | None]:
    """`--pcap FILE`: TCP goes to FILE; serial link frames too when there is no TCP, else to
    FILE with `-serial` before its suffix (a pcap file holds one link type)."""
    if path is None:
        return None, None
    tap = PcapTap(path) if tcp else None
    link = None
    if serial:
        target = Path(path)
        if tcp:
            target = target.with_name(f"{target.stem}-serial{target.suffix}")
        link = LinkCapture(open_capture(target, LINKTYPE_USER0))
    return tap, link


def _serve(args: argparse.Namespace, db: KeyDb) -> int:
    # The serving code (the core, its shell, the Prometheus client) is imported here, not at
    # the top: every other command starts in about half the time without it.
    from prometheus_client import start_http_server

    from host.core import HostCore
    from host.metrics import PrometheusMetrics
    from host.server import SerialPorts, serve_until_signalled

    _check_ports(args.serial)
    dialect: Dialect = args.dialect
    codec = codec_for(dialect)
    config = HandlerConfig(codec, db.vault, system_rng, args.key_error_code, args.key_lifetime,
                           args.key_sets, renew_before=args.renew_before)
    stream = _open_log(args.log)
    log = MessageLog(stream, dialect, args.trace)
    try:
        clock = serving_clock(os.environ)
    except ValueError:
        raise admin.UsageError(f"${CLOCK_OFFSET_ENV} must be a number of seconds") from None
    framing = Framing(dialect)
    if args.tcp is not None and not framing.length.size:
        raise admin.UsageError(f"dialect {dialect.name} has no length header (length = \"none\"): "
                               "its frames need a serial link (--serial), not --tcp")
    db.clock = clock  # the time of the trail's entries for what terminals do
    log.event(event="access", mode=access.mode_text(db.access_control()))
    core = HostCore(db, config, clock, log, framing)
    if args.rules:
        core.rules = RuleBook(Path(args.rules), resolve(args.data) / HITS_FILE, log.event)
    later: list[str] = []  # the metrics address, after the first listening line (tests read it)
    exporter = None
    if args.metrics:
        metrics = PrometheusMetrics(config.pipeline.served, clock, db.path, args.key_error_code)
        exporter, _ = start_http_server(args.metrics[1], args.metrics[0], metrics.registry)
        core.metrics = metrics
        bound = exporter.server_address
        later.append(f"listening metrics {bound[0]}:{bound[1]}")

    def announce(line: str) -> None:
        for text in (line, *later):
            print(json.dumps({"listening": text}) if args.json else text, flush=True)
        later.clear()

    def trace_line(text: str) -> None:
        stream.write(text + "\n")
        stream.flush()

    tap, capture = _captures(args.pcap, args.tcp is not None, bool(args.serial))
    serial = SerialPorts(args.serial, TraceOptions.for_dialect(dialect, trace_line)
                         if args.trace else None, capture)
    db.set_synchronous(args.sync)
    limits = Limits(args.max_connections or default_max_connections(), args.idle_timeout,
                    args.frame_timeout)
    try:
        asyncio.run(serve_until_signalled(core, args.tcp, serial, announce, limits, tap))
    finally:
        for opened in (tap, capture):
            if opened is not None:
                opened.close()
        if exporter is not None:
            exporter.shutdown()
        if stream is not sys.stderr:
            stream.close()
    return EXIT_OK


def cmd_top(args: argparse.Namespace) -> int:
    """A running host's `--metrics` endpoint, read every --interval seconds and shown as one
    screen; rates are over the time between two reads (`--once`: two reads, one view)."""
    url = metrics_url(args.metrics)
    previous = scrape(url, args.timeout)
    for shown in itertools.count(1):
        time.sleep(args.interval)
        current = scrape(url, args.timeout)
        view = summarize(previous, current)
        if args.json:
            print(json.dumps(view), flush=True)
        else:
            print(("" if args.once else "\x1b[H\x1b[2J") + render(view), flush=True)
        if args.once or (args.count and shown >= args.count):
            break
        previous = current
    return EXIT_OK


def cmd_rules_show(args: argparse.Namespace) -> int:
    """The rules of a rules file with the hits a serving host counted (saved in the data
    folder); the file named by --rules, else the one the host last served."""
    saved_path = resolve(args.data) / HITS_FILE
    try:
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = {}
    path = args.rules or saved.get("file")
    if not path:
        raise admin.UsageError(f"no rules served from {resolve(args.data)} yet: give --rules FILE")
    hits = saved.get("hits", {}) if saved.get("file") in (None, str(path)) else {}
    rows = describe(load_rules(Path(path)), hits)
    emit(args, {"file": str(path), "rules": rows},
         lambda r: f"rules of {r['file']}\n" + _table(
             [dict(row, match=json.dumps(row["match"])) for row in r["rules"]],
             ["name", "hits", "action", "match"]))
    return EXIT_OK


def cmd_ladder(args: argparse.Namespace) -> int:
    """A terminal's exchange drawn from the host's --log file (text, or SVG with --svg)."""
    entries = []
    with open(args.log, encoding="utf-8") as stream:
        for line in stream:
            if line.startswith("{"):
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    continue
    rungs = ladder.from_host_log(entries, args.tid, args.since, args.until)
    if args.svg:
        Path(args.svg).write_text(ladder.svg(rungs, f"terminal {args.tid}"), encoding="utf-8")
    emit(args, {"tid": args.tid, "rungs": [asdict(r) for r in rungs]},
         lambda r: ladder.text(rungs))
    return EXIT_OK


def cmd_bridge(args: argparse.Namespace) -> int:
    """Relay a serial device to a TCP host (ours or a real one) until SIGINT/SIGTERM."""
    args.serial = spec_from_arguments(args.serial, args)
    _check_ports([args.serial])
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    trace = (TraceOptions.for_dialect(args.dialect, lambda text: print(text, file=sys.stderr,
                                                                       flush=True))
             if args.trace else None)
    host, port = args.tcp
    error = run_bridge(args.serial, host, port, stop=stop, trace=trace,
                       on_ready=lambda name: print(f"bridging serial {name}", flush=True))
    if error is not None:
        raise OSError(str(error))
    return EXIT_OK


# --- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # --data and --json may come before or after the command; the command's copies default to
    # SUPPRESS so that they do not overwrite what was given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", default=argparse.SUPPRESS,
                        help="host data folder (default $POSEMU_HOST_DATA or .posemu/host)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print one JSON document")
    login = common.add_argument_group("operator (a host under access control, "
                                      "docs/operations.md)")
    login.add_argument("--operator", metavar="NAME", default=argparse.SUPPRESS,
                       help="who runs this command")
    login.add_argument("--password-env", type=env_name, metavar="VAR", default=argparse.SUPPRESS,
                       help=f"the variable holding the operator's password (default "
                            f"{PASSWORD_ENV}; else asked on the terminal)")
    login.add_argument("--second-operator", metavar="NAME", default=argparse.SUPPRESS,
                       help="the second key custodian of a dual-control command")
    login.add_argument("--second-password-env", type=env_name, metavar="VAR",
                       default=argparse.SUPPRESS,
                       help=f"the variable holding the second custodian's password (default "
                            f"{SECOND_PASSWORD_ENV}; else asked)")

    parser = OneLineParser(
        prog="pos-host",
        description="A simulated acquirer host: keys under an LMK, sign-on key download, "
                    "MAC- and PIN-checked purchases, and key error 14 with its reason.",
    )
    parser.add_argument("--data", help="host data folder (default $POSEMU_HOST_DATA or "
                                       ".posemu/host)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(group: Any, name: str, handler: Callable[[argparse.Namespace], int],
                help_text: str) -> argparse.ArgumentParser:
        sub = group.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    init = command(commands, "init", cmd_init,
                   "create the data folder, the LMK (a file, or inside a PKCS#11 token) and the "
                   "key database")
    init.add_argument("--hsm", choices=("file", "pkcs11"), default="file",
                      help="where the LMK lives (default: the file lmk.key)")
    init.add_argument("--module", help="the PKCS#11 library (e.g. SoftHSM2's libsofthsm2.so)")
    init.add_argument("--token", help="the token's label")
    init.allow_abbrev = False  # `--pin 1234` is not taken for --pin-env: no PIN on a command line
    init.add_argument("--pin-env", type=env_name, default=DEFAULT_PIN_ENV, metavar="VAR",
                      help=f"the variable holding the user PIN (default {DEFAULT_PIN_ENV}; "
                           f"else asked on the terminal)")
    init.add_argument("--lmk-components", nargs="+", metavar="PATH",
                      help="rebuild the LMK from custodians' component files (or folders)")
    init.add_argument("--access-control", action="store_true",
                      help="operators with roles and dual control from the start; --operator "
                           "NAME is the first administrator")

    def new_password(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--new-password-env", type=env_name, metavar="VAR",
                         default=NEW_PASSWORD_ENV,
                         help=f"the variable holding the new password (default "
                              f"{NEW_PASSWORD_ENV}; else asked twice on the terminal)")
    new_password(init)

    lmk = commands.add_parser("lmk", help="the LMK's lifecycle").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    components = command(lmk, "components", cmd_lmk_components,
                         "export a file LMK as clear components for custodians")
    components.add_argument("--components", type=int, choices=(2, 3), required=True)
    components.add_argument("--out", required=True, help="a new folder for the component files")
    command(lmk, "rotate", cmd_lmk_rotate,
            "a new LMK, every stored key re-sealed under it atomically (host stopped)")

    backup = command(commands, "backup", cmd_backup,
                     "the key database as one MACed file, keys still sealed (safe while serving)")
    backup.add_argument("--out", help="the backup file to create")
    verify = backup.add_subparsers(dest="action", metavar="ACTION").add_parser(
        "verify", parents=[common], help="check a backup's MAC, open every key, count")
    verify.set_defaults(handler=cmd_backup_verify)
    verify.add_argument("file")
    restore = command(commands, "restore", cmd_restore,
                      "a backup as a new host's database (--data: the folder to restore into)")
    restore.add_argument("file")
    restore.add_argument("--lmk", help="the LMK file to restore with (default: the folder's own)")
    restore.add_argument("--module", help="for a backup whose LMK is in a token: its PKCS#11 "
                                          "library (PIN from the variable the backup names)")

    terminal = commands.add_parser("terminal", help="provision terminals").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    for name, handler, help_text in (
        ("add", cmd_terminal_add, "register a terminal and print its TMK key ceremony"),
        ("rekey", cmd_terminal_rekey, "a new TMK key ceremony for a known terminal"),
    ):
        sub = command(terminal, name, handler, help_text)
        sub.add_argument("tid")
        if name == "add":
            sub.add_argument("--merchant", required=True)
        sub.add_argument("--components", type=int, choices=(2, 3), default=2)
        sub.add_argument("--tmk-lifetime", type=duration, default=admin.DEFAULT_TMK_LIFETIME)
        sub.add_argument("--out", help="also write a key-injection file (mode 0600)")
    command(terminal, "list", cmd_terminal_list, "list terminals")
    command(terminal, "show", cmd_keys_show, "a terminal and its keys").add_argument("tid")
    command(terminal, "remove", cmd_terminal_remove, "forget a terminal").add_argument("tid")

    keys = commands.add_parser("keys", help="inspect keys and cause key errors").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    command(keys, "show", cmd_keys_show,
            "generations, check values, ages, states (never material)").add_argument("tid")
    command(keys, "expire", cmd_keys_expire,
            "make the working keys stale now (K2)").add_argument("tid")
    rotate = command(keys, "rotate", cmd_keys_rotate,
                     "a new working-key generation the terminal is not told about (K2); with "
                     "--all --older-than, a planned rotation the terminals are told about")
    rotate.add_argument("tid", nargs="?")
    rotate.add_argument("--key-lifetime", type=duration, default=DEFAULT_KEY_LIFETIME)
    rotate.add_argument("--all", action="store_true",
                        help="every terminal whose working keys are --older-than this")
    rotate.add_argument("--older-than", type=duration, metavar="DURATION")
    rotate.add_argument("--grace", type=duration, default=2 * 3600.0, metavar="DURATION",
                        help="with --all: the keys expire this long from now (default 2h; "
                             "serve with --renew-before at least this)")
    schedule = command(keys, "schedule", cmd_keys_schedule,
                       "which terminals' working keys and TMKs expire when")
    schedule.add_argument("--within", type=duration, default=24 * 3600.0, metavar="DURATION",
                          help="expiring within this (default 24h), or expired")
    revoke = command(keys, "revoke", cmd_keys_revoke, "revoke the working keys (K1 WK) "
                                                      "or, with --tmk, the TMK (K1 TMK)")
    revoke.add_argument("tid")
    revoke.add_argument("--tmk", action="store_true")
    command(keys, "tamper", cmd_keys_tamper,
            "the host's MAK stops matching the terminal's (K3)").add_argument("tid")

    operator = commands.add_parser("operator", help="who may run key commands"
                                   ).add_subparsers(dest="action", required=True, metavar="ACTION")
    add = command(operator, "add", cmd_operator_add, "a new operator with a role")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ops.ROLES)
    new_password(add)
    command(operator, "remove", cmd_operator_remove, "forget an operator").add_argument("name")
    command(operator, "list", cmd_operator_list, "operators and roles (never a credential)")
    passwd = command(operator, "passwd", cmd_operator_passwd,
                     "a new password: one's own, or anyone's as administrator")
    passwd.add_argument("name")
    new_password(passwd)

    switch = commands.add_parser("access", help="access-control mode").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    command(switch, "on", cmd_access_on, "operators, roles and dual control from now on "
                                         "(an administrator)")
    command(switch, "off", cmd_access_off, "back to lab mode (dual control)")
    command(switch, "show", cmd_access_show, "which mode the host is in")

    trail = commands.add_parser("audit", help="the tamper-evident audit trail").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    show = command(trail, "show", cmd_audit_show, "the entries (never key material; PANs masked)")
    show.add_argument("--tid", help="one terminal's entries")
    show.add_argument("--since", type=duration, metavar="DURATION",
                      help="entries from this long ago (e.g. 24h)")
    command(trail, "verify", cmd_audit_verify,
            "check the MAC chain: names the first edited, deleted, inserted or moved entry")

    card = commands.add_parser("card", help="the test issuer's cards").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    add = command(card, "add", cmd_card_add, "add a card")
    add.add_argument("pan")
    add.add_argument("--expiry", required=True, help="YYMM")
    pin = add.add_mutually_exclusive_group(required=True)
    pin.add_argument("--pin", help="the card's PIN (a test card's; --pin-env keeps it off argv)")
    pin.add_argument("--pin-env", type=env_name, metavar="VAR",
                     help="read the PIN from this environment variable, not the command line")
    add.add_argument("--balance", required=True, help="e.g. 100.00")
    add.add_argument("--currency", default="156")
    command(card, "list", cmd_card_list, "list cards (PANs masked)")
    command(card, "show", cmd_card_show, "a card's balance (PAN masked)").add_argument("pan")

    batch = commands.add_parser("batch", help="terminals' batches as the host keeps them"
                                ).add_subparsers(dest="action", required=True, metavar="ACTION")
    show = command(batch, "show", cmd_batch_show,
                   "a batch: state, totals, each transaction with its state (PANs masked)")
    show.add_argument("tid")
    show.add_argument("--batch", help="batch number (default: the newest)")

    serve = command(commands, "serve", cmd_serve, "answer terminals until SIGINT/SIGTERM")
    serve.add_argument("--tcp", type=host_port, metavar="HOST:PORT",
                       help="listen here (port 0: any free port; the line printed says which)")
    serve.add_argument("--serial", action="append", default=[], metavar="SPEC",
                       help="also serve a serial port (device path or pyserial URL; repeatable)")
    serve.add_argument("--dialect", type=dialect_arg, default="iso87",
                       help="iso87 (default), cup, or a JSON/TOML dialect file")
    serve.add_argument("--key-error-code", type=response_code, default="14",
                       help="the response code of a key error (e.g. A0)")
    serve.add_argument("--key-sets", type=key_sets, default=frozenset(KEY_SETS), metavar="LIST",
                       help="the key sets issued at sign-on (default 001,003,004); another is "
                            "answered 14 K3 WK key set unsupported")
    serve.add_argument("--key-lifetime", type=duration, default=DEFAULT_KEY_LIFETIME,
                       help="working-key lifetime (e.g. 24h)")
    serve.add_argument("--renew-before", type=duration, default=0.0, metavar="DURATION",
                       help="answers under working keys expiring within this (e.g. 2h) tell the "
                            "terminal to sign on after the transaction (default: never)")
    serve.add_argument("--trace", action="store_true", help="log each decoded frame, masked")
    serve.add_argument("--pcap", metavar="FILE",
                       help="write every connection to FILE as pcap (mode 0600: raw bytes, PANs "
                            "and key ciphertext included; serial links to FILE-serial with --tcp)")
    serve.add_argument("--log", help="append the JSON log here instead of stderr")
    serve.add_argument("--max-connections", type=_count, metavar="N",
                       help="at N open connections a new one closes the one idle longest "
                            f"(default: the descriptor limit less those open and "
                            f"{FD_HEADROOM} to spare)")
    serve.add_argument("--idle-timeout", type=_timeout, default=IDLE_TIMEOUT,
                       help=f"close a connection silent this long (default {IDLE_TIMEOUT:g}s)")
    serve.add_argument("--frame-timeout", type=_timeout, default=FRAME_TIMEOUT,
                       help="close a connection whose frame is not complete this long after "
                            f"its first byte (default {FRAME_TIMEOUT:g}s)")
    serve.add_argument("--sync", choices=SYNC_MODES, default="full",
                       help="full (default): every answer that moves money leaves after its "
                            "commit is fsynced; normal: a power cut may lose the last ones "
                            "(throw-away load tests only)")
    serve.add_argument("--rules", metavar="FILE",
                       help="a TOML/JSON rules file programming answers and faults "
                            "(docs/scenarios.md); reloaded when it changes")
    serve.add_argument("--metrics", type=host_port, metavar="HOST:PORT",
                       help="serve Prometheus metrics here (docs/host.md; port 0: any free port, "
                            "the second line printed says which)")

    top = command(commands, "top", cmd_top,
                  "a live view of a running host from its --metrics endpoint")
    top.add_argument("--metrics", required=True, metavar="HOST:PORT|URL",
                     help="the address given to `serve --metrics`")
    top.add_argument("--interval", type=_timeout, default=2.0, help="seconds between reads")
    top.add_argument("--once", action="store_true", help="one view (two reads) and exit")
    top.add_argument("--count", type=_count, help="stop after N views")
    top.add_argument("--timeout", type=_timeout, default=5.0, help="per read")

    rules = commands.add_parser("rules", help="the rules file of `serve --rules`").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    show = command(rules, "show", cmd_rules_show, "each rule with its hits so far")
    show.add_argument("--rules", metavar="FILE", help="default: the file the host last served")

    report = commands.add_parser("report", help="reports over the keys and the log"
                                 ).add_subparsers(dest="action", required=True, metavar="ACTION")
    health = command(report, "keys", cmd_report_keys,
                     "key health: ages, expiries, sign-ons, 14s and the sales they blocked")
    health.add_argument("--log", metavar="FILE", help="a `serve --log` file: where the 14s are")
    health.add_argument("--since", type=duration, default=24 * 3600.0, metavar="DURATION",
                        help="log lines from this long ago (default 24h)")
    health.add_argument("--within", type=duration, default=24 * 3600.0, metavar="DURATION",
                        help="keys expiring within this put a terminal at risk (default 24h)")

    draw = command(commands, "ladder", cmd_ladder,
                   "a terminal's exchange as a ladder diagram, from a `serve --log` file")
    draw.add_argument("--log", required=True, metavar="FILE")
    draw.add_argument("--tid", required=True)
    draw.add_argument("--since", type=float, metavar="EPOCH", help="from this time (log ts)")
    draw.add_argument("--until", type=float, metavar="EPOCH", help="up to this time (log ts)")
    draw.add_argument("--svg", metavar="FILE", help="also write the ladder as SVG")

    bridge = command(commands, "bridge", cmd_bridge,
                     "relay a serial device to a TCP host until SIGINT/SIGTERM")
    bridge.add_argument("--serial", required=True, metavar="SPEC",
                        help="device path, pyserial URL or pty, with ,key=value settings or the "
                             "flags below")
    add_port_arguments(bridge)
    bridge.add_argument("--tcp", required=True, type=host_port, metavar="HOST:PORT")
    bridge.add_argument("--dialect", type=dialect_arg, default="iso87",
                        help="for masking the trace")
    bridge.add_argument("--trace", action="store_true", help="print the line's bytes, masked")
    return parser


ERRORS = (admin.UsageError, AccessDenied, PasswordError, RulesError, KeyDbError, DataError,
          LmkError, CryptoError, sqlite3.Error, OSError, TokenError, BackupError, TopError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ERRORS as exc:
        message = one_line(str(exc) or type(exc).__name__)
        if args.json:
            print(json.dumps({"error": message}))
        print(f"pos-host: {message}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, (admin.UsageError, PasswordError)) else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

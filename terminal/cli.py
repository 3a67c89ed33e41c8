"""`pos-terminal`: a thin layer of argument parsing and printing over terminal.commands.

Exit status: 0 done (approved, OK); 1 the host or the terminal said no (decline, key error);
2 a usage or terminal-state problem; 3 the host could not be reached or answered nonsense.
"""

from __future__ import annotations

import argparse
import getpass
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from protocol import passwords
from protocol.amounts import format_amount, parse_amount
from protocol.errors import ProtocolError
from protocol.injection import InjectionError
from protocol.mask import mask_pan
from protocol.transport.serial import PortSpecError, add_port_arguments, parse_port_spec, spec_from_arguments
from protocol.transport.tcp import TransportError
from terminal import commands as cmd
from terminal import render
from terminal.ceremony import CeremonyError, Component
from terminal.channel import Wire, open_tap
from terminal.fsops import exclusive
from terminal.keystore import KeystoreError
from terminal.pending import PendingError
from terminal.session import Purchase, Result
from terminal.store import (
    BATCH_MAX,
    MAX_WK_LIFETIME,
    MID_SIZE,
    STAN_MAX,
    SUPERVISOR_ENV,
    TID_SIZE,
    Config,
    StateError,
    check_host,
    check_id,
    check_supervisor,
    find_terminal,
    root_folder,
)

EXIT_OK, EXIT_NO, EXIT_USAGE, EXIT_HOST = 0, 1, 2, 3
PIN_PROMPT = object()
MAX_TIMEOUT = 3600.0
ASCII_DIGITS = re.compile(r"[0-9]+", re.ASCII)


def one_line(text: str) -> str:
    return " ".join(text.split())


class UsageError(Exception):
    """A command line argparse refuses; main() reports it like every other refusal."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), like every other refusal,
    and a JSON document too under --json, instead of argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{one_line(message)} (see --help)")


def _checked(check: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a checker that raises ValueError with a sentence."""

    def convert(text: str) -> Any:
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = check.__name__
    return convert


def seconds(text: str) -> float:
    """A timeout: finite, positive, at most an hour (`inf`, `nan`, `-1` and `0` are typos)."""
    value = float(text) if re.fullmatch(r"[0-9]+(\.[0-9]*)?|\.[0-9]+", text, re.ASCII) else math.nan
    if not 0 < value <= MAX_TIMEOUT:
        raise ValueError(f"must be a number of seconds from 0 to {MAX_TIMEOUT:g}, not {text!a}")
    return value


def folder_path(text: str) -> Path:
    """A path given on the command line: not empty (`--data ''` would mean the current folder)
    and printable as it is."""
    if not text.strip():
        raise ValueError("must not be empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"must be valid UTF-8, not {text!a}") from None
    return Path(text)


def whole(low: int, high: int) -> Callable[[str], int]:
    def number(text: str) -> int:
        if not ASCII_DIGITS.fullmatch(text) or not low <= int(text) <= high:
            raise ValueError(f"must be a whole number from {low} to {high}, not {text!a}")
        return int(text)

    return number


def mmdd(text: str) -> str:
    if not (len(text) == 4 and ASCII_DIGITS.fullmatch(text) and 1 <= int(text[:2]) <= 12
            and 1 <= int(text[2:]) <= 31):
        raise ValueError(f"must be a date as MMDD, not {text!a}")
    return text


def digits(text: str) -> str:
    """Card data is ASCII digits: `str.isdigit` also takes full-width and Arabic-Indic ones."""
    if not ASCII_DIGITS.fullmatch(text):
        raise ValueError("must be ASCII digits")
    return text


class Output:
    """Human lines or one JSON document per command."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, data: dict[str, Any], lines: list[str]) -> None:
        if self.as_json:
            print(json.dumps(data, indent=2, sort_keys=True, default=str))
        else:
            print("\n".join(lines))

    def fail(self, code: int, kind: str, message: str) -> int:
        """One line on stderr always; with --json, the same as a document on stdout too."""
        if self.as_json:
            print(json.dumps({"error": kind, "message": message}, indent=2))
        print(f"pos-terminal: {one_line(message)}", file=sys.stderr)
        return code


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The options every command takes, before or after its name. On subcommands they default
    to SUPPRESS so a value given before the command is not overwritten by the default."""

    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--data", type=_checked(folder_path), default=d(None),
                        help="the terminal's folder (default: $POSEMU_TERMINAL_DATA/TID "
                             "or .posemu/terminal/TID)")
    parser.add_argument("--tid", type=TID, default=d(None), help="which terminal, when several exist")
    parser.add_argument("--host", type=_checked(check_host), default=d(None), help="tcp://HOST:PORT")
    parser.add_argument("--serial", default=d(None), metavar="SPEC",
                        help="reach the host over a serial link instead of TCP")
    add_port_arguments(parser, default=d(None))
    parser.add_argument("--dialect", default=d(None), help="iso87, cup or a spec file")
    parser.add_argument("--connect-timeout", type=_checked(seconds), default=d(5.0), metavar="S")
    parser.add_argument("--timeout", type=_checked(seconds), default=d(15.0), metavar="S",
                        help="how long to wait for a response")
    parser.add_argument("--json", action="store_true", default=d(False))
    parser.add_argument("--trace", action="store_true", default=d(False),
                        help="show each frame decoded and masked (on stderr)")
    parser.add_argument("--auto-signon", action="store_true", default=d(False),
                        help="on K1/K2 of a working key, sign on once and retry")
    parser.add_argument("--pcap", default=d(None), metavar="FILE",
                        help="write what crosses the line to FILE (pcap, mode 0600; it holds the "
                             "raw bytes, PAN and key ciphertext included)")


def supervisor_env(p: argparse.ArgumentParser, text: str | None = None) -> None:
    p.add_argument("--supervisor-env", metavar="VAR", default=None,
                   help=text or f"the variable holding the supervisor password (default "
                                f"{SUPERVISOR_ENV}; else asked when at a terminal)")


def _supervisor_password(args: argparse.Namespace) -> Callable[[], str | None]:
    """The supervisor password from its variable, else a hidden prompt at a terminal; never
    from the command line."""
    def read() -> str | None:
        typed = os.environ.get(args.supervisor_env or SUPERVISOR_ENV)
        if typed is None and sys.stdin.isatty():
            typed = getpass.getpass("supervisor password: ")
        return typed
    return read


def _new_supervisor(args: argparse.Namespace) -> str | None:
    """`init --supervisor` (asked twice) or `--supervisor-env VAR`: the hash to keep."""
    if args.supervisor_env:
        typed = os.environ.get(args.supervisor_env)
        if typed is None:
            raise UsageError(f"--supervisor-env: ${args.supervisor_env} is not set")
    elif args.supervisor:
        if not sys.stdin.isatty():
            raise UsageError("--supervisor asks at a terminal; use --supervisor-env VAR")
        typed = getpass.getpass("supervisor password: ")
        if getpass.getpass("again: ") != typed:
            raise UsageError("the two passwords differ; nothing was made")
    else:
        return None
    return passwords.hash_password(typed, os.urandom, passwords.cost(os.environ))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pos-terminal", description="A POS terminal emulator (ISO 8583-style).")
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p, suppress=True)
        return p

    p = command("init", "create a terminal: its folder, storage key and empty keystore")
    p.add_argument("new_tid", type=TID, metavar="TID")
    p.add_argument("--merchant", type=_checked(lambda t: check_id("merchant id", t, MID_SIZE)),
                   required=True, metavar="MID")
    p.add_argument("--key-set", default="003", choices=["001", "003", "004"])
    p.add_argument("--operator", default="01")
    p.add_argument("--wk-lifetime", type=_checked(whole(1, MAX_WK_LIFETIME)), default=24 * 3600,
                   metavar="SECONDS",
                   help="local working-key lifetime (K2 past it)")
    p.add_argument("--supervisor", action="store_true",
                   help="set a supervisor password, asked twice (load-tmk, signoff and "
                        "counters recover then need it)")
    supervisor_env(p, "set the supervisor password from this variable")

    p = command("load-tmk", "load the terminal master key from components or a file")
    supervisor_env(p)
    p.add_argument("--component", action="append", default=[], metavar="HEX")
    p.add_argument("--kcv", action="append", default=[], metavar="KCV",
                   help="the check value of the --component before it")
    p.add_argument("--tmk-kcv", metavar="KCV", help="the check value of the combined TMK")
    p.add_argument("--file", type=_checked(folder_path), metavar="INJECTION_FILE",
                   help="a key-injection file written by `pos-host terminal add --out`")

    p = command("signon", "download fresh working keys (0800)")
    p.add_argument("--key-set", choices=["001", "003", "004"])
    supervisor_env(command("signoff", "tell the host to discard this terminal's working keys "
                                      "(0820)"))
    command("echo", "check the line (0820 echo test)")

    def card(p: argparse.ArgumentParser) -> None:
        p.add_argument("--pan", type=_checked(digits), required=True)
        p.add_argument("--expiry", type=_checked(digits), required=True, metavar="YYMM")
        p.add_argument("--pin", type=_checked(digits), nargs="?", const=PIN_PROMPT, default=None,
                       metavar="NNNN",
                       help="the PIN; without a value, asked at a hidden prompt")
        p.add_argument("--pin-prompt", action="store_true", help="ask for the PIN, hidden")
        p.add_argument("--pin-env", metavar="VAR",
                       help="the PIN from this environment variable (scripts: never on a command line)")

    def original(p: argparse.ArgumentParser, amount_help: str) -> None:
        p.add_argument("--batch", type=_checked(whole(1, BATCH_MAX)), metavar="N",
                       help="the original's batch (default: found in the ledger)")
        p.add_argument("--amount", type=_checked(parse_amount), metavar="A", help=amount_help)

    p = command("purchase", "a keyed-card or chip purchase (0200)")
    p.add_argument("--amount", required=True, help="e.g. 12.34")
    card(p)
    p.add_argument("--chip", action="store_true",
                   help="an inserted chip card: entry mode 05x, field 55 (EMV tags), field 23")
    p.add_argument("--sequence", default="001", metavar="NNN",
                   help="the chip card's sequence number (field 23; default 001)")

    p = command("inquiry", "a balance inquiry (0200, processing code 310000)")
    card(p)

    p = command("void", "cancel a purchase of this terminal (0200, processing code 200000)")
    p.add_argument("--stan", type=_checked(whole(1, STAN_MAX)), metavar="N")
    p.add_argument("--rrn", type=_checked(digits), metavar="RRN",
                   help="the original's retrieval reference number (field 37), instead of --stan")
    original(p, "the amount to void (default: the original's, from the ledger)")
    card(p)

    p = command("refund", "give back part or all of an earlier purchase (0220)")
    p.add_argument("--stan", type=_checked(whole(1, STAN_MAX)), required=True, metavar="N")
    p.add_argument("--batch", type=_checked(whole(1, BATCH_MAX)), metavar="N",
                   help="the original's batch (default: found in the ledger)")
    p.add_argument("--amount", type=_checked(parse_amount), required=True, metavar="A")
    p.add_argument("--date", type=_checked(mmdd), metavar="MMDD",
                   help="the original's date, for an original the ledger does not know")
    card(p)

    command("reverse", "send the pending reversal now (0400)")
    command("settle", "settle the batch (0500); after an unbalanced answer, upload it (0320)")
    p = command("batch", "the ledger by batch: what this terminal believes happened")
    p.add_argument("--batch", type=_checked(whole(1, BATCH_MAX)), metavar="N")

    command("status", "keys (presence, generation, age, check value), counters, last exchange")
    command("diagnose", "explain the last key error 14 and how to fix it")

    p = command("counters", "after counters.json was lost or damaged: new STAN and batch past "
                            "every one this terminal can show it used")
    p.add_argument("action", choices=["recover"])
    p.add_argument("--stan", type=_checked(whole(1, STAN_MAX)), metavar="N",
                   help="the next STAN to use (default: the journal's last + 1000)")
    supervisor_env(p)
    return parser


TID = _checked(lambda text: check_id("TID", text, TID_SIZE))


def _wire(args: argparse.Namespace) -> Wire:
    """Checked before the terminal is touched; a bad port spec stays a line problem (exit 3)."""
    serial = spec_from_arguments(args.serial, args) if args.serial else None
    if serial is not None:
        try:
            parse_port_spec(serial)
        except PortSpecError as exc:
            raise TransportError(str(exc)) from None
    return Wire(host=args.host, serial=serial, connect_timeout=args.connect_timeout,
                response_timeout=args.timeout)


def _terminal(args: argparse.Namespace) -> cmd.Terminal:
    wire = _wire(args)
    layout = find_terminal(args.data, args.tid)
    # Held until main() returns: the whole command (STAN, exchange, keys, journal) is one unit.
    args.stack.enter_context(exclusive(layout.folder, args.connect_timeout + args.timeout + 5))
    trace = (lambda line: print(line, file=sys.stderr)) if args.trace else None
    tap = None
    if args.pcap:
        tap = open_tap(args.pcap, wire)
        args.stack.callback(tap.close)
    terminal = cmd.open_terminal(layout, wire=wire, dialect_name=args.dialect, trace=trace, tap=tap)
    args.warnings = terminal.warnings
    return terminal


def do_init(args: argparse.Namespace, out: Output) -> int:
    _wire(args)
    folder = args.data or root_folder() / args.new_tid
    config = Config(tid=args.new_tid, mid=args.merchant, dialect=args.dialect or "iso87",
                    key_set=args.key_set, operator=args.operator, host=args.host,
                    wk_lifetime=args.wk_lifetime)
    try:
        cmd.init_terminal(folder, config, _new_supervisor(args))
    except FileExistsError as exc:
        return out.fail(EXIT_USAGE, "exists", str(exc))
    out.emit({"tid": config.tid, "mid": config.mid, "folder": str(folder)},
             [f"terminal {config.tid} (merchant {config.mid}) initialised in {folder}",
              "next: load its TMK with `pos-terminal load-tmk`"])
    return EXIT_OK


def do_load_tmk(args: argparse.Namespace, out: Output) -> int:
    terminal = _terminal(args)
    check_supervisor(terminal.layout, "load-tmk", _supervisor_password(args))
    if args.file:
        stored = cmd.load_tmk_file(terminal, args.file)
        origin = f"injection file {args.file} (delete it now)"
    else:
        if len(args.component) != len(args.kcv):
            return out.fail(EXIT_USAGE, "usage", "give one --kcv after each --component")
        pairs = [Component(c, k) for c, k in zip(args.component, args.kcv, strict=True)]
        stored = cmd.load_tmk_components(terminal, pairs, args.tmk_kcv)
        origin = f"{len(pairs)} components"
    out.emit({"tmk_kcv": stored.kcv_hex, "generation": stored.generation},
             [f"TMK loaded from {origin}: check value {stored.kcv_hex}, "
              f"generation {stored.generation}",
              "working keys cleared: sign on to download new ones"])
    return EXIT_OK


def _exit_for(result: Result) -> int:
    return EXIT_OK if result.outcome in ("ok", "approved") else EXIT_NO


def do_signon(args: argparse.Namespace, out: Output) -> int:
    terminal = _terminal(args)
    result = cmd.signon(terminal, args.key_set)
    keys = terminal.load_keys().working() if result.outcome == "ok" else {}
    data = render.result_data(result)
    data["keys"] = {name: {"generation": k.generation, "kcv": k.kcv_hex}
                    for name, k in keys.items()}
    out.emit(data, render.signon_lines(result, keys))
    return _exit_for(result)


def do_network(args: argparse.Namespace, out: Output) -> int:
    terminal = _terminal(args)
    if args.command == "signoff":
        check_supervisor(terminal.layout, "signoff", _supervisor_password(args))
    result = cmd.signoff(terminal) if args.command == "signoff" else cmd.echo(terminal)
    out.emit(render.result_data(result), render.result_lines(result))
    return _exit_for(result)


def _pin(args: argparse.Namespace) -> str | None:
    if args.pin_env is not None:
        given = os.environ.get(args.pin_env)
        if given is None:
            raise ValueError(f"--pin-env {args.pin_env}: that variable is not set")
        if not ASCII_DIGITS.fullmatch(given):
            raise ValueError(f"--pin-env {args.pin_env}: a PIN is 4 to 12 ASCII digits")
        return given
    if args.pin_prompt or args.pin is PIN_PROMPT:
        typed = getpass.getpass("PIN: ")
        if not ASCII_DIGITS.fullmatch(typed):
            raise ValueError("a PIN is 4 to 12 ASCII digits")
        return typed
    pin: str | None = args.pin
    return pin


def _run(args: argparse.Namespace, terminal: cmd.Terminal,
         attempt: Callable[[], cmd.Steps]) -> cmd.Steps:
    return cmd.with_auto_signon(terminal, attempt) if args.auto_signon else attempt()


def _emit_steps(out: Output, terminal: cmd.Terminal, steps: cmd.Steps, card: Purchase | None,
                **extra: Any) -> int:
    data = render.steps_data(steps)
    data.update(extra)
    if card is not None:
        data["pan"] = mask_pan(card.pan)
    lines = render.steps_lines(steps, card, terminal.config.tid, terminal.config.mid,
                               terminal.clock())
    out.emit(data, lines)
    return _exit_for(steps.final)


def _card(args: argparse.Namespace, amount: int) -> Purchase:
    """The card as presented, checked before the terminal is touched."""
    return Purchase(amount, args.pan, args.expiry, _pin(args))


def do_purchase(args: argparse.Namespace, out: Output) -> int:
    try:  # the whole order is checked before the terminal is touched
        order = replace(_card(args, parse_amount(args.amount)), chip=args.chip,
                        sequence=args.sequence)
    except ValueError as exc:
        return out.fail(EXIT_USAGE, "usage", str(exc))
    terminal = _terminal(args)
    steps = _run(args, terminal, lambda: cmd.purchase(terminal, order))
    return _emit_steps(out, terminal, steps, order, amount=args.amount)


def do_inquiry(args: argparse.Namespace, out: Output) -> int:
    try:
        card = _card(args, 0)
    except ValueError as exc:
        return out.fail(EXIT_USAGE, "usage", str(exc))
    terminal = _terminal(args)
    return _emit_steps(out, terminal, _run(args, terminal, lambda: cmd.inquiry(terminal, card)),
                       card)


def do_void(args: argparse.Namespace, out: Output) -> int:
    try:
        card = _card(args, 0)
    except ValueError as exc:
        return out.fail(EXIT_USAGE, "usage", str(exc))
    if args.stan is None and args.rrn is None:
        return out.fail(EXIT_USAGE, "usage", "name the purchase to void with --stan or --rrn")
    terminal = _terminal(args)
    named = cmd.Named(stan=args.stan, rrn=args.rrn, batch=args.batch, amount=args.amount)
    original = cmd.find_original(terminal, named)
    amount = args.amount or original.amount
    shown = Purchase(amount, card.pan, card.expiry, card.pin)
    steps = _run(args, terminal, lambda: cmd.void(terminal, card, named))
    return _emit_steps(out, terminal, steps, shown, amount=format_amount(amount),
                       original={"batch": original.batch, "stan": original.stan})


def do_refund(args: argparse.Namespace, out: Output) -> int:
    try:
        card = _card(args, args.amount)
    except ValueError as exc:
        return out.fail(EXIT_USAGE, "usage", str(exc))
    terminal = _terminal(args)
    named = cmd.Named(stan=args.stan, batch=args.batch, date=args.date)
    steps = _run(args, terminal, lambda: cmd.refund(terminal, card, named, args.amount))
    return _emit_steps(out, terminal, steps, card, amount=format_amount(args.amount))


def do_reverse(args: argparse.Namespace, out: Output) -> int:
    terminal = _terminal(args)
    steps = _run(args, terminal, lambda: cmd.reverse(terminal))
    final = steps.final
    code = EXIT_OK if final.outcome in ("approved", "declined", "nothing") else EXIT_NO
    _emit_steps(out, terminal, steps, None)
    return code


def do_settle(args: argparse.Namespace, out: Output) -> int:
    terminal = _terminal(args)
    done = cmd.settle_with_auto_signon(terminal) if args.auto_signon else cmd.settle(terminal)
    out.emit(render.settlement_data(done), render.settlement_lines(done))
    return EXIT_OK if done.new_batch is not None else EXIT_NO


def do_batch(args: argparse.Namespace, out: Output) -> int:
    view = cmd.batch_view(_terminal(args), args.batch)
    out.emit(render.batch_data(view), render.batch_lines(view))
    return EXIT_OK


def do_status(args: argparse.Namespace, out: Output) -> int:
    status = cmd.status(_terminal(args))
    out.emit(render.status_data(status), render.status_lines(status))
    return EXIT_OK


def do_diagnose(args: argparse.Namespace, out: Output) -> int:
    found = cmd.diagnose(_terminal(args))
    out.emit(render.diagnosis_data(found), render.diagnosis_lines(found))
    return EXIT_OK


def do_counters(args: argparse.Namespace, out: Output) -> int:
    terminal = _terminal(args)
    check_supervisor(terminal.layout, "counters recover", _supervisor_password(args))
    counters = cmd.recover(terminal, args.stan)
    upcoming = counters.next_stan()
    out.emit({"next_stan": upcoming.stan, "batch": counters.batch},
             [f"counters recovered: the next request takes STAN {upcoming.stan:06d}, "
              f"batch {counters.batch:06d}"])
    return EXIT_OK


COMMANDS = {
    "init": do_init,
    "load-tmk": do_load_tmk,
    "signon": do_signon,
    "signoff": do_network,
    "echo": do_network,
    "purchase": do_purchase,
    "inquiry": do_inquiry,
    "void": do_void,
    "refund": do_refund,
    "reverse": do_reverse,
    "settle": do_settle,
    "batch": do_batch,
    "status": do_status,
    "diagnose": do_diagnose,
    "counters": do_counters,
}


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(words)
    except UsageError as exc:
        return Output("--json" in words).fail(EXIT_USAGE, "usage", str(exc))
    out = Output(args.json)
    args.warnings = []
    try:
        with ExitStack() as args.stack:
            code = COMMANDS[args.command](args, out)
        for warning in args.warnings:
            print(f"pos-terminal: warning: {warning}", file=sys.stderr)
        return code
    except TransportError as exc:
        return out.fail(EXIT_HOST, "unreachable", str(exc))
    except ProtocolError as exc:  # before ValueError, which it subclasses
        return out.fail(EXIT_HOST, "bad_response", f"the host's answer is unusable: {exc}")
    except (StateError, CeremonyError, InjectionError, KeystoreError, PendingError, ValueError,
            TimeoutError) as exc:
        return out.fail(EXIT_USAGE, type(exc).__name__, str(exc))
    except KeyboardInterrupt:
        return out.fail(130, "interrupted", "interrupted")
    except BrokenPipeError:  # `pos-terminal status | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:  # a folder or file the terminal cannot read or write
        where = f"{exc.filename}: " if exc.filename else ""
        return out.fail(EXIT_USAGE, "os_error", f"{where}{exc.strerror or exc}")


if __name__ == "__main__":
    sys.exit(main())

"""Making a fleet: at our host through `pos-host` run as a process (the terminal side never
imports the host), or from another host's own injection files and card list."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protocol.injection import InjectionError, read_injection_file
from terminal.fleet import fleetdir
from terminal.fleet.fleetdir import FleetError
from terminal.fleet.member import Card, Identity

COMMAND_TIMEOUT = 60.0
CARD_BIN = "621234"
CARD_EXPIRY = "3012"
CARD_BALANCE = "9999999.00"
DEFAULT_MERCHANT = "M00000000000001"
Progress = Callable[[int, int], None]


def pos_host_command() -> list[str]:
    """`pos-host` beside this interpreter or on PATH; else the same CLI through -m."""
    found = shutil.which("pos-host", path=str(Path(sys.executable).parent)) or shutil.which("pos-host")
    return [found] if found else [sys.executable, "-m", "host.cli"]


PIN_ENV = "POSEMU_CARD_PIN"
"""Where `provision` hands each test card's PIN to `pos-host card add --pin-env`."""


def run_pos_host(data: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    done = subprocess.run([*pos_host_command(), "--data", str(data), "--json", *args],
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False,
                          env=None if env is None else {**os.environ, **env})
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise FleetError(f"pos-host {args[0]} {args[1]} failed: {lines[-1] if lines else done.returncode}")
    return json.loads(done.stdout)


def luhn_complete(digits: str) -> str:
    """The digits with their Luhn check digit, so the test cards look like cards."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return digits + str((10 - total % 10) % 10)


def tid_for(prefix: str, index: int) -> str:
    width = 8 - len(prefix)
    if width < 1 or index >= 10**width:
        raise FleetError(f"prefix {prefix!r} leaves no room for {index + 1} terminal numbers")
    return f"{prefix}{index + 1:0{width}d}"


def provision(data: Path, count: int, out: Path, prefix: str = "F", cards: int = 10,
              merchant: str = DEFAULT_MERCHANT, key_set: str = "003",
              progress: Progress | None = None) -> dict[str, Any]:
    """`count` terminals with their key ceremonies and `cards` test cards at our host."""
    if count <= 0 or cards <= 0:
        raise FleetError("--count and --cards must be positive")
    tids = [tid_for(prefix, i) for i in range(count)]
    fleetdir.create(out, "iso87", key_set)
    for i, tid in enumerate(tids):
        run_pos_host(data, "terminal", "add", tid, "--merchant", merchant,
                     "--out", str(fleetdir.terminal_file(out, tid)))
        fleetdir.add_terminals(out, [tid])  # a run cut short leaves a fleet of those made
        if progress:
            progress(i + 1, count)
    made = []
    for _ in range(cards):
        card = Card(luhn_complete(f"{CARD_BIN}{secrets.randbelow(10**9):09d}"), CARD_EXPIRY,
                    f"{secrets.randbelow(10**4):04d}")
        # The PIN goes through the environment: a secret never stands on a command line.
        run_pos_host(data, "card", "add", card.pan, "--expiry", card.expiry, "--pin-env",
                     PIN_ENV, "--balance", CARD_BALANCE, env={PIN_ENV: str(card.pin)})
        made.append(card)
    fleetdir.save_cards(out, made)
    return {"fleet": str(out), "terminals": count, "first": tids[0], "last": tids[-1],
            "cards": len(made)}


def import_fleet(out: Path, injections: list[Path], cards_file: Path, dialect: str = "iso87",
                 key_set: str = "003", merchant: str | None = None) -> dict[str, Any]:
    """Another host's injection files (checked, then rewritten mode 0600) and card list."""
    cards = fleetdir.read_cards(cards_file)
    identities = []
    for path in injections:
        if merchant is not None:
            identities.append(_with_merchant(path, merchant))
        else:
            identities.append(fleetdir.read_identity(path))
    if not identities:
        raise FleetError("no injection files given")
    fleetdir.create(out, dialect, key_set)
    for identity in identities:
        fleetdir.add_identity(out, identity)
    fleetdir.add_terminals(out, [i.tid for i in identities])
    fleetdir.save_cards(out, cards)
    return {"fleet": str(out), "terminals": len(identities), "cards": len(cards)}


def _with_merchant(path: Path, merchant: str) -> Identity:
    """An injection file that names no merchant (other hosts' often do not), given one."""
    try:
        injection = read_injection_file(path)
    except InjectionError as exc:
        raise FleetError(str(exc)) from None
    if not injection.tid:
        raise FleetError(f"{path}: names no terminal id")
    return Identity(injection.tid, merchant, injection.tmk)


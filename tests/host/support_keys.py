"""Real `pos-terminal` processes against a real host, for the key-renewal and key-health tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from terminal.commands import CLOCK_OFFSET_ENV as TERMINAL_OFFSET
from tests.support import RunningHost, provision_terminal
from tests.terminal.conftest import EXPIRY, MERCHANT, PAN
from tests.terminal.processes import pos_terminal


def terminal(folder: Path, host: RunningHost, offset: int, *argv: str) -> dict[str, Any]:
    """One `pos-terminal ARGV --json` process, its clock `offset` seconds ahead."""
    run = pos_terminal(*argv, "--data", str(folder), "--host", f"tcp://{host.endpoint}",
                       "--timeout", "5", "--json", env={TERMINAL_OFFSET: str(offset)})
    return {"code": run.code, **json.loads(run.out)}


def purchase(folder: Path, host: RunningHost, offset: int = 0, amount: str = "1.00",
             *extra: str) -> dict[str, Any]:
    return terminal(folder, host, offset, "purchase", "--amount", amount, "--pan", PAN,
                    "--expiry", EXPIRY, *extra)


def set_up(data: Path, host: RunningHost, tid: str, folder: Path, *init: str,
           sign_on: bool = True) -> None:
    """Provisioned at the host, initialised, TMK loaded and (unless told not to) signed on."""
    ceremony = provision_terminal(data, tid, MERCHANT)
    parts = [a for p in ceremony["components"] for a in ("--component", p["component"],
                                                         "--kcv", p["kcv"])]
    assert terminal(folder, host, 0, "init", tid, "--merchant", MERCHANT, *init)["code"] == 0
    assert terminal(folder, host, 0, "load-tmk", *parts,
                    "--tmk-kcv", ceremony["tmk_kcv"])["code"] == 0
    if sign_on:
        assert terminal(folder, host, 0, "signon")["code"] == 0

"""A scenario step told as a developer reads a story: what was typed, then what it showed in
plain words (the 14 and its reason, the diagnosis with its fixes in order, the approval), drawn
from the step's JSON so the demo and the runner can never tell different stories.

Everything here comes from the commands' `--json`, which is masked already (PANs as first six
and last four digits, key check values only); the command line itself is the runner's masked one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from terminal.scenario.runner import StepResult

Lines = list[str]


def _numbered(title: str, items: list[str]) -> Lines:
    return [title, *(f"  {n}. {item}" for n, item in enumerate(items, 1))] if items else []


def _key_error(out: dict[str, Any]) -> Lines:
    lines = [f"KEY ERROR 14 {out.get('reason') or ''}".rstrip()
             + (f" (found by the {out['found_by']})" if out.get("found_by") else "")]
    diagnosis = out.get("diagnosis") or {}
    if diagnosis.get("cause_meaning"):
        lines.append(f"cause: {diagnosis['cause']}: {diagnosis['cause_meaning']}")
    return lines


def _diagnosis(out: dict[str, Any]) -> Lines:
    lines = [f"DIAGNOSIS of {out.get('error') or 'the last error'}: {out.get('cause')}, "
             f"{out.get('cause_meaning', '')}".rstrip(", ")]
    lines += _numbered("real-world reasons:", list(out.get("reasons") or []))
    return lines + _numbered("fix, in this order:", list(out.get("fixes") or []))


def _signon(out: dict[str, Any]) -> Lines:
    keys = out.get("keys") or {}
    held = ", ".join(f"{name} generation {k.get('generation')} (check value {k.get('kcv')})"
                     for name, k in sorted(keys.items()))
    return [f"sign-on: OK, working keys {held}" if held else "sign-on: OK"]


def _transaction(out: dict[str, Any]) -> Lines:
    lines = []
    for part in out.get("steps") or []:
        if part.get("command") != out.get("command"):
            lines.append(f"{part.get('command')}: {part.get('outcome')} ({part.get('rc')})")
    amount = f" {out['amount']}" if out.get("amount") else ""
    card = f" card {out['pan']}" if out.get("pan") else ""
    return [*lines, f"{str(out.get('outcome')).upper()}{amount}{card}, code {out.get('rc')}"]


def _status(out: dict[str, Any]) -> Lines:
    keys = [f"{k['name']} generation {k['generation']} ({k['kcv']})" for k in out.get("keys", [])
            if isinstance(k, dict) and k.get("present")]
    lines = [f"keystore {out.get('keystore')}: " + (", ".join(keys) or "no keys")]
    pending = out.get("pending")
    if isinstance(pending, dict):
        lines.append(f"pending reversal: {pending.get('kind')} STAN {pending.get('stan')}, "
                     f"{pending.get('reason_text')}")
    return lines


def _error(out: dict[str, Any]) -> Lines:
    return [f"{str(out.get('error')).upper()}: {out.get('message') or ''}".rstrip(": ")]


def _card(out: dict[str, Any]) -> Lines:
    return [f"card {out.get('pan')} balance: {out.get('balance')}"]


def _killed(out: dict[str, Any]) -> Lines:
    return [f"POWER CUT: the terminal killed (SIGKILL) before its keystore {out.get('crash_at')}"]


def _rules(out: dict[str, Any]) -> Lines:
    return [f"rule {r.get('name')}: {r.get('action')}, {r.get('hits')} hit(s)"
            for r in out["rules"] if isinstance(r, dict)]


def _plain(out: dict[str, Any]) -> Lines:
    """Any other answer: its short values, in one line."""
    shown = [f"{k} {v}" for k, v in out.items()
             if isinstance(v, str | int | float | bool) and not str(v).startswith("/")]
    return ["; ".join(shown)] if shown else []


TELLERS: tuple[tuple[Callable[[dict[str, Any]], bool], Callable[[dict[str, Any]], Lines]], ...] = (
    (lambda o: bool(o.get("killed")), _killed),
    (lambda o: o.get("rc") == "14", _key_error),
    (lambda o: "fixes" in o and "cause" in o, _diagnosis),
    (lambda o: o.get("command") == "signon" and o.get("outcome") == "ok", _signon),
    (lambda o: "outcome" in o, _transaction),
    (lambda o: "keystore" in o and "keys" in o, _status),
    (lambda o: "error" in o, _error),
    (lambda o: "balance" in o and "pan" in o, _card),
    (lambda o: isinstance(o.get("rules"), list), _rules),
)
"""Which telling fits an output: the first whose test holds (data, not an if-chain)."""


def told(output: Any) -> Lines:
    if not isinstance(output, dict):
        return []
    for fits, tell in TELLERS:
        if fits(output):
            return tell(output)
    return _plain(output)


def step_lines(step: StepResult) -> tuple[str, str, Lines]:
    """(what is done, the command typed or "", what it showed): one step of the story. A
    `rules` step shows the rules it gave the host, as a tester writes them."""
    if step.kind == "rules" and isinstance(step.output, dict):
        shown = [line for line in str(step.output.get("written", "")).splitlines() if line.strip()]
    elif step.kind == "ceremony" and isinstance(step.output, dict):
        shown = [f"new TMK, check value {step.output.get('host', {}).get('tmk_kcv')}, loaded"]
    elif step.kind in ("terminal", "host"):
        shown = told(step.output)
    else:
        shown = _plain(step.output) if isinstance(step.output, dict) else []
    if not step.passed:
        shown += [f"NOT AS EXPECTED: {d}" for d in step.differences]
    return step.label, step.command, shown

"""Key schedules and the key-health report, built from rows and log lines handed in.

Nothing here opens a file or the database: the CLI reads the key rows (`KeyDb`) and the lines
of a `serve --log` file and passes them, with the clock, to these pure functions, so a test
builds the same report from rows it wrote itself.

Where each fact comes from:
- ages and expiries, and the last sign-on: the key database (a sign-on writes a working-key
  generation; its creation time is the sign-on's);
- the 14s, the transactions they blocked and the approvals after them: the host's message log,
  the only place a 14 is kept (PROTOCOL.md §3: answers `14` are not remembered in the txns
  table).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from host.keydb import KeyRow
from host.state import ACTIVE
from protocol.amounts import format_amount
from protocol.codes import APPROVED, KeyErrorReason
from protocol.requests import PURCHASE_CODE

FINANCIAL_MTIS = frozenset({"0200", "0220"})
"""Requests a key error stops a sale or a refund in: what a 14 "blocked"."""
DEFAULT_WITHIN = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One answered message of the log, as the report needs it (the PAN is not kept)."""

    ts: float
    tid: str
    mti: str
    rc: str
    reason: str | None
    amount: int | None
    sale: bool
    """A purchase: a 0200 with an amount whose processing code (traced) is not another's."""


def read_events(lines: Iterable[str]) -> list[LogEvent]:
    """The message lines of a log, in order; events, torn lines and other JSON are skipped
    (a log cut by a crash still reports what it holds)."""
    events = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or "event" in entry:
            continue
        ts, tid, mti, rc = (entry.get(k) for k in ("ts", "tid", "mti", "rc"))
        if not (isinstance(ts, (int, float)) and isinstance(tid, str) and isinstance(mti, str)
                and isinstance(rc, str)):
            continue
        amount_text = entry.get("amount")
        amount = int(amount_text) if isinstance(amount_text, str) and amount_text.isdigit() else None
        traced = entry.get("request_fields")
        code = traced.get("3") if isinstance(traced, dict) else None
        sale = mti == "0200" and amount is not None and code in (None, PURCHASE_CODE)
        reason = entry.get("reason")
        events.append(LogEvent(float(ts), tid, mti, rc, reason if isinstance(reason, str) else None,
                               amount, sale))
    return events


def is_key_error(event: LogEvent) -> bool:
    """A 14 with its K reason, whatever code the host answers key errors with."""
    return event.reason is not None and KeyErrorReason.parse(event.reason) is not None


# --- the keys ------------------------------------------------------------------------------------


def _expiry(row: KeyRow) -> float:
    return row.created + row.lifetime


def current_keys(rows: Sequence[KeyRow]) -> tuple[KeyRow | None, KeyRow | None]:
    """The active TMK and the MAK of the newest active working-key generation (the set's
    clock: every key of a generation shares its creation and lifetime)."""
    active = [r for r in rows if r.state == ACTIVE]
    tmk = max((r for r in active if r.usage == "TMK"), key=lambda r: r.generation, default=None)
    wk = max((r for r in active if r.usage == "MAK"), key=lambda r: r.generation, default=None)
    return tmk, wk


def _key_view(row: KeyRow | None, now: float) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"generation": row.generation, "age_s": round(now - row.created, 1),
            "expires": round(_expiry(row), 1), "expires_in_s": round(_expiry(row) - now, 1)}


def schedule(terminals: Mapping[str, Sequence[KeyRow]], now: float, within: float
             ) -> list[dict[str, Any]]:
    """`keys schedule`: each active TMK and working-key set expiring within `within` seconds
    (or already expired), soonest first."""
    due = []
    for tid, rows in terminals.items():
        for kind, row in zip(("TMK", "WK"), current_keys(rows), strict=True):
            if row is not None and _expiry(row) <= now + within:
                due.append({"tid": tid, "keys": kind, **(_key_view(row, now) or {}),
                            "expired": _expiry(row) <= now})
    return sorted(due, key=lambda d: (d["expires"], d["tid"], d["keys"]))


# --- the impact of key errors --------------------------------------------------------------------


def _impact(events: Sequence[LogEvent]) -> dict[str, Any]:
    """One terminal's 14s (in time order): by reason, what they blocked, and how long from the
    first 14 to the next approval (None: no approval since)."""
    errors = [e for e in events if is_key_error(e)]
    blocked = [e for e in errors if e.sale]
    by_reason = Counter(e.reason for e in errors)
    recovery: float | None = None
    if errors:
        first = errors[0].ts
        approval = next((e for e in events if e.ts >= first and e.rc == APPROVED
                         and e.mti in FINANCIAL_MTIS), None)
        recovery = None if approval is None else round(approval.ts - first, 3)
    last_error = errors[-1].ts if errors else None
    recovered = last_error is None or any(e.ts > last_error and e.rc == APPROVED
                                          and e.mti in FINANCIAL_MTIS for e in events)
    return {
        "key_errors": len(errors),
        "by_reason": dict(by_reason.most_common()),
        "blocked_sales": len(blocked),
        "blocked_amount": format_amount(sum(e.amount or 0 for e in blocked)),
        "first_14_to_approval_s": recovery,
        "still_failing": not recovered,
    }


def terminal_health(tid: str, rows: Sequence[KeyRow], events: Sequence[LogEvent], now: float,
                    within: float) -> dict[str, Any]:
    tmk, wk = current_keys(rows)
    sign_ons = [r.created for r in rows if r.usage == "MAK"]
    impact = _impact([e for e in events if e.tid == tid])
    risks = []
    if tmk is None:
        risks.append("no active TMK")
    elif _expiry(tmk) <= now + within:
        risks.append("TMK expires soon" if _expiry(tmk) > now else "TMK expired")
    if wk is None:
        risks.append("no working keys")
    elif _expiry(wk) <= now + within:
        risks.append("working keys expire soon" if _expiry(wk) > now else "working keys expired")
    if impact["still_failing"]:
        risks.append("key errors not yet followed by an approval")
    return {"tid": tid, "tmk": _key_view(tmk, now), "working_keys": _key_view(wk, now),
            "last_sign_on": round(max(sign_ons), 1) if sign_ons else None, **impact,
            "at_risk": risks}


def key_report(terminals: Mapping[str, Sequence[KeyRow]], events: Sequence[LogEvent], now: float,
               since: float, within: float = DEFAULT_WITHIN) -> dict[str, Any]:
    """`report keys`: per terminal, then the fleet (terminals at risk, the most frequent
    causes). Only log lines from `now - since` on count."""
    recent = [e for e in events if e.ts >= now - since]
    per = [terminal_health(tid, rows, recent, now, within) for tid, rows in sorted(terminals.items())]
    causes: Counter[str] = Counter()
    for health in per:
        causes.update(health["by_reason"])
    return {
        "now": round(now, 1), "since_s": since, "within_s": within,
        "terminals": per,
        "fleet": {
            "terminals": len(per),
            "at_risk": [h["tid"] for h in per if h["at_risk"]],
            "key_errors": sum(h["key_errors"] for h in per),
            "blocked_sales": sum(h["blocked_sales"] for h in per),
            "blocked_amount": format_amount(sum(e.amount or 0 for e in recent if e.tid in terminals
                                                and e.sale and is_key_error(e))),
            "most_frequent_causes": [{"reason": r, "count": n} for r, n in causes.most_common()],
        },
    }

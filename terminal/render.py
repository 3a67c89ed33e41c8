"""What a person reads, and what `--json` prints: both made from the same values.

Nothing here sees key material: results, statuses and diagnoses hold check values, masked
fields and reasons only.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from protocol.amounts import format_amount
from protocol.codes import describe_code
from protocol.mask import mask_pan
from terminal.commands import Status, Steps
from terminal.diagnose import Diagnosis, NotAKeyError, advice, age_text
from terminal.keystore import StoredKey
from terminal.session import Purchase, Result

RULE = "-" * 40
DIAGNOSE_HINT = "run `pos-terminal diagnose` for the cause and the fix"
TMK_HINT = "a TMK error: signing on cannot fix it; a new key ceremony is needed"


def result_data(result: Result) -> dict[str, Any]:
    data: dict[str, Any] = {"command": result.kind, "outcome": result.outcome, "rc": result.rc}
    if result.rc:
        data["meaning"] = describe_code(result.rc)
    if result.reason:
        data["reason"] = result.reason.field44()
        data["key"] = result.reason.key
        data["cause"] = result.reason.kind
        data["found_by"] = result.source
        data["diagnosis"] = advice(result.reason.code, result.reason.key, result.reason.text,
                                   result.source or "host")
    if result.detail:
        data["detail"] = result.detail
    if result.response is not None:
        for number, name in ((11, "stan"), (37, "rrn"), (38, "auth_code")):
            if number in result.response:
                data[name] = result.response.text(number)
    return data


def result_lines(result: Result) -> list[str]:
    """One line for the outcome, then what to do about it."""
    title = {"signon": "sign-on", "signoff": "sign-off", "echo": "echo test"}.get(
        result.kind, result.kind)
    if result.outcome == "ok":
        return [f"{title}: OK ({result.rc} approved)"]
    if result.outcome == "key_error" and result.reason:
        who = "the host" if result.source == "host" else "this terminal"
        lines = [f"{title}: KEY ERROR 14 {result.reason.field44()} (found by {who})"]
        if result.detail:
            lines.append(f"  {result.detail}")
        lines.append(f"  {TMK_HINT}" if result.reason.is_tmk else f"  {DIAGNOSE_HINT}")
        return lines
    if result.outcome == "host_code":
        return [f"{title}: DECLINED 14 by the host without a K reason: the host's own code "
                "(ISO 8583: invalid card number), not a key error"]
    return [f"{title}: DECLINED {result.rc} {describe_code(result.rc or '')}"]


def signon_lines(result: Result, keys: dict[str, StoredKey]) -> list[str]:
    lines = result_lines(result)
    for name, stored in sorted(keys.items()):
        lines.append(f"  {name} generation {stored.generation}, check value {stored.kcv_hex}")
    return lines


def receipt(result: Result, order: Purchase, tid: str, mid: str, now: float) -> list[str]:
    """A receipt-like summary: what a merchant would tear off, PAN masked."""
    verdict = {"approved": "APPROVED", "declined": "DECLINED"}.get(result.outcome, "NOT DONE")
    response = result.response
    lines = [RULE, f" PURCHASE{verdict:>31}", RULE,
             f" Merchant  {mid}", f" Terminal  {tid}",
             f" Card      {mask_pan(order.pan)}  {'PIN' if order.pin else 'no PIN'}",
             f" Amount    CNY {format_amount(order.amount)}",
             f" Date      {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(now))} UTC"]
    if response is not None:
        lines.append(f" STAN {response.text(11)}   RRN {response.text(37) or '-'}")
        if 38 in response:
            lines.append(f" Auth code {response.text(38)}")
    code = result.rc or "--"
    meaning = describe_code(result.rc) if result.rc else "no answer"
    lines.append(f" Response  {code} {meaning}")
    lines.append(RULE)
    if result.outcome not in ("approved", "declined"):
        lines.extend(result_lines(result))
    return lines


def steps_lines(steps: Steps, order: Purchase, tid: str, mid: str, now: float) -> list[str]:
    lines: list[str] = []
    for result in steps.results[:-1]:
        lines.extend(result_lines(result))
        if result.kind == "purchase":
            lines.append("  --auto-signon: signing on once and retrying")
    final = steps.final
    if final.kind == "purchase" and final.response is not None:
        lines.extend(receipt(final, order, tid, mid, now))
    else:
        lines.extend(result_lines(final))
    return lines


def status_data(status: Status) -> dict[str, Any]:
    keys = []
    for row in status.keys:
        item = asdict(row)
        item["age_seconds"] = (round(status.now - row.installed_at, 1)
                               if row.installed_at is not None else None)
        keys.append(item)
    config = asdict(status.config)
    return {
        "terminal": config,
        "keystore": "ok" if status.keystore_error is None else status.keystore_error,
        "keys": keys,
        "stan": status.stan,
        "batch": status.batch,
        "last": asdict(status.last) if status.last else None,
    }


def status_lines(status: Status) -> list[str]:
    c = status.config
    lines = [f"terminal {c.tid}  merchant {c.mid}  dialect {c.dialect}  key set {c.key_set}",
             f"host {c.host or '(none: use --host)'}  working-key lifetime {age_text(c.wk_lifetime)}",
             f"STAN {status.stan:06d}  batch {status.batch:06d}"]
    if status.keystore_error:
        lines.append(f"keystore: UNUSABLE ({status.keystore_error}): key error 14 K1 on use")
    else:
        lines.append("keystore: ok (integrity verified)")
    for row in status.keys:
        if not row.present:
            lines.append(f"  {row.name}  absent")
            continue
        age = status.now - (row.installed_at or status.now)
        state = ""
        if row.name != "TMK" and age > c.wk_lifetime:
            state = "  (past its local lifetime: K2)"
        lines.append(f"  {row.name}  generation {row.generation}  age {age_text(age)}  "
                     f"check value {row.kcv}{state}")
    if status.last:
        last = status.last
        code = f" {last.rc}" if last.rc else ""
        reason = f" {last.reason}" if last.reason else ""
        lines.append(f"last exchange: {last.command} {last.outcome}{code}{reason}")
    return lines


def diagnosis_data(found: Diagnosis | NotAKeyError | None) -> dict[str, Any]:
    if found is None:
        return {"error": None, "text": "no key error 14 in the journal"}
    data = asdict(found)
    data["kind"] = "key_error" if isinstance(found, Diagnosis) else "not_a_key_error"
    return data


def diagnosis_lines(found: Diagnosis | NotAKeyError | None) -> list[str]:
    if found is None:
        return ["no key error 14 in this terminal's recent exchanges"]
    if isinstance(found, NotAKeyError):
        return [f"last 14 ({found.command}): {found.text}"]
    who = "the host" if found.source == "host" else "this terminal"
    lines = [f"DIAGNOSIS of {found.error} (found by {who} during {found.command})",
             f"  which key: {found.key}: {found.key_meaning}",
             f"  cause:     {found.cause}: {found.cause_meaning}",
             "  real-world reasons that lead here:"]
    lines.extend(f"    - {reason}" for reason in found.reasons)
    lines.append("  fix, in this order:")
    lines.extend(f"    {n}. {fix}" for n, fix in enumerate(found.fixes, start=1))
    if found.evidence:
        lines.append("  what this terminal knows:")
        lines.extend(f"    . {fact}" for fact in found.evidence)
    return lines

"""What a person reads, and what `--json` prints: both made from the same values.

Nothing here sees key material: results, statuses and diagnoses hold check values, masked
fields and reasons only.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from protocol import fields, requests
from protocol.amounts import format_amount
from protocol.codes import describe_code
from protocol.mask import mask_pan
from terminal.commands import BatchView, Settlement, Status, Steps
from terminal.diagnose import Diagnosis, NotAKeyError, advice, age_text
from terminal.keystore import StoredKey
from terminal.pending import PendingReversal
from terminal.session import Purchase, Result
from terminal.store import Entry

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


TITLES = {"signon": "sign-on", "signoff": "sign-off", "echo": "echo test",
          "inquiry": "balance inquiry", "settle": "settlement", "upload": "batch upload"}
RECEIPT_TITLES = {"purchase": "PURCHASE", "void": "VOID", "refund": "REFUND",
                  "inquiry": "BALANCE INQUIRY"}
STILL_PENDING = "  the reversal stays pending: it goes out before the next transaction"
PENDING_AFTER_SIGNON = ("  the reversal stays pending: it goes out after the sign-on, before the "
                        "next transaction")


def result_lines(result: Result) -> list[str]:
    """One line for the outcome, then what to do about it."""
    title = TITLES.get(result.kind, result.kind)
    lines = _outcome_lines(title, result)
    if result.kind == "reversal" and result.outcome not in ("approved", "declined", "nothing"):
        lines.append(PENDING_AFTER_SIGNON if result.is_key_error else STILL_PENDING)
    return lines


def _outcome_lines(title: str, result: Result) -> list[str]:
    if result.outcome in ("ok", "approved"):
        return [f"{title}: OK ({result.rc} approved)"]
    if result.outcome == "nothing":
        return ["reversal: nothing pending"]
    if result.outcome == "unreachable":
        return [f"{title}: NO ANSWER: {result.detail}"]
    if result.outcome == "blocked":
        return [f"{title}: NOT SENT: {result.detail}"]
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


def balance_of(result: Result) -> int | None:
    """Field 54 of an approved inquiry, in minor units (negative for D)."""
    if result.kind != "inquiry" or result.outcome != "approved" or result.response is None:
        return None
    return requests.balance(result.response).amount


def signon_lines(result: Result, keys: dict[str, StoredKey]) -> list[str]:
    lines = result_lines(result)
    for name, stored in sorted(keys.items()):
        lines.append(f"  {name} generation {stored.generation}, check value {stored.kcv_hex}")
    return lines


def receipt(result: Result, order: Purchase, tid: str, mid: str, now: float) -> list[str]:
    """A receipt-like summary: what a merchant would tear off, PAN masked."""
    verdict = {"approved": "APPROVED", "declined": "DECLINED"}.get(result.outcome, "NOT DONE")
    response = result.response
    title = RECEIPT_TITLES.get(result.kind, result.kind.upper())
    balance = balance_of(result)
    money = (f" Balance   CNY {format_amount(balance)}" if balance is not None
             else f" Amount    CNY {format_amount(order.amount)}" if result.kind != "inquiry"
             else " Balance   -")
    lines = [RULE, f" {title}{verdict:>{39 - len(title)}}", RULE,
             f" Merchant  {mid}", f" Terminal  {tid}",
             f" Card      {mask_pan(order.pan)}  {'PIN' if order.pin else 'no PIN'}",
             money,
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


def steps_lines(steps: Steps, order: Purchase | None, tid: str, mid: str,
                now: float) -> list[str]:
    """Each step in order (the pending reversal first, the sign-on of --auto-signon), then the
    receipt of the transaction when the host answered it."""
    lines: list[str] = []
    results = steps.results
    for index, result in enumerate(results[:-1]):
        lines.extend(result_lines(result))
        if results[index + 1].kind == "signon" and result.kind != "signon":
            lines.append("  --auto-signon: signing on once and retrying")
    final = steps.final
    if order is not None and final.kind in RECEIPT_TITLES and final.response is not None:
        lines.extend(receipt(final, order, tid, mid, now))
    else:
        lines.extend(result_lines(final))
    for renewal in steps.renewal:
        lines.append("  the host asked for a sign-on: the working keys are about to expire")
        lines.extend(result_lines(renewal))
    return lines


def steps_data(steps: Steps) -> dict[str, Any]:
    """The final result at the top, as before, and every step under `steps`."""
    data = result_data(steps.final)
    data["steps"] = [result_data(r) for r in steps.results]
    if steps.renewal:
        data["renewal"] = [result_data(r) for r in steps.renewal]
    balance = balance_of(steps.final)
    if balance is not None:
        data["balance"] = format_amount(balance)
    return data


def entry_data(entry: Entry) -> dict[str, Any]:
    data = {k: v for k, v in asdict(entry).items() if k != "sealed_card"}
    data["amount"] = format_amount(entry.amount)
    return data


def half_data(half: fields.Half) -> dict[str, Any]:
    return {"debit_amount": format_amount(half.debit_amount), "debit_count": half.debit_count,
            "credit_amount": format_amount(half.credit_amount), "credit_count": half.credit_count}


def half_line(half: fields.Half) -> str:
    return (f"debits {half.debit_count} for CNY {format_amount(half.debit_amount)}, "
            f"credits {half.credit_count} for CNY {format_amount(half.credit_amount)}")


def batch_data(view: BatchView) -> dict[str, Any]:
    return {"current_batch": view.current,
            "pending": view.pending.summary() if view.pending else None,
            "batches": [{"batch": number, "totals": half_data(half),
                         "entries": [entry_data(e) for e in entries]}
                        for number, entries, half in view.batches]}


def pending_line(pending: PendingReversal) -> str:
    s = pending.summary()
    return (f"pending reversal: {s['kind']} STAN {s['stan']:06d} batch {s['batch']:06d} "
            f"CNY {format_amount(s['amount'])} card {s['pan']}, reason {s['reason']} "
            f"({s['reason_text']}), tried {s['tries']} time(s): it goes out before the next "
            "transaction")


def batch_lines(view: BatchView) -> list[str]:
    lines = [f"current batch {view.current:06d}" if view.current is not None
             else "current batch: unknown (counters unusable)"]
    if view.pending is not None:
        lines.append(pending_line(view.pending))
    if not view.batches:
        lines.append("no transactions in the ledger")
    for number, entries, half in view.batches:
        lines.append(f"batch {number:06d}: {half_line(half)}")
        for e in entries:
            named = f"  of {e.original[0]:06d}/{e.original[1]:06d}" if e.original else ""
            lines.append(f"  STAN {e.stan:06d}  {e.kind:<8} CNY {format_amount(e.amount):>10}  "
                         f"{e.state:<8} {e.card}  RRN {e.rrn or '-'}{named}")
    return lines


def settlement_data(done: Settlement) -> dict[str, Any]:
    data = steps_data(done.steps)
    data.update(batch=done.batch, totals=half_data(done.totals), balanced=done.balanced,
                codes=list(done.codes) if done.codes else None, uploaded=done.uploaded,
                new_batch=done.new_batch)
    return data


def settlement_lines(done: Settlement) -> list[str]:
    lines = [f"batch {done.batch:06d}: {half_line(done.totals)}"]
    lines.extend(steps_lines(done.steps, None, "", "", 0.0))
    if done.codes is not None:
        verdict = "BALANCED" if done.balanced else f"UNBALANCED (codes {'/'.join(done.codes)})"
        lines.append(f"settlement: {verdict}")
    if done.uploaded:
        lines.append(f"batch upload: {done.uploaded} transaction(s) sent")
    if done.new_batch is not None:
        lines.append(f"new batch {done.new_batch:06d} started")
    return lines


def status_data(status: Status) -> dict[str, Any]:
    keys = []
    for row in status.keys:
        item = asdict(row)
        item["age_seconds"] = (round(status.now - row.installed_at, 1)
                               if row.installed_at is not None else None)
        keys.append(item)
    config = asdict(status.config)
    counters = status.counters
    journal = status.journal
    return {
        "terminal": config,
        "keystore": "ok" if status.keystore_error is None else status.keystore_error,
        "keys": keys,
        "stan": counters.stan if counters else None,
        "batch": counters.batch if counters else None,
        "counters": "ok" if status.counters_error is None else status.counters_error,
        "journal": {"records": len(journal.records), "damaged_lines": list(journal.damaged),
                    "error": journal.error},
        "last": asdict(status.last) if status.last else None,
        "pending": (status.pending.summary() if status.pending
                    else {"error": status.pending_error} if status.pending_error else None),
    }


def journal_line(status: Status) -> str | None:
    """Where the journal is damaged, so the evidence is not silently lost."""
    journal = status.journal
    if journal.error:
        return f"journal: UNREADABLE ({journal.error})"
    if not journal.damaged:
        return None
    shown = ", ".join(str(n) for n in journal.damaged[:10])
    more = f" and {len(journal.damaged) - 10} more" if len(journal.damaged) > 10 else ""
    plural = "s" if len(journal.damaged) > 1 else ""
    return (f"journal: {len(journal.damaged)} damaged line{plural} skipped (line{plural} "
            f"{shown}{more}); {len(journal.records)} records read")


def status_lines(status: Status) -> list[str]:
    c = status.config
    lines = [f"terminal {c.tid}  merchant {c.mid}  dialect {c.dialect}  key set {c.key_set}",
             f"host {c.host or '(none: use --host)'}  working-key lifetime {age_text(c.wk_lifetime)}",
             (f"STAN {status.counters.stan:06d}  batch {status.counters.batch:06d}"
              if status.counters else f"counters: UNUSABLE ({status.counters_error})")]
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
    damage = journal_line(status)
    if damage:
        lines.append(damage)
    if status.pending is not None:
        lines.append(pending_line(status.pending))
    elif status.pending_error:
        lines.append(f"pending reversal: UNREADABLE ({status.pending_error})")
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

"""Explaining the last key error 14 the way a support desk would (`../shared/ERROR14.md`).

The explanation is built from tables, not code paths: a row matches a reason (K1/K2/K3), the
key class (TMK or working keys), who found the error (host or terminal) and words of the
reason's text, and carries the real-world causes and the remedies in the order a support desk
tries them. Adding a cause is adding a row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol.amounts import format_amount
from terminal.keystore import KeyStatus
from terminal.store import Record

KEY_NAMES = {
    "TMK": "the terminal master key (TMK), which protects the working keys on their way in",
    "WK": "the working keys as a set (PIK, MAK, TDK), downloaded at every sign-on",
    "PIK": "the PIN key (PIK), which encrypts the PIN block",
    "MAK": "the MAC key (MAK), which authenticates purchases and their answers",
    "TDK": "the track data key (TDK)",
}

CAUSES = {
    "K1": ("absent", "the key is not there: never loaded, removed, revoked or unreadable"),
    "K2": ("stale", "the key exists but is out of date: expired, or an older generation"),
    "K3": ("mismatched", "the key exists but differs from the other side's, or is malformed"),
}

SIGN_ON = "sign on again: `pos-terminal signon` downloads fresh working keys"
CEREMONY = (
    "load the TMK again through a new key ceremony: `pos-host terminal rekey TID` at the host, "
    "`pos-terminal load-tmk` with the new components, then `pos-terminal signon`"
)
CHECK_LINE = "check the line (cabling, modem, network) and retry the sign-on"
HARDWARE = "if the keystore fails again: hardware service, then keys re-injected"
SOFTWARE = "update the terminal's software if it cannot use the host's key scheme"
AUTO = "to avoid it: `--auto-signon`, or sign on before the keys' lifetime runs out"
PENDING_AFTER_SIGNON = (
    "the pending reversal goes out after the sign-on, before the next transaction "
    "(`pos-terminal reverse` sends it at once); until then every financial transaction "
    "waits for it, which is why the 14 seems to stick"
)
PENDING_AFTER_CEREMONY = (
    "the pending reversal waits for working keys: it goes out after the new key ceremony "
    "and the sign-on, before the next transaction"
)


def pending_text(summary: Mapping[str, Any]) -> str:
    """A pending reversal as one line of evidence (the card masked)."""
    return (f"a reversal is pending: {summary['kind']} STAN {summary['stan']:06d} of batch "
            f"{summary['batch']:06d}, {format_amount(summary['amount'])}, card {summary['pan']}, "
            f"reason {summary['reason']} ({summary['reason_text']}), tried {summary['tries']} "
            "time(s)")


@dataclass(frozen=True)
class Rule:
    """One row of the diagnosis table. Empty `words` matches any text; None matches anything."""

    code: str
    tmk: bool | None
    source: str | None
    words: tuple[str, ...]
    reasons: tuple[str, ...]
    fixes: tuple[str, ...]


RULES: tuple[Rule, ...] = (
    Rule("K1", True, "terminal", ("keystore", "storage"),
         ("key stored badly: the terminal's key memory was deleted, damaged or overwritten",
          "hardware fault (memory chip, overheating): stored keys damaged"),
         (CEREMONY, HARDWARE)),
    Rule("K1", True, "terminal", (),
         ("the terminal was never given its TMK (no key ceremony yet), or it was replaced",),
         (CEREMONY,)),
    Rule("K1", True, "host", (),
         ("the host holds no active TMK for this terminal: revoked (disclosed) or never issued",),
         (CEREMONY,)),
    Rule("K1", False, "host", ("revoked",),
         ("key disclosed (written down, shown in public): the host revoked the working keys",
          "the terminal signed off, which discards its working keys at the host"),
         (SIGN_ON,)),
    Rule("K1", False, None, (),
         ("the terminal never signed on since its TMK was loaded",
          "the host revoked or discarded the working keys (key disclosed, sign-off)"),
         (SIGN_ON,)),
    Rule("K2", True, None, (),
         ("the TMK outlived its lifetime at the host",),
         (CEREMONY,)),
    Rule("K2", False, "host", ("rotat", "generation", "earlier", "old"),
         ("key not updated in time: the host rotated the keys and the terminal kept the old ones",
          "power cut during a key write: the terminal kept its old set after the host had "
          "issued a new one"),
         (SIGN_ON,)),
    Rule("K2", False, None, (),
         ("key expired: the working keys outlived their validity without a sign-on",
          "the terminal's or the host's clock moved past the keys' lifetime"),
         (SIGN_ON, AUTO)),
    Rule("K3", None, "terminal", ("mac",),
         ("communication fault: the answer was altered on the line",
          "the terminal's MAK is not the host's: a key write was lost or tampered with"),
         (SIGN_ON, CHECK_LINE)),
    Rule("K3", None, "terminal", (),
         ("communication fault (unstable line): the key download arrived corrupted or cut",
          "key generated wrongly: a key of the wrong length or parity was sent",
          "the TMK on the terminal and on the host differ",
          "software too old for the key scheme the host offers"),
         (CHECK_LINE, CEREMONY, SOFTWARE)),
    Rule("K3", False, "host", ("key set",),
         ("software too old for the key scheme: the terminal asks for a key set the host no "
          "longer issues",),
         (SOFTWARE, SIGN_ON)),
    Rule("K3", False, "host", ("pin",),
         ("the PIN block does not decrypt under the host's PIK: the terminal's PIK differs",),
         (SIGN_ON, CEREMONY)),
    Rule("K3", None, None, (),
         ("the terminal's key is not one the host issued: tampered with, corrupted in storage "
          "or on the line",
          "the TMK on the terminal and on the host differ"),
         (SIGN_ON, CEREMONY, HARDWARE)),
)


@dataclass(frozen=True)
class Diagnosis:
    """The explanation of one error, in the order a person needs it."""

    error: str
    source: str
    command: str
    at: float
    key: str
    key_meaning: str
    cause: str
    cause_meaning: str
    reasons: tuple[str, ...]
    fixes: tuple[str, ...]
    evidence: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class NotAKeyError:
    """A 14 without a K reason: the host uses ISO 8583's own meaning of the code."""

    at: float
    command: str
    text: str = (
        "the host answered 14 without a K reason: in ISO 8583 and CUP that is the host's own "
        "code, 'invalid card number', not a key error; check the card number"
    )


def last_key_error(records: Sequence[Record]) -> int | None:
    """Where the last key error is in the journal (what came before it is evidence): a 14, or a
    host's own key-error code (e.g. A0) that came with a K reason."""
    for index in range(len(records) - 1, -1, -1):
        record = records[index]
        if record.rc == "14" or (record.outcome == "key_error" and record.reason):
            return index
    return None


def match_rule(code: str, key: str, source: str, text: str) -> Rule | None:
    lowered = text.lower()
    for rule in RULES:
        if rule.code != code:
            continue
        if rule.tmk is not None and rule.tmk != (key == "TMK"):
            continue
        if rule.source is not None and rule.source != source:
            continue
        if rule.words and not any(word in lowered for word in rule.words):
            continue
        return rule
    return None


def evidence(
    index: int, records: Sequence[Record], keys: Sequence[KeyStatus], now: float
) -> tuple[str, ...]:
    """Facts from the terminal's own state that support (or rule out) the table's reasons."""
    record = records[index]
    facts = []
    for status in keys:
        if status.present and status.installed_at is not None:
            age = now - status.installed_at
            facts.append(
                f"{status.name}: generation {status.generation}, installed {age_text(age)} ago, "
                f"check value {status.kcv}"
            )
        else:
            facts.append(f"{status.name}: not present")
    signons = [r for r in records[:index] if r.command == "signon"]
    if not signons:
        facts.append("no sign-on in the terminal's journal before the error")
    else:
        last = signons[-1]
        facts.append(f"last sign-on {age_text(record.at - last.at)} before the error: {last.outcome}")
    if record.detail:
        facts.append(record.detail)
    return tuple(facts)


def age_text(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def diagnose(
    records: Sequence[Record], keys: Sequence[KeyStatus], now: float, pending: str | None = None
) -> Diagnosis | NotAKeyError | None:
    """Explain the last 14 in the journal, or say there was none. With a reversal pending,
    say that it goes out after the fix: a merchant sees the 14 stick because every
    transaction waits for that reversal."""
    index = last_key_error(records)
    if index is None:
        return None
    record = records[index]
    parts = (record.reason or "").split(" ", 2)
    if len(parts) < 2 or parts[0] not in CAUSES:
        return NotAKeyError(record.at, record.command)
    code, key = parts[0], parts[1]
    text = parts[2] if len(parts) > 2 else ""
    source = record.source or "host"
    rule = match_rule(code, key, source, text)
    cause, cause_meaning = CAUSES[code]
    fixes = rule.fixes if rule else (SIGN_ON,)
    facts = evidence(index, records, keys, now)
    if pending is not None:
        fixes = (*fixes, PENDING_AFTER_CEREMONY if CEREMONY in fixes[:1] else PENDING_AFTER_SIGNON)
        facts = (*facts, pending)
    return Diagnosis(
        error=f"{record.rc or '14'} {record.reason}",
        source=source,
        command=record.command,
        at=record.at,
        key=key,
        key_meaning=KEY_NAMES.get(key, key),
        cause=cause,
        cause_meaning=cause_meaning,
        reasons=rule.reasons if rule else (),
        fixes=fixes,
        evidence=facts,
    )


def advice(code: str, key: str, text: str, source: str) -> dict[str, object]:
    """What a result's --json carries beside its reason: the cause and the fixes in the support
    desk's order, as data (the text says "a new key ceremony is needed"; so does this)."""
    rule = match_rule(code, key, source, text)
    cause, meaning = CAUSES.get(code, ("unknown", ""))
    fixes = rule.fixes if rule else (SIGN_ON,)
    return {"cause": cause, "cause_meaning": meaning, "reasons": list(rule.reasons if rule else ()),
            "fixes": list(fixes), "sign_on_fixes": code in ("K1", "K2") and key != "TMK",
            "needs_ceremony": fixes[0] == CEREMONY}

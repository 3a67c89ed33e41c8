"""The rules file that programs the host's answers and faults (`pos-host serve --rules FILE`).

A tester writes "decline amounts above 500", "drop every third answer" or "answer 14 K2 to this
terminal" as data instead of code. Rules are checked in order after the host has decoded and
answered a request, and the first one that matches acts: it replaces the answer (a code, a
forced 14), alters it (MAC off or spoiled, a wrong STAN, a corrupted sign-on), or asks the
shell to deliver it differently (late, not at all, twice, cut short, or by closing the line).

The matcher is pure: a `RuleSet` and a message in, the rule that acts out, with the counters it
keeps (per rule: messages seen, hits) as plain state. `RuleBook` adds the file: it is reloaded
when it changes, and a bad edit keeps the last good rules and says why. A rule that replaces
the answer never touches the key database (its changes are dropped); one that only alters or
delays it keeps them, since the host did issue what it issued.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from host.handlers import Outcome, Verdict, key_error
from host.state import Terminal
from protocol import codes
from protocol.amounts import parse_amount
from protocol.codec import Codec
from protocol.dialects import get_dialect
from protocol.fields import WrappedKey, build_key_set, parse_key_set
from protocol.macing import MAC_SIZE, PLACEHOLDER, mac_offset
from protocol.mask import mask_pan, sensitive_numbers
from protocol.message import FieldValue, Message

HITS_FILE = "rule-hits.json"
DELIVERIES = ("delay", "drop", "close", "cut", "twice")
"""Actions the shell carries out: the answer itself is left as the host made it."""
SIGNON_CORRUPTIONS = ("bitflip", "parity", "kcv", "short", "length")
MAC_SPOILS = ("off", "spoil")
ACTIONS = ("answer", "force14", "wrong_stan", "mac", "signon", *DELIVERIES)
MATCH_KEYS = ("mti", "processing_code", "terminal", "merchant", "pan_prefix", "pan_range",
              "amount_min", "amount_max", "rc", "present", "equal", "regex", "nth", "every",
              "probability", "seed", "times")
RULE_KEYS = ("name", "match", "action")


class RulesError(ValueError):
    """A rules file that cannot be used: where (file, line or key) and why, in one line."""


# --- the rules as values -------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """What a request (and the host's own answer) must look like; None or empty: anything."""

    mti: frozenset[str] | None = None
    processing_code: frozenset[str] | None = None
    terminal: frozenset[str] | None = None
    merchant: frozenset[str] | None = None
    pan_prefix: tuple[str, ...] = ()
    pan_range: tuple[str, str] | None = None
    amount_min: int | None = None
    amount_max: int | None = None
    rc: frozenset[str] | None = None
    present: tuple[int, ...] = ()
    equal: tuple[tuple[int, str], ...] = ()
    regex: tuple[tuple[int, re.Pattern[str]], ...] = ()
    nth: int | None = None
    every: int | None = None
    probability: float | None = None
    seed: int = 0
    times: int | None = None


@dataclass(frozen=True)
class Action:
    """One thing a rule does; `value` is its argument (a code, a reason, seconds, a kind)."""

    kind: str
    value: Any = True

    def describe(self) -> str:
        return self.kind if self.value is True else f"{self.kind} {self.value}"


@dataclass(frozen=True)
class Rule:
    name: str
    match: Match
    action: Action


@dataclass(frozen=True)
class Effect:
    """What the shell must do with an answer instead of sending it once, now."""

    kind: str  # one of DELIVERIES
    seconds: float = 0.0


# --- matching ------------------------------------------------------------------------------------


def _text(message: Message, number: int) -> str | None:
    value = message.fields.get(number)
    if value is None:
        return None
    return value.hex().upper() if isinstance(value, bytes) else str(value).rstrip()


def _pan(message: Message) -> str:
    return message.text(2) or message.text(35).partition("=")[0]


def static_match(match: Match, request: Message, rc: str | None) -> bool:
    """Everything but the counters and the dice: a pure function of the message."""
    if match.mti is not None and request.mti not in match.mti:
        return False
    for wanted, number in ((match.processing_code, 3), (match.terminal, 41), (match.merchant, 42)):
        if wanted is not None and _text(request, number) not in wanted:
            return False
    if match.rc is not None and rc not in match.rc:
        return False
    if match.pan_prefix or match.pan_range:
        pan = _pan(request)
        if match.pan_prefix and not pan.startswith(match.pan_prefix):
            return False
        if match.pan_range:
            low, high = match.pan_range
            if not pan or not low <= pan[:len(low)] <= high:
                return False
    if match.amount_min is not None or match.amount_max is not None:
        amount = _text(request, 4)
        if amount is None or not amount.isdigit():
            return False
        value = int(amount)
        if match.amount_min is not None and value < match.amount_min:
            return False
        if match.amount_max is not None and value > match.amount_max:
            return False
    if any(n not in request.fields for n in match.present):
        return False
    if any(_text(request, n) != value for n, value in match.equal):
        return False
    return all((text := _text(request, n)) is not None and pattern.search(text)
               for n, pattern in match.regex)


@dataclass
class Counter:
    """A rule's state: requests its static conditions matched, and times it acted."""

    seen: int = 0
    hits: int = 0
    dice: random.Random | None = None


class RuleSet:
    """Rules in order with their counters. `pick` is the whole matcher: the first rule whose
    conditions all hold acts, and only its hit counter moves (every rule whose static conditions
    held counts the message as seen, so `nth`/`every` count what the rule could have acted on)."""

    def __init__(self, rules: tuple[Rule, ...], hits: Mapping[str, int] | None = None) -> None:
        self.rules = rules
        self.counters = {rule.name: Counter(hits=(hits or {}).get(rule.name, 0),
                                            dice=random.Random(rule.match.seed))
                         for rule in rules}

    def pick(self, request: Message, rc: str | None) -> Rule | None:
        for rule in self.rules:
            match = rule.match
            if not static_match(match, request, rc):
                continue
            counter = self.counters[rule.name]
            counter.seen += 1
            if match.nth is not None and counter.seen != match.nth:
                continue
            if match.every is not None and counter.seen % match.every:
                continue
            if match.probability is not None:
                assert counter.dice is not None
                if counter.dice.random() >= match.probability:
                    continue
            if match.times is not None and counter.hits >= match.times:
                continue
            counter.hits += 1
            return rule
        return None

    def hits(self) -> dict[str, int]:
        return {name: c.hits for name, c in self.counters.items()}


# --- loading -------------------------------------------------------------------------------------


def _strings(where: str, value: object, digits: int | None = None) -> frozenset[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise RulesError(f"{where}: a string or a list of strings")
    if digits is not None and not all(len(i) == digits and i.isdigit() for i in items):
        raise RulesError(f"{where}: {digits} digits each")
    return frozenset(items)


def _field_number(where: str, key: object) -> int:
    if isinstance(key, int) and 1 <= key <= 128:
        return key
    if isinstance(key, str) and key.isdigit() and 1 <= int(key) <= 128:
        return int(key)
    raise RulesError(f"{where}: a field number 1-128, not {key!r}")


def _positive(where: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RulesError(f"{where}: a whole number of at least 1")
    return value


def _amount(where: str, value: object) -> int:
    if not isinstance(value, str):
        raise RulesError(f"{where}: an amount as a string, e.g. \"500.00\"")
    try:
        return parse_amount(value, allow_zero=True)
    except ValueError as exc:
        raise RulesError(f"{where}: {exc}") from None


def _pan_digits(where: str, value: object) -> str:
    if not isinstance(value, str) or not value.isdigit() or not 1 <= len(value) <= 19:
        raise RulesError(f"{where}: 1 to 19 digits")
    return value


def parse_match(where: str, data: object) -> Match:
    if not isinstance(data, dict):
        raise RulesError(f"{where}: a table")
    unknown = sorted(set(data) - set(MATCH_KEYS))
    if unknown:
        raise RulesError(f"{where}.{unknown[0]}: unknown condition (known: {', '.join(MATCH_KEYS)})")
    out: dict[str, Any] = {}
    for key, digits in (("mti", 4), ("processing_code", 6), ("rc", 2), ("terminal", None),
                        ("merchant", None)):
        if key in data:
            out[key] = _strings(f"{where}.{key}", data[key], digits)
    if "pan_prefix" in data:
        prefixes = _strings(f"{where}.pan_prefix", data["pan_prefix"])
        out["pan_prefix"] = tuple(_pan_digits(f"{where}.pan_prefix", p) for p in sorted(prefixes))
    if "pan_range" in data:
        bounds = data["pan_range"]
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise RulesError(f"{where}.pan_range: [low, high], two digit strings of one length")
        low, high = (_pan_digits(f"{where}.pan_range", b) for b in bounds)
        if len(low) != len(high) or low > high:
            raise RulesError(f"{where}.pan_range: low and high of one length, low <= high")
        out["pan_range"] = (low, high)
    for key in ("amount_min", "amount_max"):
        if key in data:
            out[key] = _amount(f"{where}.{key}", data[key])
    if "present" in data:
        numbers = data["present"] if isinstance(data["present"], list) else [data["present"]]
        out["present"] = tuple(_field_number(f"{where}.present", n) for n in numbers)
    for key in ("equal", "regex"):
        if key not in data:
            continue
        table = data[key]
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            raise RulesError(f"{where}.{key}: a table of field number = string")
        pairs = [(_field_number(f"{where}.{key}", n), v) for n, v in table.items()]
        if key == "regex":
            try:
                out[key] = tuple((n, re.compile(v)) for n, v in pairs)
            except re.error as exc:
                raise RulesError(f"{where}.regex: {exc}") from None
        else:
            out[key] = tuple(pairs)
    for key in ("nth", "every", "times"):
        if key in data:
            out[key] = _positive(f"{where}.{key}", data[key])
    if "probability" in data:
        p = data["probability"]
        if not isinstance(p, int | float) or isinstance(p, bool) or not 0 <= p <= 1:
            raise RulesError(f"{where}.probability: a number from 0 to 1")
        out["probability"] = float(p)
    if "seed" in data:
        if not isinstance(data["seed"], int) or isinstance(data["seed"], bool):
            raise RulesError(f"{where}.seed: a whole number")
        out["seed"] = data["seed"]
    return Match(**out)


def _reason(where: str, value: object) -> codes.KeyErrorReason:
    parts = value.split(" ", 2) if isinstance(value, str) else []
    try:
        return codes.KeyErrorReason(parts[0], parts[1], parts[2] if len(parts) > 2 else "")
    except (IndexError, ValueError) as exc:
        raise RulesError(f"{where}: a reason like \"K2 MAK missed rotation\" ({exc})") from None


ACTION_CHECKS: dict[str, Callable[[str, object], object]] = {
    "answer": lambda where, v: _code(where, v),
    "force14": lambda where, v: _reason(where, v),
    "mac": lambda where, v: _choice(where, v, MAC_SPOILS),
    "signon": lambda where, v: _choice(where, v, SIGNON_CORRUPTIONS),
    "delay": lambda where, v: _seconds(where, v),
}


def _code(where: str, value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9A-Z]{2}", value):
        raise RulesError(f"{where}: a response code of two digits or capitals, e.g. \"51\"")
    return value


def _choice(where: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise RulesError(f"{where}: one of {', '.join(choices)}")
    assert isinstance(value, str)
    return value


def _seconds(where: str, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 60:
        raise RulesError(f"{where}: seconds from 0 to 60")
    return float(value)


def _flag(where: str, value: object) -> bool:
    if value is not True:
        raise RulesError(f"{where}: true")
    return True


def parse_action(where: str, data: object) -> Action:
    if not isinstance(data, dict) or len(data) != 1:
        raise RulesError(f"{where}: a table with exactly one of {', '.join(ACTIONS)}")
    ((kind, value),) = data.items()
    if kind not in ACTIONS:
        raise RulesError(f"{where}.{kind}: unknown action (known: {', '.join(ACTIONS)})")
    check = ACTION_CHECKS.get(kind, _flag)
    return Action(kind, check(f"{where}.{kind}", value))


def parse_rules(data: object, source: str = "rules") -> tuple[Rule, ...]:
    """A decoded TOML/JSON document -> rules; RulesError names the key at fault."""
    if not isinstance(data, dict) or set(data) - {"rule"}:
        raise RulesError(f"{source}: the document holds only [[rule]] tables")
    items = data.get("rule", [])
    if not isinstance(items, list):
        raise RulesError(f"{source}: rule: a list of tables ([[rule]])")
    rules: list[Rule] = []
    for index, item in enumerate(items, 1):
        where = f"{source}: rule[{index}]"
        if not isinstance(item, dict):
            raise RulesError(f"{where}: a table")
        unknown = sorted(set(item) - set(RULE_KEYS))
        if unknown:
            raise RulesError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(RULE_KEYS)})")
        name = item.get("name", f"rule {index}")
        if not isinstance(name, str) or not name or not name.isprintable() or len(name) > 64:
            raise RulesError(f"{where}.name: a printable name of 1-64 characters")
        if any(r.name == name for r in rules):
            raise RulesError(f"{where}.name: {name!r} is used twice (hits are counted by name)")
        if "action" not in item:
            raise RulesError(f"{where}: needs an action")
        rules.append(Rule(name, parse_match(f"{where}.match", item.get("match", {})),
                          parse_action(f"{where}.action", item["action"])))
    return tuple(rules)


def load_rules(path: Path) -> tuple[Rule, ...]:
    """A TOML file (JSON when it ends in .json); errors carry the file and the line or key."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except json.JSONDecodeError as exc:
        raise RulesError(f"{path}: line {exc.lineno}: {exc.msg}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{path}: {exc}") from None
    return parse_rules(data, str(path))


# --- acting --------------------------------------------------------------------------------------


class RulesHost(Protocol):
    """What acting needs from the serving core: its configuration and its terminals."""

    @property
    def config(self) -> Any: ...

    def terminal(self, tid: str) -> Terminal | None: ...


def _reencode(codec: Codec, reply: Message, fields: dict[int, FieldValue],
              mac: Callable[[bytes], bytes] | None) -> bytes:
    """The reply with changed fields; MACed again when it carried a MAC and a MAK is at hand."""
    message = Message(reply.mti, fields)
    if mac is None or 64 not in fields:
        return codec.encode(message)
    fields[64] = PLACEHOLDER
    encoded = codec.encode(message)
    offset = mac_offset(codec, encoded)
    assert offset is not None
    return encoded[:offset] + mac(encoded[:offset]) + encoded[offset + MAC_SIZE:]


def _mac_function(host: RulesHost, request: Message) -> Callable[[bytes], bytes] | None:
    terminal = host.terminal(request.text(41).rstrip())
    if terminal is None or not terminal.working:
        return None
    mak = terminal.working[0].mak
    generate = host.config.security.generate_mac
    return lambda data: generate(mak, data)


def corrupt_field62(data: bytes, code: str, kind: str, codec: Codec) -> bytes:
    """A sign-on's keys spoiled on their way out, as ERROR14's "key generated wrongly" and
    "communication fault" causes need. The host has no clear key to spoil (its module holds
    them), so every corruption works on the ciphertext or the layout:
    - `bitflip`: one bit of the first key's ciphertext: the terminal decrypts another key,
      whose parity then fails (255 times in 256), else its check value;
    - `parity`: the low (parity) bit of the first ciphertext byte: the same effect;
    - `kcv`: the first key's check value altered: a KCV mismatch;
    - `short`: field 62 cut to half its length; `length`: the first key one DES block short,
      a key length the key set does not have. Both break the layout: a corrupt download.
    """
    if kind == "short":
        return data[:len(data) // 2]
    keys = parse_key_set(data, code, codec.dialect)
    first = keys[0]
    if kind == "kcv":
        first = WrappedKey(first.usage, first.ciphertext, bytes([first.kcv[0] ^ 0xFF]) + first.kcv[1:])
    elif kind == "length":
        body = build_key_set(keys, code)
        return body[:8] + body[len(first.ciphertext):]
    else:
        bit = 0x01 if kind == "parity" else 0x10
        cipher = bytes([first.ciphertext[0] ^ bit]) + first.ciphertext[1:]
        first = WrappedKey(first.usage, cipher, first.kcv)
    return build_key_set([first, *keys[1:]], code)


def act(rule: Rule, outcome: Outcome, host: RulesHost, now: float) -> tuple[Outcome, Effect | None]:
    """The answer after `rule`, and how the shell must deliver it (None: as usual)."""
    action = rule.action
    note = f"{outcome.note}; rule {rule.name}: {action.describe()}".lstrip("; ")
    request = outcome.request
    assert request is not None
    if action.kind in DELIVERIES:
        return replace(outcome, note=note), Effect(action.kind, float(action.value)
                                                   if action.kind == "delay" else 0.0)
    pipeline = host.config.pipeline
    if action.kind in ("answer", "force14"):
        if action.kind == "force14":
            reason: codes.KeyErrorReason = action.value
            verdict = key_error(reason.code, reason.key, reason.text)
            working = None
        else:
            verdict = Verdict(action.value)
            terminal = host.terminal(request.text(41).rstrip())
            maced = (action.value in codes.MACED_RESPONSE_CODES and 64 in request.fields
                     and terminal is not None and bool(terminal.working))
            working = terminal.working[0] if maced and terminal is not None else None
        extra = {38: "RULE00"} if action.value == codes.APPROVED and request.mti == "0200" else None
        made = pipeline.respond(request, verdict, now, working, extra)
        return replace(made, note=note), None  # the key database is not touched
    reply = outcome.reply
    if reply is None:
        return outcome, None
    fields = dict(reply.fields)
    codec: Codec = pipeline.codec
    mac = _mac_function(host, request)
    if action.kind == "wrong_stan":
        stan = reply.text(11)
        fields[11] = f"{(int(stan) + 1) % 1_000_000:06d}" if stan.isdigit() else "999999"
    elif action.kind == "mac":
        if 64 not in fields:
            return replace(outcome, note=note + " (no MAC to spoil)"), None
        if action.value == "off":
            del fields[64]
        else:
            spoiled = bytearray(outcome.response or b"")
            offset = mac_offset(codec, bytes(spoiled))
            assert offset is not None
            spoiled[offset] ^= 0x01
            return replace(outcome, response=bytes(spoiled), note=note), None
    elif action.kind == "signon":
        block = fields.get(62)
        if reply.mti != "0810" or not isinstance(block, bytes):
            return replace(outcome, note=note + " (no keys to corrupt)"), None
        fields[62] = corrupt_field62(block, request.text(60)[-3:], action.value, codec)
    response = _reencode(codec, reply, fields, mac)
    return replace(outcome, response=response, reply=Message(reply.mti, fields), note=note), None


# --- the file, reloaded --------------------------------------------------------------------------


@dataclass
class RuleBook:
    """The rules of a serving host: reloaded when the file changes; hit counts kept by rule name
    across reloads and saved to `hits_path` so `pos-host rules show` can read them."""

    path: Path
    hits_path: Path | None = None
    log: Callable[..., None] = lambda **entry: None
    clock: Callable[[], float] = time.time
    rules: RuleSet = field(init=False)
    stamp: tuple[float, int] | None = field(init=False, default=None)
    dirty: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.rules = RuleSet(load_rules(self.path), self._saved_hits())
        self.stamp = self._stamp()

    def _stamp(self) -> tuple[float, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def _saved_hits(self) -> dict[str, int]:
        if self.hits_path is None:
            return {}
        try:
            data = json.loads(self.hits_path.read_text(encoding="utf-8"))
            return {str(k): int(v) for k, v in data.get("hits", {}).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def reload_if_changed(self) -> bool:
        """A new file replaces the rules between two messages, never during one; a bad one is
        logged and the last good rules stay."""
        stamp = self._stamp()
        if stamp == self.stamp:
            return False
        self.stamp = stamp
        try:
            rules = load_rules(self.path)
        except RulesError as exc:
            self.log(ts=self.clock(), event="rules refused", error=str(exc),
                     kept=len(self.rules.rules))
            return False
        self.rules = RuleSet(rules, self.rules.hits())
        self.log(ts=self.clock(), event="rules reloaded", rules=len(rules))
        return True

    def apply(self, outcome: Outcome, host: RulesHost, now: float) -> tuple[Outcome, Effect | None]:
        request = outcome.request
        if request is None or outcome.response is None:
            return outcome, None
        rule = self.rules.pick(request, outcome.rc)
        if rule is None:
            return outcome, None
        self.dirty = True
        return act(rule, outcome, host, now)

    def save(self) -> str | None:
        """Hit counts to their file (replaced whole, so a reader never sees half of it). A file
        that cannot be written (disk full) is the reason returned, and tried again next time:
        counts for `rules show` never cost the answers of the batch that made them."""
        if not self.dirty or self.hits_path is None:
            return None
        tmp = self.hits_path.with_name(self.hits_path.name + ".tmp")
        try:
            tmp.write_text(json.dumps({"file": str(self.path), "hits": self.rules.hits()}),
                           encoding="utf-8")
            os.replace(tmp, self.hits_path)
        except OSError as exc:
            return f"{self.hits_path}: {exc.strerror or exc}"
        self.dirty = False
        return None


def describe(rules: tuple[Rule, ...], hits: Mapping[str, int]) -> list[dict[str, Any]]:
    """Rules as `rules show` prints them: conditions as written, PAN bounds masked, and so is
    what a condition compares a sensitive field (PAN, track, PIN block, keys, MACs, chip data:
    the fields either built-in dialect masks) with."""
    hidden = sensitive_numbers(get_dialect("iso87")) | sensitive_numbers(get_dialect("cup"))
    rows = []
    for rule in rules:
        conditions = {}
        for key in MATCH_KEYS:
            value = getattr(rule.match, key)
            if value is None or value == () or (key == "seed" and value == 0):
                continue
            if key in ("pan_prefix", "pan_range"):
                value = [p if len(p) <= 6 else mask_pan(p) for p in value]
            elif key == "regex":
                value = {str(n): p.pattern if n not in hidden else f"<pattern masked, {len(p.pattern)} chars>"
                         for n, p in value}
            elif key == "equal":
                value = {str(n): v if n not in hidden else mask_pan(v) if n == 2
                         else f"<masked, {len(v)} chars>" for n, v in value}
            elif isinstance(value, frozenset):
                value = sorted(value)
            conditions[key] = value
        rows.append({"name": rule.name, "match": conditions, "action": rule.action.describe(),
                     "hits": hits.get(rule.name, 0)})
    return rows

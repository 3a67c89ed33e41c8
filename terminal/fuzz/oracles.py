"""The oracles: what counts as broken, as data. Each answer check is a pure function of the
request, the answer and the session's MAK; the table's order is the order they are tried in.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from protocol import codes, macing
from protocol.crypto.keys import Key
from protocol.errors import ProtocolError
from protocol.message import Message
from terminal.fuzz.engine import Context
from terminal.fuzz.probe import Probe, Step

ORACLES: dict[str, str] = {
    "crash": "the target stopped accepting connections, or its port went silent for good",
    "hang": "no answer and no close within --timeout",
    "malformed": "an answer that is not a well-formed frame of the dialect",
    "wrong_mti": "an answer whose MTI is not the response MTI of the request",
    "echo": "field 11, 41 or 42 of the answer differs from the request's",
    "malfunction": "an answer with response code 96 (system malfunction)",
    "mac": "an approval or decline without a valid MAC, in a session with keys (PROTOCOL.md §3)",
    "closed": "the connection closed for a message the contract says must be answered",
    "latency": "an answer far slower than the target's own median",
    "link": "a link reaction other than §5's (no NAK for a bad frame, a frame delivered twice)",
}
ECHO_FIELDS = (11, 41, 42)
MACED_MTIS = frozenset({"0200", "0220", "0320", "0400", "0500"})
"""Requests whose approvals and declines carry a MAC (§3 and §7)."""
LATENCY_FACTOR = 20.0
LATENCY_FLOOR = 0.5
"""An answer is an outlier past FACTOR x the median and FLOOR seconds: a busy machine's pauses
of a few hundred milliseconds are not findings."""
LATENCY_SAMPLES = 20


@dataclass(slots=True)
class Observation:
    """What one step brought back."""

    answers: list[bytes] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    closed: bool = False
    timed_out: bool = False
    link: list[str] = field(default_factory=list)
    """Control bytes the target sent in reply to raw link bytes ("ACK", "NAK")."""
    mak: Key | None = None
    sent: tuple[bytes, ...] = ()
    """The payloads as sent (MACed where the step is signed)."""
    absorbed: list[bytes] = field(default_factory=list)
    """Payloads a serial link took as a retransmission of its last frame: not answered (§5)."""
    bad_frame: str = ""
    """Why the bytes that came back do not make a frame, when they do not."""


@dataclass(frozen=True, slots=True)
class Verdict:
    oracle: str
    detail: str
    request: bytes = b""
    answer: bytes = b""


Check = Callable[[Context, Message, Message, bytes, Key | None], str | None]


def response_mti(mti: str) -> str:
    return f"{mti[:2]}{int(mti[2]) + 1}{mti[3]}"


def check_mti(ctx: Context, request: Message, answer: Message, raw: bytes, mak: Key | None) -> str | None:
    want = response_mti(request.mti)
    return None if answer.mti == want else f"expected MTI {want}, got {answer.mti}"


def check_echo(ctx: Context, request: Message, answer: Message, raw: bytes, mak: Key | None) -> str | None:
    for n in ECHO_FIELDS:
        if n in request.fields and answer.get(n) != request.get(n):
            return (f"field {n} differs from the request's" if n in answer.fields
                    else f"field {n} missing from the answer")
    return None


def check_96(ctx: Context, request: Message, answer: Message, raw: bytes, mak: Key | None) -> str | None:
    return "answered 96" if answer.text(39) == codes.SYSTEM_MALFUNCTION else None


def check_mac(ctx: Context, request: Message, answer: Message, raw: bytes, mak: Key | None) -> str | None:
    rc = answer.text(39)
    if mak is None or request.mti not in MACED_MTIS or rc not in codes.MACED_RESPONSE_CODES:
        return None
    if 64 not in answer.fields:
        return f"answered {rc} without a MAC"
    return None if macing.verify(ctx.codec, raw, mak) else f"answered {rc} with a MAC that fails"


ANSWER_CHECKS: tuple[tuple[str, Check], ...] = (
    ("wrong_mti", check_mti),
    ("echo", check_echo),
    ("malfunction", check_96),
    ("mac", check_mac),
)


def decode_request(ctx: Context, payload: bytes) -> Message | None:
    """The request as far as it decodes (what a host can echo of it), or None."""
    return _decode(ctx, payload)[0]


def _decode(ctx: Context, payload: bytes) -> tuple[Message | None, bool]:
    """As far as it decodes, and whether that is all of it."""
    try:
        return ctx.codec.decode(ctx.framing.unframe(payload).message), True
    except ProtocolError as exc:
        return exc.partial, False


def judge_answer(ctx: Context, request: bytes, answer: bytes, mak: Key | None) -> Verdict | None:
    try:
        raw = ctx.framing.unframe(answer).message
        decoded = ctx.codec.decode(raw)
    except ProtocolError as exc:
        return Verdict("malformed", f"the answer does not decode: {exc}", request, answer)
    asked, complete = _decode(ctx, request)
    if asked is None:
        return None
    for oracle, check in ANSWER_CHECKS:
        if oracle == "echo" and not complete:
            asked = Message(asked.mti, {n: v for n, v in asked.fields.items() if n in decoded.fields})
        detail = check(ctx, asked, decoded, raw, mak)
        if detail:
            return Verdict(oracle, detail, request, answer)
    return None


def judge_step(ctx: Context, step: Step, seen: Observation, median: float | None) -> Verdict | None:
    """The first oracle this step trips, or None. `median`: the target's latency so far."""
    due = [p for p in (seen.sent if step.sign else step.answered) if p not in seen.absorbed]
    first = due[0] if due else (seen.sent[0] if seen.sent else b"")
    if seen.bad_frame:
        return Verdict("malformed", seen.bad_frame, first, seen.answers[0] if seen.answers else b"")
    if step.link and step.link not in seen.link:
        got = ", ".join(seen.link) or "nothing"
        return Verdict("link", f"expected {step.link} for the raw bytes, got {got}", first)
    if step.quiet and seen.answers:
        return Verdict("link", "an answer came where none is due (delivered twice?)", first,
                       seen.answers[0])
    for request, answer in zip(due, seen.answers, strict=False):
        verdict = judge_answer(ctx, request, answer, seen.mak)
        if verdict:
            return verdict
    if len(seen.answers) < len(due):
        missing = due[len(seen.answers)]
        if seen.closed:
            return Verdict("closed", "the connection closed without an answer", missing)
        if seen.timed_out:
            return Verdict("hang", "no answer and no close in time", missing)
    if median is not None:
        for request, latency in zip(due, seen.latencies, strict=False):
            if latency > max(LATENCY_FACTOR * median, LATENCY_FLOOR):
                return Verdict("latency", f"answered in {latency:.2f} s; the median is "
                               f"{median * 1000:.1f} ms", request)
    return None


def judge(ctx: Context, probe: Probe, seen: list[Observation], median: float | None) -> Verdict | None:
    for step, observation in zip(probe.steps, seen, strict=False):
        verdict = judge_step(ctx, step, observation, median)
        if verdict:
            return verdict
    return None


class Latencies:
    """The target's own answer times, for the latency oracle's median (bounded memory). The
    median is worked out again every REFRESH samples, not per case: sorting 512 numbers for
    every answer would cost the fuzzer a fifth of its speed."""

    REFRESH = 64

    def __init__(self, keep: int = 512) -> None:
        self.keep = keep
        self.samples: list[float] = []
        self._median: float | None = None
        self._stale = 0

    def add(self, values: list[float]) -> None:
        if not values:
            return
        self.samples.extend(values)
        if len(self.samples) > self.keep:
            del self.samples[:len(self.samples) - self.keep]
        self._stale += len(values)
        if self._median is None or self._stale >= self.REFRESH:
            self._median = (statistics.median(self.samples)
                            if len(self.samples) >= LATENCY_SAMPLES else None)
            self._stale = 0

    def assume(self, median: float) -> None:
        """Start from a median measured before (a replayed finding's)."""
        self.samples = [median] * LATENCY_SAMPLES
        self._median, self._stale = median, 0

    def median(self) -> float | None:
        return self._median

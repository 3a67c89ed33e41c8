"""The fuzz loop: generate, send, judge; confirm, shrink and save what broke.

The loop owns the only state of a run: the session's keys (learnt from the answers, whichever
layer caused them), the target's latency median, and the findings seen so far.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Protocol

from protocol import codes, macing
from protocol.crypto.keys import Key
from protocol.errors import ProtocolError
from protocol.fields import NMIC_SIGN_OFF, Field60
from protocol.message import Message
from terminal.fuzz import engine, store
from terminal.fuzz.engine import Context
from terminal.fuzz.oracles import Latencies, Observation, Verdict, decode_request, judge
from terminal.fuzz.probe import Probe, Step
from terminal.fuzz.shrink import shrink
from terminal.fuzz.tcp import TargetDown
from terminal.keystore import KeySet, StoredKey
from terminal.session import Request, Session
from terminal.store import Config

PIPELINE = 16
"""Message-layer cases sent in one write, at most (answers come back in order)."""
CLOSE_SETTLE = 0.2
"""Seconds a target that closed on us is given to finish exiting, if it is exiting, before
the fuzzer knocks again to tell a crash from a close."""


class Target(Protocol):
    def run(self, step: Step, payloads: tuple[bytes, ...], due: int,
            meanwhile: Callable[[], object] | None = None) -> Observation: ...

    def alive(self, payload: bytes = b"") -> bool: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


class SignOnFailed(Exception):
    """The session layer could not start: the reason, masked (a response code, a key error)."""


@dataclass(frozen=True)
class Settings:
    seed: int = 0
    cases: int = 2000
    seconds: float = 60.0
    layers: tuple[str, ...] = ("frame", "message")
    findings: Path | None = None
    shrink_attempts: int = 60
    shrink_seconds: float = 10.0
    restart_wait: float = 10.0
    """How long a crashed target is given to come back (a supervisor) before shrinking stops."""


class Keys:
    """The session layer's terminal: terminal.session's sign-on, and the MAK it installed."""

    def __init__(self, ctx: Context, tmk: Key, clock: Callable[[], float] = time.time) -> None:
        self.session = Session(Config(ctx.tid.strip(), ctx.mid.strip(), ctx.dialect.name),
                               ctx.dialect, KeySet({"TMK": StoredKey(tmk, 0, clock())}), clock)
        self.signed_on = False

    @property
    def mak(self) -> Key | None:
        stored = self.session.keys.keys.get("MAK")
        return stored.key if stored else None

    def learn(self, ctx: Context, request: bytes, answer: bytes) -> None:
        """Follow the host's key state from what it answered: a sign-on installs, a sign-off or
        a key error means sign on again before the next MACed request."""
        try:
            asked = ctx.codec.decode(ctx.framing.unframe(request).message)
            raw = ctx.framing.unframe(answer).message
            got = ctx.codec.decode(raw)
        except ProtocolError:
            return
        rc = got.text(39)
        if asked.mti == "0800" and got.mti == "0810" and rc == codes.APPROVED:
            stan = asked.text(11)
            result = self.session.receive(
                Request("signon", asked, b"", int(stan) if stan.isdigit() else 0), raw)
            if result.keyset is not None:
                self.session.keys = result.keyset
                self.signed_on = True
        elif rc == codes.KEY_ERROR or (asked.mti == "0820" and rc == codes.APPROVED
                                       and _nmic(asked) == NMIC_SIGN_OFF):
            self.signed_on = False


def _nmic(message: Message) -> str:
    try:
        return Field60.parse(message.text(60)).nmic
    except ProtocolError:
        return ""


def sign_payload(ctx: Context, payload: bytes, mak: Key | None) -> bytes:
    """Field 64 of a request computed under `mak` (left as it is without one)."""
    if mak is None:
        return payload
    unframed = ctx.framing.unframe(payload)
    message = unframed.message
    try:
        offset = macing.mac_offset(ctx.codec, message)
    except ProtocolError:
        return payload
    if offset is None:
        return payload
    mac = macing.compute(ctx.codec, mak, message[:offset])
    head = payload[:len(payload) - len(message)]
    return head + message[:offset] + mac + message[offset + macing.MAC_SIZE:]


@dataclass
class Run:
    target: Target
    ctx: Context
    settings: Settings
    target_name: str
    keys: Keys | None = None
    clock: Callable[[], float] = time.monotonic
    findings: dict[tuple[str, str, str], store.Finding] = field(default_factory=dict)
    latencies: Latencies = field(default_factory=Latencies)
    cases: int = 0
    unconfirmed: int = 0
    started: float = 0.0
    status: Callable[[Run], None] | None = None

    # --- one probe ---------------------------------------------------------------------------

    def sign_on(self) -> None:
        assert self.keys is not None
        request = self.keys.session.signon(self._stan(), int(self.ctx.batch))
        payload = engine.payload_of(self.ctx, request.encoded)
        seen = self.target.run(Step(payloads=(payload,), answered=(payload,)), (payload,), 1)
        if not seen.answers:
            raise SignOnFailed("the sign-on got no answer")
        self.keys.learn(self.ctx, payload, seen.answers[0])
        if not self.keys.signed_on:
            raise SignOnFailed(f"the sign-on was refused: {store.describe(self.ctx, seen.answers[0])}")

    def _stan(self) -> int:
        self._stans = getattr(self, "_stans", 500_000) + 1
        return self._stans % 1_000_000

    def execute(self, probe: Probe, meanwhile: Callable[[], object] | None = None) -> Verdict | None:
        """Send a probe's steps, judge what came back. `meanwhile` runs once, while the first
        answer is on its way."""
        if probe.layer == "session" and self.keys is not None and not self.keys.signed_on:
            self.sign_on()
        seen: list[Observation] = []
        try:
            for step in probe.steps:
                mak = self.keys.mak if self.keys else None
                payloads = (tuple(sign_payload(self.ctx, p, mak) for p in step.payloads)
                            if step.sign else step.payloads or step.answered)
                due = len(payloads) if step.sign else len(step.answered)
                observation = self.target.run(step, payloads, due, meanwhile)
                meanwhile = None
                observation.mak = mak
                seen.append(observation)
                if self.keys is not None:
                    for request, answer in zip(payloads, observation.answers, strict=False):
                        self.keys.learn(self.ctx, request, answer)
                if observation.closed or observation.timed_out:
                    break
        except TargetDown as exc:
            return Verdict("crash", str(exc), _first(probe))
        return self.conclude(probe, seen)

    def conclude(self, probe: Probe, seen: list[Observation]) -> Verdict | None:
        """Judge what a probe brought back; after a close, a hang or a fresh-connection step,
        knock again to tell a crash from a close."""
        verdict = judge(self.ctx, probe, seen, self.latencies.median())
        if verdict is None:
            for observation in seen:
                self.latencies.add(observation.latencies)
        if (verdict is not None and verdict.oracle in ("closed", "hang")) or any(
                step.fresh for step in probe.steps):
            if verdict is not None:
                time.sleep(CLOSE_SETTLE)
            if not self.target.alive(self._alive_payload):
                return Verdict("crash", "the target stopped answering after this probe",
                               verdict.request if verdict else _first(probe))
        return verdict

    @property
    def _alive_payload(self) -> bytes:
        return engine.payload_of(self.ctx, engine.encode(self.ctx, "0820", engine.template("0820", self.ctx)))

    def trips(self, oracle: str) -> Callable[[Probe], bool]:
        def again(probe: Probe) -> bool:
            if oracle == "crash":
                self.wait_alive()
            self.target.reset()
            try:
                verdict = self.execute(probe)
            except SignOnFailed:
                return False
            return verdict is not None and verdict.oracle == oracle
        return again

    def wait_alive(self) -> bool:
        deadline = self.clock() + self.settings.restart_wait
        while self.clock() < deadline:
            if self.target.alive(b""):
                return True
            time.sleep(0.1)
        return False

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        self.started = self.clock()
        self.run_cases(0, self.settings.cases, self.started + self.settings.seconds)

    def probe(self, case: int) -> tuple[Context, Probe]:
        layers = self.settings.layers
        c = self.ctx  # built directly: dataclasses.replace costs more than the rest of this
        ctx = Context(c.dialect, c.tid, c.mid, c.batch, case % 999_999 + 1, c.pan, c.expiry)
        return ctx, engine.generate(layers[case % len(layers)], self.settings.seed, case, ctx)

    def run_cases(self, first: int, count: int, deadline: float = float("inf")) -> None:
        """Cases first .. first+count-1, or until `deadline`. Probes depend on the seed and
        case number only, so they are built ahead: the next ones while this one's answers
        travel, overlapping the fuzzer's own work with the target's; and runs of message-layer
        cases go out pipelined (see `_pipelined`)."""
        end = first + count
        queue: deque[tuple[int, Context, Probe]] = deque()
        built = [first]  # the next case to build

        def fill(upto: int) -> None:
            while len(queue) < upto and built[0] < end:
                queue.append((built[0], *self.probe(built[0])))
                built[0] += 1

        case = first
        pipelines = self.keys is None and getattr(self.target, "pipelines", False)
        while case < end and self.clock() < deadline:
            fill(1)
            batch = 1
            if pipelines:
                fill(PIPELINE)
                while batch < len(queue) and pipelinable(queue[batch - 1][2]) and pipelinable(
                        queue[batch][2]):
                    batch += 1
            taken = [queue.popleft() for _ in range(batch)]
            meanwhile = partial(fill, PIPELINE if pipelines else 1)
            if batch == 1:
                number, ctx, probe = taken[0]
                self._one(number, ctx, probe, self.execute(probe, meanwhile))
                case = number + 1
            else:
                done = self._pipelined(taken, meanwhile)
                case = taken[done - 1][0] + 1
                if done < batch:  # the rest go again, in order, on a fresh connection
                    queue.extendleft(reversed(taken[done:]))

    def _one(self, case: int, ctx: Context, probe: Probe, verdict: Verdict | None) -> None:
        self.cases += 1
        if verdict is not None:
            self.record(ctx, verdict, probe, case)
        if self.status:
            self.status(self)

    def _pipelined(self, taken: list[tuple[int, Context, Probe]], meanwhile: Callable[[], object]) -> int:
        """Several single-message cases in one write, their answers matched in order (the
        contract answers a connection's requests in order). Each case is judged from its own
        answer exactly as if it had gone alone (an answered case that trips an oracle does not
        change the answers after it), up to the first that goes unanswered: that one is judged
        and recorded, and the cases after it are handed back to run again on a fresh connection
        (what the target did with them is not looked at).
        Returns how many cases were judged."""
        payloads = tuple(probe.steps[0].payloads[0] for _, _, probe in taken)
        try:
            seen = self.target.run(Step(payloads=payloads, answered=payloads), payloads,
                                   len(payloads), meanwhile)
        except TargetDown as exc:
            case, ctx, probe = taken[0]
            self._one(case, ctx, probe, Verdict("crash", str(exc), _first(probe)))
            return 1
        for i, (case, ctx, probe) in enumerate(taken):
            answered = i < len(seen.answers)
            mine = Observation(answers=seen.answers[i:i + 1], latencies=seen.latencies[i:i + 1],
                               sent=payloads[i:i + 1])
            if not answered:
                mine.closed, mine.timed_out, mine.bad_frame = seen.closed, seen.timed_out, seen.bad_frame
            verdict = self.conclude(probe, [mine])
            self._one(case, ctx, probe, verdict)
            if not answered:
                self.target.reset()
                return i + 1
        return len(taken)

    def record(self, ctx: Context, verdict: Verdict, probe: Probe, case: int) -> None:
        for key in ((verdict.oracle, probe.layer, probe.place),
                    (verdict.oracle, probe.layer, place_of(ctx, verdict.request, ""))):
            known = self.findings.get(key)
            if known is not None:  # seen before: counted, and no finding text built for it
                known.hits += 1
                return
        trips = self.trips(verdict.oracle)
        if not trips(probe):  # a one-off (a busy machine's pause): not a finding
            self.unconfirmed += 1
            return
        size = probe.size()
        small, attempts = shrink(ctx, probe, trips, self.settings.shrink_attempts,
                                 self.settings.shrink_seconds, self.clock)
        if verdict.oracle == "crash":
            self.wait_alive()
        final = self.execute(small) if small is not probe else None
        if final is None or final.oracle != verdict.oracle:
            final = verdict
        if small.layer == "message" or small.place.startswith("field "):
            small = replace(small, place=place_of(ctx, final.request, small.place))
        finding = store.finding_from(ctx, final, small, self.settings.seed, case, self.target_name)
        finding.shrunk_from, finding.shrink_attempts = size, attempts
        finding.median = self.latencies.median()
        if verdict.oracle == "crash":
            self.wait_alive()
        known = self.findings.get(finding.key)
        if known is not None:
            known.hits += 1
            return
        self.findings[finding.key] = finding
        if self.settings.findings is not None:
            store.save(finding, self.settings.findings)

    @property
    def elapsed(self) -> float:
        return max(self.clock() - self.started, 1e-9)

    def report(self) -> dict:
        return {
            "target": self.target_name, "dialect": self.ctx.dialect.name,
            "seed": self.settings.seed, "layers": list(self.settings.layers),
            "cases": self.cases, "seconds": round(self.elapsed, 3),
            "cases_per_second": round(self.cases / self.elapsed, 1),
            "unconfirmed": self.unconfirmed,
            "findings": [f.summary() for f in self.findings.values()],
        }


def pipelinable(probe: Probe) -> bool:
    """One message that must be answered, on the connection as it is: nothing about it
    depends on timing, keys or a fresh stream, so it can share a write with its neighbours."""
    if probe.layer != "message" or len(probe.steps) != 1:
        return False
    step = probe.steps[0]
    return (len(step.payloads) == 1 and step.answered == step.payloads and not step.raw
            and not step.sign and not step.fresh and not step.quiet and not step.link
            and not step.pause)


def place_of(ctx: Context, request: bytes, place: str) -> str:
    """Where a shrunk finding is: its MTI, and the mutated field if the shrinker had to keep it
    (a field it could drop had nothing to do with the failure)."""
    decoded = decode_request(ctx, request)
    if decoded is None:
        return place or "MTI ?"
    number = place.removeprefix("field ")
    kept = number.isdigit() and int(number) in decoded.fields
    return f"MTI {decoded.mti}" + (f" {place}" if kept else "")


def _first(probe: Probe) -> bytes:
    for step in probe.steps:
        for payload in (*step.answered, *step.payloads):
            return payload
    return b""

"""The shrinker: smaller probes that still trip the same oracle, greedily, within a budget.

`candidates` is pure (a probe in, smaller probes out, biggest cuts first); `shrink` only asks
the caller's `trips` whether each one still fails, so the same shrinker serves TCP and serial.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from protocol.errors import ProtocolError
from protocol.framing import length_prefixed
from protocol.message import Message
from terminal.fuzz.engine import Context, must_answer, payload_of
from terminal.fuzz.probe import Probe, Step

KEEP = frozenset({64})
"""Field 64 of a signed step stays: the shell fills it, and without it no MAC check is reached."""


def _payload_step(ctx: Context, step: Step, payloads: tuple[bytes, ...]) -> Step:
    answered = tuple(p for p in payloads if must_answer(ctx, p))
    if step.raw:  # raw frames rebuilt from their payloads: only the "several frames" kind
        return Step(raw=(b"".join(map(length_prefixed, payloads)),), answered=answered,
                    fresh=step.fresh)
    return Step(payloads=payloads, answered=answered, sign=step.sign, fresh=step.fresh)


def smaller_messages(ctx: Context, payload: bytes, sign: bool) -> Iterator[bytes]:
    """Fields dropped one at a time, variable values halved, then bytes cut from the end."""
    try:
        message = ctx.framing.unframe(payload).message
    except ProtocolError:
        return
    try:
        decoded = ctx.codec.decode(message)
    except ProtocolError:
        decoded = None
    if decoded is not None:
        for n in sorted(decoded.fields, reverse=True):
            if sign and n in KEEP:
                continue
            fields = {k: v for k, v in decoded.fields.items() if k != n}
            yield from _encoded(ctx, decoded.mti, fields)
        for n, value in sorted(decoded.fields.items()):
            if ctx.dialect.fields[n].prefix and len(value) > 1:
                yield from _encoded(ctx, decoded.mti, {**decoded.fields, n: value[:len(value) // 2]})
        return
    keep = ctx.codec.mti_length
    cut = (len(message) - keep) // 2
    while cut >= 1:
        yield payload_of(ctx, message[:len(message) - cut])
        cut //= 2


def _encoded(ctx: Context, mti: str, fields: dict) -> Iterator[bytes]:
    try:
        yield payload_of(ctx, ctx.codec.encode(Message(mti, fields)))
    except ProtocolError:
        return


def candidates(ctx: Context, probe: Probe) -> Iterator[Probe]:
    steps = probe.steps
    if len(steps) > 1:
        for i in range(len(steps)):
            yield probe.with_steps(steps[:i] + steps[i + 1:])
    for i, step in enumerate(steps):
        payloads = step.payloads or (step.answered if step.raw and len(step.answered) > 1 else ())
        if len(payloads) > 1:
            for j in range(len(payloads)):
                rest = payloads[:j] + payloads[j + 1:]
                yield probe.with_steps((*steps[:i], _payload_step(ctx, step, rest), *steps[i + 1:]))
        if step.payloads and len(step.payloads) == 1:
            for smaller in smaller_messages(ctx, step.payloads[0], step.sign):
                new = _payload_step(ctx, step, (smaller,))
                yield probe.with_steps((*steps[:i], new, *steps[i + 1:]))


def shrink(ctx: Context, probe: Probe, trips: Callable[[Probe], bool], attempts: int,
           seconds: float, clock: Callable[[], float] = time.monotonic) -> tuple[Probe, int]:
    """The smallest probe found that still trips, and how many attempts it took."""
    deadline = clock() + seconds
    tried = 0
    improved = True
    while improved and tried < attempts and clock() < deadline:
        improved = False
        for candidate in candidates(ctx, probe):
            if tried >= attempts or clock() >= deadline:
                break
            if candidate.size() >= probe.size():
                continue
            tried += 1
            if trips(candidate):
                probe, improved = candidate, True
                break
    return probe, tried

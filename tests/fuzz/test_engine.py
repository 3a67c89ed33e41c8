"""The pure parts: the engine is a function of (seed, case, context); oracles and shrinker are
functions of bytes. No process, no socket."""

from __future__ import annotations

import random

from protocol.dialects import get_dialect
from protocol.message import Message
from terminal.fuzz import engine, oracles
from terminal.fuzz.engine import Context
from terminal.fuzz.probe import Probe
from terminal.fuzz.shrink import candidates, shrink

ISO = Context(get_dialect("iso87"))
CUP = Context(get_dialect("cup"))


def test_a_seed_and_a_case_give_the_same_probe_and_other_cases_differ() -> None:
    for ctx in (ISO, CUP):
        for layer in ("frame", "message", "session", "link"):
            probes = [engine.generate(layer, 3, case, ctx) for case in range(40)]
            assert probes == [engine.generate(layer, 3, case, ctx) for case in range(40)]
            assert len({repr(p) for p in probes}) > 10
            assert all(Probe.from_json(p.to_json()) == p for p in probes)


def test_draws_are_the_characters_rng_choice_draws() -> None:
    """The fast path against the plain one: the same text, and the RNG left in the same state
    (so every draw after it, and every probe of a seed, is what it always was)."""
    for alphabet in set(engine.ALPHABETS.values()) | {"CD", "0"}:
        for length in (0, 1, 7, 300):
            fast, plain = random.Random(f"{alphabet}/{length}"), random.Random(f"{alphabet}/{length}")
            assert engine.draws(fast, alphabet, length) == "".join(
                plain.choice(alphabet) for _ in range(length))
            assert fast.getstate() == plain.getstate()


def test_must_answer_follows_the_contract() -> None:
    echo = engine.payload_of(ISO, engine.encode(ISO, "0820", engine.template("0820", ISO)))
    assert engine.must_answer(ISO, echo)
    assert engine.must_answer(ISO, echo[:6])  # decodes as far as the MTI: a 30 is due
    assert not engine.must_answer(ISO, b"08")  # no MTI: closing is allowed
    response = engine.payload_of(ISO, engine.encode(ISO, "0830", engine.template("0830", ISO)))
    assert not engine.must_answer(ISO, response)  # a response MTI is ignored
    cup = engine.payload_of(CUP, engine.encode(CUP, "0820", engine.template("0820", CUP)))
    assert engine.must_answer(CUP, cup) and not engine.must_answer(CUP, b"\x61" + cup[1:])


def answer(ctx: Context, mti: str, fields: dict) -> bytes:
    return engine.payload_of(ctx, ctx.codec.encode(Message(mti, fields)))


def test_answer_checks() -> None:
    request = engine.payload_of(ISO, engine.encode(ISO, "0820", engine.template("0820", ISO)))
    good = {11: "000001", 39: "00", 41: "FUZZ0001", 42: "FUZZMERCHANT001"}
    assert oracles.judge_answer(ISO, request, answer(ISO, "0830", good), None) is None
    for mti, fields, oracle in (
        ("0810", good, "wrong_mti"),
        ("0830", {**good, 41: "OTHER001"}, "echo"),
        ("0830", {k: v for k, v in good.items() if k != 42}, "echo"),
        ("0830", {**good, 39: "96"}, "malfunction"),
    ):
        verdict = oracles.judge_answer(ISO, request, answer(ISO, mti, fields), None)
        assert verdict is not None and verdict.oracle == oracle, (mti, fields)
    verdict = oracles.judge_answer(ISO, request, b"08", None)
    assert verdict is not None and verdict.oracle == "malformed"


def test_the_shrinker_keeps_what_trips_and_cuts_the_rest() -> None:
    fields = engine.template("0200", ISO)
    probe = Probe("message", "x", "field 41", (engine.message_step(ISO, engine.encode(ISO, "0200", fields)),))
    assert all(c.size() <= probe.size() for c in candidates(ISO, probe))

    def trips(candidate: Probe) -> bool:  # a "bug" that needs field 41 only
        decoded = oracles.decode_request(ISO, candidate.steps[0].payloads[0])
        return decoded is not None and 41 in decoded.fields

    small, attempts = shrink(ISO, probe, trips, attempts=200, seconds=10)
    assert oracles.decode_request(ISO, small.steps[0].payloads[0]).fields.keys() == {41}
    assert 0 < attempts <= 200
    _, bounded = shrink(ISO, probe, trips, attempts=3, seconds=10)
    assert bounded == 3


def test_the_message_layer_sends_a_valid_request_of_every_mti_the_contract_names() -> None:
    """§3's and §7's requests, the unserved ones (to be answered 12) and a response or two:
    each "valid" probe is a message the codec decodes back to its template."""
    for ctx in (ISO, CUP):
        sent: set[str] = set()
        for case in range(600):
            probe = engine.generate("message", 0, case, ctx)
            if probe.kind != "valid":
                continue
            message = ctx.codec.decode(ctx.framing.unframe(probe.steps[0].payloads[0]).message)
            assert message.fields == engine.template(message.mti, ctx)
            sent.add(message.mti)
        assert sent >= {*engine.CONTRACT_MTIS, *engine.UNSERVED_MTIS}
    assert not set(engine.UNSERVED_MTIS) & set(engine.CONTRACT_MTIS)


def test_the_day_templates_are_the_contract_builders_requests() -> None:
    """§7's table: a refund names its original by 61 under 60.1 25; a reversal carries 39; a
    settlement and a batch upload carry their totals or records in 48."""
    refund, reversal = engine.template("0220", ISO), engine.template("0400", ISO)
    assert refund[3] == "200000" and str(refund[60]).startswith("25") and 61 in refund
    assert reversal[39] == "98" and reversal[22] == "010"
    assert 48 in engine.template("0500", ISO) and 48 in engine.template("0320", ISO)
    assert all(64 in engine.template(mti, ISO) for mti in engine.DAY_MTIS)

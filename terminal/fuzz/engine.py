"""The mutation engine: pure functions from (a seeded `random.Random`, a context) to a `Probe`.

Nothing here reads a clock, a socket or global randomness, so a seed and a case number give the
same probe every time (the runner seeds one `Random` per case from both), and a shrinker or a
replay can rebuild any step from its bytes alone.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from protocol import requests
from protocol import strategies as ps
from protocol.codec import Codec, codec_for
from protocol.errors import ProtocolError
from protocol.fields import NMIC_ECHO, NMIC_SIGN_OFF, TYPE_PURCHASE, Field60, SettlementTotals, UploadRecord
from protocol.framing import MAX_FRAME, Framing, Tpdu, length_prefixed
from protocol.link import ACK, DLE, ETX, NAK, STX, LinkOptions, encode_frame
from protocol.macing import PLACEHOLDER
from protocol.message import FieldValue, Message
from protocol.spec import Dialect, FieldSpec
from terminal.fuzz.probe import Probe, Step

LAYERS = ("frame", "message", "session", "link")
REQUEST_DIGITS = "02468"  # an MTI's third digit: a request (or advice, notification), to answer
SESSION_MTIS = ("0800", "0820", "0200")
"""§3's requests: sign-on, echo and sign-off, purchase. The frame layer wraps these only (its
mutations are in the framing: any sound message will do)."""
DAY_MTIS = ("0220", "0320", "0400", "0500")
"""§7's: refund, batch upload, reversal, settlement."""
CONTRACT_MTIS = SESSION_MTIS + DAY_MTIS
UNSERVED_MTIS = ("0100", "0600", "0620")
RESPONSE_MTIS = ("0810", "0210")
SESSION_FIELDS = (2, 3, 4, 14, 22, 25, 35, 49, 52, 53, 60)
"""Fields of a purchase the session layer mutates under a valid MAC (as tests/host/test_fuzz.py)."""
TPDU = Tpdu(destination=1, source=2)


@dataclass(frozen=True, slots=True)
class Context:
    """What a probe is built from besides the RNG: who the fuzzer claims to be."""

    dialect: Dialect
    tid: str = "FUZZ0001"
    mid: str = "FUZZMERCHANT001"
    batch: str = "000001"
    stan: int = 1
    pan: str = "6212345678901234"
    expiry: str = "2812"
    codec: Codec = field(init=False, repr=False, compare=False)
    framing: Framing = field(init=False, repr=False, compare=False)
    """The dialect's codec and framing, looked up once per context (a case builds one) and not
    on each of the dozen uses a probe and its judging make of them."""

    def __post_init__(self) -> None:
        codec, framing = _tools(self.dialect)
        object.__setattr__(self, "codec", codec)
        object.__setattr__(self, "framing", framing)


_TOOLS: dict[int, tuple[Dialect, Codec, Framing]] = {}


def _tools(dialect: Dialect) -> tuple[Codec, Framing]:
    """One codec and framing per dialect object, shared by every context of it."""
    hit = _TOOLS.get(id(dialect))
    if hit is None or hit[0] is not dialect:
        hit = _TOOLS[id(dialect)] = (dialect, codec_for(dialect), Framing(dialect))
    return hit[1], hit[2]


# --- values --------------------------------------------------------------------------------------

DIGITS = "0123456789"
PRINTABLE = "".join(chr(c) for c in range(32, 127))
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ALPHABETS = {"n": DIGITS, "z": DIGITS, "a": LETTERS, "an": PRINTABLE, "ans": PRINTABLE,
             "ns": PRINTABLE, "xn": DIGITS}


def draws(rng: random.Random, alphabet: str, length: int) -> str:
    """`length` characters of `alphabet`, drawn exactly as `rng.choice` draws them one by one
    (CPython's rejection sampling over `getrandbits`), so a seed gives the probes it always
    gave, at a third of the cost: choice's two calls a character were a tenth of a message
    case (tests/fuzz/test_engine.py holds the two to the same characters and the same state)."""
    getrandbits, n = rng.getrandbits, len(alphabet)
    k = n.bit_length()
    out = []
    for _ in range(length):
        r = getrandbits(k)
        while r >= n:
            r = getrandbits(k)
        out.append(alphabet[r])
    return "".join(out)


def value_of_length(spec: FieldSpec, rng: random.Random, length: int) -> FieldValue:
    """A valid value of `spec`'s type with exactly `length` characters (bytes for b)."""
    if spec.kind == "b":
        return rng.randbytes(length)
    text = draws(rng, ALPHABETS[spec.kind], length)
    if spec.kind == "z" and length > 2:
        at = rng.randrange(length)
        text = text[:at] + "=" + text[at + 1:]
    if spec.kind == "xn":
        text = rng.choice("CD") + text[1:]
    return text


def valid_value(spec: FieldSpec, rng: random.Random) -> FieldValue:
    """Mostly short, now and then at the boundaries: empty, one, the maximum."""
    if not spec.prefix:
        return value_of_length(spec, rng, spec.length)
    low = 2 if spec.kind == "xn" else 0
    roll = rng.random()
    length = (spec.length if roll < 0.15 else low if roll < 0.25
              else rng.randint(low, min(spec.length, 20)))
    return value_of_length(spec, rng, length)


def boundary_values(spec: FieldSpec) -> tuple[FieldValue, ...]:
    """The values at a type's edges: all zeros, all nines, all spaces; empty and the maximum."""
    if spec.kind == "b":
        size = spec.length if not spec.prefix else 0
        return (bytes(size), b"\xff" * size) if size else (b"", b"\x00")
    if not spec.prefix:
        fill = ("0", "9") if spec.kind in ("n", "z") else (" ", "~")
        return tuple(c * spec.length for c in fill)
    filler = "9" if spec.kind in ("n", "z", "xn") else "~"
    out: list[FieldValue] = ["", filler, filler * spec.length]
    if spec.kind == "xn":
        out = ["C0", "D" + "9" * (spec.length - 1)]
    return tuple(out)


# --- messages of the contract --------------------------------------------------------------------

def field60(type_code: str, batch: str, nmic: str) -> str:
    return Field60(type_code, batch, nmic).format()


def template(mti: str, ctx: Context) -> dict[int, FieldValue]:
    """A valid request of `mti` as the contract's §3 and §7 tables have it, built by
    protocol.requests where it has a builder (unserved MTIs get a purchase's fields); fields
    the dialect does not define are left out."""
    key = (mti, id(ctx.dialect), ctx.tid, ctx.mid, ctx.batch, ctx.pan, ctx.expiry)
    hit = _TEMPLATES.get(key)
    if hit is None or hit[0] is not ctx.dialect:
        if len(_TEMPLATES) >= 256:
            _TEMPLATES.clear()
        hit = _TEMPLATES[key] = (ctx.dialect, _template(mti, ctx))
    fields = dict(hit[1])
    if 11 in fields:
        fields[11] = f"{ctx.stan % 1_000_000:06d}"
    return fields


_TEMPLATES: dict[tuple, tuple[Dialect, dict[int, FieldValue]]] = {}
"""Templates by MTI and context (less the STAN): built once, copied per probe."""

AMOUNT = 100
ORIGINAL_STAN = "000000"
ORIGINAL_DATE = "1201"


def _request(mti: str, ctx: Context) -> Message:
    """The contract's request of `mti` (a purchase for an MTI it does not serve), unsigned."""
    station = requests.Station(ctx.tid, ctx.mid, ctx.batch)
    card = requests.CardEntry(pan=ctx.pan, expiry=ctx.expiry)
    purchase = requests.purchase(station, ORIGINAL_STAN, card, AMOUNT)
    original = requests.Reference(ctx.batch, ORIGINAL_STAN, date=ORIGINAL_DATE)
    builders: dict[str, Callable[[], Message]] = {
        "0220": lambda: requests.refund(station, ORIGINAL_STAN, card, AMOUNT, original),
        "0320": lambda: requests.batch_upload(station, ORIGINAL_STAN, [UploadRecord(
            TYPE_PURCHASE, ORIGINAL_STAN, ctx.pan, AMOUNT)], last=True),
        "0400": lambda: requests.reversal(purchase, requests.REVERSAL_NO_ANSWER),
        "0500": lambda: requests.settlement(station, ORIGINAL_STAN, "01 ", SettlementTotals()),
    }
    return builders[mti]() if mti in builders else purchase


def _template(mti: str, ctx: Context) -> dict[int, FieldValue]:
    base: dict[int, FieldValue] = {11: "000000", 41: ctx.tid, 42: ctx.mid}
    if mti in ("0800", "0810"):
        base.update({12: "120000", 13: "1201", 60: field60("00", ctx.batch, "003"), 63: "01 "})
    elif mti in ("0820", "0830"):
        base[60] = field60("00", ctx.batch, NMIC_ECHO)
    else:
        base.update({**_request(mti, ctx).fields, 64: PLACEHOLDER})
    return {n: v for n, v in sorted(base.items()) if n in ctx.dialect.fields}


def payload_of(ctx: Context, message: bytes) -> bytes:
    return ctx.framing.payload(message, TPDU if ctx.framing.has_tpdu else None)


def must_answer(ctx: Context, payload: bytes) -> bool:
    """The contract's rule: a well-framed payload whose MTI decodes as a request is answered
    (with 30 when the rest does not decode, 12 when its MTI is not served); only a response
    MTI is ignored, and only an undecodable MTI or a bad TPDU may close the connection."""
    try:
        message = ctx.framing.unframe(payload).message
        mti = ctx.codec.decode_mti(message)
    except ProtocolError:
        return False
    return mti[2] in REQUEST_DIGITS


def message_step(ctx: Context, *messages: bytes, sign: bool = False) -> Step:
    payloads = tuple(payload_of(ctx, m) for m in messages)
    return Step(payloads=payloads, answered=tuple(p for p in payloads if must_answer(ctx, p)),
                sign=sign)


def encode(ctx: Context, mti: str, fields: dict[int, FieldValue]) -> bytes:
    return ctx.codec.encode(Message(mti, fields))


# --- raw edits inside an encoded message ---------------------------------------------------------

def spans(ctx: Context, message: bytes) -> dict[int | str, tuple[int, int]]:
    return ctx.codec.decode_spans(message)[1]


def value_span(ctx: Context, message: bytes, number: int) -> tuple[int, int, int]:
    """Where field `number` starts, where its value starts (after the prefix), where it ends."""
    start, end = spans(ctx, message)[number]
    return start, start + ps.prefix_width(ctx.dialect.fields[number], ctx.dialect), end


def wrong_charset(ctx: Context, message: bytes, number: int, rng: random.Random) -> bytes | None:
    spec = ctx.dialect.fields[number]
    _start, at, end = value_span(ctx, message, number)
    if at == end or spec.kind == "b":
        return None
    i = rng.randrange(at, end)
    data = bytearray(message)
    bcd = ctx.dialect.digit_encoding == "bcd" and spec.kind in ("n", "z")
    if bcd:
        data[i] = (data[i] & 0xF0) | 0x0E if rng.random() < 0.5 else 0xE0 | (data[i] & 0x0F)
    elif spec.kind in ("n", "z", "xn"):
        data[i] = rng.choice(ps.NON_DIGIT_BYTES)
    else:
        data[i] = rng.choice((0x00, 0x7F, 0xFF, 0x0A))
    return bytes(data)


def overlong(ctx: Context, message: bytes, number: int, rng: random.Random) -> bytes | None:
    spec = ctx.dialect.fields[number]
    if not spec.prefix:
        return None
    capacity = ps.prefix_capacity(spec, ctx.dialect)
    if capacity <= spec.length:
        return None
    start, at, _ = value_span(ctx, message, number)
    value = rng.randint(spec.length + 1, capacity)
    return message[:start] + ps.spell_prefix(value, spec, ctx.dialect) + message[at:]


def bitmap_at(ctx: Context) -> int:
    return ctx.codec.mti_length


def junk_bitmap(ctx: Context, message: bytes, rng: random.Random) -> bytes:
    at = bitmap_at(ctx)
    size = 16 if message[at] & 0x80 else 8
    return message[:at] + rng.randbytes(size) + message[at + size:]


def empty_secondary(ctx: Context, message: bytes, rng: random.Random) -> bytes:
    """Bit 1 set, and a secondary bitmap of zeros (or none at all) behind it."""
    at = bitmap_at(ctx)
    if message[at] & 0x80:
        return message
    head = message[:at] + bytes([message[at] | 0x80]) + message[at + 1:at + 8]
    return head if rng.random() < 0.3 else head + bytes(8) + message[at + 8:]


# --- layers --------------------------------------------------------------------------------------

MTI_MIX = (SESSION_MTIS, DAY_MTIS, UNSERVED_MTIS, RESPONSE_MTIS)
MTI_WEIGHTS = (0.55, 0.75, 0.95)
"""Where a roll of the RNG falls picks the group of MTI_MIX: §3's requests most, then §7's,
then unserved ones (to be answered 12), now and then a response (to be ignored)."""


def message_probe(rng: random.Random, ctx: Context) -> Probe:
    mti = rng.choice(MTI_MIX[bisect.bisect(MTI_WEIGHTS, rng.random())])
    fields = template(mti, ctx)
    numbers = [n for n in fields if n != 64]
    kinds = ("valid", "boundary", "random_value", "wrong_charset", "overlong_field", "empty_field",
             "junk_bitmap", "empty_secondary", "appended", "truncated_message", "extra_field")
    kind = rng.choice(kinds)
    number = rng.choice(numbers)
    spec = ctx.dialect.fields[number]
    place = f"field {number}"
    raw_edit = kind in ("wrong_charset", "overlong_field", "junk_bitmap", "empty_secondary",
                        "appended", "truncated_message")
    message = encode(ctx, mti, fields) if kind == "valid" or raw_edit else b""
    if kind == "boundary":
        fields[number] = rng.choice(boundary_values(spec))
        message = encode(ctx, mti, fields)
    elif kind == "random_value":
        fields[number] = valid_value(spec, rng)
        message = encode(ctx, mti, fields)
    elif kind == "empty_field":  # a fixed field cannot be empty (the codec pads): then absent
        if spec.prefix:
            fields[number] = b"" if spec.kind == "b" else ""
        else:
            del fields[number]
        message = encode(ctx, mti, fields)
    elif kind == "extra_field":
        number = rng.choice(sorted(ctx.dialect.fields))
        place = f"field {number}"
        if number not in (1, 65):
            fields[number] = valid_value(ctx.dialect.fields[number], rng)
        message = encode(ctx, mti, fields)
    elif kind in ("wrong_charset", "overlong_field"):
        edit = wrong_charset if kind == "wrong_charset" else overlong
        message = edit(ctx, message, number, rng) or message
    elif kind in ("junk_bitmap", "empty_secondary"):
        place = "bitmap"
        message = (junk_bitmap if kind == "junk_bitmap" else empty_secondary)(ctx, message, rng)
    elif kind == "appended":
        place = "end"
        message += rng.randbytes(rng.randint(1, 16))
    elif kind == "truncated_message":
        place = "end"
        message = message[:rng.randint(ctx.codec.mti_length, len(message) - 1)]
    return Probe("message", kind, place if kind != "valid" else f"MTI {mti}",
                 (message_step(ctx, message),))


def frame_probe(rng: random.Random, ctx: Context) -> Probe:
    """TCP framing: length prefixes wrong, zero, 65,535, cut, doubled; TPDU and header mangled;
    frames split across writes and several in one write."""
    message = encode(ctx, rng.choice(SESSION_MTIS), template(rng.choice(SESSION_MTIS), ctx))
    payload = payload_of(ctx, message)
    frame = length_prefixed(payload)
    kinds = ["zero_length", "max_length", "short_length", "long_length", "cut", "doubled",
             "split", "several", "garbage"]
    if ctx.framing.has_tpdu:
        kinds += ["bad_tpdu", "header_mangled"]
    kind = rng.choice(kinds)

    def raw(*writes: bytes, answered: tuple[bytes, ...] = (), pause: float = 0.0) -> Probe:
        place = "TPDU" if kind in ("bad_tpdu", "header_mangled") else "length"
        return Probe("frame", kind, place, (Step(raw=writes, answered=answered, pause=pause,
                                                 fresh=True),))

    if kind == "zero_length":
        return raw(b"\x00\x00" + payload)
    if kind == "max_length":
        return raw(MAX_FRAME.to_bytes(2, "big") + payload)
    if kind == "short_length":
        return raw((len(payload) - rng.randint(1, min(16, len(payload) - 1))).to_bytes(2, "big")
                   + payload)
    if kind == "long_length":
        return raw((len(payload) + rng.randint(1, 64)).to_bytes(2, "big") + payload)
    if kind == "cut":
        return raw(frame[:rng.randint(1, len(frame) - 1)])
    if kind == "doubled":
        return raw(frame[:2] + frame, answered=())
    if kind == "split":
        cuts = sorted(rng.sample(range(1, len(frame)), min(3, len(frame) - 1)))
        parts = [frame[a:b] for a, b in zip([0, *cuts], [*cuts, len(frame)], strict=True)]
        return Probe("frame", kind, "length",
                     (Step(raw=tuple(parts), answered=(payload,), pause=0.001),))
    if kind == "several":
        count = rng.randint(2, 4)
        others = [payload_of(ctx, encode(ctx, mti, template(mti, ctx)))
                  for mti in rng.choices(SESSION_MTIS, k=count - 1)]
        frames = [payload, *others]
        return Probe("frame", kind, "length",
                     (Step(raw=(b"".join(map(length_prefixed, frames)),),
                           answered=tuple(frames)),))
    if kind == "garbage":
        return raw(length_prefixed(rng.randbytes(rng.randint(1, 64))))
    if kind == "bad_tpdu":
        bad = bytes([rng.choice([b for b in range(256) if b != 0x60])]) + payload[1:]
        return raw(length_prefixed(bad))
    # header_mangled: the TPDU is sound, so the message must still be answered
    size = len(ctx.dialect.header)
    mangled = payload[:5] + rng.randbytes(size) + payload[5 + size:]
    return Probe("frame", kind, "header", (Step(raw=(length_prefixed(mangled),),
                                                answered=(mangled,)),))


def purchase_fields(ctx: Context) -> dict[int, FieldValue]:
    return template("0200", ctx)


def session_probe(rng: random.Random, ctx: Context) -> Probe:
    """MACed purchases with fields mutated before the MAC, and stateful orders. Steps marked
    `sign` get field 64 at send time, so the mutation reaches the checks behind the MAC."""
    kind = rng.choice(("mutated", "mutated", "mutated", "signoff_then_purchase", "duplicate",
                       "stan_reused", "echo"))
    if kind == "mutated":
        fields = purchase_fields(ctx)
        chosen = rng.sample([n for n in SESSION_FIELDS if n in ctx.dialect.fields],
                            rng.randint(1, 2))
        for n in chosen:
            spec = ctx.dialect.fields[n]
            fields[n] = (rng.choice(boundary_values(spec)) if rng.random() < 0.3
                         else valid_value(spec, rng))
        message = encode(ctx, "0200", fields)
        return Probe("session", kind, f"field {chosen[0]}", (message_step(ctx, message, sign=True),))
    purchase = encode(ctx, "0200", purchase_fields(ctx))
    if kind == "signoff_then_purchase":
        off = template("0820", ctx)
        off[60] = field60("00", ctx.batch, NMIC_SIGN_OFF)
        return Probe("session", kind, "order", (message_step(ctx, encode(ctx, "0820", off)),
                                                message_step(ctx, purchase, sign=True)))
    if kind == "duplicate":
        step = message_step(ctx, purchase, sign=True)
        return Probe("session", kind, "order", (step, step))
    if kind == "stan_reused":
        other = purchase_fields(ctx)
        other[4] = f"{rng.randint(1, 99999):012d}"
        return Probe("session", kind, "order",
                     (message_step(ctx, purchase, sign=True),
                      message_step(ctx, encode(ctx, "0200", other), sign=True)))
    return Probe("session", kind, "MTI 0820", (message_step(ctx, encode(ctx, "0820",
                                                                         template("0820", ctx))),))


def link_probe(rng: random.Random, ctx: Context, options: LinkOptions | None = None) -> Probe:
    """The serial link (§5): each bad frame must be NAKed and must not be delivered; a good
    frame after it must still go through; a frame resent after its ACK is ACKed, not answered."""
    options = options or LinkOptions()
    payload = payload_of(ctx, encode(ctx, "0820", template("0820", ctx)))
    good = encode_frame(payload, options)
    follow = message_step(ctx, encode(ctx, "0820", template("0820", Context(
        ctx.dialect, ctx.tid, ctx.mid, ctx.batch, ctx.stan + 500_000))))
    kind = rng.choice(("bad_lrc", "wrong_len", "stray_ack", "stray_nak", "dle_misuse", "cut_by_gap",
                       "resent_after_ack"))

    def bad(data: bytes, place: str, link: str = "NAK", pause: float = 0.0,
            writes: tuple[bytes, ...] | None = None) -> Probe:
        return Probe("link", kind, place, (Step(raw=writes or (data,), link=link, pause=pause,
                                                quiet=True), follow))

    if kind == "bad_lrc":
        return bad(good[:-1] + bytes([good[-1] ^ (1 << rng.randrange(8))]), "LRC")
    if kind == "wrong_len":
        head = options.length != "none"
        if not head:
            return bad(good[:-1] + bytes([good[-1] ^ 1]), "LRC")
        length = len(payload) + rng.choice((-2, -1, 1, 2))
        wrong = bytes.fromhex(f"{length:04d}") if options.length == "bcd" else length.to_bytes(2, "big")
        return bad(good[:1] + wrong + good[3:], "LEN")
    if kind in ("stray_ack", "stray_nak"):
        return bad(bytes([ACK if kind == "stray_ack" else NAK]), "control", link="")
    if kind == "dle_misuse":
        return bad(bytes([STX, DLE, DLE, ETX, DLE]) + good[1:], "DLE")
    if kind == "cut_by_gap":
        cut = rng.randint(2, len(good) - 2)
        gap = options.inter_byte_timeout * 2
        return bad(b"", "gap", writes=(good[:cut], good[cut:]), pause=gap)
    first = Step(raw=(good,), answered=(payload,), link="ACK")
    return Probe("link", kind, "resend", (first, Step(raw=(good,), link="ACK", quiet=True)))


GENERATORS: dict[str, Callable[[random.Random, Context], Probe]] = {
    "frame": frame_probe,
    "message": message_probe,
    "session": session_probe,
    "link": link_probe,
}


def case_rng(seed: int, case: int) -> random.Random:
    """One RNG per case, from the seed and the case number: any case rebuilds on its own."""
    return random.Random(f"pos-fuzz/{seed}/{case}")


def generate(layer: str, seed: int, case: int, ctx: Context) -> Probe:
    return GENERATORS[layer](case_rng(seed, case), ctx)

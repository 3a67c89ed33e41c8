"""Hypothesis strategies for posemu's wire format: a public API for fuzzing your own code.

Everything here generates data for one dialect (a built-in name such as ``"iso87"`` / ``"cup"``,
or a :class:`~protocol.spec.Dialect`, e.g. one loaded with :func:`protocol.spec.load_dialect`):

- :func:`field_values` -- valid values for one data element;
- :func:`messages` -- valid :class:`~protocol.message.Message` objects;
- :func:`message_bytes` -- those messages encoded (MTI to the last field);
- :func:`frames` -- those messages as TCP frames (length prefix, and TPDU + header where the
  dialect has them), exactly what a peer sends on a socket;
- :func:`broken_frames` -- frames damaged in one labelled way (:class:`BrokenFrame`).

A typical use, checking that a server survives anything a peer can send::

    from hypothesis import given
    from protocol import strategies as ps

    @given(ps.broken_frames("cup"))
    def test_server_survives(broken):
        reply = my_server.handle_bytes(broken.data)   # must not crash
        if broken.invalid:
            assert reply is None                        # nothing valid came in

Generated sizes favour small values: variable fields are usually short and only now and then
reach their maximum, so hundreds of examples run in a second or two.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from hypothesis import strategies as st

from protocol.codec import Codec, codec_for
from protocol.dialects import get_dialect
from protocol.framing import MAX_FRAME, Framing, Tpdu
from protocol.message import FieldValue, Message
from protocol.spec import Dialect, FieldSpec

__all__ = [
    "BROKEN_KINDS",
    "INVALID_KINDS",
    "BrokenFrame",
    "broken_frames",
    "field_values",
    "frames",
    "message_bytes",
    "messages",
    "mtis",
    "tpdus",
]

DIGITS = "0123456789"
PRINTABLE = "".join(chr(c) for c in range(32, 127))
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SMALL = 20
"""Variable fields wider than this take their maximum length in one draw in ten; otherwise, and
for narrower fields always, hypothesis's own size distribution applies (mostly short values)."""


def _dialect(dialect: Dialect | str) -> Dialect:
    return get_dialect(dialect) if isinstance(dialect, str) else dialect


_CODECS: dict[int, tuple[Dialect, Codec]] = {}


def _codec(dialect: Dialect) -> Codec:
    """A codec per dialect object (built-ins are shared; loaded dialects compiled once)."""
    hit = _CODECS.get(id(dialect))
    if hit is None or hit[0] is not dialect:
        hit = (dialect, codec_for(dialect))
        _CODECS[id(dialect)] = hit
    return hit[1]


def _sized(make, low: int, high: int) -> st.SearchStrategy:
    """`make(min_size, max_size)` mostly with hypothesis's natural (small) sizes, and now and then
    (one draw in ten) at the maximum, so size limits are reached without slowing every example."""
    if low == high:
        return make(low, high)
    natural = make(low, high)
    if high - low <= SMALL:
        return natural
    return st.one_of(*[natural] * 9, make(high, high))


def _text(alphabet: str, low: int, high: int) -> st.SearchStrategy[str]:
    return _sized(lambda a, b: st.text(alphabet, min_size=a, max_size=b), low, high)


def _with_separator(digits: str, where: int) -> str:
    """At most one '=': replace the digit at `where` (an index modulo the length; -1 for none)."""
    if not digits or where < 0:
        return digits
    at = where % len(digits)
    return digits[:at] + "=" + digits[at + 1:]


def _track(low: int, high: int) -> st.SearchStrategy[str]:
    return st.builds(_with_separator, _text(DIGITS, low, high), st.integers(-1, 98))


def _signed(low: int, high: int) -> st.SearchStrategy[str]:
    digits = _text(DIGITS, max(low, 2) - 1, high - 1)
    return st.builds(str.__add__, st.sampled_from("CD"), digits)


@lru_cache(maxsize=4096)
def field_values(field_spec: FieldSpec) -> st.SearchStrategy[FieldValue]:
    """Valid values for one data element, as a :class:`Message` holds them.

    ``n``: digits; ``an``/``ans``/``ns``: printable ASCII; ``a``: letters; ``z`` (track data):
    digits with at most one ``=``; ``xn``: ``C`` or ``D`` then digits; ``b``: ``bytes``. A fixed
    field's values have exactly its length (so they round-trip unchanged, no padding), a
    variable one's any length up to its maximum (mostly short, the maximum now and then).
    """
    spec = field_spec
    low = spec.length if spec.prefix == 0 else 0
    high = spec.length
    kind = spec.kind
    if kind == "b":
        return _sized(lambda a, b: st.binary(min_size=a, max_size=b), low, high)
    if kind == "n":
        return _text(DIGITS, low, high)
    if kind == "z":
        return _track(low, high)
    if kind == "xn":
        if high < 2:
            raise ValueError(f"field {spec.number}: an xn field needs room for a sign and a digit")
        return _signed(low, high)
    if kind == "a":
        return _text(LETTERS, low, high)
    if kind in ("an", "ans", "ns"):
        return _text(PRINTABLE, low, high)
    raise ValueError(f"field {spec.number}: no strategy for kind {kind!r}")


def mtis() -> st.SearchStrategy[str]:
    """Any 4-digit MTI (the codec accepts any digits; a host decides which it serves)."""
    return st.text(DIGITS, min_size=4, max_size=4)


def messages(
    dialect: Dialect | str,
    mti: str | st.SearchStrategy[str] | None = None,
    fields: Iterable[int] | None = None,
    *,
    required: Iterable[int] = (),
    max_fields: int = 12,
) -> st.SearchStrategy[Message]:
    """Valid messages for `dialect`: a random subset of its fields, each with a valid value.

    `mti`: a fixed MTI, a strategy of MTIs, or None for any 4 digits. `fields`: the field numbers
    to choose from (default: every field the dialect defines). `required`: fields always
    present. `max_fields`: at most this many optional fields besides the required ones.
    Every message drawn encodes without error and decodes back to itself.
    """
    d = _dialect(dialect)
    pool = sorted(d.fields if fields is None else fields)
    must = sorted(set(required))
    for n in (*pool, *must):
        if n not in d.fields:
            raise ValueError(f"the {d.name} dialect does not define field {n}")
    values = {n: field_values(d.fields[n]) for n in set(pool) | set(must)}
    mti_strategy = mtis() if mti is None else st.just(mti) if isinstance(mti, str) else mti
    optional = [n for n in pool if n not in must]
    # a list then a set: duplicates just collapse (st.sets rejects them, wasting examples)
    subsets = (st.lists(st.sampled_from(optional), max_size=max_fields).map(set) if optional
               else st.just(set()))

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        chosen = set(must) | draw(subsets)
        return Message(draw(mti_strategy), {n: draw(values[n]) for n in sorted(chosen)})

    return build()


def message_bytes(dialect: Dialect | str, **kwargs) -> st.SearchStrategy[bytes]:
    """Valid encoded messages (MTI through the last field; no length prefix, TPDU or header).

    Keyword arguments are those of :func:`messages`.
    """
    d = _dialect(dialect)
    codec = _codec(d)
    return messages(d, **kwargs).map(codec.encode)


def tpdus() -> st.SearchStrategy[Tpdu]:
    """TPDUs with any destination and source address."""
    return st.builds(Tpdu, destination=st.integers(0, 0xFFFF), source=st.integers(0, 0xFFFF))


def frames(dialect: Dialect | str, **kwargs) -> st.SearchStrategy[bytes]:
    """Valid TCP frames: 2-byte length, then TPDU (random addresses) and header where the dialect
    has them, then a valid message. Keyword arguments are those of :func:`messages`."""
    d = _dialect(dialect)
    framing = Framing(d)
    encoded = message_bytes(d, **kwargs)
    if not d.tpdu:
        return encoded.map(framing.frame)
    return st.builds(lambda m, t: framing.frame(m, tpdu=t), encoded, tpdus())


# --- broken frames -------------------------------------------------------------------------------

BROKEN_KINDS = (
    "truncated",          # the frame is cut short: the length prefix promises more than follows
    "truncated_message",  # the payload is cut short and the length prefix says so
    "wrong_length",       # the length prefix differs from the payload's size
    "appended",           # bytes appended to the message, the length prefix counting them
    "bit_flip",           # one to three bits flipped anywhere in the frame
    "junk_bitmap",        # the bitmap replaced by random bytes
    "undefined_field",    # a bit set for a field the dialect does not define (dialects with gaps)
    "overlong_field",     # a length prefix above its field's maximum
    "non_digit",          # a non-digit where ASCII digits belong (n value, length prefix, MTI)
    "bad_bcd",            # a nibble that is no digit where BCD belongs (n/z value, prefix, MTI)
    "bad_tpdu",           # a TPDU id other than 0x60 (TPDU dialects)
    "garbage",            # random bytes behind a correct length prefix
)
INVALID_KINDS = frozenset(BROKEN_KINDS) - {"bit_flip", "junk_bitmap", "garbage"}
"""Kinds from which no valid message can be read: the frame reader raises, yields nothing, or its
first payload fails `Framing.unframe` + `Codec.decode`. The others usually fail but may, by
chance, still be valid (a flipped bit inside a text field, say)."""


@dataclass(frozen=True, slots=True)
class BrokenFrame:
    """A damaged TCP frame (length prefix included) and what was done to it."""

    kind: str
    data: bytes
    detail: str = ""
    field: int | str | None = None
    """The field a decoder's ProtocolError should name, where one can say (e.g. "end" for bytes
    appended, the number of an over-long field, "MTI", "TPDU")."""

    @property
    def invalid(self) -> bool:
        """True when no valid message can be read from `data` (see INVALID_KINDS)."""
        return self.kind in INVALID_KINDS

    def __repr__(self) -> str:
        return f"BrokenFrame({self.kind!r}, {self.detail!r}, field={self.field!r}, data={self.data.hex()})"


def _prefix_width(spec: FieldSpec, dialect: Dialect) -> int:
    if not spec.prefix:
        return 0
    return spec.prefix if dialect.prefix_encoding == "ascii" else (1 if spec.prefix == 2 else 2)


def _prefix_capacity(spec: FieldSpec, dialect: Dialect) -> int:
    """The largest length the prefix can spell: 99/999 in ASCII, 99/9999 in BCD (1 or 2 bytes)."""
    if dialect.prefix_encoding == "ascii":
        return 10 ** spec.prefix - 1
    return 99 if spec.prefix == 2 else 9999


def _spell_prefix(value: int, spec: FieldSpec, dialect: Dialect) -> bytes:
    width = _prefix_width(spec, dialect)
    if dialect.prefix_encoding == "ascii":
        return str(value).zfill(width).encode()
    return bytes.fromhex(str(value).zfill(2 * width))


def _overlong_candidates(dialect: Dialect) -> list[int]:
    return [n for n, f in dialect.fields.items() if f.prefix and f.length < _prefix_capacity(f, dialect)]


def _undefined_fields(dialect: Dialect) -> list[int]:
    return [n for n in range(2, 129) if n not in dialect.fields]


Site = tuple[str, int, int | str, str]


def _digit_sites(dialect: Dialect, codec: Codec, message: bytes) -> list[Site]:
    """Where digits live in `message`: (encoding, offset, field, kind) per byte.

    ASCII sites are single bytes that must be digits; BCD sites are bytes whose two nibbles must
    be digits (or D for '=' in z fields).
    """
    sites: list[Site] = []
    for i in range(codec.mti_length):
        sites.append((dialect.mti_encoding, i, "MTI", "n"))
    _, spans = codec.decode_spans(message)
    for number, (start, end) in spans.items():
        if not isinstance(number, int):
            continue
        spec = dialect.fields[number]
        width = _prefix_width(spec, dialect)
        for i in range(start, start + width):
            sites.append((dialect.prefix_encoding, i, number, "prefix"))
        if spec.kind in ("n", "z"):
            encoding = dialect.digit_encoding
            for i in range(start + width, end):
                sites.append((encoding, i, number, spec.kind))
    return sites


_INDEX = st.integers(0, 1 << 20)
_BOOL = st.booleans()
_DELTA = st.integers(1, 16).flatmap(lambda v: st.sampled_from((v, -v)))
_EXTRA = st.binary(min_size=1, max_size=16)
_FLIPS = st.lists(_INDEX, min_size=1, max_size=3)
_GARBAGE = st.binary(max_size=64)
_BITMAP16 = st.binary(min_size=16, max_size=16)
NON_DIGIT_BYTES = bytes(b for b in range(256) if not 0x30 <= b <= 0x39 and b != 0x3D)


def _applicable_kinds(dialect: Dialect) -> list[str]:
    kinds = ["truncated", "truncated_message", "wrong_length", "appended", "bit_flip",
             "junk_bitmap", "garbage"]
    if _undefined_fields(dialect):
        kinds.append("undefined_field")
    if _overlong_candidates(dialect):
        kinds.append("overlong_field")
    encodings = {dialect.mti_encoding, dialect.prefix_encoding, dialect.digit_encoding}
    if "ascii" in encodings:
        kinds.append("non_digit")
    if "bcd" in encodings:
        kinds.append("bad_bcd")
    if dialect.tpdu:
        kinds.append("bad_tpdu")
    return kinds


def broken_frames(
    dialect: Dialect | str, kinds: Iterable[str] | None = None, max_fields: int = 8,
) -> st.SearchStrategy[BrokenFrame]:
    """TCP frames of `dialect` damaged in one way each, labelled with :class:`BrokenFrame`.

    `kinds`: restrict to these (see BROKEN_KINDS; kinds that cannot apply to the dialect, such
    as `undefined_field` for a dialect defining all 128 fields, are left out). A frame whose
    `invalid` is true must never be accepted as a message by a correct reader.
    """
    d = _dialect(dialect)
    codec = _codec(d)
    framing = Framing(d)
    applicable = _applicable_kinds(d)
    if kinds is not None:
        wanted = set(kinds)
        unknown = wanted - set(BROKEN_KINDS)
        if unknown:
            raise ValueError(f"unknown broken-frame kind(s) {sorted(unknown)}")
        applicable = [k for k in applicable if k in wanted]
        if not applicable:
            raise ValueError(f"none of {sorted(wanted)} applies to the {d.name} dialect")
    overlong = _overlong_candidates(d)
    plain = messages(d, max_fields=max_fields)
    # For overlong_field: one variable field with room above its maximum, added if none is there.
    extra_field = st.sampled_from(overlong).flatmap(
        lambda n: st.tuples(st.just(n), field_values(d.fields[n]))
    ) if overlong else st.nothing()

    kind_strategy = st.sampled_from(applicable)
    tpdu_strategy = tpdus() if d.tpdu else st.none()
    undefined = _undefined_fields(d)

    # Strategies are built once above; inside, a number in a range is INDEX modulo its size
    # (a strategy built per draw costs more than the draw).
    @st.composite
    def build(draw: st.DrawFn) -> BrokenFrame:
        def pick(low: int, high: int) -> int:
            return low + draw(_INDEX) % (high - low + 1)

        kind = draw(kind_strategy)
        message = draw(plain)
        if kind == "overlong_field" and not any(n in message.fields for n in overlong):
            number, value = draw(extra_field)
            message.fields[number] = value
        encoded = codec.encode(message)
        tpdu = draw(tpdu_strategy)
        head = len(framing.payload(b"", tpdu))  # TPDU + header size
        payload = framing.payload(encoded, tpdu)
        frame = _prefixed(payload)

        if kind == "truncated":
            cut = pick(0, len(frame) - 1)
            return BrokenFrame(kind, frame[:cut], f"{cut} of {len(frame)} bytes")
        if kind == "truncated_message":
            cut = pick(0, len(payload) - 1)
            return BrokenFrame(kind, _prefixed(payload[:cut]), f"payload {cut} of {len(payload)} bytes")
        if kind == "wrong_length":
            size = len(payload)
            # near the truth (off by 1 to 16), or anything a 2-byte prefix can say
            declared = max(0, size + draw(_DELTA)) if draw(_BOOL) else pick(0, MAX_FRAME)
            if declared == size:
                declared = size - 1 if size else 1
            return BrokenFrame(kind, declared.to_bytes(2, "big") + payload,
                               f"declared {declared}, payload {len(payload)}")
        if kind == "appended":
            extra = draw(_EXTRA)
            return BrokenFrame(kind, _prefixed(payload + extra), f"{len(extra)} byte(s) appended", "end")
        if kind == "bit_flip":
            data = bytearray(frame)
            flips = sorted({i % (len(frame) * 8) for i in draw(_FLIPS)})
            for bit in flips:
                data[bit // 8] ^= 0x80 >> (bit % 8)
            return BrokenFrame(kind, bytes(data), f"bits {flips}")
        if kind == "garbage":
            junk = draw(_GARBAGE)
            return BrokenFrame(kind, _prefixed(junk), f"{len(junk)} random bytes")
        if kind == "bad_tpdu":
            ident = (0x61 + draw(_INDEX) % 255) % 256  # anything but 0x60
            return BrokenFrame(kind, _prefixed(bytes([ident]) + payload[1:]), f"TPDU id 0x{ident:02X}",
                               "TPDU")

        at = head + codec.mti_length  # the bitmap, inside the payload
        has_secondary = bool(encoded[codec.mti_length] & 0x80)
        size = 16 if has_secondary else 8
        if kind == "junk_bitmap":
            junk = draw(_BITMAP16)[:size]
            return BrokenFrame(kind, _prefixed(payload[:at] + junk + payload[at + size:]),
                               f"bitmap {junk.hex()}")
        if kind == "undefined_field":
            number = undefined[pick(0, len(undefined) - 1)]
            bitmap = int.from_bytes(payload[at:at + size], "big") << (128 - size * 8)
            bitmap |= 1 << (128 - number)
            if number > 64:
                bitmap |= 1 << 127
            new = bitmap.to_bytes(16, "big") if bitmap & (1 << 127) else (bitmap >> 64).to_bytes(8, "big")
            return BrokenFrame(kind, _prefixed(payload[:at] + new + payload[at + size:]),
                               f"bit {number} set", number)
        if kind == "overlong_field":
            _, spans = codec.decode_spans(encoded)
            present = [n for n in spans if n in overlong]
            number = present[pick(0, len(present) - 1)]
            spec = d.fields[number]
            start = head + spans[number][0]
            value = pick(spec.length + 1, _prefix_capacity(spec, d))
            prefix = _spell_prefix(value, spec, d)
            data = payload[:start] + prefix + payload[start + len(prefix):]
            return BrokenFrame(kind, _prefixed(data), f"length {value} > {spec.length}", number)
        # non_digit / bad_bcd
        encoding = "ascii" if kind == "non_digit" else "bcd"
        # A BCD track takes every nibble (A-F: partly enciphered), so only n fields break there.
        sites = [s for s in _digit_sites(d, codec, encoded)
                 if s[0] == encoding and not (encoding == "bcd" and s[3] == "z")]
        if not sites:  # e.g. ASCII prefixes only, and no variable field in this message
            return BrokenFrame("appended", _prefixed(payload + b"\0"), f"no {encoding} digits to break",
                               "end")
        _, offset, number, site_kind = sites[pick(0, len(sites) - 1)]
        what = f"field {number}" + (" length prefix" if site_kind == "prefix" else "")
        data = bytearray(payload)
        if encoding == "ascii":
            data[head + offset] = NON_DIGIT_BYTES[pick(0, len(NON_DIGIT_BYTES) - 1)]
            detail = f"{what}: byte 0x{data[head + offset]:02X} at message offset {offset}"
        else:
            nibble = int("ABCDEF"[pick(0, 5)], 16)
            old = data[head + offset]
            data[head + offset] = (nibble << 4 | old & 0x0F) if draw(_BOOL) else (old & 0xF0 | nibble)
            detail = f"{what}: nibble {nibble:X} at message offset {offset}"
        return BrokenFrame(kind, _prefixed(bytes(data)), detail, number)

    return build()


def _prefixed(payload: bytes) -> bytes:
    return len(payload).to_bytes(2, "big") + payload


# --- small public helpers for mutation engines outside hypothesis (pos-fuzz) -------------------

def prefix_width(spec: FieldSpec, dialect: Dialect) -> int:
    """Bytes of `spec`'s length prefix in `dialect` (0 for a fixed field)."""
    return _prefix_width(spec, dialect)


def prefix_capacity(spec: FieldSpec, dialect: Dialect) -> int:
    """The largest length `spec`'s prefix can spell (99/999 in ASCII, 99/9999 in BCD)."""
    return _prefix_capacity(spec, dialect)


def spell_prefix(value: int, spec: FieldSpec, dialect: Dialect) -> bytes:
    """A length prefix saying `value`, whatever the field's maximum: for over-long fields."""
    return _spell_prefix(value, spec, dialect)

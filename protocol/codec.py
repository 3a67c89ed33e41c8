"""Message <-> bytes for any dialect, table-driven.

A `Codec` compiles the dialect once into one small encoder and one decoder closure per field, so
the per-message work is a loop over present fields with no per-field branching on the spec. That
is what makes it several times faster than a generic interpreter of the spec (scripts/bench codec).
Malformed input raises `DecodeError` (the peer's fault) naming the field, the byte offset and
the reason, with `partial` holding what decoded; a value that cannot be sent raises `EncodeError`
(ours). Both are `ProtocolError`s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from protocol.dialects import BUILTIN
from protocol.encodings import A2E, E2A, TRACK_NIBBLES, pack_bcd, prefix_coder, track_reason, unpack_bcd
from protocol.errors import DecodeError, EncodeError, ProtocolError
from protocol.message import FieldValue, Message
from protocol.spec import DIGIT_KINDS, Dialect, FieldSpec

Encoder = Callable[[FieldValue], bytes]
Decoder = Callable[[bytes, int], tuple[FieldValue, int]]
Spans = dict[int | str, tuple[int, int]]

# FIELDS_AT[i][b]: the field numbers that byte value b at bitmap byte i marks present.
FIELDS_AT: tuple[tuple[tuple[int, ...], ...], ...] = tuple(
    tuple(tuple(8 * i + bit + 1 for bit in range(8) if b & (0x80 >> bit)) for b in range(256))
    for i in range(16)
)
_TRACK_ASCII = b"0123456789="


def _enc_err(reason: str, number: int | str) -> EncodeError:
    """A value we were asked to send that the dialect cannot carry: our fault, not the peer's."""
    return EncodeError(reason, field=number)


def _dec_err(reason: str, number: int | str, offset: int | None = None) -> DecodeError:
    """Bytes from the peer that do not decode: the peer's fault, located by offset."""
    return DecodeError(reason, field=number, offset=offset)


# --- value checks on raw ASCII bytes: None when fine, else the reason ----------------------------

_PRINTABLE = bytes(range(32, 127))
PRINTABLE_KINDS = frozenset({"an", "ans", "ns"})
PRINTABLE_REASON = "non-printable or non-ASCII character in a text field"
CHECKS: dict[str, Callable[[bytes], str | None]] = {
    "n": lambda raw: None if raw.isdigit() or not raw else "non-digit in an n field",
    "z": lambda raw: (
        "character other than a digit or '=' in track data"
        if raw.translate(None, _TRACK_ASCII) else None
    ),
    "xn": lambda raw: (
        None if raw[:1] in (b"C", b"D") and raw[1:].isdigit()
        else "x+n field must be C or D followed by digits"
    ),
    "a": lambda raw: None if raw.isalpha() or not raw else "non-letter in an a field",
    **dict.fromkeys(PRINTABLE_KINDS, lambda raw: (
        PRINTABLE_REASON if raw.translate(None, _PRINTABLE) else None
    )),
    "b": lambda raw: None,
}


# --- encoders ------------------------------------------------------------------------------------

def _prefix_encoder(prefix: int, encoding: str) -> Callable[[int], bytes]:
    if encoding == "ascii":
        fmt = b"%02d" if prefix == 2 else b"%03d"
        return lambda n: fmt % n
    width = 2 if prefix == 2 else 4
    table = [bytes.fromhex(f"{n:0{width}d}") for n in range(10 ** (prefix))]
    return table.__getitem__


def make_encoder(spec: FieldSpec, dialect: Dialect) -> Encoder:
    num, kind, length, prefix = spec.number, spec.kind, spec.length, spec.prefix
    bcd = dialect.digit_encoding == "bcd" and kind in ("n", "z")
    # A BCD track carries hex nibbles (a partly enciphered track 2); an ASCII one only digits and '='.
    check = track_reason if kind == "z" and dialect.encoding_of(spec) == "bcd" else CHECKS[kind]
    general = not standard(spec, dialect)
    enc_prefix = _prefix_encoder(prefix, dialect.prefix_encoding) if prefix and not general else None

    if kind == "b":
        def enc_b(value: FieldValue) -> bytes:
            if type(value) is not bytes:
                if not isinstance(value, bytes | bytearray):
                    raise _enc_err("a b field takes bytes", num)
                value = bytes(value)
            n = len(value)
            if general:
                if (n != length and not prefix) or n > length:
                    raise _enc_err(f"b field takes {'exactly' if not prefix else 'at most'} {length} "
                                   f"bytes, got {n}", num)
                return value
            if enc_prefix is None:
                if n != length:
                    raise _enc_err(f"b field needs exactly {length} bytes, got {n}", num)
                return value
            if n > length:
                raise _enc_err(f"value too long: {n} bytes, at most {length}", num)
            return enc_prefix(n) + value
        return _general_encoder(spec, dialect, enc_b) if general else enc_b

    def pad(value: str) -> str:
        """Right-align digits; an x+n value keeps its sign first (C5 -> C00000005)."""
        if kind == "n":
            return value.rjust(length, "0")
        if kind == "xn":
            return value[:1] + value[1:].rjust(length - 1, "0")
        return value.ljust(length, " ")

    printable = kind in PRINTABLE_KINDS
    is_n = kind == "n"

    def text_value(value: FieldValue) -> bytes:
        if type(value) is not str:
            raise _enc_err(f"a {kind} field takes str", num)
        n = len(value)
        if not prefix and n != length:
            if n > length:
                raise _enc_err(f"value too long: {n} characters, at most {length}", num)
            value = pad(value)
        elif n > length:
            raise _enc_err(f"value too long: {n} characters, at most {length}", num)
        try:
            raw = value.encode("ascii")
        except UnicodeEncodeError:
            raise _enc_err("non-ASCII character", num) from None
        if printable:  # CHECKS' test on the str (ASCII by now): no call, no translate table
            if not value.isprintable():
                raise _enc_err(PRINTABLE_REASON, num)
            return raw
        if is_n:
            if not raw.isdigit() and raw:
                raise _enc_err("non-digit in an n field", num)
            return raw
        reason = check(raw)
        if reason:
            raise _enc_err(reason, num)
        return raw

    if general:
        gbk = dialect.encoding_of(spec) == "gbk"
        return _general_encoder(spec, dialect, _gbk_value(spec) if gbk else text_value)
    if not bcd:
        if enc_prefix is None:
            return text_value

        def enc_var(value: FieldValue) -> bytes:
            raw = text_value(value)  # checks the length before the prefix is built
            return enc_prefix(len(raw)) + raw
        return enc_var

    # BCD digits: an odd count gets a 0 pad nibble, first when the field is right-aligned
    # (fixed ones by default), last when left-aligned (variable ones, and CUP's field 22);
    # '=' in track data travels as nibble D.
    is_track = kind == "z"
    right = spec.right_aligned()

    def enc_bcd(value: FieldValue) -> bytes:
        raw = text_value(value)
        digits = raw.decode("ascii")
        if is_track:
            digits = digits.replace("=", "D")
        n = len(digits)
        if n % 2:
            digits = "0" + digits if right else digits + "0"
        packed = bytes.fromhex(digits)
        return packed if enc_prefix is None else enc_prefix(n) + packed
    return enc_bcd


# --- decoders ------------------------------------------------------------------------------------

def _prefix_decoder(num: int, prefix: int, encoding: str, maximum: int) -> Decoder:
    if encoding == "ascii":
        width = prefix

        def dec_ascii(data: bytes, pos: int) -> tuple[int, int]:
            raw = data[pos:pos + width]
            if len(raw) != width:
                raise _dec_err("truncated: length prefix cut short", num, pos)
            if not raw.isdigit():
                raise _dec_err("length prefix is not ASCII digits", num, pos)
            n = int(raw)
            if n > maximum:
                raise _dec_err(f"length {n} exceeds the maximum {maximum}", num, pos)
            return n, pos + width
        return dec_ascii  # type: ignore[return-value]
    width = 1 if prefix == 2 else 2

    def dec_bcd(data: bytes, pos: int) -> tuple[int, int]:
        raw = data[pos:pos + width]
        if len(raw) != width:
            raise _dec_err("truncated: length prefix cut short", num, pos)
        hexs = raw.hex()
        if not hexs.isdigit():
            raise _dec_err("length prefix is not BCD", num, pos)
        n = int(hexs)
        if n > maximum:
            raise _dec_err(f"length {n} exceeds the maximum {maximum}", num, pos)
        return n, pos + width
    return dec_bcd  # type: ignore[return-value]


def _value_checker(kind: str, num: int) -> Callable[[bytes, int], FieldValue]:
    """The field's value from its bytes (ASCII by now), or the DecodeError its check gives."""
    is_b = kind == "b"
    printable = kind in PRINTABLE_KINDS
    check = CHECKS[kind]

    def value(raw: bytes, at: int) -> FieldValue:
        if is_b:
            return raw
        if printable:
            # CHECKS' printable test, by way of the str the value becomes anyway: ASCII
            # decodes, and for ASCII, str.isprintable() is exactly 0x20-0x7E.
            try:
                text = raw.decode("ascii")
            except UnicodeDecodeError:
                raise _dec_err(PRINTABLE_REASON, num, at) from None
            if not text.isprintable():
                raise _dec_err(PRINTABLE_REASON, num, at)
            return text
        reason = check(raw)
        if reason:
            raise _dec_err(reason, num, at)
        return raw.decode("ascii")
    return value


def standard(spec: FieldSpec, dialect: Dialect) -> bool:
    """True when the compiled fast paths below cover this field: ASCII text, the contract's
    ASCII or BCD digits (pad 0) and ASCII or BCD LL/LLL prefixes counting digits. Anything a
    device's spec file sets beyond that goes by `protocol.encodings`."""
    default = (
        "binary" if spec.kind == "b"
        else dialect.digit_encoding if spec.kind in DIGIT_KINDS else dialect.text_encoding
    )
    return (
        dialect.encoding_of(spec) == default
        and default in ("ascii", "bcd", "binary")
        and dialect.prefix_encoding_of(spec) == dialect.prefix_encoding
        and dialect.prefix_encoding in ("ascii", "bcd")
        and spec.prefix in (0, 2, 3)
        and spec.counts != "bytes"
        and spec.pad != "F"
    )


def _gbk_value(spec: FieldSpec) -> Encoder:
    """A text value as GBK bytes, its length counted in bytes (what a GBK device's prefix says)."""
    num, length, fixed = spec.number, spec.length, not spec.prefix

    def value(text: FieldValue) -> bytes:
        if type(text) is not str:
            raise _enc_err(f"a {spec.kind} field takes str", num)
        if not text.isprintable():
            raise _enc_err(PRINTABLE_REASON, num)
        try:
            raw = text.encode("gbk")
        except UnicodeEncodeError:
            raise _enc_err("character outside GBK", num) from None
        if len(raw) > length:
            raise _enc_err(f"value too long: {len(raw)} bytes, at most {length}", num)
        return raw.ljust(length) if fixed else raw
    return value


def _general_encoder(spec: FieldSpec, dialect: Dialect, text_value: Encoder) -> Encoder:
    """Any encoding, prefix and count a spec file can name, from the ASCII value `text_value`
    has already checked (and padded, when fixed)."""
    encoding = dialect.encoding_of(spec)
    right, pad = spec.right_aligned(), spec.pad or "0"
    if encoding == "bcd":
        def body(raw: bytes) -> bytes:
            return pack_bcd(raw.decode("ascii").replace("=", "D"), right, pad)
    elif encoding == "ebcdic":
        def body(raw: bytes) -> bytes:
            return raw.translate(A2E)
    else:
        def body(raw: bytes) -> bytes:
            return raw
    if not spec.prefix:
        return lambda value: body(text_value(value))
    coder = prefix_coder(spec.prefix, dialect.prefix_encoding_of(spec))
    count_bytes = spec.counts == "bytes"

    def encode(value: FieldValue) -> bytes:
        raw = text_value(value)
        out = body(raw)
        return coder.encode(len(out) if count_bytes else len(raw)) + out
    return encode


def _general_decoder(spec: FieldSpec, dialect: Dialect) -> Decoder:
    """The reverse of `_general_encoder`, every failure located like the fast paths'."""
    num, kind, length = spec.number, spec.kind, spec.length
    encoding = dialect.encoding_of(spec)
    bcd = encoding == "bcd"
    right, pad = spec.right_aligned(), spec.pad or "0"
    value = _value_checker(kind, num)
    valid = frozenset(TRACK_NIBBLES if kind == "z" else "0123456789")

    def nbytes_of(units: int) -> int:
        return (units + 1) // 2 if bcd else units

    def convert(raw: bytes, units: int | None, at: int) -> FieldValue:
        if bcd:
            hexs, reason = unpack_bcd(raw, units, right, pad)
            if reason:
                raise _dec_err(reason, num, at)
            if not set(hexs) <= valid:
                raise _dec_err("bad BCD nibble", num, at)
            if len(hexs) > length:
                raise _dec_err(f"{len(hexs)} digits exceed the maximum {length}", num, at)
            return hexs.replace("D", "=")
        if encoding == "ebcdic":
            raw = raw.translate(E2A)
        elif encoding == "gbk":
            try:
                text = raw.decode("gbk")
            except UnicodeDecodeError:
                raise _dec_err("bytes that are not GBK text", num, at) from None
            if not text.isprintable():
                raise _dec_err(PRINTABLE_REASON, num, at)
            return text
        return value(raw, at)

    if not spec.prefix:
        size = nbytes_of(length)

        def dec_fixed(data: bytes, pos: int) -> tuple[FieldValue, int]:
            raw = data[pos:pos + size]
            if len(raw) != size:
                raise _dec_err(f"truncated: needs {size} bytes, {len(raw)} left", num, pos)
            return convert(raw, length, pos), pos + size
        return dec_fixed
    prefix_encoding = dialect.prefix_encoding_of(spec)
    coder = prefix_coder(spec.prefix, prefix_encoding)
    count_bytes = spec.counts == "bytes"
    most = nbytes_of(length) if count_bytes else length

    def dec_var(data: bytes, pos: int) -> tuple[FieldValue, int]:
        start = pos + coder.width
        head = data[pos:start]
        if len(head) != coder.width:
            raise _dec_err("truncated: length prefix cut short", num, pos)
        n = coder.decode(head)
        if n is None:
            raise _dec_err(f"length prefix is not {prefix_encoding} digits", num, pos)
        if n > most:
            raise _dec_err(f"length {n} exceeds the maximum {most}", num, pos)
        size = n if count_bytes else nbytes_of(n)
        raw = data[start:start + size]
        if len(raw) != size:
            raise _dec_err(f"length prefix {n} runs past the end", num, pos)
        return convert(raw, None if count_bytes else n, start), start + size
    return dec_var


def make_decoder(spec: FieldSpec, dialect: Dialect) -> Decoder:
    if not standard(spec, dialect):
        return _general_decoder(spec, dialect)
    num, kind, length, prefix = spec.number, spec.kind, spec.length, spec.prefix
    bcd = dialect.digit_encoding == "bcd" and kind in ("n", "z")
    printable = kind in PRINTABLE_KINDS
    dec_prefix = _prefix_decoder(num, prefix, dialect.prefix_encoding, length) if prefix else None

    if not bcd:
        value = _value_checker(kind, num)

        if dec_prefix is None and kind == "n":
            def dec_fixed_n(data: bytes, pos: int) -> tuple[FieldValue, int]:
                end = pos + length
                raw = data[pos:end]
                if len(raw) != length:
                    raise _dec_err(f"truncated: needs {length} bytes, {len(raw)} left", num, pos)
                if not raw.isdigit():
                    raise _dec_err("non-digit in an n field", num, pos)
                return raw.decode("ascii"), end
            return dec_fixed_n

        if dec_prefix is None and printable:
            def dec_fixed_text(data: bytes, pos: int) -> tuple[FieldValue, int]:
                end = pos + length
                raw = data[pos:end]
                if len(raw) != length:
                    raise _dec_err(f"truncated: needs {length} bytes, {len(raw)} left", num, pos)
                try:
                    text = raw.decode("ascii")
                except UnicodeDecodeError:
                    raise _dec_err(PRINTABLE_REASON, num, pos) from None
                if not text.isprintable():
                    raise _dec_err(PRINTABLE_REASON, num, pos)
                return text, end
            return dec_fixed_text

        if dec_prefix is None:
            def dec_fixed(data: bytes, pos: int) -> tuple[FieldValue, int]:
                end = pos + length
                raw = data[pos:end]
                if len(raw) != length:
                    raise _dec_err(f"truncated: needs {length} bytes, {len(raw)} left", num, pos)
                return value(raw, pos), end
            return dec_fixed

        if dialect.prefix_encoding == "ascii":
            # _prefix_decoder's ASCII case inlined: one call per variable field, not three.
            width = prefix

            def dec_var_ascii(data: bytes, pos: int) -> tuple[FieldValue, int]:
                start = pos + width
                head = data[pos:start]
                if len(head) != width:
                    raise _dec_err("truncated: length prefix cut short", num, pos)
                if not head.isdigit():
                    raise _dec_err("length prefix is not ASCII digits", num, pos)
                n = int(head)
                if n > length:
                    raise _dec_err(f"length {n} exceeds the maximum {length}", num, pos)
                end = start + n
                raw = data[start:end]
                if len(raw) != n:
                    raise _dec_err(f"length prefix {n} runs past the end", num, pos)
                return value(raw, start), end
            return dec_var_ascii

        def dec_var(data: bytes, pos: int) -> tuple[FieldValue, int]:
            n, start = dec_prefix(data, pos)
            end = start + n  # type: ignore[operator]
            raw = data[start:end]
            if len(raw) != n:
                raise _dec_err(f"length prefix {n} runs past the end", num, pos)
            return value(raw, start), end  # type: ignore[arg-type]
        return dec_var

    is_track = kind == "z"
    right = spec.right_aligned()
    valid = TRACK_NIBBLES if is_track else "0123456789"
    invalid = str.maketrans("", "", valid)

    def unpack(data: bytes, start: int, ndigits: int, at: int, fixed: bool) -> tuple[str, int]:
        nbytes = (ndigits + 1) // 2
        end = start + nbytes
        raw = data[start:end]
        if len(raw) != nbytes:
            raise _dec_err(
                f"truncated: needs {nbytes} bytes, {len(raw)} left" if fixed
                else f"length prefix {ndigits} runs past the end", num, at,
            )
        hexs = raw.hex().upper()
        if hexs.translate(invalid):
            raise _dec_err("bad BCD nibble", num, start)
        if ndigits % 2:
            pad = hexs[0] if right else hexs[-1]
            if pad != "0":
                raise _dec_err("BCD pad nibble is not 0", num, start)
            hexs = hexs[1:] if right else hexs[:-1]
        if is_track:
            hexs = hexs.replace("D", "=")
        return hexs, end

    if dec_prefix is None:
        return lambda data, pos: unpack(data, pos, length, pos, True)

    def dec_var_bcd(data: bytes, pos: int) -> tuple[FieldValue, int]:
        n, start = dec_prefix(data, pos)
        return unpack(data, start, n, pos, False)  # type: ignore[arg-type]
    return dec_var_bcd


# --- the codec -----------------------------------------------------------------------------------

def _runs(classes: list[str | None]) -> Iterator[tuple[int, int]]:
    """Index ranges [i, j) over fields in wire order: a run of adjacent fields of one class
    (checked as one slice by the plans), or a field alone (class None, or a class of its own)."""
    i = 0
    while i < len(classes):
        j = i + 1
        while classes[i] is not None and j < len(classes) and classes[j] == classes[i]:
            j += 1
        yield i, j
        i = j


class Codec:
    """Compiled encoder/decoder for one dialect; shareable: after construction its only state is
    bounded caches of per-bitmap plans (which fields, which coders) that any thread may fill."""

    def __init__(self, dialect: Dialect):
        self.dialect = dialect
        self._encoders: dict[int, Encoder] = {
            n: make_encoder(spec, dialect) for n, spec in dialect.fields.items()
        }
        decoders: list[Decoder | None] = [None] * 129
        for n, spec in dialect.fields.items():
            decoders[n] = make_decoder(spec, dialect)
        self._decoders = decoders
        self._plans: dict[bytes, Plan] = {}
        self._classes = {n: self._run_class(n) for n in dialect.fields}
        """Each field's one-slice check class and length, for the plans (worked out once)."""
        self._encode_plans: dict[tuple[int, ...], tuple[bytes, EncodeSteps]] = {}
        self._mtis: dict[str, bytes] = {}  # MTIs encoded before: valid, and their bytes
        self._mti_names: dict[bytes, str] = {}  # and decoded before: their bytes, valid
        self.mti_length = 2 if dialect.mti_encoding == "bcd" else 4
        self._bcd_mti = dialect.mti_encoding == "bcd"
        self._ebcdic_mti = dialect.mti_encoding == "ebcdic"
        self._hex_bitmap = dialect.bitmap == "hex"
        self._bitmap_unit = 16 if self._hex_bitmap else 8
        """Wire bytes of one bitmap: 8 raw, or 16 hex characters."""
        self._ebcdic_text = dialect.text_encoding == "ebcdic"

    # MTI
    def encode_mti(self, mti: str) -> bytes:
        if type(mti) is not str or len(mti) != 4 or not mti.isascii() or not mti.isdigit():
            raise _enc_err("MTI must be 4 digits", "MTI")
        if self._bcd_mti:
            return bytes.fromhex(mti)
        return mti.encode("ascii").translate(A2E) if self._ebcdic_mti else mti.encode("ascii")

    def decode_mti(self, data: bytes) -> str:
        wire = raw = bytes(data[:self.mti_length])
        known = self._mti_names.get(wire)  # MTIs decoded before (valid): a lookup, not the checks
        if known is not None:
            return known
        if len(raw) != self.mti_length:
            raise _dec_err("truncated: MTI cut short", "MTI", 0)
        if self._ebcdic_mti:
            raw = raw.translate(E2A)
        mti = raw.hex() if self._bcd_mti else raw.decode("latin-1")
        if not mti.isdigit() or not mti.isascii():
            raise _dec_err("MTI is not 4 digits", "MTI", 0)
        if len(self._mti_names) < PLAN_CACHE_SIZE:
            self._mti_names[wire] = mti
        return mti

    def encode(self, message: Message) -> bytes:
        fields = message.fields
        numbers = tuple(sorted(fields))
        plan = self._encode_plans.get(numbers)
        if plan is not None:
            bitmap, steps = plan
            mti = message.mti
            head = self._mtis.get(mti) if type(mti) is str else None
            if head is None:
                head = self.encode_mti(mti)
            parts = [head, bitmap]
            for n, enc, run in steps:
                if run is None:
                    parts.append(enc(fields[n]))
                    continue
                # Adjacent fixed fields of one check, given at their exact lengths: checked
                # and encoded as one string. Anything else and their own encoders run one by
                # one, which raise exactly what they would have raised alone.
                members, digits, each = run
                for number, length in members:
                    value = fields[number]
                    if type(value) is not str or len(value) != length:
                        break
                else:
                    text = "".join([fields[number] for number, _ in members])
                    if text.isascii() and (text.isdigit() if digits else text.isprintable()):
                        parts.append(text.encode("ascii"))
                        continue
                parts.extend([one(fields[number]) for number, one in each])
            return b"".join(parts)
        if len(self._encode_plans) >= PLAN_CACHE_SIZE:
            self._encode_plans.clear()
        encoded = self._encode(message, numbers)
        # Only now (every field encoded, so every field defined): the same set of fields costs
        # a dict lookup next time instead of a bitmap built bit by bit.
        self._encode_plans[numbers] = (
            encoded[self.mti_length:self.mti_length + self._bitmap_unit * (2 if numbers[-1] > 64 else 1)],
            self._encode_steps(numbers),
        ) if numbers else (self._bitmap_wire(bytes(8)), ())
        mti = message.mti
        if type(mti) is str and len(self._mtis) < PLAN_CACHE_SIZE:
            self._mtis[mti] = encoded[:self.mti_length]
        return encoded

    def stamp(self, message: Message, varying: tuple[int, ...]) -> Stamp:
        """`message` encoded once, less the fields in `varying`: the returned function takes
        their values (in field order) and returns what `encode` would for the message with
        them, each checked by the field's own encoder. For a terminal's repeated requests
        (an echo test differs from the last in its STAN only) the invariant fields cost
        nothing per message. The message itself is encoded here first, so a value that
        cannot be sent raises now, not later."""
        numbers = tuple(sorted(message.fields))
        wanted = tuple(sorted(set(varying)))
        missing = [n for n in wanted if n not in message.fields]
        if missing:
            raise _enc_err("a stamp's varying field must be in the message", missing[0])
        whole = self.encode(message)
        bitmap_end = self.mti_length + self._bitmap_unit * (2 if numbers and numbers[-1] > 64 else 1)
        chunks, chunk = [], [whole[:bitmap_end]]
        for n in numbers:
            if n in wanted:
                chunks.append(b"".join(chunk))
                chunk = []
            else:
                chunk.append(self._encoders[n](message.fields[n]))
        chunks.append(b"".join(chunk))
        encoders = tuple(self._encoders[n] for n in wanted)
        if len(encoders) == 1:
            (head, tail), (enc,) = chunks, encoders

            def one(*values: FieldValue) -> bytes:
                (value,) = values
                return head + enc(value) + tail
            return one
        first, rest = chunks[0], tuple(zip(encoders, chunks[1:], strict=True))

        def many(*values: FieldValue) -> bytes:
            parts = [first]
            for (enc, after), value in zip(rest, values, strict=True):
                parts.append(enc(value))
                parts.append(after)
            return b"".join(parts)
        return many

    def _encode_steps(self, numbers: tuple[int, ...]) -> EncodeSteps:
        """Each field with its encoder, runs of adjacent fixed fields of one check as one step
        (see `_plan`, the decoding side)."""
        classes = self._classes
        singles = [(n, self._encoders[n], *classes[n]) for n in numbers]
        steps: list[tuple[int, Encoder, EncodeRun | None]] = []
        for i, j in _runs([cls for _, _, cls, _ in singles]):
            n, enc, cls, _ = singles[i]
            if j - i < 2:
                steps.append((n, enc, None))
            else:
                members = tuple((number, length) for number, _, _, length in singles[i:j])
                each = tuple((number, one) for number, one, _, _ in singles[i:j])
                steps.append((n, enc, (members, cls == "digits", each)))
        return tuple(steps)

    def _encode(self, message: Message, numbers: tuple[int, ...]) -> bytes:
        fields = message.fields
        encoders = self._encoders
        parts = [self.encode_mti(message.mti), b""]
        bitmap = 0
        for n in numbers:
            enc = encoders.get(n)
            if enc is None:
                raise _enc_err(
                    "field 1 is the secondary bitmap, which the codec computes" if n == 1
                    else f"the {self.dialect.name} dialect does not define this field", n,
                )
            parts.append(enc(fields[n]))
            bitmap |= 1 << (128 - n)
        if numbers and numbers[-1] > 64:
            parts[1] = (bitmap | 1 << 127).to_bytes(16, "big")
        else:
            parts[1] = (bitmap >> 64).to_bytes(8, "big")
        if self._hex_bitmap:
            parts[1] = self._bitmap_wire(parts[1])
        return b"".join(parts)

    def _bitmap_wire(self, bitmap: bytes) -> bytes:
        """A bitmap as it travels: raw, or as upper-case hex text in the dialect's text encoding."""
        if not self._hex_bitmap:
            return bitmap
        text = bitmap.hex().upper().encode("ascii")
        return text.translate(A2E) if self._ebcdic_text else text

    def _read_hex_bitmap(self, data: bytes, pos: int, number: int | str) -> bytes:
        raw = data[pos:pos + 16]
        if len(raw) != 16:
            kind = "primary" if number == "bitmap" else "secondary"
            raise _dec_err(f"truncated: {kind} bitmap cut short", number, pos)
        if self._ebcdic_text:
            raw = raw.translate(E2A)
        try:
            if not raw.isascii():
                raise ValueError
            return bytes.fromhex(raw.decode("ascii"))
        except ValueError:
            raise _dec_err("bitmap is not 16 hex characters", number, pos) from None

    def decode(self, data: bytes) -> Message:
        return self._decode(data, None)

    def decode_spans(self, data: bytes) -> tuple[Message, Spans]:
        """Decode and also say where each field lies: for masking in place and MAC ranges."""
        spans: Spans = {}
        return self._decode(data, spans), spans

    def _decode(self, data: bytes, spans: Spans | None) -> Message:
        if type(data) is not bytes:
            data = bytes(data)
        mti = self.decode_mti(data)
        pos = self.mti_length
        unit = self._bitmap_unit
        if self._hex_bitmap:
            primary = self._read_hex_bitmap(data, pos, "bitmap")
        else:
            primary = data[pos:pos + 8]
            if len(primary) != 8:
                raise _dec_err("truncated: primary bitmap cut short", "bitmap", pos)
        bitmap = primary
        if primary[0] & 0x80:
            if self._hex_bitmap:
                secondary = self._read_hex_bitmap(data, pos + unit, 1)
            else:
                secondary = data[pos + 8:pos + 16]
                if len(secondary) != 8:
                    raise _dec_err("truncated: secondary bitmap cut short", 1, pos + 8)
            if not any(secondary):
                # An encoder sets bit 1 only for a field 65-128 (PROTOCOL.md §1).
                raise _dec_err("secondary bitmap present but empty", 1, pos + unit)
            bitmap = primary + secondary
        wire = unit * len(bitmap) // 8
        if spans is not None:
            spans["MTI"] = (0, pos)
            spans["bitmap"] = (pos, pos + wire)
        bitmap_at = pos
        pos += wire
        fields: dict[int, FieldValue] = {}
        try:
            pos = self._decode_fields(data, bitmap, bitmap_at, pos, fields, spans)
        except ProtocolError as exc:
            exc.partial = Message(mti, fields)
            raise
        if pos != len(data):
            exc = _dec_err(f"{len(data) - pos} trailing byte(s) after the last field", "end", pos)
            exc.partial = Message(mti, fields)
            raise exc
        return Message(mti, fields)

    def _decode_fields(self, data: bytes, bitmap: bytes, bitmap_at: int, pos: int,
                       fields: dict[int, FieldValue], spans: Spans | None) -> int:
        plan = self._plans.get(bitmap) if spans is None else None
        if plan:
            for n, dec, run in plan:
                if run is None:
                    fields[n], pos = dec(data, pos)
                    continue
                # Adjacent fixed fields of one check, checked and decoded as one slice;
                # any doubt (short, a bad byte) and their own decoders run one by one,
                # which raise exactly what they would have raised alone.
                total, digits, cuts, each = run
                end = pos + total
                raw = data[pos:end]
                if len(raw) == total and (raw.isdigit() if digits else raw.isascii()):
                    text = raw.decode("ascii")
                    if digits or text.isprintable():
                        for number, start, stop in cuts:
                            fields[number] = text[start:stop]
                        pos = end
                        continue
                for number, one in each:
                    fields[number], pos = one(data, pos)
            return pos
        decoders = self._decoders
        for i, byte in enumerate(bitmap):
            for n in FIELDS_AT[i][byte]:
                if n == 1:
                    continue
                dec = decoders[n]
                if dec is None:
                    raise _dec_err(
                        f"bit set for a field the {self.dialect.name} dialect does not define",
                        n, bitmap_at + (n - 1) // 8 * (self._bitmap_unit // 8),
                    )
                start = pos
                fields[n], pos = dec(data, pos)
                if spans is not None:
                    spans[n] = (start, pos)
        if spans is None:  # a bitmap whose fields decoded: the next message like it takes the plan
            self._plan(bitmap)
        return pos

    def _plan(self, bitmap: bytes) -> Plan:
        """The fields a bitmap marks, with their decoders, in wire order: worked out once per
        distinct bitmap (a host sees a handful), not once per message, and only for a bitmap
        whose fields have decoded once (so every field it marks is defined): a junk bitmap, a
        fuzzer's or a broken peer's, costs no plan and evicts none. Runs of adjacent fixed
        fields that one test validates (ASCII digits, or printable ASCII) become one step."""
        decoders, classes = self._decoders, self._classes
        singles: list[tuple[int, Decoder, str | None, int]] = []
        for i, byte in enumerate(bitmap):
            for n in FIELDS_AT[i][byte]:
                dec = decoders[n]
                if n != 1 and dec is not None:
                    singles.append((n, dec, *classes[n]))
        plan: list[tuple[int, Decoder, Run | None]] = []
        for i, j in _runs([cls for _, _, cls, _ in singles]):
            n, dec, cls, _ = singles[i]
            if j - i < 2:
                plan.append((n, dec, None))
            else:
                cuts, at = [], 0
                for number, _, _, length in singles[i:j]:
                    cuts.append((number, at, at + length))
                    at += length
                each = tuple((number, one) for number, one, _, _ in singles[i:j])
                plan.append((n, dec, (at, cls == "digits", tuple(cuts), each)))
        if len(self._plans) >= PLAN_CACHE_SIZE:  # bitmaps come from the wire: keep it bounded
            self._plans.clear()
        result = self._plans[bitmap] = tuple(plan)
        return result

    def _run_class(self, n: int) -> tuple[str | None, int]:
        """Which one-slice check can stand for field n's own (None: none can), and its length."""
        spec = self.dialect.fields[n]
        if spec.prefix or not standard(spec, self.dialect):
            return None, 0
        encoding = self.dialect.encoding_of(spec)
        if spec.kind == "n" and encoding == "ascii":
            return "digits", spec.length
        if spec.kind in PRINTABLE_KINDS and encoding == "ascii":
            return "printable", spec.length
        return None, 0


Run = tuple[int, bool, tuple[tuple[int, int, int], ...], tuple[tuple[int, Decoder], ...]]
"""A run's total length, digits (else printable), (field, start, stop) cuts, and decoders."""
Plan = tuple[tuple[int, Decoder, Run | None], ...]
EncodeRun = tuple[tuple[tuple[int, int], ...], bool, tuple[tuple[int, Encoder], ...]]
"""A run's (field, length) members, digits (else printable), and encoders."""
EncodeSteps = tuple[tuple[int, Encoder, EncodeRun | None], ...]
Stamp = Callable[..., bytes]
"""A message's bytes from the values of its varying fields (see `Codec.stamp`)."""
PLAN_CACHE_SIZE = 256


_CODECS: dict[int, tuple[Dialect, Codec]] = {}
"""Codecs by dialect identity: a Dialect holds a dict of fields, so it cannot be hashed, and a
dialect loaded from a file is compiled once however many connections use it. The dialect is
kept beside its codec, so its id cannot be reused while the entry lives."""
CODEC_CACHE_SIZE = 64


def codec_for(dialect: Dialect) -> Codec:
    """The shared codec of a dialect (codecs are stateless, so sharing is safe)."""
    entry = _CODECS.get(id(dialect))
    if entry is not None and entry[0] is dialect:
        return entry[1]
    if len(_CODECS) >= CODEC_CACHE_SIZE:
        _CODECS.clear()
    codec = Codec(dialect)
    _CODECS[id(dialect)] = (dialect, codec)
    return codec


def get_codec(name: str) -> Codec:
    """The shared codec of a built-in dialect."""
    return codec_for(BUILTIN[name])

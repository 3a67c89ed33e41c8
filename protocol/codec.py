"""Message <-> bytes for any dialect, table-driven.

A `Codec` compiles the dialect once into one small encoder and one decoder closure per field, so
the per-message work is a loop over present fields with no per-field branching on the spec. That
is what makes it several times faster than a generic interpreter of the spec (scripts/bench codec).
Every malformed input raises `ProtocolError` naming the field, the byte offset and the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from protocol.dialects import BUILTIN
from protocol.errors import ProtocolError
from protocol.message import FieldValue, Message
from protocol.spec import Dialect, FieldSpec

Encoder = Callable[[FieldValue], bytes]
Decoder = Callable[[bytes, int], tuple[FieldValue, int]]
Spans = dict[int | str, tuple[int, int]]

# FIELDS_AT[i][b]: the field numbers that byte value b at bitmap byte i marks present.
FIELDS_AT: tuple[tuple[tuple[int, ...], ...], ...] = tuple(
    tuple(tuple(8 * i + bit + 1 for bit in range(8) if b & (0x80 >> bit)) for b in range(256))
    for i in range(16)
)
_TRACK_ASCII = b"0123456789="


def _err(reason: str, number: int | str, offset: int | None = None) -> ProtocolError:
    return ProtocolError(reason, field=number, offset=offset)


# --- value checks on raw ASCII bytes: None when fine, else the reason ----------------------------

_PRINTABLE = bytes(range(32, 127))
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
    **dict.fromkeys(("an", "ans", "ns"), lambda raw: (
        "non-printable or non-ASCII character in a text field"
        if raw.translate(None, _PRINTABLE) else None
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
    check = CHECKS[kind]
    enc_prefix = _prefix_encoder(prefix, dialect.prefix_encoding) if prefix else None

    if kind == "b":
        def enc_b(value: FieldValue) -> bytes:
            if type(value) is not bytes:
                if not isinstance(value, bytes | bytearray):
                    raise _err("a b field takes bytes", num)
                value = bytes(value)
            n = len(value)
            if enc_prefix is None:
                if n != length:
                    raise _err(f"b field needs exactly {length} bytes, got {n}", num)
                return value
            if n > length:
                raise _err(f"value too long: {n} bytes, at most {length}", num)
            return enc_prefix(n) + value
        return enc_b

    def pad(value: str) -> str:
        """Right-align digits; an x+n value keeps its sign first (C5 -> C00000005)."""
        if kind == "n":
            return value.rjust(length, "0")
        if kind == "xn":
            return value[:1] + value[1:].rjust(length - 1, "0")
        return value.ljust(length, " ")

    def text_value(value: FieldValue) -> bytes:
        if type(value) is not str:
            raise _err(f"a {kind} field takes str", num)
        n = len(value)
        if enc_prefix is None and n != length:
            if n > length:
                raise _err(f"value too long: {n} characters, at most {length}", num)
            value = pad(value)
        elif n > length:
            raise _err(f"value too long: {n} characters, at most {length}", num)
        try:
            raw = value.encode("ascii")
        except UnicodeEncodeError:
            raise _err("non-ASCII character", num) from None
        reason = check(raw)
        if reason:
            raise _err(reason, num)
        return raw

    if not bcd:
        if enc_prefix is None:
            return text_value

        def enc_var(value: FieldValue) -> bytes:
            raw = text_value(value)  # checks the length before the prefix is built
            return enc_prefix(len(raw)) + raw
        return enc_var

    # BCD digits: fixed odd lengths are right-aligned (leading 0 nibble), variable ones
    # left-aligned (trailing 0 nibble); '=' in track data travels as nibble D.
    is_track = kind == "z"

    def enc_bcd(value: FieldValue) -> bytes:
        raw = text_value(value)
        digits = raw.decode("ascii")
        if is_track:
            digits = digits.replace("=", "D")
        n = len(digits)
        if n % 2:
            digits = "0" + digits if enc_prefix is None else digits + "0"
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
                raise _err("truncated: length prefix cut short", num, pos)
            if not raw.isdigit():
                raise _err("length prefix is not ASCII digits", num, pos)
            n = int(raw)
            if n > maximum:
                raise _err(f"length {n} exceeds the maximum {maximum}", num, pos)
            return n, pos + width
        return dec_ascii  # type: ignore[return-value]
    width = 1 if prefix == 2 else 2

    def dec_bcd(data: bytes, pos: int) -> tuple[int, int]:
        raw = data[pos:pos + width]
        if len(raw) != width:
            raise _err("truncated: length prefix cut short", num, pos)
        hexs = raw.hex()
        if not hexs.isdigit():
            raise _err("length prefix is not BCD", num, pos)
        n = int(hexs)
        if n > maximum:
            raise _err(f"length {n} exceeds the maximum {maximum}", num, pos)
        return n, pos + width
    return dec_bcd  # type: ignore[return-value]


def make_decoder(spec: FieldSpec, dialect: Dialect) -> Decoder:
    num, kind, length, prefix = spec.number, spec.kind, spec.length, spec.prefix
    bcd = dialect.digit_encoding == "bcd" and kind in ("n", "z")
    check = CHECKS[kind]
    dec_prefix = _prefix_decoder(num, prefix, dialect.prefix_encoding, length) if prefix else None

    if not bcd:
        is_b = kind == "b"

        def take(data: bytes, start: int, n: int, at: int) -> tuple[FieldValue, int]:
            end = start + n
            raw = data[start:end]
            if len(raw) != n:
                raise _err(f"length prefix {n} runs past the end", num, at)
            if is_b:
                return raw, end
            reason = check(raw)
            if reason:
                raise _err(reason, num, start)
            return raw.decode("ascii"), end

        if dec_prefix is None and kind == "n":
            def dec_fixed_n(data: bytes, pos: int) -> tuple[FieldValue, int]:
                end = pos + length
                raw = data[pos:end]
                if len(raw) != length:
                    raise _err(f"truncated: needs {length} bytes, {len(raw)} left", num, pos)
                if not raw.isdigit():
                    raise _err("non-digit in an n field", num, pos)
                return raw.decode("ascii"), end
            return dec_fixed_n

        if dec_prefix is None:
            def dec_fixed(data: bytes, pos: int) -> tuple[FieldValue, int]:
                end = pos + length
                raw = data[pos:end]
                if len(raw) != length:
                    raise _err(f"truncated: needs {length} bytes, {len(raw)} left", num, pos)
                if is_b:
                    return raw, end
                reason = check(raw)
                if reason:
                    raise _err(reason, num, pos)
                return raw.decode("ascii"), end
            return dec_fixed

        def dec_var(data: bytes, pos: int) -> tuple[FieldValue, int]:
            n, start = dec_prefix(data, pos)
            return take(data, start, n, pos)  # type: ignore[arg-type]
        return dec_var

    is_track = kind == "z"
    valid = "0123456789D" if is_track else "0123456789"
    invalid = str.maketrans("", "", valid)

    def unpack(data: bytes, start: int, ndigits: int, at: int, fixed: bool) -> tuple[str, int]:
        nbytes = (ndigits + 1) // 2
        end = start + nbytes
        raw = data[start:end]
        if len(raw) != nbytes:
            raise _err(
                f"truncated: needs {nbytes} bytes, {len(raw)} left" if fixed
                else f"length prefix {ndigits} runs past the end", num, at,
            )
        hexs = raw.hex().upper()
        if hexs.translate(invalid):
            raise _err("bad BCD nibble", num, start)
        if ndigits % 2:
            pad = hexs[0] if fixed else hexs[-1]
            if pad != "0":
                raise _err("BCD pad nibble is not 0", num, start)
            hexs = hexs[1:] if fixed else hexs[:-1]
        if is_track:
            hexs = hexs.replace("D", "=")
        elif "D" in hexs:
            raise _err("bad BCD nibble", num, start)
        return hexs, end

    if dec_prefix is None:
        return lambda data, pos: unpack(data, pos, length, pos, True)

    def dec_var_bcd(data: bytes, pos: int) -> tuple[FieldValue, int]:
        n, start = dec_prefix(data, pos)
        return unpack(data, start, n, pos, False)  # type: ignore[arg-type]
    return dec_var_bcd


# --- the codec -----------------------------------------------------------------------------------

class Codec:
    """Compiled encoder/decoder for one dialect; stateless after construction, so shareable."""

    def __init__(self, dialect: Dialect):
        self.dialect = dialect
        self._encoders: dict[int, Encoder] = {
            n: make_encoder(spec, dialect) for n, spec in dialect.fields.items()
        }
        decoders: list[Decoder | None] = [None] * 129
        for n, spec in dialect.fields.items():
            decoders[n] = make_decoder(spec, dialect)
        self._decoders = decoders
        self.mti_length = 2 if dialect.mti_encoding == "bcd" else 4
        self._bcd_mti = dialect.mti_encoding == "bcd"

    # MTI
    def encode_mti(self, mti: str) -> bytes:
        if type(mti) is not str or len(mti) != 4 or not mti.isascii() or not mti.isdigit():
            raise _err("MTI must be 4 digits", "MTI")
        return bytes.fromhex(mti) if self._bcd_mti else mti.encode("ascii")

    def decode_mti(self, data: bytes) -> str:
        raw = data[:self.mti_length]
        if len(raw) != self.mti_length:
            raise _err("truncated: MTI cut short", "MTI", 0)
        mti = raw.hex() if self._bcd_mti else raw.decode("latin-1")
        if not mti.isdigit() or not mti.isascii():
            raise _err("MTI is not 4 digits", "MTI", 0)
        return mti

    def encode(self, message: Message) -> bytes:
        fields = message.fields
        numbers = sorted(fields)
        encoders = self._encoders
        parts = [self.encode_mti(message.mti), b""]
        bitmap = 0
        for n in numbers:
            enc = encoders.get(n)
            if enc is None:
                raise _err(
                    "field 1 is the secondary bitmap, which the codec computes" if n == 1
                    else f"the {self.dialect.name} dialect does not define this field", n,
                )
            parts.append(enc(fields[n]))
            bitmap |= 1 << (128 - n)
        if numbers and numbers[-1] > 64:
            parts[1] = (bitmap | 1 << 127).to_bytes(16, "big")
        else:
            parts[1] = (bitmap >> 64).to_bytes(8, "big")
        return b"".join(parts)

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
        primary = data[pos:pos + 8]
        if len(primary) != 8:
            raise _err("truncated: primary bitmap cut short", "bitmap", pos)
        bitmap = primary
        if primary[0] & 0x80:
            secondary = data[pos + 8:pos + 16]
            if len(secondary) != 8:
                raise _err("truncated: secondary bitmap cut short", 1, pos + 8)
            if not any(secondary):
                # An encoder sets bit 1 only for a field 65-128 (PROTOCOL.md §1).
                raise _err("secondary bitmap present but empty", 1, pos + 8)
            bitmap = primary + secondary
        if spans is not None:
            spans["MTI"] = (0, pos)
            spans["bitmap"] = (pos, pos + len(bitmap))
        bitmap_at = pos
        pos += len(bitmap)
        fields: dict[int, FieldValue] = {}
        try:
            pos = self._decode_fields(data, bitmap, bitmap_at, pos, fields, spans)
        except ProtocolError as exc:
            exc.partial = Message(mti, fields)
            raise
        if pos != len(data):
            exc = _err(f"{len(data) - pos} trailing byte(s) after the last field", "end", pos)
            exc.partial = Message(mti, fields)
            raise exc
        return Message(mti, fields)

    def _decode_fields(self, data: bytes, bitmap: bytes, bitmap_at: int, pos: int,
                       fields: dict[int, FieldValue], spans: Spans | None) -> int:
        decoders = self._decoders
        for i, byte in enumerate(bitmap):
            for n in FIELDS_AT[i][byte]:
                if n == 1:
                    continue
                dec = decoders[n]
                if dec is None:
                    raise _err(
                        f"bit set for a field the {self.dialect.name} dialect does not define",
                        n, bitmap_at + (n - 1) // 8,
                    )
                start = pos
                fields[n], pos = dec(data, pos)
                if spans is not None:
                    spans[n] = (start, pos)
        return pos


@cache
def get_codec(name: str) -> Codec:
    """The shared codec of a built-in dialect (codecs are stateless, so sharing is safe)."""
    return Codec(BUILTIN[name])


def codec_for(dialect: Dialect) -> Codec:
    return get_codec(dialect.name) if BUILTIN.get(dialect.name) is dialect else Codec(dialect)

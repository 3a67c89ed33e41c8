"""Our dialects as a pyiso8583 spec, for interoperability tests and the codec benchmark.

pyiso8583 holds `b` values, and BCD digits, as hex text; `to_pyiso8583_doc` and
`from_pyiso8583_doc` convert a Message's fields to and from that shape, so both libraries can be
fed the very same message. What pyiso8583 cannot say (a TPDU, framing) is refused or left out.
"""

from __future__ import annotations

from typing import Any

from protocol.message import Message
from protocol.spec import Dialect, FieldSpec, prefix_width

# Our encoding names -> pyiso8583's: "b" is binary (BCD and raw bytes alike), text by codec name.
DATA_ENC = {"ascii": "ascii", "ebcdic": "cp037", "bcd": "b", "binary": "b", "gbk": "gbk"}
LEN_ENC = {"ascii": "ascii", "ebcdic": "cp037", "bcd": "bcd", "binary": "b"}


def _field(spec: FieldSpec, dialect: Dialect) -> dict[str, Any]:
    encoding = dialect.encoding_of(spec)
    prefix_encoding = dialect.prefix_encoding_of(spec)
    out: dict[str, Any] = {
        "data_enc": DATA_ENC[encoding],
        "len_enc": LEN_ENC[prefix_encoding],
        "len_type": (prefix_width(spec.prefix, prefix_encoding)
                     if prefix_encoding in ("bcd", "binary") else spec.prefix),
        "max_len": spec.length,
        "desc": spec.name,
    }
    if encoding == "bcd":
        if spec.counts == "bytes":
            out["max_len"] = (spec.length + 1) // 2
        else:
            out["len_count"] = "nibbles"
        out["left_pad" if spec.right_aligned() else "right_pad"] = spec.pad or "0"
    return out


def pyiso8583_spec(dialect: Dialect) -> dict[str, dict[str, Any]]:
    if dialect.tpdu or dialect.header:
        raise ValueError(f"pyiso8583 has no TPDU or header, as {dialect.name} needs")
    text = DATA_ENC[dialect.text_encoding]
    bitmap_enc = "b" if dialect.bitmap == "binary" else text
    bitmap_len = 8 if dialect.bitmap == "binary" else 16
    spec: dict[str, dict[str, Any]] = {
        "h": {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 0, "desc": ""},
        "t": {"data_enc": DATA_ENC[dialect.mti_encoding], "len_enc": "ascii", "len_type": 0,
              "max_len": 4, "desc": "MTI"},
        "p": {"data_enc": bitmap_enc, "len_enc": "ascii", "len_type": 0, "max_len": bitmap_len,
              "desc": "Bitmap"},
        "1": {"data_enc": bitmap_enc, "len_enc": "ascii", "len_type": 0, "max_len": bitmap_len,
              "desc": "Bitmap"},
    }
    for n, f in dialect.fields.items():
        spec[str(n)] = _field(f, dialect)
    return spec


def to_pyiso8583_doc(message: Message, dialect: Dialect | None = None) -> dict[str, str]:
    doc = {"t": message.mti}
    for n, v in message.fields.items():
        if isinstance(v, bytes):
            doc[str(n)] = v.hex().upper()
        elif dialect is not None and dialect.encoding_of(dialect.fields[n]) == "bcd":
            doc[str(n)] = v.replace("=", "D")  # track 2's separator is nibble D
        else:
            doc[str(n)] = v
    return doc


def from_pyiso8583_doc(doc: dict[str, str], dialect: Dialect) -> Message:
    fields: dict[int, str | bytes] = {}
    for key, value in doc.items():
        if not key.isdigit() or key == "1":
            continue
        n = int(key)
        spec = dialect.fields[n]
        if spec.kind == "b":
            fields[n] = bytes.fromhex(value)
        elif dialect.encoding_of(spec) == "bcd":
            fields[n] = value.replace("D", "=")
        else:
            fields[n] = value
    return Message(doc["t"], fields)

"""Our ASCII dialects as a pyiso8583 spec, for interoperability tests and the codec benchmark.

pyiso8583 holds `b` values as hex text; `to_pyiso8583_doc` and `from_pyiso8583_doc` convert a
Message's fields to and from that shape, so both libraries can be fed the very same message.
"""

from __future__ import annotations

from typing import Any

from protocol.message import Message
from protocol.spec import Dialect


def pyiso8583_spec(dialect: Dialect) -> dict[str, dict[str, Any]]:
    if dialect.mti_encoding != "ascii" or dialect.digit_encoding != "ascii" or dialect.tpdu:
        raise ValueError(f"only ASCII dialects without a TPDU map to pyiso8583, not {dialect.name}")
    spec: dict[str, dict[str, Any]] = {
        "h": {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 0, "desc": ""},
        "t": {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 4, "desc": "MTI"},
        "p": {"data_enc": "b", "len_enc": "ascii", "len_type": 0, "max_len": 8, "desc": "Bitmap"},
        "1": {"data_enc": "b", "len_enc": "ascii", "len_type": 0, "max_len": 8, "desc": "Bitmap"},
    }
    for n, f in dialect.fields.items():
        spec[str(n)] = {
            "data_enc": "b" if f.kind == "b" else "ascii",
            "len_enc": "ascii",
            "len_type": f.prefix,
            "max_len": f.length,
            "desc": f.name,
        }
    return spec


def to_pyiso8583_doc(message: Message) -> dict[str, str]:
    doc = {"t": message.mti}
    for n, v in message.fields.items():
        doc[str(n)] = v.hex().upper() if isinstance(v, bytes) else v
    return doc


def from_pyiso8583_doc(doc: dict[str, str], dialect: Dialect) -> Message:
    fields: dict[int, str | bytes] = {}
    for key, value in doc.items():
        if not key.isdigit() or key == "1":
            continue
        n = int(key)
        fields[n] = bytes.fromhex(value) if dialect.fields[n].kind == "b" else value
    return Message(doc["t"], fields)

"""Read a captured frame and say what is in it, masked, without trusting it.

Accepts a whole TCP frame (length prefix first), a payload (TPDU and header first, in TPDU
dialects) or a bare message, as hex text or raw bytes; what it cannot decode it reports with the
field and offset instead of a traceback.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from typing import Any

from protocol.codec import codec_for
from protocol.emv import describe_tags
from protocol.errors import ProtocolError
from protocol.framing import Framing
from protocol.mask import masked_fields
from protocol.spec import Dialect
from protocol.subfields import split

_HEX = set(string.hexdigits + string.whitespace)


@dataclass
class Description:
    dialect: str
    framed: bool
    length: int | None = None
    tpdu: dict[str, str] | None = None
    header: str | None = None
    mti: str | None = None
    bitmap: str | None = None
    fields: dict[int, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if v is not None}
        out["fields"] = {str(n): v for n, v in self.fields.items()}
        return out

    def text(self) -> str:
        lines = [f"dialect   {self.dialect}"]
        if self.length is not None:
            lines.append(f"length    {self.length}")
        if self.tpdu:
            lines.append("tpdu      id {id} destination {destination} source {source}".format(**self.tpdu))
        if self.header is not None:
            lines.append(f"header    {self.header}")
        if self.mti:
            lines.append(f"MTI       {self.mti}")
        if self.bitmap:
            lines.append(f"bitmap    {self.bitmap}")
        for n, info in self.fields.items():
            lines.append(f"{n:>3} {info['name'][:38]:<38} {info['type']:<9} {info['value']}")
            for path, part in info.get("subfields", {}).items():
                lines.append(f"    {path:<8} {part}")
            for t in info.get("tags", []):
                lines.append(f"    {t['tag']:<5} {t['name'][:36]:<36} {t['value']}")
            if "tags_error" in info:
                lines.append(f"    not BER-TLV: {info['tags_error']}")
        if self.error:
            lines.append(f"error     {self.error}")
        return "\n".join(lines)


def read_input(raw: bytes) -> bytes:
    """Hex text (spaces and newlines allowed) becomes bytes; anything else is taken as bytes."""
    text = raw.decode("latin-1")
    if text.strip() and set(text) <= _HEX:
        compact = "".join(text.split())
        if len(compact) % 2 == 0:
            return bytes.fromhex(compact)
    return raw


def describe(data: bytes, dialect: Dialect) -> Description:
    framing = Framing(dialect)
    codec = codec_for(dialect)
    desc = Description(dialect=dialect.name, framed=False)
    payload = data
    head = framing.length
    declared = head.decode(data[:head.size]) if head.size and len(data) >= head.size else None
    own = head.size if head.includes_self else 0
    if declared is not None and declared - own == len(data) - head.size:
        desc.framed = True
        desc.length = declared
        payload = data[head.size:]
    try:
        unframed = framing.unframe(payload)
        if unframed.tpdu:
            t = unframed.tpdu
            desc.tpdu = {"id": f"{t.id:02X}", "destination": f"{t.destination:04X}",
                         "source": f"{t.source:04X}"}
            desc.header = unframed.header.hex().upper()
        message, spans = codec.decode_spans(unframed.message)
    except ProtocolError as exc:
        desc.error = _wrong_length(data) if not desc.framed and _wrong_length(data) else str(exc)
        return desc
    start, end = spans["bitmap"]
    desc.mti = message.mti
    desc.bitmap = unframed.message[start:end].hex().upper()
    values = masked_fields(message, dialect)
    for n, value in values.items():
        spec = dialect.fields[n]
        info: dict[str, Any] = {"name": spec.name, "type": spec.notation(), "value": value}
        raw = message.fields[n]
        if spec.subfields and isinstance(raw, str) and not spec.mask:
            info["subfields"] = split(spec, raw)
        if spec.tlv and isinstance(raw, bytes):
            try:
                info["tags"] = describe_tags(raw, n)
            except ProtocolError as exc:
                info["tags_error"] = str(exc)
        desc.fields[n] = info
    return desc


def _wrong_length(data: bytes) -> str | None:
    """A frame whose length prefix is off by a little says so, rather than failing further on
    (a TPDU id or an MTI that is really the length's second byte)."""
    if len(data) < 2:
        return None
    declared, follows = int.from_bytes(data[:2], "big"), len(data) - 2
    if declared and abs(declared - follows) <= 64:
        return f"length: the 2-byte length prefix says {declared} bytes follow, {follows} do"
    return None


def render(desc: Description, as_json: bool) -> str:
    return json.dumps(desc.as_json()) if as_json else desc.text()

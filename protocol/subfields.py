"""Structured fields read by their parts as data (FieldSpec.subfields), as far as a value goes.

Devices send field 60 in several shapes (8 digits without 60.3, 11, 17, 19): each part that the
value holds is read, a part cut short is read as what there is, and whatever follows the last
part is kept as `rest`. Deciding which parts a message needs is the reader's business (the
host's `30` for a missing 60.3), not this module's.
"""

from __future__ import annotations

from protocol.spec import FieldSpec


def split(spec: FieldSpec, value: str) -> dict[str, str]:
    """`{"60.1": "22", "60.2": "000001", ...}` (paths from the names' first word)."""
    out: dict[str, str] = {}
    at = 0
    for i, part in enumerate(spec.subfields, start=1):
        if at >= len(value):
            break
        path = part.name.split()[0] if part.name[:1].isdigit() else f"{spec.number}.{i}"
        out[path] = value[at:at + part.length]
        at += part.length
    if at < len(value):
        out[f"{spec.number}.rest"] = value[at:]
    return out

"""Codec speed: posemu against pyiso8583 on the same typical 0200, in the same run.

Each case runs in interleaved time slices, best of several rounds, so both libraries meet the same
machine state; ratios (posemu ops/s over pyiso8583 ops/s) are what to compare across machines.
"""

from __future__ import annotations

import argparse
import json

import iso8583
from benchlib import rates

from protocol.codec import get_codec
from protocol.dialects import get_dialect
from protocol.message import Message
from protocol.pyiso8583_spec import pyiso8583_spec, to_pyiso8583_doc

TYPICAL_0200 = Message("0200", {
    2: "6225880212345678", 3: "000000", 4: "000000012345", 11: "000123", 12: "143015",
    13: "1125", 14: "2712", 22: "021", 25: "00", 35: "6225880212345678=27121011234567",
    41: "TERM0001", 42: "MERCHANT0000001", 49: "156", 52: bytes.fromhex("0123456789ABCDEF"),
    53: "2600000000000000", 60: "22000001000", 64: bytes.fromhex("A1B2C3D4E5F60718"),
})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per case")
    args = parser.parse_args()

    codec = get_codec("iso87")
    spec = pyiso8583_spec(get_dialect("iso87"))
    message = TYPICAL_0200
    wire = codec.encode(message)
    doc = to_pyiso8583_doc(message)
    theirs, _ = iso8583.encode(dict(doc), spec)
    assert bytes(theirs) == wire, "the two codecs disagree on the benchmark message"

    def ours_roundtrip() -> None:
        codec.decode(codec.encode(message))

    def theirs_roundtrip() -> None:
        iso8583.decode(iso8583.encode(dict(doc), spec)[0], spec)

    cases = {
        "encode": (lambda: codec.encode(message), lambda: iso8583.encode(dict(doc), spec)),
        "decode": (lambda: codec.decode(wire), lambda: iso8583.decode(wire, spec)),
        "roundtrip": (ours_roundtrip, theirs_roundtrip),
    }
    result: dict[str, float] = {}
    print(f"codec benchmark: iso87 0200, {len(wire)} bytes, {len(message.fields)} fields")
    print(f"{'case':<10} {'posemu ops/s':>14} {'pyiso8583 ops/s':>16} {'ratio':>7}")
    for name, (ours, other) in cases.items():
        a, b = rates(ours, other, args.seconds)
        result[f"{name}_ops"] = round(a)
        result[f"pyiso8583_{name}_ops"] = round(b)
        result[f"{name}_ratio"] = round(a / b, 2)
        print(f"{name:<10} {a:>14,.0f} {b:>16,.0f} {a / b:>7.2f}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()

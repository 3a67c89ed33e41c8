"""`python -m protocol describe [--dialect NAME] [--json] HEX|FILE|-`, and
`python -m protocol wireshark [--dialect FILE ...] [--out DIR] [--json]` (the Lua dissector)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from protocol.describe import describe, read_input, render
from protocol.dialects import get_dialect
from protocol.dissector import write as write_dissector_files
from protocol.errors import SpecError


def read_source(source: str) -> bytes:
    """A path if one exists by that name, else the argument itself (hex text)."""
    try:
        return Path(source).read_bytes()
    except OSError:  # no such file, or a hex string too long to be a file name
        return source.encode("latin-1", "replace")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protocol")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("describe", help="decode a frame and print its fields, masked")
    d.add_argument("source", help="hex text, a file (raw or hex), or - for standard input")
    d.add_argument("--dialect", default="iso87", help="iso87, cup, or a .json/.toml spec file")
    d.add_argument("--json", action="store_true", help="one JSON object")
    w = sub.add_parser("wireshark", help="write the Lua dissector for Wireshark")
    w.add_argument("--dialect", action="append", default=[], help="a .json/.toml spec file to add")
    w.add_argument("--out", default=".", help="directory for posemu.lua and its tables (default: here)")
    w.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args(argv)
    if args.command == "wireshark":
        return write_dissector(args.dialect, args.out, args.json)

    try:
        dialect = get_dialect(args.dialect)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    raw = sys.stdin.buffer.read() if args.source == "-" else read_source(args.source)
    desc = describe(read_input(raw), dialect)
    print(render(desc, args.json))
    return 1 if desc.error else 0


def write_dissector(specs: list[str], out: str, as_json: bool) -> int:
    try:
        dialects = [get_dialect(spec) for spec in specs]
        reader = write_dissector_files(out, dialects)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = ["iso87", "cup", *(d.name for d in dialects)]
    print(json.dumps({"path": str(reader), "dialects": names}) if as_json
          else f"wrote {reader} and its tables ({', '.join(names)}); open a capture with: "
               f"wireshark -X lua_script:{reader} -o posemu.dialect:cup FILE.pcap")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m protocol describe [--dialect NAME] [--json] HEX|FILE|-`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from protocol.describe import describe, read_input, render
from protocol.dialects import get_dialect
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
    args = parser.parse_args(argv)

    try:
        dialect = get_dialect(args.dialect)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    raw = sys.stdin.buffer.read() if args.source == "-" else read_source(args.source)
    desc = describe(read_input(raw), dialect)
    print(render(desc, args.json))
    return 1 if desc.error else 0


if __name__ == "__main__":
    sys.exit(main())

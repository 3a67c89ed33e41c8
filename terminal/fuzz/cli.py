"""`pos-fuzz`: fuzz a live host over TCP or a serial port; `pos-fuzz replay FINDING.json`.

Exit status: 0 nothing found (replay: no longer reproduces), 1 found (replay: reproduces),
2 a usage or connection error before the first case.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from protocol.dialects import get_dialect
from protocol.errors import SpecError
from protocol.injection import InjectionError, read_injection_file
from protocol.transport.serial import PortSpecError, add_port_arguments, spec_from_arguments
from protocol.transport.tcp import Endpoint, parse_endpoint
from terminal.fuzz import engine, store
from terminal.fuzz.engine import Context
from terminal.fuzz.oracles import ORACLES
from terminal.fuzz.runner import Keys, Run, Settings, SignOnFailed, Target
from terminal.fuzz.tcp import TargetDown, TcpTarget

EXIT_CLEAN, EXIT_FOUND, EXIT_USAGE = 0, 1, 2
TCP_LAYERS = ("frame", "message")
SERIAL_LAYERS = ("message", "link")


class UsageError(Exception):
    pass


def _target_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", metavar="tcp://HOST:PORT")
    where.add_argument("--serial", metavar="SPEC", help="a device, a pyserial URL (docs/serial.md)")
    add_port_arguments(parser)
    parser.add_argument("--dialect", default="iso87", help="iso87, cup or a spec file")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="S",
                        help="how long an answer may take before it is a hang")
    parser.add_argument("--keys", type=Path, metavar="FILE",
                        help="a key-injection file (pos-host terminal add --out): sign on, then MAC")
    parser.add_argument("--tid", help="the terminal id (default: the injection file's)")
    parser.add_argument("--merchant", help="the merchant id (default: the injection file's)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--restart-wait", type=float, default=10.0, metavar="S",
                        help="after a crash, how long to wait for the target to come back")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pos-fuzz", description="Fuzz a live ISO 8583-style host and report what broke.")
    _target_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--layers", help=f"comma-separated, of {', '.join(engine.LAYERS)} "
                        "(default: frame,message over TCP, message,link over serial; "
                        "session added with --keys)")
    parser.add_argument("--report", type=Path, metavar="FILE.json")
    parser.add_argument("--findings", type=Path, metavar="DIR")
    parser.add_argument("--shrink-seconds", type=float, default=10.0, metavar="S")
    return parser


def build_replay_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pos-fuzz replay",
                                     description="Send a saved finding again: does it reproduce?")
    parser.add_argument("finding", type=Path, metavar="FINDING.json")
    _target_arguments(parser)
    return parser


def _layers(args: argparse.Namespace) -> tuple[str, ...]:
    if args.layers:
        layers = tuple(x.strip() for x in args.layers.split(",") if x.strip())
    else:
        layers = (SERIAL_LAYERS if args.serial else TCP_LAYERS) + (("session",) if args.keys else ())
    unknown = [x for x in layers if x not in engine.LAYERS]
    if unknown or not layers:
        raise UsageError(f"unknown layer(s) {unknown}; known: {', '.join(engine.LAYERS)}")
    if "session" in layers and not args.keys:
        raise UsageError("the session layer needs --keys FILE and --merchant")
    if "link" in layers and not args.serial:
        raise UsageError("the link layer needs --serial")
    if "frame" in layers and args.serial:
        raise UsageError("the frame layer is TCP's length prefixes: use --target")
    return layers


def _context(args: argparse.Namespace, seed: int) -> tuple[Context, Keys | None]:
    try:
        dialect = get_dialect(args.dialect)
    except (SpecError, OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    ctx = Context(dialect, batch=f"{seed % 999_999 + 1:06d}")
    if not args.keys:
        if args.tid or args.merchant:
            ctx = replace(ctx, tid=args.tid or ctx.tid, mid=args.merchant or ctx.mid)
        return ctx, None
    try:
        injection = read_injection_file(args.keys)
    except InjectionError as exc:
        raise UsageError(str(exc)) from None
    tid = args.tid or injection.tid
    merchant = args.merchant or injection.merchant
    if not tid or not merchant:
        raise UsageError("--keys needs --tid and --merchant when the file names none")
    ctx = replace(ctx, tid=tid, mid=merchant)
    try:
        return ctx, Keys(ctx, injection.tmk)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _open(args: argparse.Namespace, ctx: Context) -> tuple[Target, str]:
    if args.serial:
        from terminal.fuzz.serial import SerialTarget  # pyserial only when a port is asked for

        ignored = engine.payload_of(ctx, engine.encode(ctx, "0830", engine.template("0830", ctx)))
        try:
            target = SerialTarget(spec_from_arguments(args.serial, args), args.timeout, ignored)
        except PortSpecError as exc:
            raise UsageError(str(exc)) from None
        return target, str(target)
    try:
        endpoint: Endpoint = parse_endpoint(args.target)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    target = TcpTarget(endpoint, args.timeout)
    target.connect()  # a host that is not there is exit 2, before the first case
    return target, str(target)


class Status:
    """`cases  N/s  findings` on one line of stderr, only when stderr is a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, run: Run) -> None:
        if not self.enabled or run.elapsed - self.last < 0.2:
            return
        self.last = run.elapsed
        print(f"\r{run.cases} cases  {run.cases / run.elapsed:.0f}/s  "
              f"{len(run.findings)} finding(s)", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def _fail(message: str, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"error": "usage", "message": message}))
    else:
        print(f"pos-fuzz: {message}", file=sys.stderr)
    return EXIT_USAGE


def fuzz(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cases < 1 or args.seconds <= 0 or args.timeout <= 0:
            raise UsageError("--cases, --seconds and --timeout must be positive")
        layers = _layers(args)
        ctx, keys = _context(args, args.seed)
        target, name = _open(args, ctx)
    except (UsageError, TargetDown) as exc:
        return _fail(str(exc), args.json)
    settings = Settings(args.seed, args.cases, args.seconds, layers, args.findings,
                        shrink_seconds=args.shrink_seconds, restart_wait=args.restart_wait)
    status = Status()
    run = Run(target, ctx, settings, name, keys, status=status)
    try:
        if keys is not None:
            run.sign_on()
    except (SignOnFailed, TargetDown) as exc:
        target.close()
        return _fail(str(exc), args.json)
    try:
        run.run()
    finally:
        status.done()
        target.close()
    report = run.report()
    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_text(report))
    return EXIT_FOUND if report["findings"] else EXIT_CLEAN


def _text(report: dict[str, Any]) -> str:
    lines = [f"{report['target']}: {report['cases']} cases in {report['seconds']} s "
             f"({report['cases_per_second']}/s), seed {report['seed']}, "
             f"{len(report['findings'])} finding(s)"]
    for f in report["findings"]:
        lines.append(f"  {f['oracle']:<11} {f['layer']}/{f['kind']} at {f['place']}: {f['detail']}"
                     f" ({f['hits']} hit(s), {f['size']} bytes)" + (f" -> {f['file']}" if f["file"]
                                                                    else ""))
    return "\n".join(lines)


def replay(argv: Sequence[str]) -> int:
    args = build_replay_parser().parse_args(argv)
    try:
        doc = store.load(args.finding)
        if args.dialect == "iso87" and doc.get("dialect") in ("cup",):
            args.dialect = doc["dialect"]
        ctx, keys = _context(args, int(doc.get("seed", 0)))
        target, name = _open(args, ctx)
    except (UsageError, TargetDown, store.FindingError) as exc:
        return _fail(str(exc), args.json)
    probe = doc["probe"]
    if keys is None and any(step.sign for step in probe.steps):
        return _fail("this finding's requests are MACed: replay it with --keys FILE", args.json)
    run = Run(target, ctx, Settings(restart_wait=args.restart_wait), name, keys)
    if doc.get("median_seconds"):
        run.latencies.assume(float(doc["median_seconds"]))
    try:
        verdict = run.execute(probe)
    except (SignOnFailed, TargetDown) as exc:
        target.close()
        return _fail(str(exc), args.json)
    finally:
        target.close()
    reproduces = verdict is not None and verdict.oracle == doc["oracle"]
    result = {"finding": str(args.finding), "oracle": doc["oracle"], "meaning": ORACLES[doc["oracle"]],
              "reproduces": reproduces, "now": verdict.oracle if verdict else None,
              "detail": verdict.detail if verdict else "no oracle tripped"}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        state = "reproduces" if reproduces else "does not reproduce"
        print(f"{args.finding}: {doc['oracle']} {state} ({result['detail']})")
    return EXIT_FOUND if reproduces else EXIT_CLEAN


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["replay"]:
        return replay(argv[1:])
    return fuzz(argv)


if __name__ == "__main__":
    sys.exit(main())

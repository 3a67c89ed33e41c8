"""pos-fleet: provision or import a fleet, then run it against a host. Parsing and printing
only; the work is in terminal.fleet's modules."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from protocol.injection import InjectionError
from protocol.transport.tcp import parse_endpoint
from terminal.fleet import fleetdir, provision
from terminal.fleet.fleetdir import FleetError
from terminal.fleet.mix import MixError, parse_mix
from terminal.fleet.report import build_report, report_svg, report_table
from terminal.fleet.runner import Load
from terminal.fleet.workers import FleetRunError, merge, run_workers, tty_live

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be positive")
        return value
    return parse


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print one JSON document")
    top = argparse.ArgumentParser(prog="pos-fleet", description=__doc__)
    top.add_argument("--json", action="store_true", help="print one JSON document")
    commands = top.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], help=help_text, description=help_text)

    prov = command("provision", "terminals, TMKs and cards at our pos-host")
    prov.add_argument("--host-data", required=True, type=Path, help="the pos-host data folder")
    prov.add_argument("--count", required=True, type=positive(int))
    prov.add_argument("--out", required=True, type=Path, help="the FLEET folder to create")
    prov.add_argument("--prefix", default="F", help="terminal ids are PREFIX + a number (8 in all)")
    prov.add_argument("--cards", type=positive(int), default=10)
    prov.add_argument("--merchant", default=provision.DEFAULT_MERCHANT)

    imp = command("import", "a fleet for another host from its own files")
    imp.add_argument("--out", required=True, type=Path)
    imp.add_argument("--injection", required=True, nargs="+", type=Path,
                     help="key-injection files, one per terminal")
    imp.add_argument("--cards", required=True, type=Path, help="JSON list of {pan, expiry, pin}")
    imp.add_argument("--dialect", default="iso87")
    imp.add_argument("--key-set", default="003")
    imp.add_argument("--merchant", help="for injection files that name none")

    run = command("run", "run the fleet against a host")
    run.add_argument("--fleet", required=True, type=Path)
    run.add_argument("--host", required=True, help="tcp://HOST:PORT")
    run.add_argument("--terminals", type=positive(int), help="how many of the fleet (default all)")
    loop = run.add_mutually_exclusive_group(required=True)
    loop.add_argument("--rate", type=positive(float), help="open loop: requests per second")
    loop.add_argument("--concurrency", type=positive(int), help="closed loop: requests in flight")
    run.add_argument("--duration", required=True, type=positive(float), help="seconds")
    run.add_argument("--mix", default="purchase=100",
                     help="e.g. purchase=90,echo=10 (inquiry and void: not until pos-host serves them)")
    run.add_argument("--signon-storm", action="store_true", help="every terminal signs on at once")
    run.add_argument("--no-signon", action="store_true",
                     help="skip the sign-on (echo tests against a host that has none)")
    run.add_argument("--workers", type=positive(int), default=1, help="processes, one loop each")
    run.add_argument("--timeout", type=positive(float), default=10.0, help="seconds per answer")
    run.add_argument("--seed", type=int, help="seed for the mix, cards and amounts")
    run.add_argument("--report", type=Path, help="write the JSON report here")
    run.add_argument("--plot", type=Path, help="write an SVG of rate and latency over time")
    return top


def cmd_provision(args: argparse.Namespace) -> dict[str, Any]:
    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\rprovisioned {done}/{total}", end="", file=sys.stderr, flush=True)
    result = provision.provision(args.host_data, args.count, args.out, args.prefix, args.cards,
                                 args.merchant, progress=progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return result


def cmd_import(args: argparse.Namespace) -> dict[str, Any]:
    return provision.import_fleet(args.out, args.injection, args.cards, args.dialect,
                                  args.key_set, args.merchant)


def cmd_run(args: argparse.Namespace) -> dict[str, Any]:
    mix = parse_mix(args.mix)
    try:
        endpoint = parse_endpoint(args.host)
    except ValueError as exc:
        raise FleetError(str(exc)) from None
    fleet = fleetdir.open_fleet(args.fleet)
    identities = fleet.identities(args.terminals)
    load = Load(endpoint.host, endpoint.port, fleet.dialect, fleet.key_set, identities,
                fleet.cards(), mix, args.duration, fleetdir.claim_batch(args.fleet),
                rate=args.rate, concurrency=args.concurrency, signon_storm=args.signon_storm,
                signon=not args.no_signon,
                timeout=args.timeout, seed=args.seed)
    workers = min(args.workers, len(identities), args.concurrency or len(identities))
    outcomes, _ = run_workers(load, workers, None if args.json else tty_live())
    if not args.json and sys.stderr.isatty():
        print(file=sys.stderr)
    stats, signons = merge(outcomes)
    report = build_report(
        stats, signons, mode="open" if args.rate else "closed", terminals=len(identities),
        workers=len(outcomes), duration=args.duration,
        elapsed=max(o.elapsed for o in outcomes),
        signon_seconds=max(o.signon_seconds for o in outcomes),
        target=args.rate or args.concurrency, storm=args.signon_storm,
        connected=sum(o.connected for o in outcomes))
    if args.report:
        args.report.write_text(json.dumps(report, indent=1) + "\n")
    if args.plot:
        args.plot.write_text(report_svg(report))
    return report


COMMANDS = {"provision": cmd_provision, "import": cmd_import, "run": cmd_run}
TEXT = {"run": report_table}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result = COMMANDS[args.command](args)
    except MixError as exc:
        print(f"pos-fleet: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (FleetError, FleetRunError, InjectionError, OSError) as exc:
        print(f"pos-fleet: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(result))
    else:
        print(TEXT.get(args.command, lambda r: "  ".join(f"{k} {v}" for k, v in r.items()))(result))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

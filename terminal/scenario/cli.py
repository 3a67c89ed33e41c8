"""`pos-scenario`: run scenarios (a file, a catalogue name, or the whole catalogue), list them,
or draw a ladder from a saved `pos-terminal --trace`.

Exit status: 0 every scenario passed; 1 one failed; 2 a usage problem (a bad scenario file).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from protocol import ladder
from terminal.scenario import report
from terminal.scenario.model import Scenario, ScenarioError, catalogue, find
from terminal.scenario.runner import ScenarioResult, Setups, run

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pos-scenario",
        description="Every cause of key error 14 on purpose, in one command: scenarios that "
                    "drive pos-host and pos-terminal as processes and check what they show.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("run", help="run scenarios and check each step")
    p.add_argument("scenarios", nargs="*", metavar="FILE|NAME")
    p.add_argument("--all", action="store_true", help="the whole built-in catalogue")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.add_argument("--junit", metavar="FILE", help="also write JUnit XML here")
    p.add_argument("--ladder", metavar="FILE.svg",
                   help="also draw the exchange as SVG (several scenarios: FILE-NAME.svg)")
    p.add_argument("--keep", metavar="DIR", help="run in DIR and keep its folders and logs")
    p.add_argument("--jobs", type=_jobs, default=1, metavar="N",
                   help="run N scenarios side by side (reports keep the scenarios' order)")
    p = sub.add_parser("list", help="the built-in catalogue")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("ladder", help="draw a saved `pos-terminal --trace` as a ladder")
    p.add_argument("--trace", required=True, metavar="FILE")
    p.add_argument("--svg", metavar="FILE")
    p.add_argument("--json", action="store_true")
    return parser


def _jobs(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 16:
        raise argparse.ArgumentTypeError(f"a whole number of scenarios at once, 1 to 16, not {text!r}")
    return int(text)


def _ladder_path(base: str, name: str, several: bool) -> Path:
    path = Path(base)
    return path.with_name(f"{path.stem}-{name}{path.suffix or '.svg'}") if several else path


def do_run(args: argparse.Namespace) -> int:
    scenarios = catalogue() if args.all else [find(name) for name in args.scenarios]
    if not scenarios:
        raise ScenarioError("name a scenario (file or built-in name), or give --all")
    with ExitStack() as stack:
        shared = Path(args.keep) / "setups" if args.keep else Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="pos-scenario-setups-")))
        setups = Setups(shared)

        def one(scenario: Scenario) -> ScenarioResult:
            if args.keep:
                work = Path(args.keep) / scenario.name
                work.mkdir(parents=True, exist_ok=False)
                return run(scenario, work, setups)
            with tempfile.TemporaryDirectory(prefix=f"pos-scenario-{scenario.name}-") as folder:
                return run(scenario, Path(folder), setups)

        pool = stack.enter_context(ThreadPoolExecutor(max_workers=args.jobs))
        results: list[ScenarioResult] = []
        for result in pool.map(one, scenarios):  # in the scenarios' order, as each is ready
            results.append(result)
            if not args.json:
                lines = report.result_lines(result, with_ladder=len(scenarios) == 1
                                            or not result.passed)
                print("\n".join(lines), flush=True)
    if args.ladder:
        for result in results:
            _ladder_path(args.ladder, result.scenario.name, len(results) > 1).write_text(
                ladder.svg(result.rungs, result.scenario.name), encoding="utf-8")
    if args.junit:
        Path(args.junit).write_bytes(report.junit(results))
    passed = sum(r.passed for r in results)
    if args.json:
        print(json.dumps({"passed": passed, "failed": len(results) - passed,
                          "scenarios": [report.result_data(r) for r in results]}, indent=2))
    else:
        print(f"{passed} of {len(results)} scenario(s) passed")
    return EXIT_OK if passed == len(results) else EXIT_FAILED


def do_list(args: argparse.Namespace) -> int:
    rows = [{"name": s.name, "cause": s.cause, "reason": s.reason, "summary": s.summary,
             "steps": len(s.steps)} for s in catalogue()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["name"]) for r in rows)
        for row in rows:
            what = row["cause"] or row["summary"].split(":")[0]
            print(f"{row['name']:<{width}}  {row['reason'] or '-':<10}  {what}")
    return EXIT_OK


def do_ladder(args: argparse.Namespace) -> int:
    rungs = ladder.from_terminal_trace(Path(args.trace).read_text(encoding="utf-8"))
    if args.svg:
        Path(args.svg).write_text(ladder.svg(rungs, args.trace), encoding="utf-8")
    if args.json:
        print(json.dumps([vars(r) for r in rungs], indent=2))
    else:
        print(ladder.text(rungs))
    return EXIT_OK


COMMANDS = {"run": do_run, "list": do_list, "ladder": do_ladder}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ScenarioError, OSError) as exc:
        message = str(exc).replace("\n", " ")
        if getattr(args, "json", False):
            print(json.dumps({"error": message}))
        print(f"pos-scenario: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

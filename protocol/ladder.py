"""The exchange between a terminal and the host drawn as a ladder: two columns, one arrow per
message (MTI, STAN, code, K reason), link events and injected faults marked where they happened.

Built from what either side already writes, never from raw bytes: the host's JSON `--log` lines
or the terminal's `--trace` lines, both masked at the source (PROTOCOL.md §6). Here because both
the host (`pos-host ladder`) and the scenario runner draw one, and neither may import the other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from xml.sax.saxutils import escape

TO_HOST, TO_TERMINAL = ">", "<"
TERMINAL, HOST, LINE = "terminal", "host", "line"


@dataclass(frozen=True)
class Rung:
    """One arrow (`direction` set) or one mark on a column (`side` set)."""

    label: str
    direction: str | None = None
    side: str | None = None
    lost: bool = False  # an answer the host made but the terminal never got
    at: float | None = None


def arrow(direction: str, mti: str, stan: str | None, rc: str | None = None,
          reason: str | None = None, lost: bool = False, at: float | None = None) -> Rung:
    parts = [mti, f"STAN {stan}" if stan else "", rc or "", reason or ""]
    return Rung(" ".join(p for p in parts if p), direction=direction, lost=lost, at=at)


def mark(side: str, label: str, at: float | None = None) -> Rung:
    return Rung(label, side=side, at=at)


LOST_WORDS = ("drop", "close", "cut")
HOST_EVENTS = ("rules reloaded", "rules refused", "bad frame")


def from_host_log(lines: Iterable[Mapping[str, object]], tid: str,
                  since: float | None = None, until: float | None = None) -> list[Rung]:
    """The host's log lines of one terminal, in a time range, as rungs."""
    rungs: list[Rung] = []
    for line in lines:
        ts = line.get("ts")
        at = float(ts) if isinstance(ts, int | float) else None
        if at is not None and ((since is not None and at < since) or (until is not None and at > until)):
            continue
        event = line.get("event")
        if isinstance(event, str):
            if event in HOST_EVENTS:
                rungs.append(mark(HOST, f"{event}: {line.get('error', '')}".rstrip(": "), at))
            continue
        if line.get("tid") != tid or not isinstance(line.get("mti"), str):
            continue
        stan = _str(line.get("stan"))
        rungs.append(arrow(TO_HOST, str(line["mti"]), stan, at=at))
        note = _str(line.get("note")) or ""
        rule = note.partition("rule ")[2] if "rule " in note else ""
        if rule:
            rungs.append(mark(HOST, f"rule {rule}", at))
        reply = _str(line.get("reply"))
        if reply:
            lost = any(rule.endswith(w) for w in LOST_WORDS)
            rungs.append(arrow(TO_TERMINAL, reply, stan, _str(line.get("rc")),
                               _str(line.get("reason")), lost=lost, at=at))
    return rungs


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


_HEAD = re.compile(r"^(>>|<<) (\d{4}) \(")
_FIELD = re.compile(r"^\s+(\d{1,3}) (.*)$")


def from_terminal_trace(text: str) -> list[Rung]:
    """`pos-terminal --trace` lines (`>> 0800 (61 bytes)` then its fields) as rungs."""
    rungs: list[Rung] = []
    current: tuple[str, str] | None = None
    fields: dict[str, str] = {}

    def close() -> None:
        if current is not None:
            direction, mti = current
            rungs.append(arrow(direction, mti, fields.get("11"), fields.get("39"), fields.get("44")))

    for raw in text.splitlines():
        head = _HEAD.match(raw)
        if head:
            close()
            current = (TO_HOST if head.group(1) == ">>" else TO_TERMINAL, head.group(2))
            fields = {}
            continue
        if raw.startswith(("<<", ">>")) and "do not decode" in raw:
            close()
            current = None
            rungs.append(mark(TERMINAL, raw[3:]))
            continue
        field = _FIELD.match(raw)
        if field and current is not None:
            fields[field.group(1)] = field.group(2).strip()
    close()
    return rungs


def by_time(*streams: Iterable[Rung]) -> list[Rung]:
    """Several timed streams merged (stable: equal times keep their order)."""
    merged = [r for stream in streams for r in stream]
    return sorted(merged, key=lambda r: r.at if r.at is not None else 0.0)


# --- drawing -------------------------------------------------------------------------------------

WIDTH = 56


def text(rungs: Iterable[Rung]) -> str:
    """A ladder for a terminal window."""
    rows = [f"{'terminal':<{WIDTH // 2}}{'host':>{WIDTH // 2 + 2}}"]
    for rung in rungs:
        label = rung.label[:WIDTH - 8]
        if rung.direction == TO_HOST:
            rows.append(f" |-- {label} ".ljust(WIDTH, "-") + "->|")
        elif rung.direction == TO_TERMINAL:
            if rung.lost:
                rows.append(f" |   x {label} (lost) ".ljust(WIDTH) + "  |")
            else:
                rows.append(f" |<-- {label} ".ljust(WIDTH, "-") + "--|")
        else:
            where = {"terminal": " * ", "host": " " * (WIDTH // 2 + 3) + "* "}.get(
                rung.side or "", " " * (WIDTH // 4) + "~ ")
            rows.append(f"{where}{label}")
    return "\n".join(rows)


ROW, LEFT, RIGHT, TOP = 28, 90, 630, 50


def svg(rungs: Iterable[Rung], title: str = "") -> str:
    """The same ladder as an SVG document (for a report)."""
    items = list(rungs)
    height = TOP + ROW * (len(items) + 1)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{RIGHT + LEFT}" height="{height}" '
           f'font-family="monospace" font-size="12">',
           '<defs><marker id="head" markerWidth="8" markerHeight="8" refX="8" refY="4" '
           'orient="auto"><path d="M0,0 L8,4 L0,8 z"/></marker></defs>',
           f'<title>{escape(title or "exchange")}</title>',
           f'<text x="{LEFT}" y="20" text-anchor="middle" font-weight="bold">terminal</text>',
           f'<text x="{RIGHT}" y="20" text-anchor="middle" font-weight="bold">host</text>',
           f'<line x1="{LEFT}" y1="30" x2="{LEFT}" y2="{height}" stroke="black"/>',
           f'<line x1="{RIGHT}" y1="30" x2="{RIGHT}" y2="{height}" stroke="black"/>']
    for index, rung in enumerate(items):
        y = TOP + ROW * index
        label = escape(rung.label)
        middle = (LEFT + RIGHT) // 2
        if rung.direction is not None:
            start, end = (LEFT, RIGHT) if rung.direction == TO_HOST else (RIGHT, LEFT)
            if rung.lost:
                end = middle
            colour = "red" if " 14" in f" {rung.label}" or rung.lost else "black"
            dash = ' stroke-dasharray="4 3"' if rung.lost else ""
            out.append(f'<line class="message" x1="{start}" y1="{y + 8}" x2="{end}" y2="{y + 8}" '
                       f'stroke="{colour}"{dash} marker-end="url(#head)"/>')
            out.append(f'<text x="{middle}" y="{y + 4}" text-anchor="middle" fill="{colour}">'
                       f'{label}{" (lost)" if rung.lost else ""}</text>')
        else:
            x = {"terminal": LEFT + 6, "host": RIGHT - 6}.get(rung.side or "", middle)
            anchor = {"terminal": "start", "host": "end"}.get(rung.side or "", "middle")
            out.append(f'<text class="event" x="{x}" y="{y + 8}" text-anchor="{anchor}" '
                       f'fill="darkorange">&#9889; {label}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"

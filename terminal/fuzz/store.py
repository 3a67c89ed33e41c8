"""Findings as JSON files, and the run's report. Everything a person reads here is masked
(PROTOCOL.md §6); the reproducer's request bytes, in hex, are the one documented exception,
since a reproducer that hid them could not reproduce. The answer's bytes are kept masked.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.shown import show
from terminal.fuzz.engine import Context
from terminal.fuzz.oracles import ORACLES, Verdict
from terminal.fuzz.probe import Probe

FORMAT = "pos-fuzz finding 1"


def describe(ctx: Context, payload: bytes) -> str:
    """One masked line for a payload: its MTI and fields, or why it does not decode."""
    if not payload:
        return "nothing"
    shown = show(payload, ctx.dialect)
    if shown.error is not None:  # its text names field and offset, never a value
        return f"{len(payload)} bytes that do not decode ({shown.error})"
    return shown.line()


def masked_hex(ctx: Context, payload: bytes) -> str:
    return show(payload, ctx.dialect).masked.hex()


@dataclass
class Finding:
    oracle: str
    probe: Probe
    detail: str
    seed: int
    case: int
    target: str
    dialect: str
    request: str = ""
    answer: str = ""
    answer_hex: str = ""
    shrunk_from: int = 0
    shrink_attempts: int = 0
    hits: int = 1
    median: float | None = None
    """The target's median answer time when found: replay judges latency against it."""
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str]:
        """Deduplication: one finding per oracle and place (layer, field)."""
        return (self.oracle, self.probe.layer, self.probe.place)

    def summary(self) -> dict[str, Any]:
        return {"oracle": self.oracle, "layer": self.probe.layer, "kind": self.probe.kind,
                "place": self.probe.place, "detail": self.detail, "case": self.case,
                "hits": self.hits, "size": self.probe.size(), "shrunk_from": self.shrunk_from,
                "file": self.path}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "oracle": self.oracle, "meaning": ORACLES[self.oracle],
            "detail": self.detail, "seed": self.seed, "case": self.case, "target": self.target,
            "dialect": self.dialect, "expected": expected(self.oracle), "request": self.request,
            "got": self.answer, "answer_masked_hex": self.answer_hex,
            "shrunk_from": self.shrunk_from, "shrink_attempts": self.shrink_attempts,
            "median_seconds": self.median, "probe": self.probe.to_json(),
            "note": "probe bytes are in clear (hex) so that replay can send them again",
        }


def finding_from(ctx: Context, verdict: Verdict, probe: Probe, seed: int, case: int,
                 target: str) -> Finding:
    return Finding(verdict.oracle, probe, verdict.detail, seed, case, target, ctx.dialect.name,
                   describe(ctx, verdict.request), describe(ctx, verdict.answer),
                   masked_hex(ctx, verdict.answer) if verdict.answer else "")


def expected(oracle: str) -> str:
    return {
        "crash": "the target keeps accepting connections",
        "hang": "an answer (or a close) within --timeout",
        "malformed": "a well-formed frame of the dialect",
        "wrong_mti": "the request's response MTI (third digit + 1)",
        "echo": "fields 11, 41 and 42 as the request had them",
        "malfunction": "any code but 96",
        "mac": "field 64, verifying under the session's MAK",
        "closed": "an answer (12 for an MTI the host does not serve, 30 for a malformed one)",
        "latency": "an answer in the time the target usually takes",
        "link": "§5: a NAK for a bad frame, an ACK and no second delivery for a resent one",
    }[oracle]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def save(finding: Finding, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    name = "-".join(slug(p) for p in (finding.oracle, finding.probe.layer, finding.probe.place))
    path = folder / f"{name}.json"
    path.write_text(json.dumps(finding.to_json(), indent=2) + "\n")
    finding.path = str(path)
    return path


class FindingError(ValueError):
    """A finding file that cannot be replayed."""


def load(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != FORMAT or doc.get("oracle") not in ORACLES:
            raise FindingError(f"{path}: not a pos-fuzz finding")
        doc["probe"] = Probe.from_json(doc["probe"])
    except FileNotFoundError:
        raise FindingError(f"{path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, FindingError):
            raise
        raise FindingError(f"{path}: not a readable finding ({type(exc).__name__})") from None
    return doc

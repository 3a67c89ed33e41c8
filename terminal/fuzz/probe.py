"""What one fuzz case sends, as immutable values: a probe is steps, a step is bytes.

A probe is transport-neutral where it can be: `payloads` are messages (TPDU and header
included) that the transport frames its own way; `raw` is exact wire bytes, for the layers whose
point is the framing itself (TCP length prefixes, serial link frames).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Step:
    payloads: tuple[bytes, ...] = ()
    """Messages the transport frames and sends (in one write when several: frames coalesced)."""
    raw: tuple[bytes, ...] = ()
    """Or exact wire bytes, one write each; `pause` seconds between writes."""
    answered: tuple[bytes, ...] = ()
    """Of what is sent, the payloads the contract says must each get an answer, in order."""
    pause: float = 0.0
    sign: bool = False
    """The payload's field 64 is computed at send time, under the session's current MAK."""
    quiet: bool = False
    """No answer may come (a link frame resent after its ACK must not be delivered twice)."""
    link: str = ""
    """The link reaction §5 requires of the raw bytes (serial): "ACK", "NAK" or ""."""
    fresh: bool = False
    """The stream is in an unknown state afterwards: the next step starts a new connection."""

    def size(self) -> int:
        return sum(map(len, self.payloads)) + sum(map(len, self.raw))

    def to_json(self) -> dict[str, Any]:
        return {"payloads": [p.hex() for p in self.payloads], "raw": [r.hex() for r in self.raw],
                "answered": [a.hex() for a in self.answered], "pause": self.pause,
                "sign": self.sign, "quiet": self.quiet, "link": self.link, "fresh": self.fresh}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Step:
        def hexes(key: str) -> tuple[bytes, ...]:
            return tuple(bytes.fromhex(h) for h in doc.get(key, []))

        return cls(hexes("payloads"), hexes("raw"), hexes("answered"), float(doc.get("pause", 0)),
                   bool(doc.get("sign")), bool(doc.get("quiet")), str(doc.get("link", "")),
                   bool(doc.get("fresh")))


@dataclass(frozen=True, slots=True)
class Probe:
    layer: str
    kind: str
    place: str
    """Where the mutation is: "field 41", "length", "TPDU", "LRC", "order"."""
    steps: tuple[Step, ...] = field(default=())

    def size(self) -> int:
        return sum(s.size() for s in self.steps)

    def with_steps(self, steps: tuple[Step, ...]) -> Probe:
        return replace(self, steps=steps)

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "kind": self.kind, "place": self.place,
                "steps": [s.to_json() for s in self.steps]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Probe:
        return cls(str(doc["layer"]), str(doc["kind"]), str(doc["place"]),
                   tuple(Step.from_json(s) for s in doc["steps"]))

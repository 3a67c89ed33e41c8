"""When each open-loop request is due, and which terminal sends it.

Open loop: request k is due at k / rate seconds after the start, whatever happened to the
requests before it, so a slow host shows as latency (measured from the due time) instead of
quietly lowering the rate, as a closed loop does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    rate: float
    duration: float

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError("the rate must be a positive number of requests per second")
        if not (self.duration > 0 and math.isfinite(self.duration)):
            raise ValueError("the duration must be a positive number of seconds")

    @property
    def count(self) -> int:
        return math.floor(self.rate * self.duration)

    def due(self, k: int) -> float:
        """Seconds after the start at which request k is due."""
        return k / self.rate

    def due_by(self, elapsed: float) -> int:
        """How many requests are due once `elapsed` seconds have passed (never past the end)."""
        if elapsed < 0:
            return 0
        return min(self.count, math.floor(elapsed * self.rate) + 1)


def terminal_for(k: int, terminals: int) -> int:
    """Round robin: every terminal sends at the same rate, each keeps its own STAN."""
    return k % terminals


def split(total: int, parts: int) -> list[range]:
    """`total` items in `parts` contiguous ranges whose sizes differ by at most one."""
    if parts <= 0:
        raise ValueError("at least one part")
    base, extra = divmod(total, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


def slots(concurrency: int, terminals: int) -> list[list[int]]:
    """Closed loop: which terminals each of `concurrency` slots cycles through.

    Fewer slots than terminals: slot i takes terminals i, i+C, i+2C... in turn, so every
    terminal is used. More slots than terminals: several slots share a terminal, which then has
    several requests in flight, each with its own STAN.
    """
    if concurrency <= 0 or terminals <= 0:
        raise ValueError("concurrency and terminals must be positive")
    if concurrency >= terminals:
        return [[i % terminals] for i in range(concurrency)]
    return [list(range(i, terminals, concurrency)) for i in range(concurrency)]

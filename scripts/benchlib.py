"""What every `scripts/bench` case shares: interleaved, time-bounded rate measurement."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable


def ops_per_second(fn: Callable[[], object], seconds: float, batch: int = 50) -> float:
    """Ops/s of `fn` over one time slice of `seconds`."""
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            fn()
        n += batch
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def rates(ours: Callable[[], object], theirs: Callable[[], object], seconds: float,
          rounds: int = 5) -> tuple[float, float]:
    """Best ops/s of each side over `rounds` interleaved slices: bounded in time, and a load
    spike on the machine hits both sides alike instead of skewing the ratio. The baseline's
    warnings (psec warns under current `cryptography`) are silenced while it runs, only."""
    best_ours = best_theirs = 0.0
    for _ in range(rounds):
        best_ours = max(best_ours, ops_per_second(ours, seconds / rounds))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            best_theirs = max(best_theirs, ops_per_second(theirs, seconds / rounds))
    return best_ours, best_theirs

"""Time and randomness as values handed in, so a stale key is a clock moved, not a sleep, and a
test's keys and nonces come from a seed. The one home of both types: the host, the terminal and
the key generation in protocol.crypto take them from here."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable

Clock = Callable[[], float]
"""Seconds: since the epoch, UTC, where it stamps or expires something (`system_clock`); from
any origin where only intervals count (`time.monotonic`)."""

Rng = Callable[[int], bytes]
"""n -> n random bytes: the shape protocol.crypto's key generation takes."""

system_clock: Clock = time.time
system_rng: Rng = os.urandom


def seeded_rng(seed: int) -> Rng:
    """Deterministic bytes for tests and scenarios; never for keys that protect anything."""
    return random.Random(seed).randbytes

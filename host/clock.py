"""Time and randomness as values handed in, so a stale key is a clock moved, not a sleep."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable

Clock = Callable[[], float]
"""Seconds since the epoch, UTC."""

Rng = Callable[[int], bytes]
"""n -> n random bytes: the shape protocol.crypto's key generation takes."""

system_clock: Clock = time.time
system_rng: Rng = os.urandom


def seeded_rng(seed: int) -> Rng:
    """Deterministic bytes for tests and scenarios; never for keys that protect anything."""
    return random.Random(seed).randbytes


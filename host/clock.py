"""Time and randomness as values handed in, so a stale key is a clock moved, not a sleep."""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Mapping

Clock = Callable[[], float]
"""Seconds since the epoch, UTC."""

Rng = Callable[[int], bytes]
"""n -> n random bytes: the shape protocol.crypto's key generation takes."""

system_clock: Clock = time.time
system_rng: Rng = os.urandom
CLOCK_OFFSET_ENV = "POSEMU_HOST_CLOCK_OFFSET"


def serving_clock(environ: Mapping[str, str]) -> Clock:
    """The serving host's clock, moved by $POSEMU_HOST_CLOCK_OFFSET seconds when set: how a
    scenario makes keys outlive their lifetime at the host without waiting (as the terminal's
    own offset does at the terminal). ValueError for anything but a finite number."""
    text = environ.get(CLOCK_OFFSET_ENV)
    if not text:
        return system_clock
    offset = float(text)
    if not math.isfinite(offset):
        raise ValueError(text)
    return lambda: time.time() + offset


def seeded_rng(seed: int) -> Rng:
    """Deterministic bytes for tests and scenarios; never for keys that protect anything."""
    return random.Random(seed).randbytes


"""The serving host's clock: the system's, or moved on purpose so a scenario can age keys."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from protocol.clock import Clock, system_clock

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

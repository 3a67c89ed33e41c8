"""Time and randomness as values handed in, so a stale key is a clock moved, not a sleep."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable

Clock = Callable[[], float]
"""Seconds since the epoch, UTC."""

Rng = Callable[[int], bytes]
"""n -> n random bytes: the shape protocol.crypto's key generation takes."""



class UrandomPool:
    """`os.urandom` drawn 4 KiB at a time and handed out in slices: the host takes 4 random
    bytes for every approval code, and one getrandom() system call per approval cost more
    than the slicing. The bytes are the kernel's CSPRNG output all the same. A forked child
    starts with an empty pool (never the parent's bytes), and a lock keeps threads apart.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._pool = b""
        self._at = 0
        self._lock = threading.Lock()

    def __call__(self, n: int) -> bytes:
        if not 0 <= n <= self._size:  # os.urandom's own answer (and error, for n < 0)
            return os.urandom(n)
        with self._lock:
            at = self._at
            end = at + n
            if end > len(self._pool):
                self._pool = os.urandom(self._size)
                at, end = 0, n
            self._at = end
            return self._pool[at:end]


system_clock: Clock = time.time
system_rng: Rng = UrandomPool()


def seeded_rng(seed: int) -> Rng:
    """Deterministic bytes for tests and scenarios; never for keys that protect anything."""
    return random.Random(seed).randbytes


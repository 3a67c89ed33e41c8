"""Which transaction each scheduled request is: a weighted mix, drawn with an injected RNG.

The parser knows every kind a terminal may send, so `--mix` reads the same today as when the
host serves more; kinds the host does not serve yet are refused with one line, never sent.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from itertools import accumulate

# Kinds the fleet sends, and kinds the parser knows but pos-host does not serve yet.
SERVED = ("purchase", "echo")
NOT_YET = {"inquiry": "balance inquiry", "void": "void", "refund": "refund"}


class MixError(ValueError):
    """A --mix the fleet cannot run; the message says which part and why."""


@dataclass(frozen=True)
class Mix:
    kinds: tuple[str, ...]
    weights: tuple[int, ...]

    def __post_init__(self) -> None:
        self._cumulative: tuple[int, ...]
        object.__setattr__(self, "_cumulative", tuple(accumulate(self.weights)))

    def choose(self, rng: random.Random) -> str:
        """One kind; the RNG is the caller's, so a seeded run draws the same sequence."""
        if len(self.kinds) == 1:
            return self.kinds[0]
        point = rng.random() * self._cumulative[-1]
        return self.kinds[bisect.bisect_right(self._cumulative, point)]

    def share(self) -> dict[str, float]:
        total = sum(self.weights)
        return {k: w / total for k, w in zip(self.kinds, self.weights, strict=True)}


def parse_mix(text: str) -> Mix:
    """`purchase=90,echo=10` -> Mix. Weights are relative, need not add to 100."""
    kinds: list[str] = []
    weights: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        name, sep, weight = part.partition("=")
        name = name.strip()
        if not sep or not weight.strip().isdigit():
            raise MixError(f"--mix: {part!r} is not KIND=WEIGHT (e.g. purchase=90,echo=10)")
        if name in NOT_YET:
            raise MixError(f"--mix: {NOT_YET[name]} ({name}) is not served by pos-host yet; "
                           f"the fleet sends {', '.join(SERVED)}")
        if name not in SERVED:
            raise MixError(f"--mix: unknown kind {name!r}; kinds are {', '.join(SERVED)}")
        if name in kinds:
            raise MixError(f"--mix: {name} given twice")
        kinds.append(name)
        weights.append(int(weight))
    if sum(weights) <= 0:
        raise MixError("--mix: the weights add up to 0")
    return Mix(tuple(k for k, w in zip(kinds, weights, strict=True) if w),
               tuple(w for w in weights if w))

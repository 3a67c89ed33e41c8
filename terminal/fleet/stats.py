"""What a run measured: latencies in HdrHistograms, answers by code and K reason, and losses.

HdrHistogram keeps every latency to 3 significant digits in fixed memory, and histograms from
several worker processes add up exactly (a sorted list would not fit a long run, and averaged
percentiles are wrong). Values are microseconds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # an hour: nothing a run waits for is longer
DIGITS = 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


def microseconds(seconds: float) -> int:
    """A latency as HdrHistogram takes it: whole microseconds within its range."""
    return min(HIGHEST_US, max(LOWEST_US, round(seconds * 1e6)))


def percentile_ms(histogram: HdrHistogram, percentile: float) -> float | None:
    if histogram.get_total_count() == 0:
        return None
    return round(histogram.get_value_at_percentile(percentile) / 1000, 3)


def _encode(histogram: HdrHistogram) -> bytes:
    return histogram.encode() if histogram.get_total_count() else b""


def _decode(data: bytes) -> HdrHistogram:
    histogram = new_histogram()
    if data:
        histogram.decode_and_add(data)
    return histogram


@dataclass
class Second:
    """One second of the run: each kind's latencies, for the plot and (added up) the totals.

    Answers land in `pending` first, as counts of whole microseconds (a dict increment), and go
    into the HdrHistograms when a histogram is read: the same values with the same counts, so
    the same histogram, but the per-answer cost of HdrHistogram's own recording (half the
    fleet's bookkeeping per answer) is paid once per distinct value instead."""

    answered: int = 0
    histograms: dict[str, HdrHistogram] = field(default_factory=dict)
    pending: dict[str, Counter[int]] = field(default_factory=dict)

    @property
    def by_kind(self) -> dict[str, HdrHistogram]:
        for kind, counts in self.pending.items():
            histogram = self.histograms.get(kind)
            if histogram is None:
                histogram = self.histograms[kind] = new_histogram()
            for value, count in counts.items():
                histogram.record_value(value, count)
        self.pending = {}
        return self.histograms

    def latency(self) -> HdrHistogram:
        return _total(self.by_kind.values())


def _total(histograms: Iterable[HdrHistogram]) -> HdrHistogram:
    total = new_histogram()
    for histogram in histograms:
        total.add(histogram)
    return total


@dataclass
class Stats:
    """One worker's counts; `merge` adds another worker's (from `to_wire`)."""

    sent: int = 0
    answered: int = 0
    timeouts: int = 0
    late: int = 0
    lost: int = 0
    mismatched: int = 0
    auto_signons: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: list[Second] = field(default_factory=list)

    def answer(self, kind: str, latency: float, at: float, code: str | None,
               reason: str | None) -> None:
        """One answer judged: `at` is seconds since the start, `latency` since the due time.
        One histogram record per answer (per second and kind): the totals are sums of them."""
        self.answered += 1
        self.codes[code or "none"] += 1
        if reason:
            self.reasons[reason] += 1
        seconds = self.seconds
        index = int(at)
        second = seconds[index] if 0 <= index < len(seconds) else self.second(at)
        second.answered += 1
        counts = second.pending.get(kind)
        if counts is None:
            counts = second.pending[kind] = Counter()
        counts[microseconds(latency)] += 1

    def latency(self) -> HdrHistogram:
        return _total(s.latency() for s in self.seconds)

    @property
    def by_kind(self) -> dict[str, HdrHistogram]:
        kinds: dict[str, list[HdrHistogram]] = {}
        for second in self.seconds:
            for kind, histogram in second.by_kind.items():
                kinds.setdefault(kind, []).append(histogram)
        return {kind: _total(histograms) for kind, histograms in kinds.items()}

    def second(self, at: float) -> Second:
        index = max(0, int(at))
        while len(self.seconds) <= index:
            self.seconds.append(Second())
        return self.seconds[index]

    _COUNTS = ("sent", "answered", "timeouts", "late", "lost", "mismatched", "auto_signons")
    _COUNTERS = ("codes", "reasons", "errors")

    def to_wire(self) -> dict[str, Any]:
        """Plain data a worker process can send through a pipe."""
        return {
            **{name: getattr(self, name) for name in self._COUNTS},
            **{name: dict(getattr(self, name)) for name in self._COUNTERS},
            "seconds": [(s.answered, {k: _encode(h) for k, h in s.by_kind.items()})
                        for s in self.seconds],
        }

    def merge(self, wire: dict[str, Any]) -> None:
        for name in self._COUNTS:
            setattr(self, name, getattr(self, name) + wire[name])
        for name in self._COUNTERS:
            getattr(self, name).update(wire[name])
        for index, (answered, kinds) in enumerate(wire["seconds"]):
            second = self.second(index)
            second.answered += answered
            for kind, data in kinds.items():
                second.by_kind.setdefault(kind, new_histogram()).add(_decode(data))

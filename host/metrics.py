"""What a serving host counts, for `serve --metrics` (Prometheus) and `pos-host top`.

`HostCore` calls a `HostMetrics` on every message; the default `NullMetrics` does nothing, so
a host started without `--metrics` pays one method call per message. Every label takes its
values from a fixed set (the MTIs the host serves, the response codes of protocol.codes, key
errors as code × key), anything else counted as `other`: a peer sending made-up MTIs or codes
cannot grow the host's memory or the scrape. No label ever holds a PAN; terminal ids appear
only on the key-age gauges, for the `SOONEST` terminals whose keys expire first.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from host.state import ACTIVE
from protocol.clock import Clock
from protocol.codes import KEY_ERROR_KINDS, KEY_NAMES, RESPONSE_CODES

OTHER, NONE = "other", "none"
SOONEST = 10
"""Terminals named on the key-age gauges: those whose working keys expire first."""
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0)
COMMIT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
KEY_REASONS = frozenset(f"{kind} {key}" for kind in KEY_ERROR_KINDS for key in KEY_NAMES)


class HostMetrics(Protocol):
    def message(self, mti: str | None, rc: str | None, reason: str | None, seconds: float) -> None:
        """One message handled (mti None: it did not decode; rc None: nothing answered)."""

    def commit(self, size: int) -> None:
        """One group commit of `size` answers."""

    def signon(self, key_set: str, ok: bool) -> None:
        """A sign-on that issued `key_set`, or (not ok) one refused."""

    def watch_connections(self, count: Callable[[], int]) -> None:
        """Where the number of open connections is read at each scrape."""


class NullMetrics:
    """A host without `--metrics`."""

    def message(self, mti: str | None, rc: str | None, reason: str | None, seconds: float) -> None:
        pass

    def commit(self, size: int) -> None:
        pass

    def signon(self, key_set: str, ok: bool) -> None:
        pass

    def watch_connections(self, count: Callable[[], int]) -> None:
        pass


NULL_METRICS = NullMetrics()


def reason_label(reason: str | None) -> str:
    """`K2 MAK missed rotation` -> `K2 MAK`: the code and the key, never the free text."""
    if not reason:
        return NONE
    label = " ".join(reason.split()[:2])
    return label if label in KEY_REASONS else OTHER


class PrometheusMetrics:
    """The counters of `serve --metrics`; a label set's child is looked up once and kept
    (bounded: its labels are)."""

    def __init__(self, served: Iterable[str], clock: Clock, db_path: Path,
                 key_error_code: str = "14") -> None:
        self.registry = CollectorRegistry()
        self._mtis = frozenset(served)
        self._codes = frozenset(RESPONSE_CODES) | {key_error_code}
        self._signon_mtis = frozenset({"0800"}) & self._mtis
        r = self.registry
        self._messages = Counter("posemu_host_messages", "Messages handled, by request MTI and "
                                 "response code", ["mti", "rc"], registry=r)
        self._key_errors = Counter("posemu_host_key_errors", "Key errors answered, by reason "
                                   "(code and key)", ["reason"], registry=r)
        self._latency = Histogram("posemu_host_handling_seconds", "Time from a request's frame to "
                                  "its answer being ready (before its group commit)",
                                  buckets=LATENCY_BUCKETS, registry=r)
        self._commits = Histogram("posemu_host_group_commit_size", "Answers released per group "
                                  "commit", buckets=COMMIT_BUCKETS, registry=r)
        self._signons = Counter("posemu_host_signons", "Sign-ons, by key set issued and result",
                                ["key_set", "result"], registry=r)
        self._connections = Gauge("posemu_host_connections", "TCP connections open", registry=r)
        self._children: dict[tuple[str, str], Counter] = {}
        r.register(KeyAges(db_path, clock))
        ProcessCollector(registry=r)  # RSS, CPU, descriptors

    def message(self, mti: str | None, rc: str | None, reason: str | None, seconds: float) -> None:
        mti_label = NONE if mti is None else mti if mti in self._mtis else OTHER
        rc_label = NONE if rc is None else rc if rc in self._codes else OTHER
        key = (mti_label, rc_label)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._messages.labels(mti_label, rc_label)
        child.inc()
        self._latency.observe(seconds)
        if reason:
            self._key_errors.labels(reason_label(reason)).inc()
        if mti in self._signon_mtis and rc is not None and rc != "00":
            self.signon(NONE, False)

    def commit(self, size: int) -> None:
        self._commits.observe(size)

    def signon(self, key_set: str, ok: bool) -> None:
        self._signons.labels(key_set, "issued" if ok else "refused").inc()

    def watch_connections(self, count: Callable[[], int]) -> None:
        self._connections.set_function(count)


class KeyAges(Collector):
    """Working-key ages read at each scrape, on a read-only connection of the scrape's own
    (the serving thread's connection is never shared; WAL lets the read run beside commits)."""

    def __init__(self, db_path: Path, clock: Clock, soonest: int = SOONEST) -> None:
        self.db_path = db_path
        self.clock = clock
        self.soonest = soonest

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self.clock()
        active = GaugeMetricFamily("posemu_host_terminals_keyed", "Terminals with active "
                                   "working keys")
        expired = GaugeMetricFamily("posemu_host_terminals_keys_expired", "Terminals whose "
                                    "active working keys are past their lifetime")
        age = GaugeMetricFamily("posemu_host_key_age_seconds", "Age of the active working keys "
                                f"of the {self.soonest} terminals whose keys expire first",
                                labels=["tid"])
        left = GaugeMetricFamily("posemu_host_key_expires_in_seconds", "Seconds until those "
                                 "keys expire (negative: expired)", labels=["tid"])
        rows = self._rows()
        active.add_metric([], len(rows))
        expired.add_metric([], sum(1 for _, _, ends in rows if ends <= now))
        for tid, created, ends in rows[:self.soonest]:
            age.add_metric([tid], now - created)
            left.add_metric([tid], ends - now)
        yield from (active, expired, age, left)

    def _rows(self) -> list[tuple[str, float, float]]:
        try:
            conn = sqlite3.connect(f"{self.db_path.resolve().as_uri()}?mode=ro", uri=True,
                                   timeout=1.0)
        except sqlite3.Error:
            return []
        with contextlib.closing(conn):
            try:
                return conn.execute(
                    "SELECT tid, MAX(created), MIN(created + lifetime) AS ends FROM keys "
                    "WHERE usage != 'TMK' AND state = ? GROUP BY tid ORDER BY ends, tid",
                    (ACTIVE,)).fetchall()
            except sqlite3.Error:
                return []

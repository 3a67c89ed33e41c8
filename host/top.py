"""`pos-host top`: a running host's `--metrics` endpoint read over HTTP and shown as one view.

Reading (`scrape`) is apart from the arithmetic (`summarize`, pure: two reads in, one view
out) and from the text (`render`), so tests and scripts take the view as JSON.
"""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from collections import defaultdict
from typing import Any

MAX_BYTES = 4 * 1024 * 1024  # a scrape larger than this is not a pos-host's
QUANTILES = (0.5, 0.9, 0.99)

Samples = dict[str, list[tuple[dict[str, str], float]]]
"""Sample name -> (labels, value) for each series of that name."""


class TopError(OSError):
    """The endpoint could not be read or is not a pos-host's."""


def metrics_url(text: str) -> str:
    """`HOST:PORT` or a full http(s) URL -> the URL to read."""
    if text.startswith(("http://", "https://")):
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise TopError(f"{text!r} is not HOST:PORT or an http URL")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"


def scrape(url: str, timeout: float) -> tuple[float, Samples]:
    """One read: when (monotonic seconds) and every sample."""
    from prometheus_client.parser import text_string_to_metric_families  # for `top` only

    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            body = answer.read(MAX_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise TopError(f"cannot read {url}: {getattr(exc, 'reason', exc)}") from None
    if len(body) > MAX_BYTES:
        raise TopError(f"{url}: more than {MAX_BYTES} bytes")
    samples: Samples = defaultdict(list)
    try:
        for family in text_string_to_metric_families(body.decode("utf-8", "replace")):
            for sample in family.samples:
                samples[sample.name].append((dict(sample.labels), sample.value))
    except ValueError as exc:
        raise TopError(f"{url}: not Prometheus text ({exc})") from None
    if "posemu_host_messages_total" not in samples and "posemu_host_connections" not in samples:
        raise TopError(f"{url}: not a pos-host metrics endpoint")
    return time.monotonic(), dict(samples)


def _by(samples: Samples, name: str, label: str) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for labels, value in samples.get(name, []):
        totals[labels.get(label, "")] += value
    return dict(totals)


def _one(samples: Samples, name: str) -> float:
    return sum(value for _, value in samples.get(name, []))


def _buckets(samples: Samples, name: str) -> list[tuple[float, float]]:
    return sorted((float(labels["le"]), value) for labels, value in samples.get(f"{name}_bucket", []))


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated inside its bucket (as
    Prometheus's histogram_quantile); None when it holds nothing."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            inside = count - lower_count
            share = (rank - lower_count) / inside if inside else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def _delta(new: dict[str, float], old: dict[str, float]) -> dict[str, float]:
    return {k: v - old.get(k, 0.0) for k, v in new.items() if v - old.get(k, 0.0)}


def summarize(before: tuple[float, Samples], after: tuple[float, Samples]) -> dict[str, Any]:
    """Two reads -> what `top` shows: rates over the time between them, totals since start."""
    (t0, old), (t1, new) = before, after
    seconds = max(t1 - t0, 1e-9)
    messages = _one(new, "posemu_host_messages_total")
    latency_now = _buckets(new, "posemu_host_handling_seconds")
    latency_old = dict(_buckets(old, "posemu_host_handling_seconds"))
    window = [(bound, count - latency_old.get(bound, 0.0)) for bound, count in latency_now]
    if not window or window[-1][1] <= 0:
        window = latency_now  # nothing in the interval: the figures since start
    commits = _one(new, "posemu_host_group_commit_size_count")
    ages = {labels["tid"]: value for labels, value in new.get("posemu_host_key_age_seconds", [])}
    soonest = sorted(
        ({"tid": labels["tid"], "expires_in_s": round(value, 1),
          "age_s": round(ages.get(labels["tid"], 0.0), 1)}
         for labels, value in new.get("posemu_host_key_expires_in_seconds", [])),
        key=lambda row: (row["expires_in_s"], row["tid"]))
    codes = _by(new, "posemu_host_messages_total", "rc")
    return {
        "seconds": round(seconds, 3),
        "rate": round((messages - _one(old, "posemu_host_messages_total")) / seconds, 1),
        "messages": int(messages),
        "codes": {k: int(v) for k, v in sorted(codes.items())},
        "codes_in_interval": {k: int(v) for k, v in sorted(
            _delta(codes, _by(old, "posemu_host_messages_total", "rc")).items())},
        "mtis": {k: int(v) for k, v in sorted(_by(new, "posemu_host_messages_total", "mti").items())},
        "key_errors": {k: int(v) for k, v in sorted(
            _by(new, "posemu_host_key_errors_total", "reason").items())},
        "latency_ms": {f"p{round(q * 100)}": None if (v := quantile(window, q)) is None
                       else round(v * 1000, 3) for q in QUANTILES},
        "connections": int(_one(new, "posemu_host_connections")),
        "group_commit_mean": round(_one(new, "posemu_host_group_commit_size_sum") / commits, 2)
        if commits else None,
        "signons": {f"{labels['key_set']} {labels['result']}": int(value)
                    for labels, value in new.get("posemu_host_signons_total", [])},
        "terminals_keyed": int(_one(new, "posemu_host_terminals_keyed")),
        "terminals_keys_expired": int(_one(new, "posemu_host_terminals_keys_expired")),
        "soonest": soonest,
    }


def _pairs(counts: dict[str, Any]) -> str:
    return "  ".join(f"{k}: {v}" for k, v in counts.items()) or "(none)"


def render(view: dict[str, Any]) -> str:
    latency = "  ".join(f"{k} {'-' if v is None else f'{v:g} ms'}" for k, v in view["latency_ms"].items())
    lines = [
        f"rate {view['rate']:g}/s  messages {view['messages']}  connections {view['connections']}  "
        f"group commit {view['group_commit_mean'] if view['group_commit_mean'] is not None else '-'}",
        f"latency  {latency}",
        f"codes    {_pairs(view['codes'])}",
        f"K        {_pairs(view['key_errors'])}",
        f"sign-ons {_pairs(view['signons'])}",
        f"keys     {view['terminals_keyed']} terminals keyed, {view['terminals_keys_expired']} expired",
        "expiring first:",
    ]
    lines += [f"  {row['tid']:<8}  in {row['expires_in_s']:g}s  (age {row['age_s']:g}s)"
              for row in view["soonest"]] or ["  (none)"]
    return "\n".join(lines)

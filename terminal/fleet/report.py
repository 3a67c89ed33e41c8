"""The end-of-run report: one JSON-ready dict, a table for people, an SVG plot over time."""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape

from terminal.fleet.stats import Stats, percentile_ms

PERCENTILES = {"p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0, "p999_ms": 99.9}


def latency_summary(stats: Stats) -> dict[str, float | None]:
    latency = stats.latency()
    out = {name: percentile_ms(latency, p) for name, p in PERCENTILES.items()}
    out["max_ms"] = percentile_ms(latency, 100.0)
    return out


def build_report(stats: Stats, signons: Stats, *, mode: str, terminals: int, workers: int,
                 duration: float, elapsed: float, signon_seconds: float, target: float,
                 storm: bool, connected: int | None = None) -> dict[str, Any]:
    """`achieved_rate` counts answers over the window (at least `duration`: answers drained
    after it stretch the window rather than flatter the rate)."""
    window = max(duration, elapsed)
    signon_latency = signons.latency()
    report: dict[str, Any] = {
        "mode": mode,
        "target": target,
        "terminals": terminals,
        "connected": terminals if connected is None else connected,
        "workers": workers,
        "duration_s": duration,
        "sent": stats.sent,
        "answered": stats.answered,
        "achieved_rate": round(stats.answered / window, 1) if window else 0.0,
        **latency_summary(stats),
        "codes": dict(sorted(stats.codes.items())),
        "reasons": dict(sorted(stats.reasons.items())),
        "timeouts": stats.timeouts,
        "late": stats.late,
        "lost": stats.lost,
        "mismatched": stats.mismatched,
        "auto_signons": stats.auto_signons,
        "errors": dict(sorted(stats.errors.items())),
        "by_type": {
            kind: {"count": h.get_total_count(), "p50_ms": percentile_ms(h, 50.0),
                   "p99_ms": percentile_ms(h, 99.0)}
            for kind, h in sorted(stats.by_kind.items())
        },
        "signon": {
            "storm": storm,
            "sent": signons.sent,
            "answered": signons.answered,
            "ok": signons.codes.get("00", 0),  # every key's length, parity and KCV checked
            "codes": dict(sorted(signons.codes.items())),
            "reasons": dict(sorted(signons.reasons.items())),
            "timeouts": signons.timeouts,
            "seconds": round(signon_seconds, 3),
            "rate": round(signons.answered / signon_seconds, 1) if signon_seconds else 0.0,
            "p99_ms": percentile_ms(signon_latency, 99.0),
        },
        "timeline": [
            {"t": i, "rate": s.answered, "p50_ms": percentile_ms(h, 50.0),
             "p99_ms": percentile_ms(h, 99.0)}
            for i, (s, h) in enumerate((s, s.latency()) for s in stats.seconds)
        ],
    }
    return report


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def report_table(report: dict[str, Any]) -> str:
    target = (f"{report['target']:g}/s open loop" if report["mode"] == "open"
              else f"concurrency {report['target']:g} (closed loop)")
    s = report["signon"]
    rows = [
        ("load", f"{report['terminals']} terminals, {report['workers']} worker(s), {target}, "
                 f"{report['duration_s']:g} s"),
        ("sign-on", f"{s['answered']}/{s['sent']} answered, {s['ok']} with verified keys, "
                    f"{s['rate']:g}/s{' (storm)' if s['storm'] else ''}, p99 {_ms(s['p99_ms'])}"),
        ("sent / answered", f"{report['sent']} / {report['answered']}"),
        ("achieved rate", f"{report['achieved_rate']:g}/s"),
        ("latency", "  ".join(f"{k[:-3]} {_ms(report[k])}" for k in [*PERCENTILES, "max_ms"])),
        ("codes", "  ".join(f"{c}: {n}" for c, n in report["codes"].items()) or "-"),
        ("K reasons", "  ".join(f"{r}: {n}" for r, n in report["reasons"].items()) or "-"),
        ("timeouts / late", f"{report['timeouts']} / {report['late']}"),
        ("lost / mismatched", f"{report['lost']} / {report['mismatched']}"),
        ("auto sign-ons", str(report["auto_signons"])),
    ]
    rows += [(f"  {kind}", f"{v['count']}  p50 {_ms(v['p50_ms'])}  p99 {_ms(v['p99_ms'])}")
             for kind, v in report["by_type"].items()]
    rows += [("errors", f"{e}: {n}") for e, n in report["errors"].items()]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


# --- the plot ----------------------------------------------------------------------------------

W, PANEL, MARGIN, GAP = 720, 160, 48, 40


def _polyline(ident: str, values: list[float], top: int, colour: str,
              peak: float | None = None) -> str:
    peak = peak or max(values, default=0.0) or 1.0
    step = (W - 2 * MARGIN) / max(1, len(values) - 1)
    points = " ".join(f"{MARGIN + i * step:.1f},{top + PANEL - v / peak * PANEL:.1f}"
                      for i, v in enumerate(values))
    return (f'<polyline id="{ident}" fill="none" stroke="{colour}" stroke-width="1.5" '
            f'points="{points}"/>\n<text x="{W - MARGIN}" y="{top - 4}" text-anchor="end" '
            f'font-size="11">max {peak:g}</text>')


def report_svg(report: dict[str, Any]) -> str:
    """Answers per second over time, and p50/p99 latency per second below it."""
    timeline = report["timeline"]
    rates = [float(p["rate"]) for p in timeline]
    p99 = [p["p99_ms"] or 0.0 for p in timeline]
    p50 = [p["p50_ms"] or 0.0 for p in timeline]
    top2 = MARGIN + PANEL + GAP
    height = top2 + PANEL + MARGIN
    title = escape(f"pos-fleet: {report['terminals']} terminals, achieved "
                   f"{report['achieved_rate']:g}/s, p99 {_ms(report['p99_ms'])}, "
                   f"lost {report['lost']}")
    frame = "".join(
        f'<rect x="{MARGIN}" y="{top}" width="{W - 2 * MARGIN}" height="{PANEL}" fill="none" '
        f'stroke="#999"/>\n' for top in (MARGIN, top2))
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" '
        f'viewBox="0 0 {W} {height}" font-family="sans-serif">',
        f'<title>{title}</title>',
        f'<text x="{MARGIN}" y="20" font-size="13">{title}</text>',
        frame,
        f'<text x="{MARGIN}" y="{MARGIN - 4}" font-size="11">answers per second</text>',
        _polyline("rate", rates, MARGIN, "#1f77b4"),
        f'<text x="{MARGIN}" y="{top2 - 4}" font-size="11">latency per second, ms '
        f'(p99 red, p50 grey)</text>',
        _polyline("p99", p99, top2, "#d62728"),
        _polyline("p50", p50, top2, "#7f7f7f", max(p99, default=0.0)),
        f'<text x="{MARGIN}" y="{height - 16}" font-size="11">seconds 0 to {len(timeline)}'
        f'</text>',
        "</svg>",
    ]) + "\n"

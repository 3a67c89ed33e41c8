"""The fleet's pure cores: schedule, mix, stats, report and plot, without sockets."""

from __future__ import annotations

import io
import random
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from protocol.crypto import Key
from protocol.dialects import get_dialect
from terminal.fleet import fleetdir
from terminal.fleet.fleetdir import FleetError
from terminal.fleet.member import STAN_MAX, Identity, Member
from terminal.fleet.mix import MixError, parse_mix
from terminal.fleet.provision import luhn_complete, tid_for
from terminal.fleet.report import build_report, report_svg, report_table
from terminal.fleet.runner import Load
from terminal.fleet.schedule import Schedule, slots, split, terminal_for
from terminal.fleet.stats import Stats
from terminal.fleet.workers import FleetRunError, live_line, raise_nofile, shares, tty_live

SVG = "{http://www.w3.org/2000/svg}"


def test_open_loop_schedule_is_due_at_k_over_rate() -> None:
    schedule = Schedule(rate=200, duration=3)
    assert schedule.count == 600
    assert schedule.due(0) == 0 and schedule.due(100) == pytest.approx(0.5)
    assert schedule.due_by(-1) == 0
    assert schedule.due_by(0.0) == 1          # request 0 is due at once
    assert schedule.due_by(0.5) == 101        # 0..100
    assert schedule.due_by(99.0) == 600       # never past the end
    with pytest.raises(ValueError):
        Schedule(0, 1)


def test_round_robin_and_splits() -> None:
    assert [terminal_for(k, 3) for k in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert [len(r) for r in split(10, 3)] == [4, 3, 3]
    assert [i for r in split(10, 3) for i in r] == list(range(10))
    assert slots(2, 5) == [[0, 2, 4], [1, 3]]          # every terminal used
    assert slots(5, 2) == [[0], [1], [0], [1], [0]]    # terminals shared, several in flight


def test_mix_refuses_what_the_host_does_not_serve() -> None:
    with pytest.raises(MixError, match=r"balance inquiry.*not served by pos-host yet"):
        parse_mix("purchase=90,inquiry=5,void=5")
    with pytest.raises(MixError, match="void"):
        parse_mix("purchase=95,void=5")
    for bad in ("purchase", "purchase=x", "sale=10", "purchase=1,purchase=2", "purchase=0"):
        with pytest.raises(MixError):
            parse_mix(bad)


def test_mix_draws_with_the_injected_rng() -> None:
    mix = parse_mix("purchase=90,echo=10")
    draws = [mix.choose(rng) for rng in [random.Random(7)] for _ in range(5000)]
    again = [mix.choose(rng) for rng in [random.Random(7)] for _ in range(5000)]
    assert draws == again
    share = Counter(draws)["echo"] / len(draws)
    assert 0.08 < share < 0.12
    assert parse_mix("purchase=100").choose(random.Random()) == "purchase"


def _stats() -> Stats:
    stats = Stats(sent=4)
    for at, ms in ((0.1, 1), (0.2, 2), (1.5, 3), (1.6, 100)):
        stats.answer("purchase", ms / 1000, at, "00", None)
    stats.answer("echo", 0.001, 1.7, "14", "K2 MAK missed rotation")
    return stats


def test_stats_from_workers_add_up_exactly() -> None:
    merged = Stats()
    merged.merge(_stats().to_wire())
    merged.merge(_stats().to_wire())
    assert merged.answered == 10 and merged.sent == 8
    assert merged.codes == {"00": 8, "14": 2}
    assert merged.reasons == {"K2 MAK missed rotation": 2}
    assert [s.answered for s in merged.seconds] == [4, 6]
    assert merged.latency().get_total_count() == 10
    assert merged.by_kind["echo"].get_total_count() == 2


def test_a_second_read_while_it_fills_keeps_every_answer() -> None:
    """Answers are counted first and go into the histogram when it is read: one read between
    answers (the live line reads every second) must lose none and count none twice."""
    stats = Stats()
    stats.answer("echo", 0.002, 0.1, "00", None)
    stats.answer("echo", 0.002, 0.2, "00", None)
    assert stats.seconds[0].latency().get_total_count() == 2
    stats.answer("echo", 0.005, 0.3, "00", None)
    histogram = stats.by_kind["echo"]
    assert histogram.get_total_count() == 3
    assert histogram.get_max_value() == pytest.approx(5000, rel=1e-3)
    assert histogram.get_value_at_percentile(50) == pytest.approx(2000, rel=1e-3)


def test_report_percentiles_come_from_the_histogram() -> None:
    report = build_report(_stats(), Stats(), mode="open", terminals=2, workers=1, duration=2.0,
                          elapsed=2.0, signon_seconds=0.1, target=2.0, storm=False)
    assert report["answered"] == 5 and report["achieved_rate"] == 2.5
    assert report["p50_ms"] == pytest.approx(2.0, rel=0.01)
    assert report["p999_ms"] == pytest.approx(100.0, rel=0.01)
    assert report["codes"] == {"00": 4, "14": 1} and report["lost"] == 0
    assert [p["rate"] for p in report["timeline"]] == [2, 3]
    table = report_table(report)
    assert "K2 MAK missed rotation: 1" in table and "achieved rate" in table


def test_plot_is_svg_with_one_point_per_second() -> None:
    report = build_report(_stats(), Stats(), mode="closed", terminals=2, workers=1, duration=2,
                          elapsed=2, signon_seconds=0, target=4, storm=True)
    root = ET.fromstring(report_svg(report))
    assert root.tag == f"{SVG}svg"
    lines = {p.get("id"): p.get("points", "").split() for p in root.iter(f"{SVG}polyline")}
    assert set(lines) == {"rate", "p99", "p50"}
    assert all(len(points) == 2 for points in lines.values())
    # the busier second is drawn higher (smaller y) in the rate panel
    (_, y0), (_, y1) = (tuple(map(float, p.split(","))) for p in lines["rate"])
    assert y1 < y0


def test_workers_share_terminals_and_rate() -> None:
    load = Load("127.0.0.1", 1, "iso87", "003", list(range(10)), [], parse_mix("purchase=1"),  # type: ignore[arg-type]
                1.0, 1, rate=100.0, seed=3)
    parts = shares(load, 3)
    assert [len(p.identities) for p in parts] == [4, 3, 3]
    assert sum(p.rate or 0 for p in parts) == pytest.approx(100.0)
    assert [p.seed for p in parts] == [3, 4, 5]
    closed = shares(Load("h", 1, "iso87", "003", list(range(4)), [], parse_mix("echo=1"),  # type: ignore[arg-type]
                         1.0, 1, concurrency=5), 2)
    assert [p.concurrency for p in closed] == [3, 2]


def test_live_line_adds_up_workers() -> None:
    line = live_line(3.0, [{"last_second": 10, "p99_us": 2500, "answered": 30, "codes": {"00": 30}},
                           {"last_second": 5, "p99_us": 1000, "answered": 15, "codes": {"00": 15}}])
    assert "15/s" in line and "2.5 ms" in line and "00:45" in line


def test_test_cards_and_terminal_ids() -> None:
    assert luhn_complete("7992739871") == "79927398713"  # the Luhn algorithm's textbook example
    assert tid_for("F", 0) == "F0000001" and tid_for("AB", 41) == "AB000042"
    with pytest.raises(FleetError):
        tid_for("ABCDEFGH", 0)


def test_descriptor_limit_is_checked_not_assumed() -> None:
    assert raise_nofile(10) >= 10 + 64
    with pytest.raises(FleetRunError, match=r"need 1000000064 file descriptors.*ulimit -Hn"):
        raise_nofile(1_000_000_000)


def test_no_live_line_into_a_pipe_or_file() -> None:
    assert tty_live(io.StringIO()) is None


def test_a_wrapped_stan_moves_to_the_next_batch() -> None:
    member = Member(Identity("T1", "M1", Key("TDES", "TMK", bytes(16))), get_dialect("iso87"),
                    "003", batch=7)
    member.stan = STAN_MAX - 1
    assert (member.next_stan(), member.batch) == (STAN_MAX, 7)
    assert (member.next_stan(), member.batch) == (1, 8)


def test_every_run_claims_batches_no_earlier_run_used(tmp_path: Path) -> None:
    fleetdir.create(tmp_path / "f", "iso87", "003")
    first, second = fleetdir.claim_batch(tmp_path / "f"), fleetdir.claim_batch(tmp_path / "f")
    assert second - first == fleetdir.BATCHES_PER_RUN
    with pytest.raises(FleetError, match="already holds a fleet"):
        fleetdir.create(tmp_path / "f", "iso87", "003")
    with pytest.raises(FleetError, match="key set"):
        fleetdir.create(tmp_path / "g", "iso87", "002")

"""`serve --metrics` and `pos-host top` against a real pos-host process, the metrics' bounded
labels, and the key cache a sign-on fills (HostCore over a real SQLite file)."""

from __future__ import annotations

import io
import json
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from host import admin
from host.core import CACHE_LIMIT, EVICTED, HostCore, _make_room
from host.datadir import init_data, open_data
from host.handlers import HandlerConfig
from host.logs import MessageLog
from host.metrics import PrometheusMetrics
from protocol.clock import seeded_rng, system_clock, system_rng
from protocol.codec import get_codec
from protocol.dialects import get_dialect
from protocol.framing import Framing
from tests.host.client import Card, ClientTerminal, Link, tmk_from_ceremony
from tests.support import add_card, host_command, init_host, pos_host, provision_terminal, start_host

MID = "M00000000000001"
CARD = Card("6212345678901234", "2812", "1234")
TID = "T0METRIC"


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_serving_host_counts_what_it_answers_and_top_shows_it(tmp_path: Path) -> None:
    data = init_host(tmp_path / "host")
    terminal = ClientTerminal(TID, MID, tmk_from_ceremony(provision_terminal(data, TID, MID)))
    add_card(data, CARD.pan, CARD.expiry, CARD.pin, "1000.00")
    host = start_host(data, "--metrics", "127.0.0.1:0")
    try:
        words = host.next_line().split()
        assert words[:2] == ["listening", "metrics"]
        address = words[2]
        url = f"http://{address}/metrics"
        with Link(host.endpoint, terminal) as link:
            assert link.sign_on()[39] == "00"
            for _ in range(2):
                assert link.exchange(terminal.purchase(CARD, 100))[0][39] == "00"
            pos_host(data, "keys", "expire", TID)
            assert link.exchange(terminal.purchase(CARD, 100))[0][39] == "14"
            seen = samples(url)
            assert seen["posemu_host_connections", ()] == 1
        assert seen["posemu_host_messages_total", (("mti", "0200"), ("rc", "00"))] == 2
        assert seen["posemu_host_messages_total", (("mti", "0200"), ("rc", "14"))] == 1
        assert seen["posemu_host_messages_total", (("mti", "0800"), ("rc", "00"))] == 1
        assert seen["posemu_host_key_errors_total", (("reason", "K2 WK"),)] == 1
        assert seen["posemu_host_signons_total", (("key_set", "003"), ("result", "issued"))] == 1
        assert seen["posemu_host_handling_seconds_count", ()] == 4
        assert seen["posemu_host_group_commit_size_count", ()] >= 1
        assert seen["posemu_host_key_expires_in_seconds", (("tid", TID),)] <= 0
        assert seen["posemu_host_terminals_keys_expired", ()] == 1
        assert not any(CARD.pan in value for (_, labels) in seen for _, value in labels)

        top = subprocess.run(
            [*host_command(), "top", "--metrics", address, "--once", "--json", "--interval", "0.1"],
            capture_output=True, text=True, timeout=60, check=True)
        view = json.loads(top.stdout)
        assert view["codes"] == {"00": 3, "14": 1}  # the purchases and the sign-on
        assert view["key_errors"] == {"K2 WK": 1}
        assert view["mtis"] == {"0200": 3, "0800": 1}
        assert view["soonest"][0]["tid"] == TID and view["soonest"][0]["expires_in_s"] <= 0
        assert view["connections"] == 0 and view["latency_ms"]["p99"] is not None
        text = subprocess.run([*host_command(), "top", "--metrics", address, "--once"],
                              capture_output=True, text=True, timeout=60, check=True).stdout
        assert "K        K2 WK: 1" in text and f"  {TID}  in -" in text
    finally:
        host.stop()


def test_top_refuses_what_is_not_a_host_in_one_line(tmp_path: Path) -> None:
    top = subprocess.run([*host_command(), "top", "--metrics", "127.0.0.1:1", "--once", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert top.returncode == 1
    assert "cannot read http://127.0.0.1:1/metrics" in json.loads(top.stdout)["error"]


def test_labels_stay_bounded_whatever_a_peer_sends(tmp_path: Path) -> None:
    metrics = PrometheusMetrics(["0200", "0800"], system_clock, tmp_path / "absent.db")
    for i in range(50):
        metrics.message(f"9{i:03d}", f"Z{i % 10}", f"K{i} WHAT {CARD.pan}", 0.001)
    metrics.message(None, None, None, 0.001)
    metrics.message("0200", "14", "K3 MAK verification failed", 0.001)
    get = metrics.registry.get_sample_value
    assert get("posemu_host_messages_total", {"mti": "other", "rc": "other"}) == 50
    assert get("posemu_host_messages_total", {"mti": "none", "rc": "none"}) == 1
    assert get("posemu_host_key_errors_total", {"reason": "other"}) == 50
    assert get("posemu_host_key_errors_total", {"reason": "K3 MAK"}) == 1
    names = {value for family in metrics.registry.collect() for s in family.samples
             for label, value in s.labels.items() if label != "le"}
    assert names <= {"other", "none", "0200", "14", "K3 MAK"}


# --- the key cache -------------------------------------------------------------------------------


def test_a_sign_on_fills_the_cache_with_the_keys_it_issued(tmp_path: Path) -> None:
    init_data(tmp_path / "host", system_rng)
    db = open_data(tmp_path / "host", system_rng)
    codec = get_codec("iso87")
    config = HandlerConfig(codec, db.vault, seeded_rng(3))
    dialect = get_dialect("iso87")
    core = HostCore(db, config, system_clock, MessageLog(io.StringIO(), dialect), Framing(dialect))
    _, tmk = admin.add_terminal(db, TID, MID, 2, system_clock(), system_rng)
    admin.add_card(db, CARD.pan, CARD.expiry, CARD.pin, "100.00")
    terminal = ClientTerminal(TID, MID, tmk)
    reads: list[str] = []
    load = db.load_sealed

    def counted(tid: str):  # type: ignore[no-untyped-def]
        reads.append(tid)
        return load(tid)

    db.load_sealed = counted  # type: ignore[method-assign]

    def answer(message: bytes) -> str:
        reply = core.handle_payload(terminal.payload(message))
        assert reply is not None
        decoded = codec.decode(terminal.unpayload(reply))
        if decoded.mti == "0810":
            terminal.install(decoded, "003")
        return decoded.text(39)

    try:
        for _ in range(3):  # a second and third sign-on retire the set before
            assert answer(terminal.sign_on_request()) == "00"
            before = len(reads)
            assert answer(terminal.purchase(CARD, 100)) == "00"
            assert len(reads) == before  # no database key read after the sign-on
            # ... and what the cache holds is what the database now has
            assert core.terminal(TID) == config.security.admit(load(TID))  # type: ignore[union-attr]
        assert reads == [TID]  # only the first sign-on read it
    finally:
        db.close()


def test_a_full_cache_drops_its_oldest_tenth_not_everything() -> None:
    cache = {i: i for i in range(CACHE_LIMIT)}
    _make_room(cache)
    assert len(cache) == CACHE_LIMIT - EVICTED
    assert min(cache) == EVICTED and max(cache) == CACHE_LIMIT - 1


@pytest.mark.parametrize("text", ["nohost", "host:port"])
def test_top_refuses_a_bad_address(text: str) -> None:
    assert pos_host_top_error(text).startswith(f"pos-host: {text!r} is not HOST:PORT")


def pos_host_top_error(text: str) -> str:
    top = subprocess.run([*host_command(), "top", "--metrics", text, "--once"],
                         capture_output=True, text=True, timeout=60)
    assert top.returncode == 1
    return top.stderr.strip()

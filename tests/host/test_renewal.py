"""Renewal before expiry (`serve --renew-before`), with real processes: a terminal kept busy
across its working keys' lifetime signs on by itself when the host asks and never meets
`K2 WK expired`; without the policy the same day ends in that K2 (the test can fail)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from host.clock import CLOCK_OFFSET_ENV as HOST_OFFSET
from protocol import codes
from tests.host.support_keys import purchase, set_up
from tests.host.test_handlers import CARD, NOW, mac_ok, make_world
from tests.support import RunningHost, add_card, init_host, start_host
from tests.terminal.conftest import EXPIRY, PAN, PIN

LIFETIME = 3600  # working keys live an hour, at the host and at the terminal
TID = "T0000016"


@contextmanager
def host_at(data: Path, offset: int, monkeypatch: pytest.MonkeyPatch, *serve: str
            ) -> Iterator[RunningHost]:
    """The host serving `offset` seconds into the day (its clock moved, as a scenario does)."""
    monkeypatch.setenv(HOST_OFFSET, str(offset))
    host = start_host(data, "--key-lifetime", f"{LIFETIME}s", *serve)
    try:
        yield host
    finally:
        host.stop()


def busy_day(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *serve: str) -> list[dict[str, Any]]:
    """Provision, sign on at 0, then one purchase every 10 minutes for two key lifetimes."""
    data = init_host(tmp_path / "host")
    add_card(data, PAN, expiry=EXPIRY, pin=PIN, balance="1000.00")
    folder = tmp_path / "terminal"
    with host_at(data, 0, monkeypatch, *serve) as host:
        set_up(data, host, TID, folder, "--wk-lifetime", str(LIFETIME))
    answers = []
    for minute in range(10, 2 * LIFETIME // 60 + 1, 10):  # bounded: 12 purchases
        offset = minute * 60
        with host_at(data, offset, monkeypatch, *serve) as host:
            answers.append(purchase(folder, host, offset))
    return answers


def test_a_busy_terminal_renews_first_and_never_meets_k2(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    answers = busy_day(tmp_path, monkeypatch, "--renew-before", "15m")
    assert [a["code"] for a in answers] == [0] * len(answers), answers
    assert all("reason" not in a for a in answers)
    renewed = [i for i, a in enumerate(answers) if "renewal" in a]
    # keys made at 0 are in the window from 45 min on; the renewal at 50 min lasts to 110 min,
    # whose window opens at 95 min: two renewals in two hours, each one sign-on that worked
    assert [(i + 1) * 10 for i in renewed] == [50, 100], answers
    assert all(a["renewal"][0]["command"] == "signon" and a["renewal"][0]["outcome"] == "ok"
               for a in answers if "renewal" in a)


def test_without_the_policy_the_same_day_meets_k2(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    answers = busy_day(tmp_path, monkeypatch)
    reasons = {a.get("reason") for a in answers}
    assert reasons & {"K2 WK expired", "K2 WK lifetime over"}, answers
    assert all("renewal" not in a for a in answers)


def test_the_indication_is_a_field_44_text_no_key_error_parser_takes() -> None:
    assert codes.KeyErrorReason.parse(codes.RENEWAL_DUE) is None
    assert len(codes.RENEWAL_DUE) <= codes.FIELD44_MAX


# --- the host's decision, pure (tests.host.test_handlers' world) ----------------------------


@pytest.mark.parametrize("dialect", ["iso87", "cup"])
def test_the_indication_rides_under_the_response_mac(dialect: str) -> None:
    world = make_world(dialect, renew_before=3600.0)  # keys made 60 s ago, living an hour
    response = world.handle(world.client.purchase(CARD, 100)).response
    assert response is not None
    reply = world.config.codec.decode(response)
    assert reply[39] == "00" and reply.text(44) == codes.RENEWAL_DUE
    assert mac_ok(world, response)
    forged = response.replace(codes.RENEWAL_DUE.encode(), b"P3 WK sign oN")
    assert forged != response and not mac_ok(world, forged), "field 44 is MACed"


def test_no_indication_outside_the_window_nor_in_a_key_error() -> None:
    assert 44 not in make_world().reply(make_world().client.purchase(CARD, 100)).fields
    outside = make_world(renew_before=60.0)
    assert 44 not in outside.reply(outside.client.purchase(CARD, 100)).fields
    stale = make_world(renew_before=3600.0)
    stale.now = NOW + 7200
    assert stale.reply(stale.client.purchase(CARD, 100)).text(44) == "K2 WK expired"

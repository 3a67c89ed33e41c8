"""The same terminal in the `cup` dialect (TPDU, header, BCD, CUP ECB MAC), against a real
pos-host started with --dialect cup, through each key set."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.terminal.conftest import PIN, Host, Rig, start


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    yield from start(tmp_path_factory, "cup")


@pytest.mark.parametrize("key_set", ["001", "003", "004"])
def test_signon_and_purchase_in_each_key_set(ready: Rig, key_set: str) -> None:
    signon = ready("signon", "--key-set", key_set, "--json")
    assert signon.code == 0, signon.out + signon.err
    expected = {"001": {"PIK", "MAK"}, "003": {"PIK", "MAK"}, "004": {"PIK", "MAK", "TDK"}}
    assert set(signon.json["keys"]) == expected[key_set]
    sale = ready.purchase("--pin", PIN, "--json")
    assert sale.code == 0 and sale.json["outcome"] == "approved", sale.out


def test_a_host_key_error_and_recovery_in_cup(ready: Rig) -> None:
    ready.host.admin("keys", "rotate", ready.tid)
    run = ready.purchase("--auto-signon", "--json")
    assert run.json["steps"][0]["reason"] == "K2 MAK missed rotation"
    assert run.code == 0 and run.json["outcome"] == "approved"


def test_trace_shows_tpdu_frames_masked(ready: Rig) -> None:
    traced = ready.purchase("--pin", PIN, "--trace")
    assert traced.code == 0
    assert ">> 0200" in traced.err and "621234******1234" in traced.err
    assert "6212345678901234" not in traced.err

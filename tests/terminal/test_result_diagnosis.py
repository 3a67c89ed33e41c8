"""A key error's --json result carries what its text says: the diagnosis's cause and the fixes
in the support desk's order, as data (the text of a TMK error says a new key ceremony is needed;
so must the JSON)."""

from __future__ import annotations

from protocol.codes import KeyErrorReason
from terminal import diagnose, render
from terminal.session import Result


def test_a_tmk_error_needs_a_ceremony_and_says_so_in_the_json() -> None:
    result = Result("purchase", "key_error", "14", KeyErrorReason("K1", "TMK", "keystore corrupt"),
                    "terminal")
    data = render.result_data(result)["diagnosis"]
    assert data["needs_ceremony"] is True and data["sign_on_fixes"] is False
    assert data["fixes"][0] == diagnose.CEREMONY and data["cause"] == "absent"
    assert any("hardware fault" in reason for reason in data["reasons"])
    assert any("new key ceremony" in line for line in render.result_lines(result))


def test_a_working_key_error_is_fixed_by_a_sign_on_first() -> None:
    result = Result("purchase", "key_error", "14", KeyErrorReason("K2", "MAK", "missed rotation"),
                    "host")
    data = render.result_data(result)["diagnosis"]
    assert data["fixes"] == [diagnose.SIGN_ON] and data["cause"] == "stale"
    assert data["sign_on_fixes"] is True and data["needs_ceremony"] is False


def test_results_without_a_key_error_carry_no_diagnosis() -> None:
    assert "diagnosis" not in render.result_data(Result("purchase", "approved", "00"))

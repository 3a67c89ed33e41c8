"""How the demo tells a step: from the command's JSON, the 14 with its reason and finder, the
diagnosis with its fixes numbered in the support desk's order, a transaction's parts."""

from __future__ import annotations

from terminal.scenario.runner import StepResult, shown
from terminal.scenario.story import step_lines, told

KEY_ERROR = {"rc": "14", "reason": "K2 MAK missed rotation", "found_by": "host",
             "outcome": "key_error",
             "diagnosis": {"cause": "stale", "cause_meaning": "out of date", "fixes": ["sign on"]}}
DIAGNOSIS = {"error": "14 K2 MAK missed rotation", "cause": "stale", "cause_meaning": "out of date",
             "reasons": ["key not updated in time"], "fixes": ["sign on again", "then the reversal"]}


def test_a_key_error_names_its_reason_and_finder_before_anything_else() -> None:
    assert told(KEY_ERROR) == ["KEY ERROR 14 K2 MAK missed rotation (found by the host)",
                               "cause: stale: out of date"]


def test_a_diagnosis_numbers_the_fixes_in_their_order() -> None:
    assert told(DIAGNOSIS) == [
        "DIAGNOSIS of 14 K2 MAK missed rotation: stale, out of date",
        "real-world reasons:", "  1. key not updated in time",
        "fix, in this order:", "  1. sign on again", "  2. then the reversal"]


def test_a_purchase_tells_the_reversal_it_sent_first() -> None:
    out = {"command": "purchase", "outcome": "approved", "rc": "00", "amount": "12.34",
           "pan": "621234******1234",
           "steps": [{"command": "reversal", "outcome": "approved", "rc": "00"},
                     {"command": "purchase", "outcome": "approved", "rc": "00"}]}
    assert told(out) == ["reversal: approved (00)",
                         "APPROVED 12.34 card 621234******1234, code 00"]


def test_a_failed_step_says_what_differed_and_a_command_is_masked() -> None:
    command = shown("pos-terminal", ("purchase", "--pan", "6212345678901234", "--pin", "1234"))
    assert command == "pos-terminal purchase --pan 621234******1234 --pin ****"
    assert shown("pos-host", ("card", "show", "6212345678901234")).endswith("621234******1234")
    step = StepResult(9, "a purchase", "terminal", False, ["rc: expected '14', got '00'"],
                      {"outcome": "approved", "rc": "00"}, 0, command=command)
    assert step_lines(step) == ("a purchase", command, [
        "APPROVED, code 00", "NOT AS EXPECTED: rc: expected '14', got '00'"])

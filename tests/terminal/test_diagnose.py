"""The diagnosis tables: every cause in ERROR14.md is reachable, and fixes come in the order a
support desk tries them."""

from __future__ import annotations

import pytest

from terminal.diagnose import (
    CEREMONY,
    CHECK_LINE,
    RULES,
    SIGN_ON,
    Diagnosis,
    NotAKeyError,
    diagnose,
    match_rule,
)
from terminal.keystore import KeyStatus
from terminal.store import Record

KEYS = [KeyStatus("TMK", True, 1, 100.0, "ABCDEF"), KeyStatus("MAK", False)]


def journal(reason: str | None, source: str = "host", rc: str = "14") -> list[Record]:
    return [
        Record(at=100.0, command="signon", outcome="ok", rc="00"),
        Record(at=200.0, command="purchase", outcome="key_error", rc=rc, reason=reason,
               source=source),
    ]


# (reason, who found it) -> words from ERROR14.md's "cause as the field sees it"
CASES = [
    ("K1 TMK keystore corrupt", "terminal", "key stored badly"),
    ("K1 TMK keystore missing", "terminal", "hardware fault"),
    ("K1 TMK not loaded", "terminal", "never given its TMK"),
    ("K1 TMK revoked", "host", "revoked"),
    ("K1 WK revoked/signed off", "host", "key disclosed"),
    ("K1 WK not signed on", "terminal", "never signed on"),
    ("K2 WK expired", "host", "key expired"),
    ("K2 WK lifetime over", "terminal", "key expired"),
    ("K2 MAK missed rotation", "host", "not updated in time"),
    ("K2 MAK missed rotation", "host", "power cut"),
    ("K2 TMK expired", "host", "TMK outlived"),
    ("K3 MAK KCV mismatch", "terminal", "communication fault"),
    ("K3 PIK bad length/parity", "terminal", "key generated wrongly"),
    ("K3 WK download corrupt", "terminal", "software too old"),
    ("K3 MAK response MAC bad", "terminal", "altered on the line"),
    ("K3 MAK mismatch", "host", "tampered"),
    ("K3 PIK bad PIN block", "host", "PIN block"),
    ("K3 WK key set unsupported", "host", "software too old"),
]


@pytest.mark.parametrize(("reason", "source", "words"), CASES)
def test_each_field_cause_is_explained(reason: str, source: str, words: str) -> None:
    found = diagnose(journal(reason, source), KEYS, 300.0)
    assert isinstance(found, Diagnosis)
    assert any(words in line for line in found.reasons), found.reasons
    assert found.error == f"14 {reason}"


def test_every_rule_is_reachable() -> None:
    used = set()
    for reason, source, _ in CASES:
        code, key, text = reason.split(" ", 2)
        rule = match_rule(code, key, source, text)
        assert rule is not None
        used.add(RULES.index(rule))
    assert used == set(range(len(RULES)))


def test_working_key_errors_are_fixed_by_signing_on_first() -> None:
    for reason in ("K1 WK not signed on", "K2 MAK missed rotation", "K3 MAK mismatch"):
        found = diagnose(journal(reason), KEYS, 300.0)
        assert isinstance(found, Diagnosis) and found.fixes[0] == SIGN_ON


def test_tmk_errors_need_a_ceremony_not_a_signon() -> None:
    for reason in ("K1 TMK revoked", "K2 TMK expired"):
        found = diagnose(journal(reason), KEYS, 300.0)
        assert isinstance(found, Diagnosis)
        assert found.fixes[0] == CEREMONY and SIGN_ON not in found.fixes


def test_a_bad_download_checks_the_line_before_a_new_ceremony() -> None:
    found = diagnose(journal("K3 MAK KCV mismatch", "terminal"), KEYS, 300.0)
    assert isinstance(found, Diagnosis)
    assert found.fixes.index(CHECK_LINE) < found.fixes.index(CEREMONY)


def test_cause_and_key_are_named() -> None:
    found = diagnose(journal("K2 MAK missed rotation"), KEYS, 300.0)
    assert isinstance(found, Diagnosis)
    assert (found.key, found.cause) == ("MAK", "stale")
    assert "MAC key" in found.key_meaning
    assert any("last sign-on" in fact for fact in found.evidence)
    assert any("TMK: generation 1" in fact for fact in found.evidence)


def test_a_14_without_a_reason_and_no_14_at_all() -> None:
    assert isinstance(diagnose(journal(None), KEYS, 300.0), NotAKeyError)
    assert diagnose(journal(None, rc="00"), KEYS, 300.0) is None
    assert diagnose([], KEYS, 300.0) is None

"""The files beside the keystore: which terminal a command means, counters that only move
forward, and a journal that stays short and survives a damaged line."""

from __future__ import annotations

from pathlib import Path

import pytest

from terminal.store import (
    JOURNAL_KEEP,
    Config,
    Counters,
    Layout,
    Record,
    StateError,
    append_record,
    find_terminal,
    load_counters,
    next_batch,
    read_journal,
    save_config,
    save_counters,
)


def make(root: Path, tid: str) -> Layout:
    layout = Layout(root / tid)
    layout.folder.mkdir(parents=True)
    save_config(layout, Config(tid, "MERCHANT0000001"))
    return layout


def test_find_terminal_by_data_tid_or_the_only_one(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSEMU_TERMINAL_DATA", str(tmp_path))
    with pytest.raises(StateError, match="no terminal under"):
        find_terminal(None, None)
    only = make(tmp_path, "T1")
    assert find_terminal(None, None) == only
    make(tmp_path, "T2")
    with pytest.raises(StateError, match="--tid"):
        find_terminal(None, None)
    assert find_terminal(None, "T2").folder == tmp_path / "T2"
    assert find_terminal(tmp_path / "T1", None) == only
    with pytest.raises(StateError, match="not initialised"):
        find_terminal(None, "T9")


def reserve_stan(layout: Layout) -> int:
    """What an exchange does once its request is built: the next STAN, made durable."""
    counters = load_counters(layout).next_stan()
    save_counters(layout, counters)
    return counters.stan


def test_stan_moves_forward_wraps_and_is_durable(tmp_path: Path) -> None:
    layout = make(tmp_path, "T1")
    assert [reserve_stan(layout) for _ in range(3)] == [1, 2, 3]
    assert load_counters(layout) == Counters(3, 1)
    assert Counters(999999).next_stan().stan == 1


def test_the_batch_after_the_last_is_the_first() -> None:
    """After batch 999999 a settlement opens batch 1 (it used to stay at 999999, so the
    settled batch's sales were counted again at the next settlement)."""
    assert [next_batch(n) for n in (1, 41, 999998, 999999)] == [2, 42, 999999, 1]
    assert Counters(5, next_batch(999999)).batch == 1


def test_unreadable_counters_are_an_error_not_a_restart(tmp_path: Path) -> None:
    layout = make(tmp_path, "T1")
    layout.counters.write_text("{broken")
    with pytest.raises(StateError):
        reserve_stan(layout)


def test_journal_keeps_the_last_records_and_skips_damage(tmp_path: Path) -> None:
    layout = make(tmp_path, "T1")
    for n in range(JOURNAL_KEEP + 5):
        append_record(layout, Record(at=float(n), command="echo", outcome="ok"))
    with layout.journal.open("a") as out:
        out.write("{not json\n")
    journal = read_journal(layout)
    records = journal.records
    assert len(records) == JOURNAL_KEEP and journal.damaged == (JOURNAL_KEEP + 1,)
    assert records[-1].at == JOURNAL_KEEP + 4


@pytest.mark.parametrize(("tid", "mid"), [("", "M1"), ("TOOLONG12", "M1"), ("T1", "M" * 16),
                                          ("T 1", "M1")])
def test_config_refuses_what_fields_41_and_42_cannot_carry(tid: str, mid: str) -> None:
    with pytest.raises(ValueError):
        Config(tid, mid)

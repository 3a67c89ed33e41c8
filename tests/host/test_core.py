"""HostCore without sockets: group commit, caches that follow the operator's changes, and a
failed commit answered 96. A real SQLite file; the operator is a second connection to it."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from host import admin
from host.core import HostCore
from host.datadir import init_data, open_data
from host.handlers import HandlerConfig
from host.keydb import KeyDb, KeyDbError, txn_ref
from host.logs import MessageLog
from protocol.clock import seeded_rng, system_clock, system_rng
from protocol.codec import get_codec
from protocol.dialects import get_dialect
from protocol.framing import Framing, Tpdu
from protocol.message import Message
from tests.host.client import Card, ClientTerminal

MID = "M00000000000001"
CARD = Card("6212345678901234", "2812", "1234")


class Site:
    def __init__(self, data: Path, dialect: str = "iso87") -> None:
        self.data = data
        self.db = open_data(data, system_rng)
        self.codec = get_codec(dialect)
        config = HandlerConfig(self.codec, self.db.vault, seeded_rng(3))
        self.log = io.StringIO()
        self.core = HostCore(self.db, config, system_clock,
                             MessageLog(self.log, get_dialect(dialect)), Framing(get_dialect(dialect)))
        _, tmk = admin.add_terminal(self.db, "T0000001", MID, 2, system_clock(), system_rng)
        admin.add_card(self.db, CARD.pan, CARD.expiry, CARD.pin, "100.00")
        self.terminal = ClientTerminal("T0000001", MID, tmk, dialect)
        reply = self.core.handle_payload(self.terminal.payload(self.terminal.sign_on_request()))
        assert reply is not None
        self.terminal.install(self.codec.decode(self.terminal.unpayload(reply)), "003")

    def batch(self, *messages: bytes) -> list[bytes | None]:
        """Submit several messages in one turn, commit once, return the answers in order."""
        answers: list[bytes | None] = []
        for message in messages:
            self.core.submit(self.terminal.payload(message), answers.append, "test")
        self.core.commit()
        return answers

    def rc(self, answer: bytes | None) -> str:
        assert answer is not None
        return self.codec.decode(self.terminal.unpayload(answer)).text(39)

    def operator(self) -> KeyDb:
        """Another connection, as the CLI would open."""
        return open_data(self.data, system_rng)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    init_data(tmp_path / "host", system_rng)
    built = Site(tmp_path / "host")
    yield built
    built.db.close()


def test_a_retransmission_in_the_same_batch_gets_the_original(site: Site) -> None:
    request = site.terminal.purchase(CARD, 100)
    other = site.terminal.purchase(CARD, 100)
    first, second, again = site.batch(request, other, request)
    assert again == first and site.rc(first) == site.rc(second) == "00"


def test_debits_in_one_batch_see_each_other(site: Site) -> None:
    answers = site.batch(*(site.terminal.purchase(CARD, 4000) for _ in range(3)))
    assert [site.rc(a) for a in answers] == ["00", "00", "51"]
    assert site.db.cards()[0].balance == 2000
    assert site.core.commits >= 2  # the sign-on and this batch


def test_the_operators_changes_are_seen_at_the_next_batch(site: Site) -> None:
    assert site.rc(site.batch(site.terminal.purchase(CARD, 1))[0]) == "00"
    operator = site.operator()
    try:
        admin.rotate_keys(operator, "T0000001", system_clock(), 3600.0, system_rng)
    finally:
        operator.close()
    answer = site.batch(site.terminal.purchase(CARD, 1))[0]
    assert answer is not None
    reply = site.codec.decode(answer)
    assert (reply[39], reply[44]) == ("14", "K2 MAK missed rotation")


def test_a_card_added_by_the_operator_is_found_next_batch(site: Site) -> None:
    newcomer = Card("6299999999999999", "2812", "1111")
    assert site.rc(site.batch(site.terminal.purchase(newcomer, 1))[0]) == "56"
    operator = site.operator()
    try:
        admin.add_card(operator, newcomer.pan, newcomer.expiry, newcomer.pin, "5.00")
    finally:
        operator.close()
    assert site.rc(site.batch(site.terminal.purchase(newcomer, 1))[0]) == "00"


class FailingDb:
    """Delegates to a KeyDb, but its writes of purchase records fail, as a full disk would."""

    def __init__(self, db: KeyDb) -> None:
        self._db = db

    def apply(self, changes: list) -> None:
        if changes:
            raise sqlite3.OperationalError("database or disk is full")

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)


def test_a_failed_commit_answers_96_and_keeps_nothing(site: Site) -> None:
    site.core.db = FailingDb(site.db)  # type: ignore[assignment]
    answers = site.batch(site.terminal.purchase(CARD, 100), site.terminal.purchase(CARD, 200))
    assert [site.rc(a) for a in answers] == ["96", "96"]
    assert site.db.cards()[0].balance == 10000
    assert '"event":"batch rolled back"' in site.log.getvalue()
    site.core.db = site.db
    assert site.rc(site.batch(site.terminal.purchase(CARD, 100))[0]) == "00"


def test_a_cup_reply_swaps_the_tpdu(tmp_path: Path) -> None:
    init_data(tmp_path / "host", system_rng)
    site = Site(tmp_path / "host", "cup")
    try:
        answer = site.batch(site.terminal.purchase(CARD, 100))[0]
        assert answer is not None
        unframed = Framing(get_dialect("cup")).unframe(answer)
        assert unframed.tpdu == Tpdu(destination=2, source=1)
        assert site.codec.decode(unframed.message)[39] == "00"
    finally:
        site.db.close()


def test_a_response_mti_gets_no_answer_and_bad_tpdu_closes(site: Site) -> None:
    response = site.codec.encode(Message("0210", {11: "000001", 39: "00"}))
    assert site.core.handle_payload(response) is None
    assert site.core.submit(b"\x00", lambda _: None, "x") == "close"


def test_made_up_terminals_and_batches_do_not_grow_the_caches(site: Site) -> None:
    """Unauthenticated traffic (any TID, any batch) costs reads, never memory that stays."""
    from host import core

    echo = {11: "000001", 41: "", 42: MID, 60: "00000001301"}
    for i in range(300):
        fields = {**echo, 41: f"X{i:07d}"}
        site.core.submit(site.terminal.payload(site.codec.encode(Message("0820", fields))),
                         lambda _: None, "test")
    site.core.commit()
    assert "X0000001" not in site.core._terminals and len(site.core._terminals) <= 1
    terminal = site.core.terminal("T0000001")
    assert terminal is not None
    for batch in range(core.CACHE_LIMIT + 5):
        site.core.prior(terminal, f"{batch:06d}", "000001")
    assert len(site.core._last_stans) <= core.CACHE_LIMIT


def test_removing_a_terminal_forgets_its_answers_and_no_one_else_s(site: Site) -> None:
    other_tmk = admin.add_terminal(site.db, "T0000002", MID, 2, system_clock(), system_rng)[1]
    other = ClientTerminal("T0000002", MID, other_tmk)
    reply = site.core.handle_payload(other.payload(other.sign_on_request()))
    assert reply is not None
    other.install(site.codec.decode(other.unpayload(reply)), "003")
    mine = site.terminal.purchase(CARD, 100, stan="000007")
    theirs = other.purchase(CARD, 100, stan="000007")  # same batch and STAN, other terminal
    first = site.core.handle_payload(site.terminal.payload(mine))
    assert site.rc(first) == "00"
    assert site.rc(site.core.handle_payload(other.payload(theirs))) == "00"

    count = "SELECT COUNT(*) FROM txns"
    operator = site.operator()
    assert operator.conn.execute(count).fetchone()[0] == 2
    admin.remove_terminal(operator, "T0000002")
    assert operator.conn.execute(count).fetchone()[0] == 1
    tmk = admin.add_terminal(operator, "T0000002", MID, 2, system_clock(), system_rng)[1]
    operator.close()
    again = ClientTerminal("T0000002", MID, tmk)
    reply = site.core.handle_payload(again.payload(again.sign_on_request()))
    assert reply is not None
    again.install(site.codec.decode(again.unpayload(reply)), "003")
    # The new T0000002 starts clean: its STAN 000007 is no duplicate of the removed one's...
    assert site.rc(site.core.handle_payload(again.payload(
        again.purchase(CARD, 100, stan="000007")))) == "00"
    # ... and T0000001's answer is still remembered, by a host started afresh.
    fresh = HostCore(site.db, site.core.config, system_clock,
                     MessageLog(io.StringIO(), get_dialect("iso87")), Framing(get_dialect("iso87")))
    assert fresh.handle_payload(site.terminal.payload(mine)) == first


def test_a_database_of_another_version_is_refused_not_guessed_at(tmp_path: Path) -> None:
    init_data(tmp_path / "host", system_rng)
    db_file = tmp_path / "host" / "host.db"
    with sqlite3.connect(db_file) as conn:
        conn.execute("PRAGMA user_version=1")
    conn.close()
    with pytest.raises(KeyDbError, match="version 1 host database"):
        open_data(tmp_path / "host", system_rng)

    foreign = tmp_path / "foreign"
    init_data(foreign, system_rng)
    (foreign / "host.db").unlink()
    with sqlite3.connect(foreign / "host.db") as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    conn.close()
    with pytest.raises(KeyDbError, match="no schema version: made by an earlier posemu or not a"):
        open_data(foreign, system_rng)


REFS = st.tuples(st.integers(1, 2**23 - 1), st.integers(0, 999_999), st.integers(0, 999_999))


@given(REFS, REFS)
def test_txn_refs_are_one_to_one(a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
    ref_a = txn_ref(a[0], f"{a[1]:06d}", f"{a[2]:06d}")
    ref_b = txn_ref(b[0], f"{b[1]:06d}", f"{b[2]:06d}")
    assert (ref_a == ref_b) == (a == b)
    assert 0 < ref_a < 2**63  # an SQLite INTEGER


def test_the_database_hands_keys_over_sealed_and_the_module_opens_them(site: Site) -> None:
    """The serving path reads blocks, never clear keys: only the security module unseals."""
    sealed = site.db.load_sealed("T0000001")
    assert sealed is not None and sealed.tmk is not None and sealed.working
    assert isinstance(sealed.tmk.key, str)
    assert all(isinstance(key, str) for w in sealed.working for key in (w.pik, w.mak))
    module = site.core.config.security
    assert module is not None
    opened = site.db.load_terminal("T0000001")
    assert opened is not None
    assert module.admit(sealed) == module.admit(opened) == site.core.terminal("T0000001")

"""PROTOCOL.md §7 against HostCore over a real SQLite file: each transaction approved and
refused, every refusal MACed or not as §7 says, and every balance change made exactly once."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from host.datadir import open_data
from host.keydb import SCHEMA_VERSION, txn_ref
from protocol import requests
from protocol.clock import system_rng
from protocol.crypto import Key
from protocol.fields import Half, SettlementTotals, UploadRecord
from protocol.macing import sign
from protocol.message import Message
from tests.host.support_day import OPENING, OTHER_PAN, PAN, Answer, Day, card

Build = Callable[[Day], Message]


@pytest.fixture
def day(tmp_path: Path) -> Iterator[Day]:
    built = Day(tmp_path / "host")
    yield built
    built.close()


def buy(day: Day, amount: int = 1_000, pan: str = PAN) -> tuple[Message, Answer]:
    request = requests.purchase(day.station, day.stan(), card(pan), amount)
    answer = day.send(request)
    assert answer.rc == "00" and answer.mac_ok
    return request, answer


def ref(request: Message, answer: Answer) -> requests.Reference:
    return requests.reference(request, answer.message)


def settle(day: Day, totals: SettlementTotals) -> Answer:
    return day.send(requests.settlement(day.station, day.stan(), "01 ", totals))


def host_totals(day: Day) -> SettlementTotals:
    debit, debits, credit, credits = day.db.batch_totals(1, day.batch)
    return SettlementTotals(Half(debit, debits, credit, credits))


# --- the common checks: the same 14s, 30s and MACs as a purchase ----------------------------------

BUILDERS: dict[str, Build] = {
    "inquiry": lambda d: requests.balance_inquiry(d.station, d.stan(), card()),
    "void": lambda d: requests.void(d.station, d.stan(), card(), 100,
                                    requests.Reference("000001", "000099", "x" * 12)),
    "refund": lambda d: requests.refund(d.station, d.stan(), card(), 100,
                                        requests.Reference("000001", "000099", date="0115")),
    "reversal": lambda d: requests.reversal(
        requests.purchase(d.station, "000099", card(), 100), requests.REVERSAL_NO_ANSWER),
    "settlement": lambda d: requests.settlement(d.station, d.stan(), "01 ", SettlementTotals()),
    "upload": lambda d: requests.batch_upload(
        d.station, d.stan(), [UploadRecord("22", "000001", PAN, 100)], last=True),
}


@pytest.mark.parametrize("kind", BUILDERS)
def test_a_mac_under_no_key_is_14_k3_without_a_mac(day: Day, kind: str) -> None:
    wrong = Key("TDES", "MAK", bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"))
    answer = day.send_bytes(sign(day.codec, BUILDERS[kind](day), wrong))
    assert answer.rc == "14" and answer.message.text(44) == "K3 MAK mismatch"
    assert 64 not in answer.message.fields and day.balance() == OPENING


@pytest.mark.parametrize("kind", BUILDERS)
def test_no_mac_is_30_and_signed_off_is_k1(day: Day, kind: str) -> None:
    answer = day.send_bytes(day.codec.encode(BUILDERS[kind](day)))
    assert answer.rc == "30" and 64 not in answer.message.fields
    day.send_bytes(day.client.network_request("002"))  # sign-off: working keys revoked
    answer = day.send(BUILDERS[kind](day))
    assert answer.rc == "14" and answer.message.text(44).startswith("K1 WK")


@pytest.mark.parametrize("kind", BUILDERS)
def test_a_missing_mandatory_field_is_30(day: Day, kind: str) -> None:
    message = BUILDERS[kind](day)
    del message.fields[41 if kind == "upload" else 11]
    assert day.send(message).rc == "30"


def test_responses_carry_the_common_fields(day: Day) -> None:
    request, answer = buy(day)
    void = day.send(requests.void(day.station, day.stan(), card(), 1_000, ref(request, answer)))
    for reply, mti in ((void, "0210"), (settle(day, host_totals(day)), "0510")):
        assert reply.message.mti == mti and reply.mac_ok
        assert {11, 12, 13, 39, 41, 42, 60} <= reply.message.fields.keys()
    assert 37 in void.message.fields


# --- balance inquiry ------------------------------------------------------------------------------


def test_an_inquiry_answers_the_balance_in_field_54(day: Day) -> None:
    buy(day, 2_345)
    answer = day.send(requests.balance_inquiry(day.station, day.stan(), card()))
    assert answer.rc == "00" and answer.mac_ok and 4 not in answer.message.fields
    assert answer.message.text(54) == f"1002156C{OPENING - 2_345:012d}"
    assert requests.balance(answer.message).amount == OPENING - 2_345
    assert day.balance() == OPENING - 2_345  # an inquiry moves nothing


def test_an_inquiry_for_an_unknown_card_is_56_with_a_mac(day: Day) -> None:
    unknown = requests.CardEntry("6212340000000001", "2812")
    answer = day.send(requests.balance_inquiry(day.station, day.stan(), unknown))
    assert answer.rc == "56" and answer.mac_ok and 54 not in answer.message.fields


# --- void -----------------------------------------------------------------------------------------


def test_a_void_returns_the_amount_once_whatever_the_retransmissions(day: Day) -> None:
    request, answer = buy(day, 1_500)
    void = day.signed(requests.void(day.station, day.stan(), card(), 1_500, ref(request, answer)))
    first = day.send_bytes(void)
    assert first.rc == "00" and first.mac_ok and len(first.message.text(38)) == 6
    assert day.send_bytes(void).raw == first.raw  # the same bytes: the original answer
    assert day.balance() == OPENING
    again = day.send(requests.void(day.station, day.stan(), card(), 1_500, ref(request, answer)))
    assert again.rc == "12" and again.mac_ok and day.balance() == OPENING


@pytest.mark.parametrize(("change", "rc"), [
    ("stan", "25"), ("card", "25"), ("rrn", "25"), ("auth", "25"), ("amount", "64"),
])
def test_a_void_that_does_not_match_is_refused_with_a_mac(day: Day, change: str,
                                                          rc: str) -> None:
    request, answer = buy(day, 1_500)
    named = ref(request, answer)
    pan, amount = PAN, 1_500
    if change == "stan":
        named = requests.Reference(named.batch, "000777", named.rrn, named.auth)
    elif change == "card":
        pan = OTHER_PAN
    elif change == "rrn":
        named = requests.Reference(named.batch, named.stan, "9" * 12, named.auth)
    elif change == "auth":
        named = requests.Reference(named.batch, named.stan, named.rrn, "999999")
    else:
        amount = 1_499
    answer = day.send(requests.void(day.station, day.stan(), card(pan), amount, named))
    assert answer.rc == rc and answer.mac_ok
    assert day.balance() == OPENING - 1_500 and day.balance(OTHER_PAN) == OPENING


def test_a_void_of_a_declined_purchase_is_25(day: Day) -> None:
    request = requests.purchase(day.station, day.stan(), card(), OPENING + 1)
    answer = day.send(request)
    assert answer.rc == "51"
    void = day.send(requests.void(day.station, day.stan(), card(), OPENING + 1,
                                  ref(request, answer)))
    assert void.rc == "25" and day.balance() == OPENING


def test_a_malformed_field_61_is_30_and_changes_nothing(day: Day) -> None:
    request, answer = buy(day)
    message = requests.void(day.station, day.stan(), card(), 1_000, ref(request, answer))
    message.fields[61] = "00000100"
    answer = day.send(message)
    assert answer.rc == "30" and 64 not in answer.message.fields
    assert day.balance() == OPENING - 1_000


# --- refund ---------------------------------------------------------------------------------------


def test_refunds_return_up_to_the_original_amount(day: Day) -> None:
    request, answer = buy(day, 1_000)
    named = ref(request, answer)
    for amount, rc in ((400, "00"), (600, "00"), (1, "64")):
        reply = day.send(requests.refund(day.station, day.stan(), card(), amount, named))
        assert reply.rc == rc and reply.mac_ok and reply.message.mti == "0230"
    assert day.balance() == OPENING


def test_a_refund_sent_again_is_answered_once(day: Day) -> None:
    request, answer = buy(day, 1_000)
    refund = day.signed(requests.refund(day.station, day.stan(), card(), 300,
                                        ref(request, answer)))
    first = day.send_bytes(refund)
    assert day.send_bytes(refund).raw == first.raw and first.rc == "00"
    assert day.balance() == OPENING - 700


def test_a_refund_of_a_voided_purchase_is_12_and_a_refunded_one_cannot_be_voided(day: Day) -> None:
    request, answer = buy(day, 1_000)
    named = ref(request, answer)
    assert day.send(requests.void(day.station, day.stan(), card(), 1_000, named)).rc == "00"
    assert day.send(requests.refund(day.station, day.stan(), card(), 10, named)).rc == "12"
    request, answer = buy(day, 1_000)
    named = ref(request, answer)
    assert day.send(requests.refund(day.station, day.stan(), card(), 10, named)).rc == "00"
    assert day.send(requests.void(day.station, day.stan(), card(), 1_000, named)).rc == "12"
    assert day.balance() == OPENING - 990


def test_a_refund_with_another_date_or_card_is_25(day: Day) -> None:
    request, answer = buy(day, 1_000)
    named = ref(request, answer)
    other_day = requests.Reference(named.batch, named.stan, date="0101")
    assert day.send(requests.refund(day.station, day.stan(), card(), 10, other_day)).rc == "25"
    assert day.send(requests.refund(day.station, day.stan(), card(OTHER_PAN), 10, named)).rc == "25"
    assert day.balance() == OPENING - 1_000


def test_the_same_stan_in_a_0200_and_a_0220_are_not_duplicates(day: Day) -> None:
    request, answer = buy(day, 1_000)
    refund = requests.refund(day.station, request.text(11), card(), 100, ref(request, answer))
    assert day.send(refund).rc == "00" and day.balance() == OPENING - 900


# --- reversal -------------------------------------------------------------------------------------


def test_a_reversal_undoes_a_purchase_exactly_once(day: Day) -> None:
    request, answer = buy(day, 2_000)
    reversal = day.signed(requests.reversal(request, requests.REVERSAL_NO_ANSWER,
                                            answer.message.text(38)))
    first = day.send_bytes(reversal)
    assert (first.message.mti, first.rc, first.mac_ok) == ("0410", "00", True)
    assert 37 in first.message.fields and day.balance() == OPENING
    assert day.send_bytes(reversal).rc == "00"  # the same bytes
    rebuilt = requests.reversal(request, requests.REVERSAL_OTHER)
    assert day.send(rebuilt).rc == "00"  # rebuilt, another reason
    assert day.balance() == OPENING
    void = day.send(requests.void(day.station, day.stan(), card(), 2_000, ref(request, answer)))
    assert void.rc == "12" and day.balance() == OPENING  # reversed: nothing left to void


def test_a_reversal_of_nothing_answers_00_and_reverses_nothing(day: Day) -> None:
    never_sent = requests.purchase(day.station, "000500", card(), 700)
    assert day.send(requests.reversal(never_sent, requests.REVERSAL_NO_ANSWER)).rc == "00"
    request, _ = buy(day, 700)
    other_amount = requests.purchase(day.station, request.text(11), card(), 701)
    assert day.send(requests.reversal(other_amount, requests.REVERSAL_OTHER)).rc == "00"
    assert day.balance() == OPENING - 700


def test_a_reversal_of_a_void_takes_the_credit_back_and_the_sale_can_be_voided_again(
    day: Day,
) -> None:
    request, answer = buy(day, 1_200)
    void = requests.void(day.station, day.stan(), card(), 1_200, ref(request, answer))
    assert day.send(void).rc == "00" and day.balance() == OPENING
    assert day.send(requests.reversal(void, requests.REVERSAL_BAD_ANSWER)).rc == "00"
    assert day.balance() == OPENING - 1_200
    again = requests.void(day.station, day.stan(), card(), 1_200, ref(request, answer))
    assert day.send(again).rc == "00" and day.balance() == OPENING


def test_a_reversal_of_a_voided_purchase_undoes_nothing(day: Day) -> None:
    request, answer = buy(day, 1_200)
    day.send(requests.void(day.station, day.stan(), card(), 1_200, ref(request, answer)))
    assert day.send(requests.reversal(request, requests.REVERSAL_OTHER)).rc == "00"
    assert day.balance() == OPENING


# --- settlement and batch upload ------------------------------------------------------------------


def test_a_balanced_settlement_closes_the_batch(day: Day) -> None:
    request, answer = buy(day, 1_000)
    other, other_answer = buy(day, 500)
    named = ref(request, answer)
    assert day.send(requests.void(day.station, day.stan(), card(), 1_000, named)).rc == "00"
    totals = requests.batch_totals([requests.JournalEntry(requests.PURCHASE, 1_000),
                                    requests.JournalEntry(requests.PURCHASE, 500),
                                    requests.JournalEntry(requests.VOID, 1_000)])
    assert totals == host_totals(day)
    result = settle(day, totals)
    assert result.rc == "00" and result.mac_ok and result.message.mti == "0510"
    assert requests.is_balanced(requests.settlement_result(result.message))
    # closed: no void and no reversal of its transactions; a refund still goes
    second = requests.void(day.station, day.stan(), card(), 500, ref(other, other_answer))
    assert day.send(second).rc == "12"
    assert day.send(requests.reversal(other, requests.REVERSAL_OTHER)).rc == "00"
    assert day.balance() == OPENING - 500
    day.batch = "000002"
    refund = day.send(requests.refund(day.station, day.stan(), card(), 500, ref(other, other_answer)))
    assert refund.rc == "00" and day.balance() == OPENING
    day.batch = "000001"
    upload = requests.batch_upload(day.station, day.stan(), [UploadRecord("22", "000001", PAN, 1)], True)
    answer = day.send(upload)
    assert answer.rc == "12" and answer.mac_ok


def test_an_unbalanced_settlement_takes_an_upload_until_its_last_message(day: Day) -> None:
    buy(day, 1_000)
    reported = SettlementTotals(Half(999, 1))
    result = requests.settlement_result(settle(day, reported).message)
    assert (result.domestic.code, result.foreign.code) == ("2", "1")
    assert not requests.is_balanced(result)
    records = [UploadRecord("22", f"{i:06d}", PAN, 100 + i) for i in range(1, 11)]
    messages = requests.batch_uploads(day.station, (day.stan() for _ in range(9)), records)
    assert [m.text(60)[-3:] for m in messages] == ["201", "202"]
    for message in messages:
        answer = day.send(message)
        assert (answer.message.mti, answer.rc, answer.mac_ok) == ("0330", "00", True)
    kept = day.db.uploads("T0000001", "000001")
    assert len(kept) == 10 and {r.pan_masked for r in kept} == {"621234******1234"}
    assert day.send(messages[0]).rc == "12"  # the upload ended: the batch is closed
    assert day.balance() == OPENING - 1_000  # no money moved


def test_an_upload_before_any_settlement_is_12(day: Day) -> None:
    upload = requests.batch_upload(day.station, day.stan(), [UploadRecord("22", "000001", PAN, 1)], True)
    assert day.send(upload).rc == "12"


@pytest.mark.parametrize("totals", ["1" * 61, "x" * 62, "0" * 30 + "9" + "0" * 31])
def test_malformed_settlement_totals_are_30_without_a_mac(day: Day, totals: str) -> None:
    message = requests.settlement(day.station, day.stan(), "01 ", SettlementTotals())
    message.fields[48] = totals
    answer = day.send(message)
    assert answer.rc == "30" and 64 not in answer.message.fields
    assert day.db.batch_state(1, "000001") == (False, False)


def test_a_malformed_upload_is_30(day: Day) -> None:
    settle(day, SettlementTotals(Half(1, 1)))
    message = requests.batch_upload(day.station, day.stan(), [UploadRecord("22", "000001", PAN, 1)], False)
    message.fields[48] = "09" + "0" * 40
    assert day.send(message).rc == "30"


# --- storage ----------------------------------------------------------------------------------------


def test_a_version_3_database_is_upgraded_in_place_keeping_its_answers(tmp_path: Path) -> None:
    day = Day(tmp_path / "host")
    request, _ = buy(day, 1_000)
    day.close()
    db = tmp_path / "host" / "host.db"
    with sqlite3.connect(db) as conn:  # the version 3 shape: three columns, one index
        conn.executescript(
            "DROP TABLE batches; DROP TABLE uploads; ALTER TABLE txns RENAME TO old;"
            "CREATE TABLE txns (ref INTEGER NOT NULL, request_ref BLOB NOT NULL,"
            " response BLOB NOT NULL);"
            "INSERT INTO txns SELECT ref, request_ref, response FROM old; DROP TABLE old;"
            "CREATE UNIQUE INDEX txns_ref ON txns (ref); PRAGMA user_version=3;")
    conn.close()
    reopened = open_data(tmp_path / "host", system_rng)
    try:
        version = reopened.conn.execute("PRAGMA user_version").fetchone()[0]
        assert version == SCHEMA_VERSION == 5
        row = reopened.conn.execute("SELECT kind, mti FROM txns WHERE ref=?",
                                    (txn_ref(1, "000001", request.text(11)),)).fetchone()
        assert row == (None, "0200")  # remembered for duplicates; not voidable (kind unknown)
        assert reopened.prior(1, "000001", request.text(11)) is not None
    finally:
        reopened.close()


def test_a_traced_batch_upload_never_logs_its_pans(day: Day) -> None:
    day.core.log.trace = True
    settle(day, SettlementTotals(Half(1, 1)))
    upload = requests.batch_upload(day.station, day.stan(), [UploadRecord("22", "000001", PAN, 1)],
                                   True)
    assert day.send(upload).rc == "00"
    day.core.log.flush()
    assert '"mti":"0320"' in day.log.getvalue() and PAN not in day.log.getvalue()

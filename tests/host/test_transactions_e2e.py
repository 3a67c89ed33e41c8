"""PROTOCOL.md §7 against a real pos-host process over TCP on 127.0.0.1: a terminal's day
approved and refused, with requests from protocol/requests.py, and the operator's view of it
through `pos-host batch show` and `pos-host card show`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from protocol import requests
from protocol.fields import Half, SettlementTotals, UploadRecord
from protocol.macing import sign
from protocol.message import Message
from tests.host.client import ClientTerminal, Link, tmk_from_ceremony
from tests.support import add_card, init_host, pos_host, provision_terminal, start_host

MID = "M00000000000001"
PAN, OTHER, EXPIRY = "6212345678901234", "6212345678905678", "2812"


@dataclass
class Till:
    """One terminal signed on to the running host, sending MACed §7 requests."""

    link: Link
    data: Path
    batch: str = "000001"

    @property
    def terminal(self) -> ClientTerminal:
        return self.link.terminal

    @property
    def station(self) -> requests.Station:
        return requests.Station(self.terminal.tid, MID, self.batch)

    def stan(self) -> str:
        return self.terminal.stan()

    def send(self, message: Message) -> tuple[Message, bool]:
        answer, raw = self.link.exchange(sign(self.terminal.codec, message,
                                              self.terminal.keys["MAK"]))
        return answer, self.terminal.response_mac_ok(raw)

    def balance(self, pan: str = PAN) -> str:
        return pos_host(self.data, "card", "show", pan)["balance"]


@pytest.fixture(scope="module", params=["iso87", "cup"])
def till(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Till]:
    dialect = request.param
    data = init_host(tmp_path_factory.mktemp(f"day-{dialect}") / "host")
    ceremony = provision_terminal(data, "T0000001", MID)
    for pan in (PAN, OTHER):
        add_card(data, pan, EXPIRY, "1234", "500.00")
    host = start_host(data, "--dialect", dialect)
    try:
        terminal = ClientTerminal("T0000001", MID, tmk_from_ceremony(ceremony), dialect)
        with Link(host.endpoint, terminal) as link:
            assert link.sign_on("003")[39] == "00"
            yield Till(link, data)
    finally:
        assert host.stop() == 0
    assert PAN not in host.log_text()  # masked in every log line


def card(pan: str = PAN) -> requests.CardEntry:
    return requests.CardEntry(pan, EXPIRY)


def test_a_terminals_day_approved_end_to_end(till: Till) -> None:
    till.batch = "000001"
    sale = requests.purchase(till.station, till.stan(), card(), 10_000)
    sold, ok = till.send(sale)
    assert sold[39] == "00" and ok
    inquiry, ok = till.send(requests.balance_inquiry(till.station, till.stan(), card()))
    assert inquiry[39] == "00" and ok and requests.balance(inquiry).amount == 40_000
    other = requests.purchase(till.station, till.stan(), card(), 5_000)
    other_answer, _ = till.send(other)
    void, ok = till.send(requests.void(till.station, till.stan(), card(), 5_000,
                                       requests.reference(other, other_answer)))
    assert void[39] == "00" and ok
    refund, ok = till.send(requests.refund(till.station, till.stan(), card(), 2_500,
                                           requests.reference(sale, sold)))
    assert (refund.mti, refund[39], ok) == ("0230", "00", True)
    lost = requests.purchase(till.station, till.stan(), card(), 700)
    till.send(lost)  # its answer "never arrived": the terminal reverses it
    for _ in range(2):  # sent again, it undoes nothing more
        reversal, ok = till.send(requests.reversal(lost, requests.REVERSAL_NO_ANSWER))
        assert (reversal.mti, reversal[39], ok) == ("0410", "00", True)
    assert till.balance() == "425.00"  # 500 - 100 - 50 + 50 + 25

    totals = requests.batch_totals([
        requests.JournalEntry(requests.PURCHASE, 10_000),
        requests.JournalEntry(requests.PURCHASE, 5_000),
        requests.JournalEntry(requests.VOID, 5_000),
        requests.JournalEntry(requests.REFUND, 2_500)])
    settled, ok = till.send(requests.settlement(till.station, till.stan(), "01 ", totals))
    assert settled.mti == "0510" and ok and requests.is_balanced(requests.settlement_result(settled))

    shown = pos_host(till.data, "batch", "show", "T0000001", "--batch", "1")
    assert shown["state"] == "closed"
    assert shown["totals"] == {"debit_count": 2, "debit_amount": "150.00",
                               "credit_count": 2, "credit_amount": "75.00"}
    states = {(t["kind"], t["amount"]): t["state"] for t in shown["transactions"]}
    assert states == {("purchase", "100.00"): "refunded", ("purchase", "50.00"): "voided",
                      ("void", "50.00"): "approved", ("refund", "25.00"): "approved",
                      ("inquiry", "0.00"): "approved", ("purchase", "7.00"): "reversed"}
    assert {t["pan"] for t in shown["transactions"]} == {"621234******1234"}


def test_refusals_end_to_end_change_no_balance(till: Till) -> None:
    till.batch = "000002"
    sale = requests.purchase(till.station, till.stan(), card(), 1_000)
    sold, _ = till.send(sale)
    named = requests.reference(sale, sold)
    before = till.balance()
    nowhere = requests.Reference(till.batch, "999999", named.rrn, named.auth)
    refusals = [
        (requests.void(till.station, till.stan(), card(), 1_000, nowhere), "25"),
        (requests.void(till.station, till.stan(), card(OTHER), 1_000, named), "25"),
        (requests.void(till.station, till.stan(), card(), 999, named), "64"),
        (requests.refund(till.station, till.stan(), card(), 1_001, named), "64"),
    ]
    for message, rc in refusals:
        answer, ok = till.send(message)
        assert (answer[39], ok) == (rc, True)
    assert till.send(requests.void(till.station, till.stan(), card(), 1_000, named))[0][39] == "00"
    again, ok = till.send(requests.void(till.station, till.stan(), card(), 1_000, named))
    assert (again[39], ok) == ("12", True)
    malformed = requests.settlement(till.station, till.stan(), "01 ", SettlementTotals())
    malformed.fields[48] = "12345"
    answer, ok = till.send(malformed)
    assert answer[39] == "30" and 64 not in answer.fields
    unbalanced = SettlementTotals(Half(1, 1))
    result, _ = till.send(requests.settlement(till.station, till.stan(), "01 ", unbalanced))
    assert not requests.is_balanced(requests.settlement_result(result))
    record = [UploadRecord("22", sale.text(11), PAN, 1_000)]
    upload = requests.batch_upload(till.station, till.stan(), record, last=True)
    assert till.send(upload)[0][39] == "00"
    closed = requests.batch_upload(till.station, till.stan(), record, last=True)
    assert till.send(closed)[0][39] == "12"
    assert pos_host(till.data, "batch", "show", "T0000001")["uploaded"] == 1
    assert till.balance() == f"{float(before) + 10:.2f}"  # only the approved void moved money


def test_a_wrong_mac_on_a_reversal_is_14_k3_end_to_end(till: Till) -> None:
    reversal = requests.reversal(requests.purchase(till.station, "000123", card(), 100),
                                 requests.REVERSAL_OTHER)
    wrong = dict(till.terminal.keys)
    mak = wrong["MAK"]
    wrong["MAK"] = type(mak)(mak.algorithm, "MAK", bytes(b ^ 0x02 for b in mak.material))
    answer, _ = till.link.exchange(sign(till.terminal.codec, reversal, wrong["MAK"]))
    assert (answer.mti, answer[39], answer.text(44)) == ("0410", "14", "K3 MAK mismatch")
    assert 64 not in answer.fields


def test_card_and_batch_show_refuse_bad_arguments_in_one_line(till: Till) -> None:
    for args in (["card", "show", "12"], ["card", "show", "6212340000000099"],
                 ["batch", "show", "T0000001", "--batch", "x"], ["batch", "show", "T9"]):
        refused = pos_host(till.data, *args, check=False)
        assert refused["returncode"] != 0 and "\n" not in refused["error"].strip()
        assert "6212340000000099" not in refused["error"]

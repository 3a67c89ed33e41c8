"""Any interleaving of purchases, voids, refunds, reversals, lost messages and retransmissions
leaves the card where the terminal's own view of the answers says it is, and settling each batch
from that view balances with the host (PROTOCOL.md §7).

The terminal is modelled as §7 describes it: it counts what an answer with a valid MAC
approved; a purchase or void left without an answer is pending and reversed (until answered)
before the next financial transaction; a refund without an answer goes again as the very same
bytes. The host is HostCore over a real SQLite file.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from protocol import requests
from protocol.message import Message
from tests.host.support_day import OPENING, Day, card

FATES = st.sampled_from(["answered", "answered twice", "request lost", "answer lost"])
"""What the network does to one request: deliver it (its answer maybe after a retransmission
of the same bytes), lose it on the way, or lose its answer."""
AMOUNTS = st.integers(min_value=1, max_value=30_000)


@dataclass
class Entry:
    """A transaction the terminal counts: approved by an answer it saw."""

    batch: str
    kind: str
    amount: int
    reference: requests.Reference | None = None  # a purchase's, for voids and refunds
    voided: bool = False
    refunded: int = 0


class TerminalDay(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.TemporaryDirectory()
        self.day = Day(Path(self.folder.name) / "host")
        self.journal: list[Entry] = []
        self.pending: tuple[Message, Entry | None] | None = None  # the request; what a void voids
        self.last_reversal: bytes | None = None

    def teardown(self) -> None:
        self.day.close()
        self.folder.cleanup()

    # --- the network -------------------------------------------------------------------------

    def deliver(self, message: Message, fate: str) -> Message | None:
        """The answer the terminal sees (None: none came)."""
        data = self.day.signed(message)
        if fate == "request lost":
            return None
        answer = self.day.send_bytes(data)
        if fate == "answered twice":
            again = self.day.send_bytes(data)
            assert again.raw == answer.raw  # a retransmission gets the original answer
        if fate == "answer lost":
            return None
        assert answer.mac_ok or answer.rc in ("12", "30")
        return answer.message

    def send_pending_reversal(self) -> None:
        """§7: before any other financial transaction; sent again until answered."""
        if self.pending is None:
            return
        request, _ = self.pending
        reversal = self.day.signed(requests.reversal(request, requests.REVERSAL_NO_ANSWER))
        answer = self.day.send_bytes(reversal)
        assert (answer.message.mti, answer.rc, answer.mac_ok) == ("0410", "00", True)
        self.pending = None
        self.last_reversal = reversal

    # --- what the terminal does ------------------------------------------------------------

    @rule(amount=AMOUNTS, fate=FATES)
    def purchase(self, amount: int, fate: str) -> None:
        self.send_pending_reversal()
        request = requests.purchase(self.day.station, self.day.stan(), card(), amount)
        answer = self.deliver(request, fate)
        if answer is None:
            self.pending = (request, None)
        elif answer.text(39) == "00":
            self.journal.append(Entry(self.day.batch, requests.PURCHASE, amount,
                                      requests.reference(request, answer)))

    @precondition(lambda self: any(self.voidable()))
    @rule(data=st.data(), fate=FATES)
    def void(self, data: st.DataObject, fate: str) -> None:
        self.send_pending_reversal()
        choices = list(self.voidable())
        if not choices:  # the reversal just sent may have been of the only candidate's void
            return
        sale = data.draw(st.sampled_from(choices))
        request = requests.void(self.day.station, self.day.stan(), card(), sale.amount,
                                sale.reference)  # type: ignore[arg-type]
        answer = self.deliver(request, fate)
        if answer is None:
            self.pending = (request, sale)
        else:
            assert answer.text(39) == "00"
            sale.voided = True
            self.journal.append(Entry(self.day.batch, requests.VOID, sale.amount))

    @precondition(lambda self: any(self.refundable()))
    @rule(data=st.data(), fate=FATES)
    def refund(self, data: st.DataObject, fate: str) -> None:
        self.send_pending_reversal()
        sale = data.draw(st.sampled_from(list(self.refundable())))
        amount = data.draw(st.integers(1, sale.amount - sale.refunded + 1))
        request = requests.refund(self.day.station, self.day.stan(), card(), amount,
                                  sale.reference)  # type: ignore[arg-type]
        answer = self.deliver(request, fate)
        if answer is None:  # never reversed: the very same bytes again until answered
            answer = self.deliver(request, "answered")
        assert answer is not None
        rc = answer.text(39)
        assert rc == ("64" if amount > sale.amount - sale.refunded else "00")
        if rc == "00":
            sale.refunded += amount
            self.journal.append(Entry(self.day.batch, requests.REFUND, amount))

    @precondition(lambda self: any(self.closed_sales()))
    @rule(data=st.data())
    def void_in_a_closed_batch(self, data: st.DataObject) -> None:
        self.send_pending_reversal()
        sale = data.draw(st.sampled_from(list(self.closed_sales())))
        request = requests.void(self.day.station, self.day.stan(), card(), sale.amount,
                                sale.reference)  # type: ignore[arg-type]
        assert self.deliver(request, "answered").text(39) == "12"  # type: ignore[union-attr]

    @precondition(lambda self: self.last_reversal is not None)
    @rule()
    def reversal_again(self) -> None:
        assert self.last_reversal is not None
        assert self.day.send_bytes(self.last_reversal).rc == "00"

    @rule()
    def settle(self) -> None:
        self.send_pending_reversal()
        batch = self.day.batch
        totals = requests.batch_totals(
            requests.JournalEntry(e.kind, e.amount) for e in self.journal if e.batch == batch)
        answer = self.day.send(requests.settlement(self.day.station, self.day.stan(), "01 ",
                                                   totals))
        assert answer.rc == "00" and answer.mac_ok
        assert requests.is_balanced(requests.settlement_result(answer.message)), totals
        self.day.batch = f"{int(batch) + 1:06d}"

    # --- what must hold after every step ---------------------------------------------------

    @invariant()
    def balance_is_what_the_terminal_counted(self) -> None:
        """Initial − approved purchases + approved voids and refunds; a pending transaction
        counts as what the host did with it, which its reversal will undo."""
        moved = sum(-e.amount if e.kind == requests.PURCHASE else e.amount for e in self.journal)
        pending = self.host_applied_pending()
        assert self.day.balance() == OPENING + moved + pending

    def host_applied_pending(self) -> int:
        """What the host did with the pending request (0: never reached it, or declined)."""
        if self.pending is None:
            return 0
        request, sale = self.pending
        original = self.day.db.original(1, self.day.batch, request.text(11))
        if original is None or original.record.rc != "00" or original.record.reversed:
            return 0
        amount = int(request.text(4))
        return amount if sale is not None else -amount

    def voidable(self) -> list[Entry]:
        return [e for e in self.journal if e.kind == requests.PURCHASE and e.batch == self.day.batch
                and not e.voided and not e.refunded
                and not (self.pending and self.pending[1] is e)]

    def refundable(self) -> list[Entry]:
        return [e for e in self.journal if e.kind == requests.PURCHASE and not e.voided
                and not (self.pending and self.pending[1] is e)]

    def closed_sales(self) -> list[Entry]:
        return [e for e in self.journal if e.kind == requests.PURCHASE and e.batch != self.day.batch
                and not e.voided and not e.refunded]


TerminalDay.TestCase.settings = settings(
    max_examples=30, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_any_interleaving_balances = TerminalDay.TestCase

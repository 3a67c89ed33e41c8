"""The rest of a terminal's day without any I/O (PROTOCOL.md §7): the requests as the CUP table
shapes them, the judgement of their answers, the sealed pending reversal and the ledger's
settlement totals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from protocol import fields, macing
from protocol.codec import get_codec
from protocol.crypto.keys import Key
from protocol.message import Message
from terminal.keystore import KeySet, Keystore
from terminal.pending import PendingError, PendingReversal, PendingStore, open_blob, seal_blob
from terminal.render import balance_of
from terminal.session import Original, Purchase, Request
from terminal.store import Entry, Layout, Ledger, StateError, read_ledger, save_ledger
from tests.terminal.test_session import PAN, session, signed_on

CARD = Purchase(0, PAN, "2812")
ORIGINAL = Original(batch=3, stan=17, amount=1234, rrn="000000000042", auth="654321", date="1125")
DIALECTS = ("iso87", "cup")


def ready(dialect: str = "iso87") -> tuple[KeySet, Key]:
    keys, clear = signed_on("003", dialect)
    return keys, clear["MAK"]


def answer(request: Request, mak: Key | None, rc: str = "00", dialect: str = "iso87",
           **extra: str) -> bytes:
    """The host's answer: MTI + 10, the echoed fields, a MAC when `mak` is given."""
    codec = get_codec(dialect)
    mti = f"{int(request.message.mti) + 10:04d}"
    keep = (3, 4, 11, 41, 42, 48, 49, 60)
    msg = Message(mti, {n: request.message.fields[n] for n in keep if n in request.message})
    msg.fields.update({12: "101500", 13: "1125", 37: "000000000077", 39: rc})
    msg.fields.update({int(k[1:]): v for k, v in extra.items()})
    if mak is None:
        return codec.encode(msg)
    return macing.sign(codec, msg, mak)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(("kind", "mti", "processing", "type_code"), [
    ("purchase", "0200", "000000", "22"),
    ("inquiry", "0200", "310000", "01"),
    ("void", "0200", "200000", "23"),
    ("refund", "0220", "200000", "25"),
])
def test_each_transaction_carries_the_cup_table_elements(dialect: str, kind: str, mti: str,
                                                         processing: str, type_code: str) -> None:
    keys, mak = ready(dialect)
    s = session(keys, dialect)
    request = {
        "purchase": lambda: s.purchase(5, 3, Purchase(1234, PAN, "2812")),
        "inquiry": lambda: s.inquiry(5, 3, CARD),
        "void": lambda: s.void(5, 3, CARD, ORIGINAL),
        "refund": lambda: s.refund(5, 3, CARD, ORIGINAL, 500),
    }[kind]()
    decoded = get_codec(dialect).decode(request.encoded)
    assert decoded.mti == mti and decoded.text(3) == processing and decoded.text(25) == "00"
    assert fields.Field60.parse(decoded.text(60)) == fields.Field60(type_code, "000003", "000")
    assert decoded.text(2) == PAN and decoded.text(14) == "2812" and 35 not in decoded
    assert macing.verify(get_codec(dialect), request.encoded, mak)
    amounts = {"purchase": "000000001234", "inquiry": None, "void": "000000001234",
               "refund": "000000000500"}
    assert decoded.get(4) == amounts[kind]


def test_void_names_its_original_by_batch_and_stan_with_its_rrn_and_auth_code() -> None:
    keys, _ = ready()
    decoded = session(keys).void(5, 4, CARD, ORIGINAL).message
    assert decoded.text(61) == "000003000017"
    assert decoded.text(37) == "000000000042" and decoded.text(38) == "654321"


def test_refund_names_its_original_with_the_date_of_its_answer() -> None:
    keys, _ = ready()
    decoded = session(keys).refund(5, 4, CARD, ORIGINAL, 100).message
    assert decoded.text(61) == "0000030000171125"


def test_a_pin_is_optional_on_an_inquiry_void_and_refund() -> None:
    keys, _ = ready()
    with_pin = Purchase(0, PAN, "2812", "1234")
    s = session(keys)
    for request in (s.inquiry(1, 1, with_pin), s.void(2, 1, with_pin, ORIGINAL),
                    s.refund(3, 1, with_pin, ORIGINAL, 10)):
        assert 52 in request.message and request.message.text(22) == "011"
    assert 52 not in s.inquiry(4, 1, CARD).message


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_reversal_repeats_the_original_under_its_stan_with_the_reason(dialect: str) -> None:
    keys, mak = ready(dialect)
    s = session(keys, dialect)
    sale = s.purchase(9, 3, Purchase(1234, PAN, "2812", "1234"))
    pending = s.pending_for(sale, 1.0)
    assert pending.reason == "98" and pending.stan == 9 and pending.batch == 3
    assert set(pending.fields) == {2, 3, 4, 11, 14, 22, 25, 41, 42, 49, 60}  # no PIN block
    request = s.reversal(pending.with_reason("96"))
    decoded = get_codec(dialect).decode(request.encoded)
    assert decoded.mti == "0400" and decoded.text(11) == "000009" and request.stan == 9
    assert decoded.text(22) == "010" and decoded.text(39) == "96"
    for number in (2, 3, 4, 14, 25, 41, 42, 49, 60):
        assert decoded.text(number).strip() == sale.message.text(number).strip(), number
    assert 35 not in decoded and 52 not in decoded
    assert macing.verify(get_codec(dialect), request.encoded, mak)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_settlement_carries_the_totals_and_upload_the_records(dialect: str) -> None:
    keys, mak = ready(dialect)
    s = session(keys, dialect)
    totals = fields.Half(5000, 3, 1200, 2)
    request = s.settlement(30, 3, totals)
    decoded = get_codec(dialect).decode(request.encoded)
    assert decoded.mti == "0500" and decoded.text(63) == "01 " and decoded.text(49) == "156"
    assert fields.Field60.parse(decoded.text(60)) == fields.Field60("00", "000003", "201")
    assert decoded.text(48) == "000000005000003000000001200002" + "0" + "0" * 31
    records = [fields.UploadRecord("22", "000017", PAN, 1234)]
    for last, nmic in ((False, "201"), (True, "202")):
        sent = get_codec(dialect).decode(s.upload(31, 3, records, last).encoded)
        assert sent.mti == "0320" and fields.Field60.parse(sent.text(60)).nmic == nmic
        assert fields.parse_upload(sent.text(48)) == records
    assert macing.verify(get_codec(dialect), request.encoded, mak)


@pytest.mark.parametrize("rc", ["25", "64", "12", "94", "51"])
def test_a_maced_refusal_is_a_decline_the_terminal_believes(rc: str) -> None:
    keys, mak = ready()
    s = session(keys)
    request = s.void(5, 3, CARD, ORIGINAL)
    result = s.receive(request, answer(request, mak, rc))
    assert result.outcome == "declined" and result.rc == rc


@pytest.mark.parametrize("rc", ["25", "64"])
def test_a_25_or_64_without_its_mac_is_k3(rc: str) -> None:
    keys, _ = ready()
    s = session(keys)
    request = s.refund(5, 3, CARD, ORIGINAL, 10)
    result = s.receive(request, answer(request, None, rc))
    assert result.is_key_error and result.reason is not None
    assert result.reason.field44() == "K3 MAK no response MAC"


def test_an_unmaced_12_is_reported_as_it_is() -> None:
    keys, _ = ready()
    s = session(keys)
    request = s.reversal(s.pending_for(s.purchase(5, 3, Purchase(100, PAN, "2812")), 0.0))
    result = s.receive(request, answer(request, None, "12"))
    assert result.outcome == "refused" and result.rc == "12"


def test_a_reversal_answer_with_a_bad_mac_is_k3() -> None:
    keys, mak = ready()
    s = session(keys)
    request = s.reversal(s.pending_for(s.purchase(5, 3, Purchase(100, PAN, "2812")), 0.0))
    data = bytearray(answer(request, mak))
    data[-1] ^= 0x01
    result = s.receive(request, bytes(data))
    assert result.is_key_error and result.source == "terminal"


@pytest.mark.parametrize(("field54", "balance"), [("1002156C000000012345", 12345),
                                                  ("1002156D000000000100", -100)])
def test_an_inquiry_answer_gives_the_balance(field54: str, balance: int) -> None:
    keys, mak = ready()
    s = session(keys)
    request = s.inquiry(5, 3, CARD)
    result = s.receive(request, answer(request, mak, f54=field54))
    assert result.outcome == "approved" and balance_of(result) == balance


# --- the sealed pending reversal ------------------------------------------------------------


def store_in(folder: Path) -> PendingStore:
    layout = Layout(folder)
    folder.mkdir(exist_ok=True)
    Keystore(layout.keystore, layout.storage_key).create()
    return PendingStore(layout.pending, layout.storage_key)


def a_pending() -> PendingReversal:
    return PendingReversal("purchase", 9, 3, 1234, {2: PAN, 14: "2812", 4: "000000001234"},
                           at=5.0)


def test_the_pending_reversal_round_trips_sealed(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    assert store.load() is None
    store.save(a_pending())
    data = store.path.read_bytes()
    sealed = bytes.fromhex(json.loads(data)["sealed"])
    assert PAN.encode() not in data and PAN.encode() not in sealed and b'"2812"' not in sealed
    assert os.stat(store.path).st_mode & 0o777 == 0o600
    assert store.load() == a_pending()
    assert PAN not in repr(store.load()) and "621234******1234" in repr(store.load())
    store.clear()
    assert store.load() is None and not store.path.exists()
    store.clear()  # nothing pending: nothing to do


def test_a_damaged_or_foreign_pending_record_is_refused_never_dropped(tmp_path: Path) -> None:
    store = store_in(tmp_path / "a")
    store.save(a_pending())
    data = store.path.read_bytes()
    doc = json.loads(data)
    sealed = bytearray(bytes.fromhex(doc["sealed"]))
    sealed[20] ^= 0x01
    store.path.write_text(json.dumps({**doc, "sealed": sealed.hex()}))
    with pytest.raises(PendingError, match="fails its seal"):
        store.load()
    other = store_in(tmp_path / "b")
    other.path.write_bytes(data)  # sealed under another terminal's storage key
    with pytest.raises(PendingError, match="fails its seal"):
        other.load()
    other.path.write_bytes(b"not json")
    with pytest.raises(PendingError, match="malformed"):
        other.load()
    assert other.path.exists()


def test_a_sealed_card_is_bound_to_its_purpose() -> None:
    key = bytes(range(32))
    blob = seal_blob(key, PAN.encode(), b"ledger card")
    assert open_blob(key, blob, b"ledger card") == PAN.encode()
    with pytest.raises(PendingError):
        open_blob(key, blob, b"pending reversal")


# --- the ledger -----------------------------------------------------------------------------


def entry(stan: int, kind: str, amount: int, state: str = "approved", batch: int = 3) -> Entry:
    return Entry(batch, stan, kind, amount, state, 0.0, card="621234******1234")


def test_settlement_totals_follow_the_contract() -> None:
    ledger = Ledger()
    for item in (entry(1, "purchase", 1000, "voided"), entry(2, "purchase", 500),
                 entry(3, "void", 1000), entry(4, "refund", 200),
                 entry(5, "purchase", 700, "reversed"), entry(6, "purchase", 800, "pending"),
                 entry(7, "void", 300, "reversed"), entry(8, "purchase", 900, batch=4)):
        ledger = ledger.put(item)
    # debits: approved purchases of the batch, voided ones included; credits: its approved
    # voids and refunds; reversed and pending ones in neither.
    assert ledger.totals(3) == fields.Half(1500, 2, 1200, 2)
    assert ledger.totals(4) == fields.Half(900, 1, 0, 0)
    assert ledger.find(stan=2).amount == 500 and ledger.find(stan=3) is None  # a void is no sale
    assert ledger.put(entry(2, "purchase", 500, "voided")).totals(3) == fields.Half(1500, 2, 1200, 2)


def test_the_ledger_round_trips_and_refuses_damage(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    ledger = Ledger((entry(1, "purchase", 1000), Entry(3, 2, "void", 1000, "approved", 1.0,
                                                        original=(3, 1))))
    save_ledger(layout, ledger)
    assert read_ledger(layout) == ledger
    layout.ledger.write_bytes(layout.ledger.read_bytes().replace(b'"approved"', b'"maybe"', 1))
    with pytest.raises(StateError, match="damaged"):
        read_ledger(layout)

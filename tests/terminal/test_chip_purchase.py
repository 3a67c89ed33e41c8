"""`pos-terminal purchase --chip` against a real `pos-host serve --dialect cup`: entry mode 051,
field 55 with a CUP/PBOC online tag set, field 23; approved; traces show the tags by name and
never the cardholder's data."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from protocol import tlv
from protocol.codec import get_codec
from protocol.crypto.keys import Key
from protocol.describe import describe
from protocol.dialects import CUP, ISO87
from protocol.emv import TAG_NAMES
from protocol.framing import Framing
from protocol.spec import Dialect
from terminal.keystore import KeySet, StoredKey
from terminal.session import Purchase, Session
from terminal.store import Config
from tests.terminal.conftest import EXPIRY, PAN, PIN, Host, Rig, start

EXPECTED_TAGS = {"9F26", "9F27", "9F10", "9F37", "9F36", "95", "9A", "9C", "9F02", "5F2A", "82",
                 "9F1A", "9F03", "9F33", "9F34", "9F35", "84", "9F09", "9F41", "5F34"}


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    yield from start(tmp_path_factory, "cup")


def test_a_chip_purchase_is_approved(ready: Rig) -> None:
    sale = ready.purchase("--chip", "--sequence", "002", "--pin", PIN, "--json")
    assert sale.code == 0 and sale.json["outcome"] == "approved", sale.out + sale.err


def test_the_trace_shows_entry_mode_23_and_tags_by_name_masked(ready: Rig) -> None:
    traced = ready.purchase("--chip", "--pin", PIN, "--trace")
    assert traced.code == 0, traced.err
    err = traced.err
    assert "      22 051" in err and "      23 001" in err
    assert "55 <ICC data masked, " in err  # the field as logs show it, then tag by tag
    assert "9F26  Application cryptogram (ARQC)" in err
    assert "5F34  PAN sequence number" in err and "9F02  Amount, authorised" in err
    assert PAN not in err


def session(dialect: Dialect) -> Session:
    """Keys in memory, the clock and randomness injected: the request's bytes are the test's."""
    mak = StoredKey(Key("DES", "MAK", bytes.fromhex("0123456789ABCDEF")), 1, 1_800_000_000.0)
    tmk = StoredKey(Key("TDES", "TMK", bytes.fromhex("0123456789ABCDEF" "FEDCBA9876543210")), 1,
                    1_800_000_000.0)
    keys = KeySet(keys={"TMK": tmk, "MAK": mak}, key_set="003")
    return Session(Config(tid="TERM0001", mid="MERCHANT0000001", dialect=dialect.name), dialect,
                   keys, clock=lambda: 1_800_000_060.0, rng=lambda n: bytes(range(1, n + 1)))


def test_the_request_carries_the_tag_set_describe_names() -> None:
    request = session(CUP).purchase(42, 1, Purchase(1234, PAN, EXPIRY, chip=True, sequence="003"))
    fields = request.message.fields
    assert (fields[22], fields[23]) == ("052", "003")
    tags = dict(tlv.parse(fields[55], 55))
    assert set(tags) == EXPECTED_TAGS
    assert tags["9F02"] == bytes.fromhex("000000001234") and tags["5F34"] == b"\x03"
    assert tags["9F37"] == bytes([1, 2, 3, 4]) and tags["9F36"] == (42).to_bytes(2, "big")
    assert tags["9A"] == bytes.fromhex("270115")  # 2027-01-15 UTC, from the injected clock
    plain = Framing(CUP).frame(get_codec("cup").encode(request.message))
    text = describe(plain, CUP).text()
    for tag in ("9F26", "9F37", "5F34"):
        assert TAG_NAMES[tag][:20] in text
    assert PAN not in text


def test_a_dialect_without_a_tlv_field_55_refuses_a_chip_purchase_clearly() -> None:
    with pytest.raises(ValueError, match="field 55 as BER-TLV"):
        session(ISO87).purchase(1, 1, Purchase(100, PAN, EXPIRY, chip=True))

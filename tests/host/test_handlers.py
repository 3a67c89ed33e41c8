"""The pure handlers, branch by branch, in the order PROTOCOL.md §4 gives: no sockets, no files.

Each test builds a state, a request from the protocol package, and checks the answer and the
changes asked for. The order tests put two failures in one request and check the earlier wins.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest

from host import hsm
from host.handlers import HandlerConfig, Outcome, approval_code, handle
from host.lmk import Vault
from host.state import (
    ACTIVE,
    RETIRED,
    REVOKED,
    Answered,
    Card,
    HeldKey,
    IssueWorkingKeys,
    Prior,
    RevokeWorkingKeys,
    Terminal,
    TerminalKeys,
)
from protocol.clock import seeded_rng
from protocol.codec import get_codec
from protocol.codes import KeyErrorReason
from protocol.crypto import Key
from protocol.fields import KEY_SETS
from protocol.macing import sign
from protocol.message import Message
from tests.host.client import Card as ClientCard
from tests.host.client import ClientTerminal

NOW = 1_800_000_000.0  # 2027-01-15
TID, MID = "T0000001", "M00000000000001"
PAN, PIN, EXPIRY = "6212345678901234", "1234", "2812"
VAULT = Vault.from_lmk(bytes(range(32)))
CARD = ClientCard(PAN, EXPIRY, PIN)


@dataclass
class MemoryView:
    """A HostView over dicts: the state a test sets up (keys as the database would hand them
    over), admitted to the security module on each lookup as the server's cache does."""

    admit: Callable[[TerminalKeys[Key]], Terminal]
    terminals: dict[str, TerminalKeys[Key]] = field(default_factory=dict)
    cards: dict[str, Card] = field(default_factory=dict)
    priors: dict[tuple[str, str, str], Prior] = field(default_factory=dict)

    def terminal(self, tid: str) -> Terminal | None:
        keys = self.terminals.get(tid)
        return None if keys is None else self.admit(keys)

    def card(self, pan_ref: str) -> Card | None:
        return self.cards.get(pan_ref)

    def prior(self, terminal: Terminal, batch: str, stan: str, mti: str = "0200") -> Prior | None:
        return self.priors.get((terminal.tid, batch, stan)) if mti == "0200" else None


@dataclass
class World:
    view: MemoryView
    client: ClientTerminal
    config: HandlerConfig
    now: float = NOW

    def handle(self, data: bytes) -> Outcome:
        return handle(data, self.view, self.now, self.config)

    def reply(self, data: bytes) -> Message:
        outcome = self.handle(data)
        assert outcome.response is not None
        return self.config.codec.decode(outcome.response)

    @property
    def keys(self) -> TerminalKeys[Key]:
        return self.view.terminals[TID]

    def set_keys(self, **changes: object) -> None:
        self.view.terminals[TID] = replace(self.keys, **changes)  # type: ignore[arg-type]


def make_world(dialect: str = "iso87", key_set: str = "003", **config: object) -> World:
    rng = seeded_rng(7)
    codec = get_codec(dialect)
    tmk = hsm.new_tmk(rng)
    working = hsm.new_working_set(KEY_SETS[key_set], codec.dialect, 1, NOW - 60, 3600.0, rng)
    terminal = TerminalKeys(TID, MID, HeldKey("TMK", 1, tmk, NOW - 600, 86400.0, ACTIVE),
                            (working,), 1)
    card = Card(VAULT.pan_ref(PAN), "621234******1234", EXPIRY, VAULT.pin_value(PAN, PIN),
                10_000, "156")
    handler_config = HandlerConfig(codec, VAULT, rng, **config)  # type: ignore[arg-type]
    assert handler_config.security is not None
    view = MemoryView(handler_config.security.admit, {TID: terminal}, {card.pan_ref: card})
    client = ClientTerminal(TID, MID, tmk, dialect, keys={"PIK": working.pik,
                                                            "MAK": working.mak},
                            key_set=key_set)
    return World(view, client, handler_config)


@pytest.fixture
def world() -> World:
    return make_world()


def reason(reply: Message) -> KeyErrorReason | None:
    return KeyErrorReason.parse(reply.text(44))


def assert_key_error(reply: Message, code: str, key: str) -> None:
    assert reply.mti == "0210"
    assert reply[39] == "14"
    parsed = reason(reply)
    assert parsed is not None and (parsed.code, parsed.key) == (code, key), reply.text(44)
    assert len(reply.text(44)) <= 25
    assert 64 not in reply.fields


def mac_ok(world: World, reply_bytes: bytes) -> bool:
    return world.client.response_mac_ok(reply_bytes)


# --- decoding and MTIs ---------------------------------------------------------------------------


def test_bytes_without_an_mti_close_the_connection(world: World) -> None:
    outcome = world.handle(b"\xff\xfe")
    assert outcome.response is None and outcome.close


def test_a_response_mti_is_ignored_without_closing(world: World) -> None:
    data = world.config.codec.encode(Message("0210", {11: "000001", 39: "00"}))
    outcome = world.handle(data)
    assert outcome.response is None and not outcome.close


def test_a_broken_response_mti_is_ignored_too(world: World) -> None:
    data = world.config.codec.encode(Message("0210", {11: "000001", 39: "00"}))
    outcome = world.handle(data[:-1])
    assert outcome.response is None and not outcome.close


def test_an_approval_code_is_six_digits_from_the_requests_fingerprint(world: World) -> None:
    codes = set()
    for stan in ("000101", "000102", "000103"):
        outcome = world.handle(world.client.purchase(CARD, 100, stan=stan))
        record = next(c for c in outcome.changes if isinstance(c, Answered))
        reply = world.config.codec.decode(record.response)
        assert reply[39] == "00" and reply.text(38) == approval_code(record.request_ref)
        assert len(reply.text(38)) == 6 and reply.text(38).isdigit()
        codes.add(reply.text(38))
    assert len(codes) == 3
    refused = world.reply(world.client.purchase(CARD, 10**9))
    assert refused[39] == "51" and 38 not in refused.fields


def test_a_message_cut_short_gets_30_that_echoes_what_decoded(world: World) -> None:
    data = world.client.purchase(CARD, 100)
    reply = world.reply(data[:-3])
    assert (reply.mti, reply[39]) == ("0210", "30")
    assert 64 not in reply.fields
    # STAN and terminal decoded before the cut: the 30 carries them so it can be matched.
    request = world.config.codec.decode(data)
    assert (reply[11], reply[41]) == (request[11], request[41])


# --- bytes decoded once -------------------------------------------------------------------------


@dataclass
class Counted:
    """Calls of a real function, counted (the function still does its work)."""

    function: Callable[..., object]
    calls: int = 0

    def __call__(self, *args: object) -> object:
        self.calls += 1
        return self.function(*args)


def test_a_decode_error_answers_from_its_partial_message(world: World,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    codec = world.config.codec
    decode, decode_mti = Counted(codec.decode), Counted(codec.decode_mti)
    monkeypatch.setattr(codec, "decode", decode)
    monkeypatch.setattr(codec, "decode_mti", decode_mti)
    reply = world.handle(world.client.purchase(CARD, 100)[:-3]).reply
    assert reply is not None and reply[39] == "30" and reply[11]
    assert (decode.calls, decode_mti.calls) == (1, 1)  # the MTI once: inside decode itself


def test_a_failing_view_gets_96_without_decoding_again(world: World,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    codec = world.config.codec
    decode = Counted(codec.decode)
    monkeypatch.setattr(codec, "decode", decode)

    def broken(pan_ref: str) -> Card | None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(world.view, "card", broken)
    data = world.client.purchase(CARD, 100)
    outcome = world.handle(data)
    assert outcome.reply is not None and outcome.reply[39] == "96" and not outcome.changes
    assert outcome.reply[11] == codec.decode(data)[11] and outcome.note == "OperationalError"
    assert decode.calls == 1 + 1  # the handler's one, and this test's own


@pytest.mark.parametrize(("mti", "answer"), [("0600", "0610"), ("0100", "0110"),
                                             ("0620", "0630")])
def test_an_mti_not_served_gets_its_response_mti_and_12(world: World, mti: str,
                                                        answer: str) -> None:
    data = world.config.codec.encode(Message(mti, {11: "000009", 41: TID, 42: MID}))
    reply = world.reply(data)
    assert (reply.mti, reply[39], reply[11]) == (answer, "12", "000009")


@pytest.mark.parametrize("missing", [3, 4, 11, 22, 25, 41, 42, 49, 60])
def test_a_purchase_without_a_mandatory_field_gets_30(world: World, missing: int) -> None:
    fields = world.client.purchase_fields(CARD, 100)
    del fields[missing]
    data = sign(world.config.codec, Message("0200", fields), world.client.keys["MAK"])
    assert world.reply(data)[39] == "30"


def test_a_malformed_field_60_gets_30(world: World) -> None:
    fields = world.client.purchase_fields(CARD, 100)
    fields[60] = "22"
    data = sign(world.config.codec, Message("0200", fields), world.client.keys["MAK"])
    assert world.reply(data)[39] == "30"


# --- the 0200 order, step by step ----------------------------------------------------------------


def test_unknown_terminal_gets_03(world: World) -> None:
    world.view.terminals.clear()
    reply = world.reply(world.client.purchase(CARD, 100))
    assert reply[39] == "03" and 64 not in reply.fields


def test_a_merchant_that_is_not_the_terminals_gets_03(world: World) -> None:
    world.client.merchant = "OTHER"
    assert world.reply(world.client.purchase(CARD, 100))[39] == "03"


def test_revoked_tmk_is_k1_tmk(world: World) -> None:
    world.set_keys(tmk=replace(world.keys.tmk, state=REVOKED),
                   working=(replace(world.keys.working[0], state=REVOKED),))
    assert_key_error(world.reply(world.client.purchase(CARD, 100)), "K1", "TMK")


def test_never_signed_on_is_k1_wk(world: World) -> None:
    world.set_keys(working=())
    reply = world.reply(world.client.purchase(CARD, 100))
    assert_key_error(reply, "K1", "WK")
    assert reply.text(44) == "K1 WK not signed on"


def test_revoked_working_keys_are_k1_wk(world: World) -> None:
    world.set_keys(working=(replace(world.keys.working[0], state=REVOKED),))
    assert_key_error(world.reply(world.client.purchase(CARD, 100)), "K1", "WK")


def test_a_purchase_without_a_mac_gets_30(world: World) -> None:
    fields = world.client.purchase_fields(CARD, 100)
    data = world.config.codec.encode(Message("0200", fields))
    reply = world.reply(data)
    assert reply[39] == "30" and 64 not in reply.fields


def test_a_mac_under_an_earlier_generation_is_k2_missed_rotation(world: World) -> None:
    old = replace(world.keys.working[0], state=RETIRED)
    new = hsm.new_working_set(KEY_SETS["003"], world.config.codec.dialect, 2, NOW, 3600.0,
                              seeded_rng(99))
    world.set_keys(working=(new, old))
    reply = world.reply(world.client.purchase(CARD, 100))
    assert_key_error(reply, "K2", "MAK")
    assert reply.text(44) == "K2 MAK missed rotation"


def test_a_mac_under_no_generation_is_k3(world: World) -> None:
    world.client.keys["MAK"] = hsm.new_key_like(world.client.keys["MAK"], seeded_rng(5))
    reply = world.reply(world.client.purchase(CARD, 100))
    assert_key_error(reply, "K3", "MAK")
    assert reply.text(44) == "K3 MAK mismatch"


def test_working_keys_past_their_lifetime_are_k2_wk(world: World) -> None:
    world.now = NOW + 7200
    assert_key_error(world.reply(world.client.purchase(CARD, 100)), "K2", "WK")


def test_a_tmk_past_its_lifetime_is_k2_tmk(world: World) -> None:
    world.set_keys(tmk=replace(world.keys.tmk, lifetime=60.0))
    assert_key_error(world.reply(world.client.purchase(CARD, 100)), "K2", "TMK")


def test_a_processing_code_not_served_gets_12_without_a_mac(world: World) -> None:
    fields = world.client.purchase_fields(CARD, 100)
    fields[3] = "990000"
    data = sign(world.config.codec, Message("0200", fields), world.client.keys["MAK"])
    reply = world.reply(data)
    assert reply[39] == "12" and 64 not in reply.fields


def test_a_retransmission_gets_the_original_response(world: World) -> None:
    data = world.client.purchase(CARD, 100)
    first = world.handle(data)
    record = next(c for c in first.changes if isinstance(c, Answered))
    world.view.priors[(record.tid, record.batch, record.stan)] = Prior(record.request_ref,
                                                                       record.response)
    again = world.handle(data)
    assert again.response == first.response and not again.changes


def test_another_request_with_the_same_stan_gets_94_with_a_mac(world: World) -> None:
    first = world.handle(world.client.purchase(CARD, 100, stan="000042"))
    record = next(c for c in first.changes if isinstance(c, Answered))
    world.view.priors[(record.tid, record.batch, record.stan)] = Prior(record.request_ref,
                                                                       record.response)
    outcome = world.handle(world.client.purchase(CARD, 200, stan="000042"))
    assert outcome.response is not None
    reply = world.config.codec.decode(outcome.response)
    assert reply[39] == "94" and mac_ok(world, outcome.response)
    assert not outcome.changes  # a 94 is not remembered and moves no money


def test_a_pin_block_that_is_not_iso9564_is_k3_pik(world: World) -> None:
    fields = world.client.purchase_fields(CARD, 100)
    fields[52] = bytes(8)
    data = sign(world.config.codec, Message("0200", fields), world.client.keys["MAK"])
    reply = world.reply(data)
    assert_key_error(reply, "K3", "PIK")
    assert reply.text(44) == "K3 PIK bad PIN block"


def test_field_53_must_travel_with_a_pin_and_match_the_key_set(world: World) -> None:
    fields = world.client.purchase_fields(CARD, 100)
    assert 52 in fields and fields[53] == "2600000000000000"  # key set 003
    without = {n: v for n, v in fields.items() if n != 53}
    reply = world.reply(sign(world.config.codec, Message("0200", without), world.client.keys["MAK"]))
    assert reply[39] == "30" and 64 not in reply.fields
    other = {**fields, 53: "2000000000000000"}  # the key set 001 scheme
    reply = world.reply(sign(world.config.codec, Message("0200", other), world.client.keys["MAK"]))
    assert_key_error(reply, "K3", "PIK")
    assert reply.text(44) == "K3 PIK field 53 mismatch"


def test_an_unknown_card_gets_56_with_a_mac(world: World) -> None:
    other = ClientCard("6299999999999999", EXPIRY, PIN)
    outcome = world.handle(world.client.purchase(other, 100))
    assert outcome.response is not None
    assert world.config.codec.decode(outcome.response)[39] == "56"
    assert mac_ok(world, outcome.response)
    assert [type(c) for c in outcome.changes] == [Answered]
    assert outcome.changes[0].debit == 0 and outcome.changes[0].pan_ref is None


def test_a_wrong_pin_gets_55(world: World) -> None:
    outcome = world.handle(world.client.purchase(CARD, 100, pin="4321"))
    assert outcome.response is not None
    assert world.config.codec.decode(outcome.response)[39] == "55"
    assert mac_ok(world, outcome.response)


def test_an_expired_card_gets_54(world: World) -> None:
    card = world.view.cards[VAULT.pan_ref(PAN)]
    world.view.cards[card.pan_ref] = card._replace(expiry="2612")
    assert world.reply(world.client.purchase(ClientCard(PAN, "2612", PIN), 100))[39] == "54"


def test_a_presented_expiry_other_than_the_cards_gets_54(world: World) -> None:
    assert world.reply(world.client.purchase(ClientCard(PAN, "2911", PIN), 100))[39] == "54"


def test_an_amount_over_the_balance_gets_51(world: World) -> None:
    assert world.reply(world.client.purchase(CARD, 10_001))[39] == "51"


def test_an_approval_is_maced_recorded_and_debited(world: World) -> None:
    outcome = world.handle(world.client.purchase(CARD, 10_000))
    assert outcome.response is not None
    reply = world.config.codec.decode(outcome.response)
    assert reply.mti == "0210" and reply[39] == "00"
    assert {3, 4, 11, 12, 13, 37, 38, 39, 41, 42, 49, 60, 64} == set(reply.fields)
    assert mac_ok(world, outcome.response)
    [purchased] = outcome.changes
    assert isinstance(purchased, Answered)
    assert purchased.debit == 10_000 and purchased.pan_ref == VAULT.pan_ref(PAN)
    assert purchased.response == outcome.response


def test_a_swiped_card_without_a_pin_is_approved(world: World) -> None:
    outcome = world.handle(world.client.purchase(CARD, 100, pin="", swiped=True))
    assert outcome.response is not None
    assert world.config.codec.decode(outcome.response)[39] == "00"


def test_purchases_in_the_cup_dialect_use_its_mac(world: World) -> None:
    cup = make_world("cup")
    outcome = cup.handle(cup.client.purchase(CARD, 100))
    assert outcome.response is not None
    assert cup.config.codec.decode(outcome.response)[39] == "00"
    assert cup.client.response_mac_ok(outcome.response)


def test_key_set_001_macs_with_a_single_length_mak() -> None:
    small = make_world(key_set="001")
    outcome = small.handle(small.client.purchase(CARD, 100))
    assert outcome.response is not None
    assert small.config.codec.decode(outcome.response)[39] == "00"


def test_a_key_error_code_option_replaces_14_and_keeps_the_reason() -> None:
    world = make_world(key_error_code="A0")
    world.set_keys(working=())
    reply = world.reply(world.client.purchase(CARD, 100))
    assert reply[39] == "A0" and reply.text(44) == "K1 WK not signed on"


# --- the order: the earlier failure wins ---------------------------------------------------------


def test_an_unknown_terminal_wins_over_a_missing_mac(world: World) -> None:
    world.view.terminals.clear()
    data = world.config.codec.encode(Message("0200", world.client.purchase_fields(CARD, 100)))
    assert world.reply(data)[39] == "03"


def test_absent_keys_win_over_a_bad_mac(world: World) -> None:
    world.set_keys(working=(replace(world.keys.working[0], state=REVOKED),))
    world.client.keys["MAK"] = hsm.new_key_like(world.client.keys["MAK"], seeded_rng(5))
    assert_key_error(world.reply(world.client.purchase(CARD, 100)), "K1", "WK")


def test_a_missed_rotation_wins_over_expired_keys(world: World) -> None:
    old = replace(world.keys.working[0], state=RETIRED)
    new = hsm.new_working_set(KEY_SETS["003"], world.config.codec.dialect, 2, NOW - 3600 * 5,
                              60.0, seeded_rng(99))
    world.set_keys(working=(new, old))
    assert reason(world.reply(world.client.purchase(CARD, 100))) == KeyErrorReason(
        "K2", "MAK", "missed rotation")


def test_a_bad_mac_wins_over_a_processing_code_not_served(world: World) -> None:
    world.client.keys["MAK"] = hsm.new_key_like(world.client.keys["MAK"], seeded_rng(5))
    fields = world.client.purchase_fields(CARD, 100)
    fields[3] = "990000"
    data = sign(world.config.codec, Message("0200", fields), world.client.keys["MAK"])
    assert_key_error(world.reply(data), "K3", "MAK")


def test_a_duplicate_wins_over_a_bad_pin_block(world: World) -> None:
    world.view.priors[(TID, "000001", "000077")] = Prior(b"x" * 16, b"")
    fields = world.client.purchase_fields(CARD, 100, stan="000077")
    fields[52] = bytes(8)
    data = sign(world.config.codec, Message("0200", fields), world.client.keys["MAK"])
    assert world.reply(data)[39] == "94"


def test_a_bad_pin_block_wins_over_an_unknown_card(world: World) -> None:
    fields = world.client.purchase_fields(ClientCard("6299999999999999", EXPIRY, PIN), 100)
    fields[52] = bytes(8)
    data = sign(world.config.codec, Message("0200", fields), world.client.keys["MAK"])
    assert_key_error(world.reply(data), "K3", "PIK")


def test_a_wrong_pin_wins_over_expiry_and_balance(world: World) -> None:
    card = world.view.cards[VAULT.pan_ref(PAN)]
    world.view.cards[card.pan_ref] = card._replace(expiry="2001", balance=0)
    reply = world.reply(world.client.purchase(ClientCard(PAN, "2001", PIN), 100, pin="9999"))
    assert reply[39] == "55"


def test_expiry_wins_over_balance(world: World) -> None:
    card = world.view.cards[VAULT.pan_ref(PAN)]
    world.view.cards[card.pan_ref] = card._replace(expiry="2001", balance=0)
    assert world.reply(world.client.purchase(ClientCard(PAN, "2001", PIN), 100))[39] == "54"


# --- 0800 sign-on, 0820 sign-off and echo --------------------------------------------------------


@pytest.mark.parametrize(("dialect", "key_set", "size"), [
    ("iso87", "001", 24), ("iso87", "003", 40), ("iso87", "004", 60),
    ("cup", "003", 40), ("cup", "004", 60),
])
def test_a_sign_on_issues_a_new_generation_whose_kcvs_verify(dialect: str, key_set: str,
                                                             size: int) -> None:
    world = make_world(dialect)
    outcome = world.handle(world.client.sign_on_request(key_set))
    assert outcome.response is not None
    reply = world.config.codec.decode(outcome.response)
    assert (reply.mti, reply[39]) == ("0810", "00")
    assert len(reply[62]) == size and 64 not in reply.fields
    world.client.install(reply, key_set)  # raises unless every KCV verifies
    issued = next(c for c in outcome.changes if isinstance(c, IssueWorkingKeys))
    assert issued.working.generation == 2
    assert world.client.keys["MAK"] == issued.working.mak
    mak_length = 8 if dialect == "cup" or key_set == "001" else 16
    assert issued.working.mak.length == mak_length


def test_the_cup_mak_travels_as_eight_bytes_and_eight_zero_bytes() -> None:
    world = make_world("cup")
    reply = world.reply(world.client.sign_on_request("003"))
    assert reply[62][28:36] == bytes(8)


def test_sign_on_of_an_unknown_terminal_gets_03(world: World) -> None:
    world.view.terminals.clear()
    assert world.reply(world.client.sign_on_request())[39] == "03"


def test_sign_on_with_a_revoked_tmk_is_k1_tmk(world: World) -> None:
    world.set_keys(tmk=replace(world.keys.tmk, state=REVOKED))
    reply = world.reply(world.client.sign_on_request())
    assert (reply.mti, reply[39], reply.text(44)) == ("0810", "14", "K1 TMK not active")
    assert 62 not in reply.fields


def test_sign_on_with_an_expired_tmk_is_k2_tmk(world: World) -> None:
    world.set_keys(tmk=replace(world.keys.tmk, lifetime=1.0))
    assert world.reply(world.client.sign_on_request()).text(44).startswith("K2 TMK")


def test_sign_on_with_a_key_set_the_host_does_not_offer_is_k3(world: World) -> None:
    """ERROR14's "software too old for the key scheme": unknown sets, and sets switched off."""
    narrow = replace(world.config, key_sets=frozenset({"003", "004"}))
    for key_set, config in (("009", world.config), ("001", narrow)):
        outcome = handle(world.client.sign_on_request(key_set), world.view, world.now, config)
        assert outcome.response is not None and not outcome.changes
        reply = world.config.codec.decode(outcome.response)
        assert (reply[39], reply[44]) == ("14", "K3 WK key set unsupported")
        assert 62 not in reply.fields and 64 not in reply.fields


def test_sign_off_revokes_the_working_keys(world: World) -> None:
    outcome = world.handle(world.client.network_request("002"))
    assert outcome.response is not None
    reply = world.config.codec.decode(outcome.response)
    assert (reply.mti, reply[39]) == ("0830", "00")
    assert set(reply.fields) == {11, 39, 41, 42, 60}
    assert outcome.changes == [RevokeWorkingKeys(TID)]


def test_echo_changes_nothing(world: World) -> None:
    outcome = world.handle(world.client.network_request("301"))
    assert outcome.response is not None and not outcome.changes
    assert world.config.codec.decode(outcome.response)[39] == "00"


def test_an_unknown_network_code_gets_12(world: World) -> None:
    assert world.reply(world.client.network_request("999"))[39] == "12"


def test_handlers_are_pure_the_same_inputs_give_the_same_answer() -> None:
    data = make_world().client.purchase(CARD, 100)
    first, second = make_world().handle(data), make_world().handle(data)
    assert first.response == second.response and first.changes == second.changes

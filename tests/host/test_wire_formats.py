"""What real devices send that our contract does not: field 60 in other shapes and a partly
enciphered track 2. The host reads what it can and answers `30` for what it cannot: never `96`,
never a closed connection (issue 18)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from host.core import Cut
from protocol.codes import FORMAT_ERROR
from protocol.dialects import load_dialect
from protocol.framing import Framing
from protocol.macing import sign
from protocol.message import Message
from tests.host.client import ClientTerminal, Link, tmk_from_ceremony
from tests.host.test_handlers import CARD, World, make_world
from tests.support import RunningHost, init_host, provision_terminal, start_host

ENCIPHERED_TRACK = "621234A9C3F0B1E2=2812101"  # PAN digits 7-16 enciphered: hex nibbles A-F


def splice_60(world: World, data: bytes, raw: bytes) -> bytes:
    """`data` with field 60's bytes (prefix included) replaced by `raw`, as a device sent them."""
    start, end = world.config.codec.decode_spans(data)[1][60]
    return data[:start] + raw + data[end:]


def purchase(world: World, **fields: str) -> bytes:
    values = world.client.purchase_fields(CARD, 100)
    values.update({int(k[1:]): v for k, v in fields.items()})
    return sign(world.client.codec, Message("0200", values), world.client.keys["MAK"])


def assert_format_error(world: World, data: bytes, note: str) -> Message:
    outcome = world.handle(data)
    assert not outcome.close and outcome.reply is not None
    reply = outcome.reply
    assert (reply.mti, reply[39]) == ("0210", FORMAT_ERROR), (reply.fields, outcome.note)
    assert note in outcome.note, outcome.note
    assert reply.text(11) and reply.text(41) == world.client.tid  # matched to its request
    return reply


@pytest.mark.parametrize("dialect", ["iso87", "cup"])
def test_eight_digits_without_60_3_is_30_naming_it(dialect: str) -> None:
    world = make_world(dialect)
    assert_format_error(world, purchase(world, f60="22000001"), "60.3")


def test_nineteen_digits_in_cup_are_30_with_what_decoded_echoed() -> None:
    world = make_world("cup")  # cup's field 60 is n...17: 19 digits are over its maximum
    data = splice_60(world, purchase(world), bytes.fromhex("0019" + "2200000100012345678" + "0"))
    assert_format_error(world, data, "length 19 exceeds the maximum 17")


def test_nineteen_digits_in_iso87_are_read_as_far_as_the_contract_goes() -> None:
    world = make_world("iso87")  # ans...999: 60.1-60.3 are there, 60.4-60.7 are ignored
    assert world.reply(purchase(world, f60="2200000100012345678"))[39] == "00"


def test_ascii_field_60_where_bcd_is_expected_is_30() -> None:
    world = make_world("cup")  # an ans...512 device: LLL "011" in ASCII, then ASCII digits
    data = splice_60(world, purchase(world), b"011" + b"22000001000")
    assert_format_error(world, data, "field 60")


def test_text_in_field_60_is_30() -> None:
    world = make_world("iso87")
    assert_format_error(world, purchase(world, f60="POS ENTRY 0001"), "60.1")


# --- track 2 with hex nibbles ----------------------------------------------------------------


def swiped(world: World, track: str, keyed: bool) -> bytes:
    values = world.client.purchase_fields(CARD, 100, pin="")
    values.pop(2), values.pop(14)
    values.update({35: track, 22: "022"})
    if keyed:  # a device that sends the PAN and expiry in clear beside the enciphered track
        values.update({2: CARD.pan, 14: CARD.expiry})
    return sign(world.client.codec, Message("0200", values), world.client.keys["MAK"])


def test_an_enciphered_track_alone_is_30_not_96() -> None:
    world = make_world("cup")
    assert_format_error(world, swiped(world, ENCIPHERED_TRACK, keyed=False), "no readable card data")


def test_an_enciphered_track_beside_a_clear_pan_is_served() -> None:
    world = make_world("cup")
    assert world.reply(swiped(world, ENCIPHERED_TRACK, keyed=True))[39] == "00"


def test_a_clear_track_still_serves_alone() -> None:
    world = make_world("cup")
    assert world.reply(swiped(world, f"{CARD.pan}={CARD.expiry}101", keyed=False))[39] == "00"


# --- over real TCP ---------------------------------------------------------------------------


@pytest.fixture
def cup_host(tmp_path: Path) -> Iterator[tuple[RunningHost, ClientTerminal]]:
    data = init_host(tmp_path / "host")
    ceremony = provision_terminal(data, "T0WIRE01", "M00000000000001")
    host = start_host(data, "--dialect", "cup")
    try:
        yield host, ClientTerminal("T0WIRE01", "M00000000000001", tmk_from_ceremony(ceremony), "cup")
    finally:
        assert host.stop() == 0


def test_field_60_shapes_over_tcp_get_30_and_the_line_stays_open(
        cup_host: tuple[RunningHost, ClientTerminal]) -> None:
    host, terminal = cup_host
    with Link(host.endpoint, terminal) as link:
        assert link.sign_on()[39] == "00"
        world = make_world("cup")
        for shape in (bytes.fromhex("0008" + "22000001"), b"011" + b"22000001000",
                      bytes.fromhex("0019" + "2200000100012345678" + "0")):
            request = terminal.purchase(CARD, 100)
            start, end = world.config.codec.decode_spans(request)[1][60]
            reply, _ = link.exchange(request[:start] + shape + request[end:])
            assert (reply.mti, reply[39]) == ("0210", "30"), shape
        echo, _ = link.exchange(terminal.network_request())  # the same connection still answers
        assert echo[39] == "00"
    assert '"rc": "96"' not in host.log_text()


def test_a_rules_cut_writes_the_length_header_of_the_dialects_framing(tmp_path: Path) -> None:
    """A `cut` answer is cut after the header its connection's framing writes (an ASCII
    4-digit length here), not after a 2-byte binary length whatever the dialect."""
    spec = tmp_path / "dev.json"
    spec.write_text('{"name": "dev-ascii4", "base": "iso87", "length": "ascii4"}')
    framing = Framing(load_dialect(spec))
    answer = b"0810" + bytes(range(40))
    sent = Cut(answer).framed(framing.length.prefix)
    assert sent == framing.length.prefix(answer)[:4 + len(answer) // 2]
    assert sent[:4] == b"%04d" % len(answer)

"""What pos-fuzz found in pos-host, kept as regression tests.

A 0200 whose MAC fails, served as cup over a data folder whose earlier key generations were
issued as iso87 (double-length MAKs), was answered 96 (cup's single-DES MAC raised on the
16-byte MAK while check_mac tried the earlier generations) instead of `14 K3 MAK mismatch`."""

from __future__ import annotations

import io
from pathlib import Path

from host import admin
from host.core import HostCore
from host.datadir import init_data, open_data
from host.handlers import HandlerConfig
from host.logs import MessageLog
from protocol.clock import seeded_rng, system_clock, system_rng
from protocol.codec import get_codec
from protocol.crypto import Key
from protocol.dialects import get_dialect
from protocol.framing import Framing
from protocol.macing import sign
from protocol.message import Message
from tests.host.client import Card, ClientTerminal

TID, MID = "T0000001", "M00000000000001"


def core_for(db, dialect: str) -> HostCore:
    config = HandlerConfig(get_codec(dialect), db.vault, seeded_rng(1))
    d = get_dialect(dialect)
    return HostCore(db, config, system_clock, MessageLog(io.StringIO(), d), Framing(d))


def test_a_bad_mac_is_a_key_error_whatever_dialect_issued_the_earlier_keys(tmp_path: Path) -> None:
    data = tmp_path / "host"
    init_data(data, system_rng)
    db = open_data(data, system_rng)
    try:
        _, tmk = admin.add_terminal(db, TID, MID, 2, system_clock(), system_rng)
        for dialect in ("iso87", "cup"):  # the same folder served as iso87, then as cup
            core = core_for(db, dialect)
            client = ClientTerminal(TID, MID, tmk, dialect)
            reply = core.handle_payload(client.payload(client.sign_on_request()))
            assert reply is not None
            client.install(core.config.codec.decode(client.unpayload(reply)), "003")
        fields = client.purchase_fields(Card("6212345678901234", "2812", "1234"), 100, pin="")
        wrong = Key("DES", "MAK", bytes.fromhex("0123456789ABCDEF"))
        reply = core.handle_payload(client.payload(sign(core.config.codec, Message("0200", fields),
                                                        wrong)))
        assert reply is not None
        answer = core.config.codec.decode(client.unpayload(reply))
        assert answer.text(39) == "14" and answer.text(44).startswith("K3 MAK")
    finally:
        db.close()

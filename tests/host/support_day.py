"""A host and one terminal in one process, for the §7 tests: HostCore over a real SQLite
file, requests from protocol/requests.py, MACed with the keys of a real sign-on."""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from host import admin
from host.core import HostCore
from host.datadir import init_data, open_data
from host.handlers import HandlerConfig
from host.logs import MessageLog
from protocol import requests
from protocol.clock import seeded_rng, system_rng
from protocol.codec import get_codec
from protocol.dialects import get_dialect
from protocol.framing import Framing
from protocol.macing import sign
from protocol.message import Message
from tests.host.client import ClientTerminal

TID, MID = "T0000001", "M00000000000001"
PAN, OTHER_PAN, EXPIRY, PIN = "6212345678901234", "6212345678905678", "2812", "1234"
NOW = 1_800_000_000.0  # 2027-01-15: the cards above are not expired
OPENING = 100_000  # each card's balance, minor units


@dataclass
class Answer:
    message: Message
    raw: bytes
    mac_ok: bool

    @property
    def rc(self) -> str:
        return self.message.text(39)


@dataclass
class Day:
    """One terminal's day against an in-process host; `send` signs and answers one request."""

    data: Path
    dialect: str = "iso87"
    stans: itertools.count = field(default_factory=lambda: itertools.count(1))
    batch: str = "000001"

    def __post_init__(self) -> None:
        init_data(self.data, system_rng)
        self.db = open_data(self.data, system_rng)
        self.codec = get_codec(self.dialect)
        d = get_dialect(self.dialect)
        self.log = io.StringIO()
        self.core = HostCore(self.db, HandlerConfig(self.codec, self.db.vault, seeded_rng(3)),
                             lambda: NOW, MessageLog(self.log, d), Framing(d))
        _, tmk = admin.add_terminal(self.db, TID, MID, 2, NOW - 60, system_rng)
        for pan in (PAN, OTHER_PAN):
            admin.add_card(self.db, pan, EXPIRY, PIN, "1000.00")
        self.client = ClientTerminal(TID, MID, tmk, self.dialect)
        reply = self.core.handle_payload(self.client.payload(self.client.sign_on_request()))
        assert reply is not None
        self.client.install(self.codec.decode(self.client.unpayload(reply)), "003")

    def close(self) -> None:
        self.db.close()

    @property
    def station(self) -> requests.Station:
        return requests.Station(TID, MID, self.batch)

    def stan(self) -> str:
        return f"{next(self.stans):06d}"

    def signed(self, message: Message) -> bytes:
        return sign(self.codec, message, self.client.keys["MAK"])

    def send_bytes(self, data: bytes) -> Answer:
        reply = self.core.handle_payload(self.client.payload(data))
        assert reply is not None
        raw = self.client.unpayload(reply)
        return Answer(self.codec.decode(raw), raw, self.client.response_mac_ok(raw))

    def send(self, message: Message) -> Answer:
        return self.send_bytes(self.signed(message))

    def balance(self, pan: str = PAN) -> int:
        card = self.db.card(self.db.vault.pan_ref(pan))
        assert card is not None
        return card.balance


def card(pan: str = PAN) -> requests.CardEntry:
    return requests.CardEntry(pan, EXPIRY)

"""A minimal terminal built from the protocol package only (never from terminal/), to drive a
real pos-host in tests and the benchmark: sign on, check the keys, build MACed purchases."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from protocol import requests
from protocol.codec import Codec, codec_for
from protocol.crypto import (
    Key,
    combine_components,
    encrypt_pin_block,
    unwrap_ecb,
    verify_mac,
)
from protocol.dialects import get_dialect
from protocol.fields import KEY_SETS, NMIC_ECHO, parse_key_set
from protocol.framing import Framing, Tpdu
from protocol.macing import compute, mac_input, message_mac, sign
from protocol.message import FieldValue, Message
from protocol.transport.tcp import TcpChannel, parse_endpoint


def tmk_from_ceremony(ceremony: dict) -> Key:
    parts = [(bytes.fromhex(c["component"]), c["kcv"]) for c in ceremony["components"]]
    return combine_components(parts, ceremony["tmk_kcv"])


@dataclass
class Card:
    pan: str
    expiry: str
    pin: str


@dataclass
class ClientTerminal:
    tid: str
    merchant: str
    tmk: Key
    dialect_name: str = "iso87"
    batch: str = "000001"
    keys: dict[str, Key] = field(default_factory=dict)
    key_set: str = "003"
    stans: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def codec(self) -> Codec:
        return codec_for(get_dialect(self.dialect_name))

    @property
    def framing(self) -> Framing:
        return Framing(get_dialect(self.dialect_name))

    def stan(self) -> str:
        return f"{next(self.stans) % 1_000_000:06d}"

    def payload(self, message: bytes) -> bytes:
        tpdu = Tpdu(destination=1, source=2) if self.framing.has_tpdu else None
        return self.framing.payload(message, tpdu)

    def unpayload(self, payload: bytes) -> bytes:
        return self.framing.unframe(payload).message

    # --- messages --------------------------------------------------------------------------------

    @property
    def station(self) -> requests.Station:
        return requests.Station(self.tid, self.merchant, self.batch)

    def sign_on_request(self, key_set: str = "003") -> bytes:
        return self.codec.encode(requests.sign_on(self.station, self.stan(), key_set,
                                                  ("120000", "1125"), "01"))

    def network_request(self, nmic: str = NMIC_ECHO) -> bytes:
        return self.codec.encode(requests.network(self.station, self.stan(), nmic))

    def install(self, response: Message, key_set: str) -> None:
        """Unwrap field 62 under the TMK and check each 4-byte KCV; raises on any mismatch."""
        keys: dict[str, Key] = {}
        for wrapped in parse_key_set(response[62], key_set, get_dialect(self.dialect_name)):
            algorithm = "DES" if len(wrapped.ciphertext) == 8 else "TDES"
            key = unwrap_ecb(self.tmk, wrapped.ciphertext, wrapped.usage, algorithm)
            if key.kcv(4) != wrapped.kcv:
                raise AssertionError(f"{wrapped.usage} check value does not verify")
            keys[wrapped.usage] = key
        self.keys, self.key_set = keys, key_set

    def purchase_fields(
        self, card: Card, amount: int, stan: str | None = None, pin: str | None = None,
        swiped: bool = False,
    ) -> dict[int, FieldValue]:
        """protocol.requests' purchase, as a dict a test may then bend."""
        pin = card.pin if pin is None else pin
        track2 = f"{card.pan}={card.expiry}1010000000" if swiped else None
        block = encrypt_pin_block(self.keys["PIK"], pin, card.pan) if pin else None
        entry = requests.CardEntry(card.pan, card.expiry, track2, block,
                                   KEY_SETS[self.key_set].security_control if pin else None)
        return requests.purchase(self.station, stan or self.stan(), entry, amount).fields

    def purchase(self, card: Card, amount: int, **kwargs: object) -> bytes:
        fields = self.purchase_fields(card, amount, **kwargs)  # type: ignore[arg-type]
        return sign(self.codec, Message("0200", fields), self.keys["MAK"])

    def response_mac_ok(self, raw: bytes) -> bool:
        mac = message_mac(self.codec, raw)
        if mac is None:
            return False
        return verify_mac(compute(self.codec, self.keys["MAK"], mac_input(self.codec, raw)), mac)


class Link:
    """A blocking TCP connection speaking one terminal's framing."""

    def __init__(self, endpoint: str, terminal: ClientTerminal, timeout: float = 10.0) -> None:
        self.channel = TcpChannel(parse_endpoint(endpoint), response_timeout=timeout)
        self.terminal = terminal

    def exchange(self, message: bytes) -> tuple[Message, bytes]:
        raw = self.terminal.unpayload(self.channel.exchange(self.terminal.payload(message)))
        return self.terminal.codec.decode(raw), raw

    def sign_on(self, key_set: str = "003") -> Message:
        response, _ = self.exchange(self.terminal.sign_on_request(key_set))
        if response[39] == "00":
            self.terminal.install(response, key_set)
        return response

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

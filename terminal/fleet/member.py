"""One terminal of the fleet, without I/O: its session, its STAN and batch, and how it judges
an answer. The asyncio runner and the Locust user class both drive this, so both send what
`pos-terminal` sends (real MACs and PIN blocks) and react to 14 as it does.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from protocol.crypto.keys import Key
from protocol.errors import ProtocolError
from protocol.framing import Framing
from protocol.message import Message
from protocol.spec import Dialect
from terminal.commands import fixable_by_signon
from terminal.keystore import KeySet, StoredKey
from terminal.session import Purchase, Request, Result, Session
from terminal.store import Config

STAN_MAX = 999_999
# A fleet run never outlives this; the host's own lifetimes still apply (and answer K2).
FLEET_WK_LIFETIME = 30 * 24 * 3600
AMOUNT_RANGE = (1, 999)  # minor units: cheap enough that no test card runs dry


@dataclass(frozen=True)
class Identity:
    """A terminal as FLEET holds it: who it is and its TMK (mode 0600 on disk)."""

    tid: str
    merchant: str
    tmk: Key

    def __repr__(self) -> str:
        return f"Identity({self.tid}, TMK {self.tmk.kcv_hex})"


@dataclass(frozen=True)
class Card:
    pan: str
    expiry: str
    pin: str | None = None

    def __repr__(self) -> str:
        return f"Card({self.pan[:6]}...{self.pan[-4:]})"


def outcome_label(result: Result) -> tuple[str | None, str | None]:
    """(code, reason) as the report counts them: a 14 found by the terminal says so."""
    reason = None
    if result.reason is not None:
        reason = result.reason.field44()
        if result.source == "terminal":
            reason += " (terminal)"
    return result.rc, reason


class Member:
    """A terminal's protocol state; the caller owns the connection and the clock."""

    def __init__(self, identity: Identity, dialect: Dialect, key_set: str, batch: int,
                 clock: Callable[[], float] = time.time) -> None:
        config = Config(identity.tid, identity.merchant, dialect.name, key_set,
                        wk_lifetime=FLEET_WK_LIFETIME)
        keys = KeySet({"TMK": StoredKey(identity.tmk, 1, clock())})
        self.session = Session(config, dialect, keys, clock)
        self.framing = Framing(dialect)
        self.batch = batch
        self.stan = 0
        self.signed_on = False

    @property
    def tid(self) -> str:
        return self.session.config.tid

    def next_stan(self) -> int:
        """Own STAN per terminal; past 999,999 it wraps into the next batch, so a wrapped STAN
        is never a duplicate of one already answered."""
        if self.stan == STAN_MAX:
            self.batch = self.batch % STAN_MAX + 1
        self.stan = self.stan % STAN_MAX + 1
        return self.stan

    def build(self, kind: str, cards: list[Card], rng: random.Random) -> Request:
        stan = self.next_stan()
        if kind == "signon":
            return self.session.signon(stan, self.batch)
        if kind == "echo":
            return self.session.network("echo", stan, self.batch)
        card = cards[rng.randrange(len(cards))]
        order = Purchase(rng.randint(*AMOUNT_RANGE), card.pan, card.expiry, card.pin)
        return self.session.purchase(stan, self.batch, order)

    def frame(self, request: Request) -> bytes:
        return self.framing.frame(request.encoded)

    def decode(self, payload: bytes) -> tuple[bytes, Message]:
        """The message bytes and their decoding; ProtocolError when they do not decode. A
        dialect with neither TPDU nor header has nothing to unframe (one call saved an answer)."""
        data = self.framing.unframe(payload).message if self.framing.prefix_size else payload
        return data, self.session.codec.decode(data)

    def judge(self, request: Request, data: bytes, response: Message | None) -> Result:
        """The session's verdict; new keys are taken at once (a sign-on, a sign-off)."""
        if response is None:
            result = self.session.receive(request, data)
        else:
            result = self.session.judge(request, data, response)
        if result.keyset is not None:
            self.session.keys = result.keyset
        if request.kind == "signon":
            self.signed_on = result.outcome == "ok"
        elif fixable_by_signon(result):
            self.signed_on = False
        return result


def stan_of(response: Message) -> int | None:
    try:
        return int(response.text(11))
    except (ValueError, ProtocolError, KeyError, TypeError):
        return None

"""A Locust user class over the fleet's sans-IO member: one user is one terminal of a FLEET.

    locust -f terminal/fleet/locustfile.py --fleet FLEET --host tcp://HOST:PORT          # one machine
    locust -f terminal/fleet/locustfile.py --master --fleet-slices 2 ...                  # master
    locust -f terminal/fleet/locustfile.py --worker --master-host M --fleet FLEET --fleet-slices 2

Each user takes a terminal of its own (worker k of --fleet-slices S takes terminals k, k+S,
k+2S... so no two workers share a terminal or a STAN), signs on, then sends the --fleet-mix
with real MACs and PIN blocks, reacting to a working-key 14 as pos-terminal does. Locust's stats
show each transaction by MTI (type) and kind (name); any code but 00 is a failure named by its
code and K reason.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from locust import User, events, task
from locust.exception import StopUser

from protocol.dialects import get_dialect
from protocol.errors import ProtocolError
from protocol.transport.tcp import TcpChannel, TransportError, parse_endpoint
from terminal.commands import fixable_by_signon
from terminal.fleet import fleetdir
from terminal.fleet.member import Card, Identity, Member, outcome_label
from terminal.fleet.mix import Mix, parse_mix
from terminal.session import Result, TerminalKeyError

MTI = {"signon": "0800", "echo": "0820", "purchase": "0200"}
TIMEOUT = 10.0


class Refused(Exception):
    """An answer other than 00: the message is the code and the K reason, as Locust groups it."""


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    parser.add_argument("--fleet", default="", help="the FLEET folder (pos-fleet provision/import)")
    parser.add_argument("--fleet-slices", type=int, default=1,
                        help="how many Locust workers share the fleet")
    parser.add_argument("--fleet-mix", default="purchase=100", help="e.g. purchase=90,echo=10")


class Pool:
    """This process's terminals, handed to users one each; loaded on the first user's start."""

    def __init__(self) -> None:
        self.loaded = False
        self.free: list[Identity] = []
        self.cards: list[Card] = []
        self.batch = 1
        self.dialect = ""
        self.key_set = ""
        self.mix: Mix | None = None

    def load(self, options: Any, worker_index: int) -> None:
        if self.loaded:
            return
        fleet = fleetdir.open_fleet(Path(options.fleet))
        slices = max(1, options.fleet_slices)
        self.free = [i for n, i in enumerate(fleet.identities()) if n % slices == worker_index]
        self.free.reverse()  # pop() hands them out in order
        self.cards = fleet.cards()
        self.batch = fleetdir.claim_batch(Path(options.fleet))
        self.dialect, self.key_set = fleet.dialect, fleet.key_set
        self.mix = parse_mix(options.fleet_mix)
        self.loaded = True


POOL = Pool()


class PosTerminal(User):
    """One terminal; its requests go one at a time (Locust's users are the concurrency)."""

    def wait_time(self) -> float:
        return 0.0

    def on_start(self) -> None:
        options = self.environment.parsed_options
        if not options or not options.fleet:
            raise StopUser("no --fleet given")
        POOL.load(options, getattr(self.environment.runner, "worker_index", 0))
        if not POOL.free:
            raise StopUser("no terminal left in this worker's slice of the fleet")
        self.identity = POOL.free.pop()
        self.member = Member(self.identity, get_dialect(POOL.dialect), POOL.key_set, POOL.batch)
        self.rng = random.Random()
        self.last: Result | None = None
        self.channel = TcpChannel(parse_endpoint(self.host or ""), TIMEOUT, TIMEOUT)
        self.exchange("signon")

    def on_stop(self) -> None:
        channel = getattr(self, "channel", None)
        if channel is not None:
            channel.close()
            POOL.free.append(self.identity)

    @task
    def transact(self) -> None:
        assert POOL.mix is not None
        kind = POOL.mix.choose(self.rng)
        if self.exchange(kind) or self.last is None or not fixable_by_signon(self.last):
            return
        if self.exchange("signon"):
            self.exchange(kind)

    def exchange(self, kind: str) -> bool:
        """One request and its answer, reported to Locust; True when it came back 00."""
        start = time.perf_counter()
        length, error = 0, None
        self.last = None
        try:
            request = self.member.build(kind, POOL.cards, self.rng)
            reply = self.channel.exchange(self.member.framing.payload(request.encoded), TIMEOUT)
            length = len(reply)
            data, response = self.member.decode(reply)
            self.last = self.member.judge(request, data, response)
            code, reason = outcome_label(self.last)
            if code != "00":
                error = Refused(f"{code} {reason or ''}".strip())
        except TerminalKeyError as exc:  # refused before sending, as pos-terminal does
            self.last = Result(kind, "key_error", "14", exc.reason, "terminal")
            error = Refused(f"14 {exc.reason.field44()} (terminal)")
        except (TransportError, ProtocolError, ValueError) as exc:
            error = exc
            self.channel.close()
        self.environment.events.request.fire(
            request_type=MTI[kind], name=kind, response_time=(time.perf_counter() - start) * 1000,
            response_length=length, exception=error, context={"tid": self.member.tid})
        return error is None

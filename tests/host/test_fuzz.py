"""Whatever a peer sends, the host's one path answers, ignores or closes: it never raises.

Random bytes, valid messages of any MTI and field set, and the protocol package's broken frames
go through `HostCore.submit` of a real (temporary) host, in both dialects.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host import admin
from host.core import ANSWER, CLOSE, IGNORED, HostCore
from host.datadir import init_data, open_data
from host.handlers import HandlerConfig
from host.logs import MessageLog
from protocol import strategies
from protocol.clock import seeded_rng, system_clock, system_rng
from protocol.codec import get_codec
from protocol.dialects import get_dialect
from protocol.framing import Framing
from protocol.macing import sign
from protocol.message import Message
from tests.host.client import Card, ClientTerminal

TID, MID = "T0000001", "M00000000000001"
CARD = Card("6212345678901234", "2812", "1234")
# Fields of a purchase that fuzzing replaces with any valid value of their type, under a valid MAC,
# so that every step after the MAC check meets odd input too.
FUZZED = (2, 3, 4, 14, 22, 25, 35, 49, 52, 53, 60)
CORE_SETTINGS = settings(max_examples=150, deadline=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", params=["iso87", "cup"])
def core(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
         ) -> Iterator[HostCore]:
    data = tmp_path_factory.mktemp("fuzz") / "host"
    init_data(data, system_rng)
    db = open_data(data, system_rng)
    _, tmk = admin.add_terminal(db, TID, MID, 2, system_clock(), system_rng)
    admin.add_card(db, CARD.pan, CARD.expiry, CARD.pin, "100.00")
    dialect = get_dialect(request.param)
    config = HandlerConfig(get_codec(request.param), db.vault, seeded_rng(1))
    core = HostCore(db, config, system_clock, MessageLog(io.StringIO(), dialect), Framing(dialect))
    core.client = ClientTerminal(TID, MID, tmk, request.param)  # type: ignore[attr-defined]
    yield core
    db.close()


def submit(core: HostCore, payload: bytes) -> str | None:
    """The answer's response code (None when nothing was answered); never 96, which would mean
    the host failed on the input instead of judging it."""
    answers: list[bytes | None] = []
    status = core.submit(payload, answers.append, "fuzz")
    core.commit()
    assert status in (ANSWER, IGNORED, CLOSE)
    assert len(answers) == (0 if status == IGNORED else 1)
    if status != ANSWER:
        return None
    answer = answers[0]
    assert answer
    rc = core.config.codec.decode(core.framing.unframe(answer).message).text(39)
    assert rc != "96", "the host failed on this input"
    return rc


@CORE_SETTINGS
@given(payload=st.binary(max_size=300))
def test_random_bytes(core: HostCore, payload: bytes) -> None:
    submit(core, payload)


@CORE_SETTINGS
@given(data=st.data())
def test_valid_messages_of_any_mti(core: HostCore, data: st.DataObject) -> None:
    dialect = core.config.codec.dialect
    message = data.draw(strategies.message_bytes(dialect, max_fields=10))
    submit(core, core.framing.payload(message))


@CORE_SETTINGS
@given(data=st.data())
def test_broken_frames(core: HostCore, data: st.DataObject) -> None:
    broken = data.draw(strategies.broken_frames(core.config.codec.dialect))
    submit(core, broken.data[2:])


@CORE_SETTINGS
@given(data=st.data())
def test_maced_purchases_with_odd_fields_reach_every_step(core: HostCore, data: st.DataObject) -> None:
    client: ClientTerminal = core.client  # type: ignore[attr-defined]
    if "MAK" not in client.keys:
        reply = core.handle_payload(client.payload(client.sign_on_request()))
        assert reply is not None
        client.install(core.config.codec.decode(client.unpayload(reply)), "003")
    dialect = core.config.codec.dialect
    fields = client.purchase_fields(CARD, data.draw(st.integers(1, 20000), label="amount"), pin=CARD.pin)
    for n in data.draw(st.sets(st.sampled_from(FUZZED), max_size=3), label="fuzzed"):
        fields[n] = data.draw(strategies.field_values(dialect.fields[n]), label=f"field {n}")
    rc = submit(core, client.payload(sign(core.config.codec, Message("0200", fields), client.keys["MAK"])))
    assert rc is not None

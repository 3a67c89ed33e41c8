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
from host.clock import seeded_rng, system_clock, system_rng
from host.datadir import init_data, open_data
from host.handlers import HandlerConfig
from host.logs import MessageLog
from host.server import ANSWER, CLOSE, IGNORED, HostCore
from protocol import strategies
from protocol.codec import get_codec
from protocol.dialects import get_dialect
from protocol.framing import Framing

CORE_SETTINGS = settings(max_examples=150, deadline=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", params=["iso87", "cup"])
def core(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
         ) -> Iterator[HostCore]:
    data = tmp_path_factory.mktemp("fuzz") / "host"
    init_data(data, system_rng)
    db = open_data(data, system_rng)
    admin.add_terminal(db, "T0000001", "M00000000000001", 2, system_clock(), system_rng)
    dialect = get_dialect(request.param)
    config = HandlerConfig(get_codec(request.param), db.vault, seeded_rng(1))
    yield HostCore(db, config, system_clock, MessageLog(io.StringIO(), dialect),
                   Framing(dialect))
    db.close()


def submit(core: HostCore, payload: bytes) -> None:
    answers: list[bytes | None] = []
    status = core.submit(payload, answers.append, "fuzz")
    core.commit()
    assert status in (ANSWER, IGNORED, CLOSE)
    assert len(answers) == (0 if status == IGNORED else 1)
    if status == ANSWER:
        assert answers[0]


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

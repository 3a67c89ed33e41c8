"""Pipelined message-layer cases find exactly what the same cases sent one at a time find:
the same findings at the same case numbers with the same hits, against the buggy host as a real
process (a bug that closes the connection mid-write, one that garbles answers)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from protocol.dialects import get_dialect
from protocol.transport.tcp import Endpoint
from terminal.fuzz.engine import Context
from terminal.fuzz.oracles import Observation
from terminal.fuzz.probe import Step
from terminal.fuzz.runner import Run, Settings
from terminal.fuzz.tcp import TcpTarget
from tests.fuzz.conftest import BUGGY_MID, BUGGY_TID

CASES = 240


class CountingTarget(TcpTarget):
    """The real TCP shell, counting its writes; `pipelines` off sends each case alone."""

    def __init__(self, endpoint: Endpoint, pipelines: bool) -> None:
        super().__init__(endpoint, timeout=1.0)
        self.pipelines = pipelines
        self.writes = 0

    def run(self, step: Step, payloads: tuple[bytes, ...], due: int,
            meanwhile: Callable[[], object] | None = None) -> Observation:
        self.writes += 1
        return super().run(step, payloads, due, meanwhile)


def outcome(url: str, pipelines: bool) -> tuple[dict, int, int, int]:
    host, _, port = url.removeprefix("tcp://").rpartition(":")
    target = CountingTarget(Endpoint(host, int(port)), pipelines)
    settings = Settings(seed=0, cases=CASES, seconds=60, layers=("message",), shrink_attempts=0,
                        shrink_seconds=0, restart_wait=1)
    run = Run(target, Context(get_dialect("iso87"), tid=BUGGY_TID, mid=BUGGY_MID), settings, url)
    try:
        run.run()
    finally:
        target.close()
    found = {key: (f.case, f.hits, f.detail) for key, f in run.findings.items()}
    return found, run.cases, run.unconfirmed, target.writes


@pytest.mark.parametrize("bug", ["closed", "malformed"])
def test_pipelined_cases_find_what_single_cases_find(bug: str, buggy) -> None:
    host = buggy(bug)
    piped, cases, unconfirmed, writes = outcome(host.url, pipelines=True)
    alone, cases_alone, unconfirmed_alone, writes_alone = outcome(host.url, pipelines=False)
    assert any(key[0] == bug for key in piped), piped
    assert (piped, cases, unconfirmed) == (alone, cases_alone, unconfirmed_alone)
    assert cases == CASES and writes_alone >= CASES
    assert writes < CASES // 2  # most cases shared a write

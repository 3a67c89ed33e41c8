"""A host that answers key errors with its own code (CUP's `A0` for a MAC error): the terminal
still reads the K reason, diagnoses it and recovers with --auto-signon."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.terminal.conftest import PIN, Host, Rig, start


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    yield from start(tmp_path_factory, "cup", "--key-error-code", "A0")


def test_a0_with_a_k_reason_is_a_key_error(ready: Rig) -> None:
    ready.host.admin("keys", "rotate", ready.tid)
    refused = ready.purchase("--pin", PIN, "--json")
    assert refused.code != 0
    assert refused.json["rc"] == "A0" and refused.json["outcome"] == "key_error"
    assert refused.json["reason"] == "K2 MAK missed rotation"
    diagnosis = ready("diagnose", "--json")
    assert diagnosis.code == 0 and "MAK" in diagnosis.out and "rotat" in diagnosis.out
    recovered = ready.purchase("--pin", PIN, "--auto-signon", "--json")
    assert recovered.code == 0 and recovered.json["outcome"] == "approved"
    assert recovered.json["steps"][0]["rc"] == "A0"

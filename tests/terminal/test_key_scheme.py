"""ERROR14's "software too old for the key scheme", made on purpose: a host that no longer issues
key set 001, and a terminal that asks for it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import host_command, init_host
from tests.terminal.conftest import PIN, Host, Rig, start


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    yield from start(tmp_path_factory, "iso87", "--key-sets", "003,004")


def test_a_key_set_the_host_does_not_issue_is_k3_with_the_software_remedy(fresh: Rig) -> None:
    assert fresh.load_tmk().code == 0
    old = fresh("signon", "--key-set", "001", "--json")
    assert old.code != 0
    assert old.json["rc"] == "14" and old.json["reason"] == "K3 WK key set unsupported"
    diagnosis = fresh("diagnose")
    assert "software" in diagnosis.out and "key set" in diagnosis.out
    assert fresh("signon", "--key-set", "003").code == 0
    assert fresh.purchase("--pin", PIN).code == 0


def test_a_key_error_code_that_already_means_something_is_refused(tmp_path: Path) -> None:
    data = init_host(tmp_path / "host")
    for code in ("00", "51", "94"):
        done = subprocess.run(
            [*host_command(), "--data", str(data), "serve", "--tcp", "127.0.0.1:0",
             "--key-error-code", code],
            capture_output=True, text=True, timeout=30, check=False,
        )
        assert done.returncode == 2 and "already means" in done.stderr

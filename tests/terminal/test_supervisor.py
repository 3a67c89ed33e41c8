"""The terminal's supervisor password, with real `pos-terminal` processes and a real host's key
ceremony: set at `init`, kept as a scrypt hash, and without it `load-tmk`, `signoff` and
`counters recover` are refused in one line, changing nothing (docs/operations.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import init_host, provision_terminal
from tests.terminal.processes import assert_refused, pos_terminal, snapshot

TID, MID = "T0SUPER1", "M00000000000001"
SUPERVISOR = "supervisor-pass-7"
FAST = {"POSEMU_SCRYPT_LOG2N": "10"}


@pytest.fixture(scope="module")
def ceremony(tmp_path_factory: pytest.TempPathFactory) -> dict:
    host = init_host(tmp_path_factory.mktemp("host") / "host")
    return provision_terminal(host, TID, MID)


def components(ceremony: dict) -> list[str]:
    args = []
    for part in ceremony["components"]:
        args += ["--component", part["component"], "--kcv", part["kcv"]]
    return [*args, "--tmk-kcv", ceremony["tmk_kcv"]]


def test_supervised_commands_need_the_password(tmp_path: Path, ceremony: dict) -> None:
    folder = tmp_path / "terminal"
    made = pos_terminal("--data", str(folder), "init", TID, "--merchant", MID,
                        "--supervisor-env", "SET_IT", env={**FAST, "SET_IT": SUPERVISOR})
    assert made.code == 0, made.err
    stored = (folder / "supervisor.json").read_text()
    assert SUPERVISOR not in stored and stored.count("scrypt$10$") == 1
    assert (folder / "supervisor.json").stat().st_mode & 0o077 == 0

    before = snapshot(folder)
    for argv, env in (
        (("load-tmk", *components(ceremony)), {}),
        (("load-tmk", *components(ceremony)), {"POSEMU_SUPERVISOR_PASSWORD": "not-the-one"}),
        (("signoff", "--host", "tcp://127.0.0.1:9"), {}),
        (("counters", "recover", "--stan", "5"), {}),
    ):
        refused = pos_terminal("--data", str(folder), *argv, env={**FAST, **env})
        assert_refused(refused, before, folder)
        assert "needs this terminal's supervisor password" in refused.err

    loaded = pos_terminal("--data", str(folder), "--json", "load-tmk", *components(ceremony),
                          env={**FAST, "POSEMU_SUPERVISOR_PASSWORD": SUPERVISOR})
    assert loaded.code == 0, loaded.err
    assert loaded.json["tmk_kcv"] == ceremony["tmk_kcv"]


def test_a_terminal_without_one_loads_its_tmk_as_before(tmp_path: Path, ceremony: dict) -> None:
    folder = tmp_path / "terminal"
    assert pos_terminal("--data", str(folder), "init", TID, "--merchant", MID).code == 0
    assert not (folder / "supervisor.json").exists()
    loaded = pos_terminal("--data", str(folder), "--json", "load-tmk", *components(ceremony))
    assert loaded.code == 0, loaded.err


def test_a_damaged_supervisor_file_refuses_rather_than_opens(tmp_path: Path,
                                                             ceremony: dict) -> None:
    folder = tmp_path / "terminal"
    assert pos_terminal("--data", str(folder), "init", TID, "--merchant", MID,
                        "--supervisor-env", "SET_IT", env={**FAST, "SET_IT": SUPERVISOR}).code == 0
    (folder / "supervisor.json").write_text("{not json")
    before = snapshot(folder)
    refused = pos_terminal("--data", str(folder), "load-tmk", *components(ceremony),
                           env={**FAST, "POSEMU_SUPERVISOR_PASSWORD": SUPERVISOR})
    assert_refused(refused, before, folder)
    assert "supervisor.json is unreadable" in refused.err

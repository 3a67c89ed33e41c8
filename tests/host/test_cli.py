"""The operator's commands, called in-process through host.cli.main (the e2e tests run the same
commands as real processes): output shapes, files and their modes, refusals."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from host.cli import main
from host.datadir import DB_FILE, LMK_FILE, open_data
from protocol.clock import system_rng
from protocol.crypto import Key, combine_components, tr31

MID = "M00000000000001"


def run(capsys: pytest.CaptureFixture[str], data: Path, *args: str) -> tuple[int, object]:
    code = main(["--data", str(data), "--json", *args])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1]) if out else None


@pytest.fixture
def data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    folder = tmp_path / "host"
    assert run(capsys, folder, "init") == (0, {"data": str(folder), "created": True})
    return folder


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_makes_a_private_folder_and_refuses_to_replace_the_lmk(
    data: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert mode(data) == 0o700 and mode(data / LMK_FILE) == 0o600 and mode(data / DB_FILE) == 0o600
    lmk = (data / LMK_FILE).read_bytes()
    code, out = run(capsys, data, "init")  # a second init is refused (issue 10), not a no-op
    assert code == 1 and "never replaces" in out["error"]  # type: ignore[index]
    assert (data / LMK_FILE).read_bytes() == lmk


def test_commands_refuse_a_folder_without_an_lmk(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, tmp_path / "nothing", "terminal", "list")
    assert code == 1 and "pos-host init" in out["error"]  # type: ignore[index]


def test_an_lmk_readable_by_others_is_refused(data: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (data / LMK_FILE).chmod(0o644)
    code, out = run(capsys, data, "terminal", "list")
    assert code == 1 and "chmod 600" in out["error"]  # type: ignore[index]


@pytest.mark.parametrize("components", [2, 3])
def test_terminal_add_prints_exactly_the_ceremony_and_the_components_make_the_tmk(
    data: Path, capsys: pytest.CaptureFixture[str], components: int,
) -> None:
    code, ceremony = run(capsys, data, "terminal", "add", "T0000001", "--merchant", MID,
                         "--components", str(components))
    assert code == 0 and isinstance(ceremony, dict)
    assert list(ceremony) == ["tid", "merchant", "tmk_kcv", "components"]
    assert (ceremony["tid"], ceremony["merchant"]) == ("T0000001", MID)
    parts = ceremony["components"]
    assert len(parts) == components and all(list(p) == ["component", "kcv"] for p in parts)
    tmk = combine_components([(bytes.fromhex(p["component"]), p["kcv"]) for p in parts],
                             ceremony["tmk_kcv"])
    db = open_data(data, system_rng)
    try:
        held = db.load_terminal("T0000001")
        assert held is not None and held.tmk is not None and held.tmk.key.material == tmk.material
    finally:
        db.close()


def test_the_injection_file_is_0600_and_holds_the_tmk(data: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "inject.json"
    code, ceremony = run(capsys, data, "terminal", "add", "T0000001", "--merchant", MID,
                         "--out", str(out))
    assert code == 0 and mode(out) == 0o600
    document = json.loads(out.read_text())
    assert document["format"] == "posemu-key-injection-1"
    assert (document["tid"], document["key_type"], document["kcv"]) == (
        "T0000001", "TMK", ceremony["tmk_kcv"])  # type: ignore[index]
    assert Key("TDES", "TMK", bytes.fromhex(document["key"])).kcv_hex == document["kcv"]


def test_keys_are_stored_as_tr31_version_d_blocks_under_the_lmk(
    data: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    run(capsys, data, "terminal", "add", "T0000001", "--merchant", MID)
    db = open_data(data, system_rng)
    try:
        blocks = [row[0] for row in db.conn.execute("SELECT block FROM keys")]
        header, _ = tr31.parse_header(blocks[0])
        assert header.version == "D" and header.key_usage == "K0"
        with pytest.raises(ValueError):
            tr31.unwrap(Key("AES", "KBPK", bytes(32)), blocks[0])
    finally:
        db.close()


def test_terminal_list_show_remove(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, data, "terminal", "add", "T0000001", "--merchant", MID)
    code, listing = run(capsys, data, "terminal", "list")
    assert code == 0 and [t["tid"] for t in listing] == ["T0000001"]  # type: ignore[union-attr]
    code, shown = run(capsys, data, "terminal", "show", "T0000001")
    assert shown["keys"][0]["usage"] == "TMK" and "material" not in json.dumps(shown)  # type: ignore[index]
    assert run(capsys, data, "terminal", "add", "T0000001", "--merchant", MID)[0] == 1
    assert run(capsys, data, "terminal", "remove", "T0000001")[0] == 0
    assert run(capsys, data, "terminal", "show", "T0000001")[0] == 1


def test_cards_are_listed_masked_and_bad_input_is_a_usage_error(
    data: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    code, card = run(capsys, data, "card", "add", "6212345678901234", "--expiry", "2812",
                     "--pin", "1234", "--balance", "100.50")
    assert code == 0 and card == {"pan": "621234******1234", "expiry": "2812",
                                  "balance": "100.50", "currency": "156"}
    assert run(capsys, data, "card", "list")[1] == [card]
    assert run(capsys, data, "card", "add", "6212345678901234", "--expiry", "2812",
               "--pin", "1234", "--balance", "1")[0] == 1  # exists
    for bad in (["--expiry", "2813", "--pin", "1234", "--balance", "1"],
                ["--expiry", "2812", "--pin", "12", "--balance", "1"],
                ["--expiry", "2812", "--pin", "1234", "--balance", "1.001"]):
        assert run(capsys, data, "card", "add", "6299999999999999", *bad)[0] == 2


def test_key_commands_need_working_keys(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, data, "terminal", "add", "T0000001", "--merchant", MID)
    for action in ("expire", "rotate", "tamper"):
        code, out = run(capsys, data, "keys", action, "T0000001")
        assert code == 1 and "no active working keys" in out["error"]  # type: ignore[index]
    assert run(capsys, data, "keys", "revoke", "T0000002")[0] == 1


def test_a_card_pin_can_come_from_the_environment_not_the_command_line(
    data: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = ("card", "add", "6212345678905678", "--expiry", "2812", "--pin-env", "TEST_CARD_PIN",
            "--balance", "5.00")
    code = main(["--data", str(data), "--json", *args])  # not set: refused, nothing added
    assert code == 2 and "TEST_CARD_PIN" in capsys.readouterr().err
    assert run(capsys, data, "card", "list")[1] == []
    monkeypatch.setenv("TEST_CARD_PIN", "12")  # the variable's value is what is checked
    assert run(capsys, data, *args)[0] == 2
    monkeypatch.setenv("TEST_CARD_PIN", "4321")
    code, card = run(capsys, data, *args)
    assert code == 0 and card["pan"] == "621234******5678"
    with pytest.raises(SystemExit) as usage:  # one or the other
        run(capsys, data, "card", "add", "6212345678905679", "--expiry", "2812", "--pin", "1",
            "--pin-env", "TEST_CARD_PIN", "--balance", "1")
    assert usage.value.code == 2

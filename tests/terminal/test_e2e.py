"""pos-terminal against a real pos-host over real TCP: every command, every key error the
terminal finds itself, the host's own, --auto-signon, and a host that does not answer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from protocol.transport.noisy import flip_bit, noisy_line
from terminal.commands import CLOCK_OFFSET_ENV
from tests.support import provision_terminal
from tests.terminal.conftest import MERCHANT, PAN, PIN, Host, Rig, new_rig, run_terminal
from tests.terminal.fakes import closed_port, foreign_host, silent_host

# --- the happy path through every command ---------------------------------------------------


def test_every_command_in_order(fresh: Rig) -> None:
    loaded = fresh.load_tmk()
    assert loaded.code == 0 and fresh.ceremony["tmk_kcv"] in loaded.out

    signon = fresh("signon", "--json")
    assert signon.code == 0
    keys = signon.json["keys"]
    assert set(keys) == {"PIK", "MAK"} and keys["MAK"]["generation"] == 1

    sale = fresh.purchase("--pin", PIN)
    assert sale.code == 0, sale.out + sale.err
    assert "APPROVED" in sale.out and "CNY 12.34" in sale.out
    assert "621234******1234" in sale.out and PAN not in sale.out

    assert fresh("echo").code == 0

    status = fresh("status", "--json").json
    rows = {row["name"]: row for row in status["keys"]}
    assert rows["MAK"]["kcv"] == keys["MAK"]["kcv"] and rows["TMK"]["present"]
    assert status["keystore"] == "ok" and status["stan"] == 3
    text = fresh("status").out
    assert "check value" in text and "TDK  absent" in text

    off = fresh("signoff", "--json")
    assert off.code == 0 and off.json["outcome"] == "ok"
    after = fresh.purchase("--json")
    assert after.code == 1 and after.json["reason"] == "K1 WK not signed on"
    assert after.json["found_by"] == "terminal"

    diagnosis = fresh("diagnose")
    assert "K1 WK not signed on" in diagnosis.out and "sign on again" in diagnosis.out


def test_status_and_journal_never_show_secrets(ready: Rig) -> None:
    ready.purchase("--pin", PIN, "--trace")
    traced = ready.purchase("--pin", PIN, "--trace")
    assert traced.code == 0
    assert ">> 0200" in traced.err and "<< 0210" in traced.err
    assert "621234******1234" in traced.err
    assert PAN not in traced.err and PAN.encode().hex().upper() not in traced.err
    assert "PIN block masked" in traced.err and "MAC masked" in traced.err
    journal = (ready.folder / "journal.jsonl").read_text()
    assert PAN not in journal and "621234******1234" in journal
    status = ready("status", "--json").out
    store = json.loads((ready.folder / "keystore.json").read_text().splitlines()[0])
    for entry in store["keys"].values():
        assert entry["block"] not in status


def test_hidden_pin_prompt(ready: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    monkeypatch.setattr("getpass.getpass", lambda prompt: asked.append(prompt) or PIN)
    assert ready.purchase("--pin").code == 0
    assert ready.purchase("--pin-prompt").code == 0
    assert asked == ["PIN: ", "PIN: "]
    monkeypatch.setattr("getpass.getpass", lambda prompt: "9999")
    wrong = ready.purchase("--pin", "--json")
    assert wrong.code == 1 and wrong.json["rc"] == "55"


def test_declines_are_maced_and_reported(ready: Rig) -> None:
    unknown = ready("purchase", "--amount", "1.00", "--pan", "6212345678900000",
                    "--expiry", "2812", "--json")
    assert unknown.code == 1 and unknown.json["rc"] == "56" and unknown.json["outcome"] == "declined"
    broke = ready.purchase("--json", amount="99999.00")
    assert broke.json["rc"] == "51"


def test_injection_file_and_component_errors(host: Host, tmp_path: Path) -> None:
    rig = new_rig(host, tmp_path, provision=False)
    injection = tmp_path / "inject.json"
    ceremony = provision_terminal(host.data, rig.tid, MERCHANT, components=3, out=injection)
    rig.ceremony = ceremony
    assert rig.init().code == 0

    parts = ceremony["components"]

    def with_component_1(text: str) -> list[str]:
        args: list[str] = []
        for i, part in enumerate(parts):
            args += ["--component", text if i == 1 else part["component"], "--kcv", part["kcv"]]
        return args

    original = parts[1]["component"]
    # A typo in a key bit (the high nibble of byte 2, same bit-count parity): the KCV catches it.
    nibble = int(original[4], 16)
    same_parity = next(d for d in range(16) if d != nibble and d.bit_count() % 2 == nibble.bit_count() % 2)
    typo = original[:4] + f"{same_parity:X}" + original[5:]
    refused = rig("load-tmk", *with_component_1(typo))
    assert refused.code == 2 and "component 2 does not match" in refused.err
    assert typo not in refused.err
    # A typo in a parity bit only: the check value cannot see it, the parity check does.
    parity_typo = original[:-1] + f"{int(original[-1], 16) ^ 1:X}"
    refused = rig("load-tmk", *with_component_1(parity_typo))
    assert refused.code == 2 and "component 2 does not have odd parity" in refused.err
    tampered = tmp_path / "parity.json"
    doc = json.loads(injection.read_text())
    doc["key"] = doc["key"][:-1] + f"{int(doc['key'][-1], 16) ^ 1:X}"
    tampered.write_text(json.dumps(doc))
    refused = rig("load-tmk", "--file", str(tampered))
    assert refused.code != 0 and "parity" in refused.err
    wrong_total = rig("load-tmk", *rig.component_args()[:-1], "000000")
    assert wrong_total.code == 2 and "--tmk-kcv" in wrong_total.err
    assert rig.keys()["TMK"]["present"] is False

    loaded = rig("load-tmk", "--file", str(injection), "--json")
    assert loaded.code == 0 and loaded.json["tmk_kcv"] == ceremony["tmk_kcv"]
    assert rig("signon").code == 0 and rig.purchase().code == 0


def test_tid_picks_one_of_several(host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSEMU_TERMINAL_DATA", str(tmp_path / "root"))
    for tid in ("TA000001", "TB000002"):
        assert run_terminal("init", tid, "--merchant", MERCHANT, "--host", host.url).code == 0
    ambiguous = run_terminal("status")
    assert ambiguous.code == 2 and "--tid" in ambiguous.err
    chosen = run_terminal("status", "--tid", "TB000002", "--json")
    assert chosen.json["terminal"]["tid"] == "TB000002"
    assert run_terminal("--tid", "TA000001", "status", "--json").json["terminal"]["tid"] == "TA000001"


def test_console_script_runs(ready: Rig) -> None:
    """The installed entry point, in its own process, with its exit status."""
    installed = shutil.which("pos-terminal", path=str(Path(sys.executable).parent))
    command = [installed] if installed else [sys.executable, "-m", "terminal.cli"]
    done = subprocess.run(
        [*command, "--data", str(ready.folder), "--json", "echo", "--host", ready.host.url],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outcome"] == "ok"


def test_commands_racing_on_one_terminal_take_turns(ready: Rig) -> None:
    """Eight processes at once: each sign-on gets its own STAN and the keys end consistent."""
    installed = shutil.which("pos-terminal", path=str(Path(sys.executable).parent))
    command = [installed] if installed else [sys.executable, "-m", "terminal.cli"]
    racers = [
        subprocess.Popen([*command, "--data", str(ready.folder), "--json", "signon",
                          "--host", ready.host.url],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    results = [racer.communicate(timeout=60) for racer in racers]
    for racer, (out, err) in zip(racers, results, strict=True):
        assert racer.returncode == 0 and "Traceback" not in err, err
        assert json.loads(out)["outcome"] == "ok"
    stans = [json.loads(out)["stan"] for out, _ in results]
    assert len(set(stans)) == len(stans)
    assert ready.purchase("--pin", PIN).code == 0  # the keys kept are the host's current ones


# --- key errors the terminal finds itself -----------------------------------------------------


def test_k1_tmk_before_the_key_ceremony(fresh: Rig) -> None:
    for command in (("signon", "--json"), ("purchase", "--amount", "1", "--pan", PAN,
                                           "--expiry", "2812", "--json")):
        run = fresh(*command)
        assert run.code == 1 and run.json["reason"] == "K1 TMK not loaded"
    assert "key ceremony" in fresh("diagnose").out


def test_k1_wk_never_signed_on(fresh: Rig) -> None:
    fresh.load_tmk()
    run = fresh.purchase("--json")
    assert run.json["reason"] == "K1 WK not signed on" and run.json["found_by"] == "terminal"
    assert "never signed on" in fresh("diagnose").out


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda folder: (folder / "keystore.json").unlink(), "K1 TMK keystore missing"),
        (lambda folder: flip(folder / "keystore.json", 40), "K1 TMK keystore corrupt"),
        (lambda folder: (folder / "storage.key").unlink(), "K1 TMK storage key lost"),
    ],
)
def test_k1_damaged_keystore_then_reinjection(ready: Rig, damage: Callable[[Path], None],
                                              reason: str) -> None:
    damage(ready.folder)
    run = ready.purchase("--json")
    assert run.code == 1 and run.json["reason"] == reason
    status = ready("status")
    assert status.code == 0 and "UNUSABLE" in status.out
    diagnosis = ready("diagnose").out
    assert "key stored badly" in diagnosis and "hardware" in diagnosis
    assert diagnosis.index("key ceremony") < diagnosis.index("hardware service")
    auto = ready.purchase("--auto-signon", "--json")
    assert auto.code == 1 and len(auto.json["steps"]) == 1, "a TMK error is not signed on away"
    assert "key ceremony is needed" in ready.purchase().out
    # the recovery: keys re-injected, signed on again
    assert ready.load_tmk().code == 0 and ready("signon").code == 0
    assert ready.purchase().code == 0


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x04
    path.write_bytes(bytes(data))


def test_stan_survives_the_loss_of_the_keystore(ready: Rig) -> None:
    before = ready("status", "--json").json["stan"]
    (ready.folder / "keystore.json").unlink()
    ready.load_tmk()
    ready("signon")
    assert ready("status", "--json").json["stan"] > before
    assert ready.purchase().code == 0, "a rewound STAN would be answered 94"


def test_k2_local_lifetime_and_auto_signon(ready: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CLOCK_OFFSET_ENV, str(2 * 24 * 3600))
    stale = ready.purchase("--json")
    assert stale.json["reason"] == "K2 WK lifetime over" and stale.json["found_by"] == "terminal"
    assert "past its local lifetime" in ready("status").out
    assert "key expired" in ready("diagnose").out
    monkeypatch.delenv(CLOCK_OFFSET_ENV)
    monkeypatch.setenv(CLOCK_OFFSET_ENV, str(2 * 24 * 3600))
    auto = ready.purchase("--auto-signon", "--json")
    assert auto.code == 0 and [s["command"] for s in auto.json["steps"]] == [
        "purchase", "signon", "purchase"]


def test_k3_corrupted_download_keeps_the_old_keys(ready: Rig) -> None:
    before = ready.keys()
    for offset, reason in ((2, "K3 MAK KCV mismatch"), (10, "K3 MAK bad length/parity")):
        with noisy_line(ready.host.url, flip_bit(offset)) as noisy:
            run = run_terminal("signon", "--data", str(ready.folder), "--host", noisy, "--json")
        assert run.code == 1 and run.json["reason"] == reason, run.out
        assert ready.keys() == before, "nothing from a failed download is installed"
    with noisy_line(ready.host.url, lambda frame: frame[:-7]) as cutting:
        cut = run_terminal("signon", "--data", str(ready.folder), "--host", cutting, "--json")
    assert cut.code == 1 and cut.json["reason"] == "K3 WK download corrupt"
    assert ready.keys() == before
    diagnosis = ready("diagnose").out
    assert "communication fault" in diagnosis and "check the line" in diagnosis
    assert ready("signon").code == 0 and ready.keys()["MAK"]["generation"] == 2
    assert ready.purchase().code == 0


def test_k3_response_mac_that_fails(ready: Rig) -> None:
    with noisy_line(ready.host.url, flip_bit(3)) as noisy:
        run = run_terminal("purchase", "--amount", "1.00", "--pan", PAN, "--expiry", "2812",
                           "--data", str(ready.folder), "--host", noisy, "--json")
    assert run.code == 1 and run.json["reason"] == "K3 MAK response MAC bad"
    assert run.json["found_by"] == "terminal"
    assert "K3 MAK response MAC bad" in ready("diagnose").out


# --- key errors the host finds, and --auto-signon ---------------------------------------------


@pytest.mark.parametrize(
    ("action", "reason", "words"),
    [
        (("keys", "revoke"), "K1 WK", "revoked"),
        (("keys", "expire"), "K2 WK", "key expired"),
        (("keys", "rotate"), "K2 MAK", "not updated in time"),
        (("keys", "tamper"), "K3 MAK", "tampered"),
    ],
)
def test_host_key_errors_then_recovery(ready: Rig, action: tuple[str, str], reason: str,
                                       words: str) -> None:
    ready.host.admin(*action, ready.tid)
    run = ready.purchase("--json")
    assert run.code == 1 and run.json["reason"].startswith(reason) and run.json["found_by"] == "host"
    assert words in ready("diagnose").out
    assert ready("signon").code == 0 and ready.purchase().code == 0


def test_auto_signon_fixes_a_working_key_error(ready: Rig) -> None:
    ready.host.admin("keys", "revoke", ready.tid)
    run = ready.purchase("--auto-signon")
    assert run.code == 0 and "--auto-signon: signing on once and retrying" in run.out
    assert "APPROVED" in run.out


def test_auto_signon_refuses_a_tmk_error(ready: Rig) -> None:
    ready.host.admin("keys", "revoke", "--tmk", ready.tid)
    run = ready.purchase("--auto-signon", "--json")
    assert run.code == 1 and len(run.json["steps"]) == 1
    assert run.json["key"] in ("TMK", "WK")
    signon = ready("signon", "--json")
    assert signon.json["reason"].startswith("K1 TMK")
    assert "new key ceremony is needed" in ready("signon").out
    assert "rekey" in ready("diagnose").out
    ready.ceremony = ready.host.admin("terminal", "rekey", ready.tid)
    assert ready.load_tmk().code == 0 and ready("signon").code == 0
    assert ready.purchase().code == 0


def test_a_14_without_a_reason_is_the_hosts_own_code(ready: Rig) -> None:
    with foreign_host("14") as foreign:
        run = run_terminal("echo", "--data", str(ready.folder), "--host", foreign, "--json")
    assert run.code == 1 and run.json["outcome"] == "host_code" and "reason" not in run.json
    assert "invalid card number" in ready("diagnose").out


# --- a host that cannot be reached or does not answer ------------------------------------------


def test_a_host_that_never_answers_times_out(ready: Rig) -> None:
    with silent_host() as silent:
        run = run_terminal("purchase", "--amount", "1.00", "--pan", PAN, "--expiry", "2812",
                           "--data", str(ready.folder), "--host", silent, "--timeout", "0.5")
    assert run.code == 3 and "no response from" in run.err and "0.5 s" in run.err
    assert "Traceback" not in run.err


def test_an_unreachable_host_says_so(ready: Rig) -> None:
    run = run_terminal("echo", "--data", str(ready.folder), "--host", closed_port(), "--json")
    assert run.code == 3 and "refused" in run.json["message"]


def test_no_terminal_yet_is_a_clear_message(tmp_path: Path) -> None:
    run = run_terminal("status", "--data", str(tmp_path / "none"))
    assert run.code == 2 and "pos-terminal init" in run.err




class PowerCut(BaseException):
    """The terminal stops dead between the host's answer and the end of its key write."""


def test_a_crash_while_storing_new_keys_keeps_the_old_set(ready: Rig,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """ERROR14.md's power cut: the host issued new keys, the terminal died writing them, so it
    comes back with its old, whole set, which the host has retired: K2, fixed by a sign-on."""
    before = ready.keys()

    def cut(*_: object) -> None:
        raise PowerCut

    with monkeypatch.context() as patch:
        patch.setattr("terminal.keystore.Keystore.save", cut)
        with pytest.raises(PowerCut):
            ready("signon")
    assert ready.keys() == before
    run = ready.purchase("--json")
    assert run.json["reason"] == "K2 MAK missed rotation"
    assert "power cut" in ready("diagnose").out
    assert ready("signon").code == 0 and ready.purchase().code == 0

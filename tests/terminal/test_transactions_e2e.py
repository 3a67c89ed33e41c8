"""The rest of a terminal's day against a real pos-host (PROTOCOL.md §7): inquiry, void, refund,
reversal, settlement and batch upload, approved and refused, and the pending reversal surviving
a SIGKILL of pos-terminal between its request and the answer.

Balances are read from the host (`pos-host card list`): the host's records are the truth the
terminal's ledger is measured against.
"""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from protocol.framing import FrameReader, length_prefixed
from protocol.mask import mask_pan
from protocol.transport.noisy import serving
from tests.support import add_card
from tests.terminal.conftest import Host, Rig, new_rig, run_terminal, start
from tests.terminal.processes import COMMAND_TIMEOUT, terminal_command

EXPIRY = "2812"
WAIT = 20.0
_pans = itertools.count(1)


def new_card(host: Host, balance: str = "100.00") -> str:
    pan = f"62220000{next(_pans):04d}0000"[:12] + f"{next(_pans):04d}"
    add_card(host.data, pan, expiry=EXPIRY, pin="1234", balance=balance)
    return pan


def balance(host: Host, pan: str) -> str:
    return str(host.admin("card", "show", pan)["balance"])


def card(pan: str) -> tuple[str, ...]:
    return ("--pan", pan, "--expiry", EXPIRY)


@dataclass
class Silent:
    """A 127.0.0.1 listener that reads whole requests and never answers: the host whose answer
    never arrives. What it read is kept, so a test can hand it to the real host."""

    url: str = ""
    frames: list[bytes] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)


@contextmanager
def silent_listener() -> Iterator[Silent]:
    silent = Silent()

    def handle(conn: socket.socket) -> None:
        reader = FrameReader()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:  # read, never answer, until the peer goes
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return
            for frame in reader.feed(chunk):
                silent.frames.append(frame)
                silent.arrived.set()

    with serving(handle) as url:
        silent.url = url
        yield silent


def relay(host: Host, frame: bytes) -> bytes:
    """Hand a captured request to the real host, as if the line had carried it after all."""
    with socket.create_connection(("127.0.0.1", host.running.port), timeout=10) as conn:
        conn.sendall(length_prefixed(frame))
        reader = FrameReader()
        while True:
            frames = reader.feed(conn.recv(65536))
            if frames:
                return frames[0]


def killed_mid_purchase(ready: Rig, pan: str, amount: str) -> bytes:
    """A real pos-terminal process sends a purchase to a host that never answers and is
    SIGKILLed while it waits; the request it sent is returned."""
    with silent_listener() as silent:
        process = subprocess.Popen(
            [*terminal_command(), "purchase", "--amount", amount, *card(pan),
             "--data", str(ready.folder), "--host", silent.url, "--timeout", "60"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
        try:
            assert silent.arrived.wait(WAIT), "the purchase never reached the line"
        finally:
            process.kill()
            process.wait(COMMAND_TIMEOUT)
        assert process.returncode == -9
        return silent.frames[0]


def _env() -> dict[str, str]:
    import os

    from tests.support import REPO
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


# --- the pending reversal survives a SIGKILL ------------------------------------------------


def test_a_sigkill_while_waiting_leaves_the_reversal_pending_and_no_money_is_lost(
        ready: Rig) -> None:
    host = ready.host
    pan = new_card(host, "100.00")
    frame = killed_mid_purchase(ready, pan, "30.00")
    assert (ready.folder / "pending.json").exists()
    assert pan.encode() not in (ready.folder / "pending.json").read_bytes()
    status = ready("status", "--json").json
    assert status["pending"]["kind"] == "purchase" and status["pending"]["reason"] == "98"
    assert status["pending"]["pan"] == mask_pan(pan)
    assert "pending reversal" in ready("status").out
    # The line did carry it after all: the host debits the card and its answer is lost.
    relay(host, frame)
    assert balance(host, pan) == "70.00"
    # The next purchase sends the reversal first: the debit comes back, then the new sale.
    sale = ready("purchase", "--amount", "5.00", *card(pan), "--json")
    assert sale.code == 0, sale.out + sale.err
    assert [step["command"] for step in sale.json["steps"]] == ["reversal", "purchase"]
    assert sale.json["steps"][0]["outcome"] == "approved"
    assert balance(host, pan) == "95.00"
    assert not (ready.folder / "pending.json").exists()
    assert ready("status", "--json").json["pending"] is None
    batch = ready("batch", "--json").json
    states = {e["stan"]: e["state"] for b in batch["batches"] for e in b["entries"]}
    assert sorted(states.values()) == ["approved", "reversed"]


def test_a_reversal_of_what_never_arrived_reverses_nothing(ready: Rig) -> None:
    host = ready.host
    pan = new_card(host, "100.00")
    killed_mid_purchase(ready, pan, "30.00")
    assert balance(host, pan) == "100.00"
    done = ready("reverse", "--json")
    assert done.code == 0 and done.json["outcome"] == "approved"
    assert balance(host, pan) == "100.00"
    assert ready("reverse").out.strip() == "reversal: nothing pending"


def test_no_answer_in_process_leaves_it_pending_and_says_so(ready: Rig) -> None:
    pan = new_card(ready.host)
    with silent_listener() as silent:
        run = run_terminal("purchase", "--amount", "1.00", *card(pan), "--data", str(ready.folder),
                           "--host", silent.url, "--timeout", "0.5")
    assert run.code == 3 and "reversal is pending" in run.err
    assert len(run.err.splitlines()) == 1
    assert ready("status", "--json").json["pending"]["reason"] == "98"


def test_an_unconfirmed_void_is_reversed_and_its_sale_stands(ready: Rig) -> None:
    host = ready.host
    pan = new_card(host, "100.00")
    sale = ready("purchase", "--amount", "40.00", *card(pan), "--json").json
    with silent_listener() as silent:
        lost = run_terminal("void", "--stan", stan_of(sale), *card(pan), "--data",
                            str(ready.folder), "--host", silent.url, "--timeout", "0.5")
        assert silent.arrived.wait(WAIT)
    assert lost.code == 3 and "reversal is pending" in lost.err
    relay(host, silent.frames[0])  # the host credited the card; the answer was lost
    assert balance(host, pan) == "100.00"
    done = ready("reverse", "--json")
    assert done.code == 0 and done.json["outcome"] == "approved", done.out
    assert balance(host, pan) == "60.00"  # the void's credit is taken back: the sale stands
    entries = ready("batch", "--json").json["batches"][-1]["entries"]
    states = {(e["kind"], e["state"]) for e in entries}
    assert ("purchase", "approved") in states and ("void", "reversed") in states


# --- a reversal that meets 14 ---------------------------------------------------------------


def test_a_reversal_answered_14_stays_pending_until_a_signon(ready: Rig) -> None:
    host = ready.host
    pan = new_card(host, "100.00")
    relay(host, killed_mid_purchase(ready, pan, "10.00"))
    assert balance(host, pan) == "90.00"
    host.admin("keys", "revoke", ready.tid)
    blocked = ready("purchase", "--amount", "1.00", *card(pan), "--json")
    assert blocked.code == 1 and blocked.json["outcome"] == "blocked"
    reversal = blocked.json["steps"][0]
    assert reversal["command"] == "reversal" and reversal["rc"] == "14"
    assert reversal["reason"].startswith("K1 WK")
    text = ready("purchase", "--amount", "1.00", *card(pan))
    assert "reversal: KEY ERROR 14 K1 WK" in text.out and "stays pending" in text.out
    assert "purchase: NOT SENT" in text.out
    assert balance(host, pan) == "90.00"
    assert ready("status", "--json").json["pending"] is not None
    diagnosis = ready("diagnose").out
    assert "K1 WK" in diagnosis and "pending reversal goes out after the sign-on" in diagnosis
    assert "a reversal is pending" in diagnosis
    sale = ready("purchase", "--auto-signon", "--amount", "1.00", *card(pan), "--json")
    assert sale.code == 0, sale.out
    commands = [step["command"] for step in sale.json["steps"]]
    assert commands == ["reversal", "purchase", "signon", "reversal", "purchase"]
    assert balance(host, pan) == "99.00"


# --- each transaction approved and refused --------------------------------------------------


def test_inquiry_shows_the_hosts_balance(ready: Rig) -> None:
    pan = new_card(ready.host, "123.45")
    run = ready("inquiry", *card(pan), "--json")
    assert run.code == 0 and run.json["balance"] == "123.45"
    text = ready("inquiry", *card(pan)).out
    assert "BALANCE INQUIRY" in text and "Balance   CNY 123.45" in text and pan not in text
    unknown = ready("inquiry", "--pan", "6229999999999999", "--expiry", EXPIRY, "--json")
    assert unknown.code == 1 and unknown.json["rc"] == "56"


def stan_of(run: dict[str, object]) -> str:
    return str(run["stan"])


def test_void_approved_then_refused_twice_25_and_64(ready: Rig) -> None:
    host = ready.host
    pan = new_card(host, "100.00")
    sale = ready("purchase", "--amount", "40.00", *card(pan), "--json").json
    assert balance(host, pan) == "60.00"
    wrong = ready("void", "--stan", stan_of(sale), "--amount", "39.00", *card(pan), "--json")
    assert wrong.code == 1 and wrong.json["rc"] == "64"
    void = ready("void", "--stan", stan_of(sale), *card(pan), "--json")
    assert void.code == 0, void.out + void.err
    assert balance(host, pan) == "100.00"
    again = ready("void", "--rrn", sale["rrn"], *card(pan), "--json")
    assert again.code == 1 and again.json["rc"] == "12"
    unknown = ready("void", "--stan", "999000", "--amount", "1.00", *card(pan), "--json")
    assert unknown.code == 1 and unknown.json["rc"] == "25"
    assert balance(host, pan) == "100.00"
    local = ready("void", "--stan", "999001", *card(pan))
    assert local.code == 2 and "ledger" in local.err and len(local.err.splitlines()) == 1
    text = ready("batch").out
    assert "voided" in text and "void" in text


def test_refund_approved_then_above_what_remains_64_and_unknown_25(ready: Rig) -> None:
    host = ready.host
    pan = new_card(host, "100.00")
    sale = ready("purchase", "--amount", "50.00", *card(pan), "--json").json
    part = ready("refund", "--stan", stan_of(sale), "--amount", "20.00", *card(pan), "--json")
    assert part.code == 0, part.out + part.err
    assert balance(host, pan) == "70.00"
    above = ready("refund", "--stan", stan_of(sale), "--amount", "30.01", *card(pan), "--json")
    assert above.code == 1 and above.json["rc"] == "64"
    unknown = ready("refund", "--stan", "999002", "--amount", "1.00", *card(pan), "--json")
    assert unknown.code == 1 and unknown.json["rc"] == "25"
    assert balance(host, pan) == "70.00"
    receipt = ready("refund", "--stan", stan_of(sale), "--amount", "1.00", *card(pan)).out
    assert "REFUND" in receipt and "APPROVED" in receipt and "CNY 1.00" in receipt


def test_settle_balanced_starts_a_new_batch(ready: Rig) -> None:
    pan = new_card(ready.host, "100.00")
    sale = ready("purchase", "--amount", "10.00", *card(pan), "--json").json
    ready("purchase", "--amount", "5.00", *card(pan))
    assert ready("void", "--stan", stan_of(sale), *card(pan)).code == 0
    ready("refund", "--stan", stan_of(sale), "--amount", "1.00", *card(pan))  # 12: voided
    view = ready("batch", "--json").json
    totals = view["batches"][-1]["totals"]
    assert totals == {"debit_amount": "15.00", "debit_count": 2, "credit_amount": "10.00",
                      "credit_count": 1}
    hosts = ready.host.admin("batch", "show", ready.tid, "--batch", f"{view['current_batch']:06d}")
    assert hosts["totals"] == totals  # what the terminal believes is what the host recorded
    done = ready("settle", "--json")
    assert done.code == 0, done.out + done.err
    assert done.json["balanced"] and done.json["uploaded"] == 0
    assert done.json["new_batch"] == view["current_batch"] + 1
    assert ready("status", "--json").json["batch"] == view["current_batch"] + 1
    # The settled batch takes no more voids: the host's 12.
    closed = ready("void", "--stan", stan_of(sale), "--batch", str(view["current_batch"]),
                   *card(pan), "--json")
    assert closed.code == 1 and closed.json["rc"] == "12"


def test_settle_auto_signon_shows_the_signon_it_made(ready: Rig) -> None:
    """Settling with revoked keys: the 14, the sign-on and the settlement again, all shown."""
    pan = new_card(ready.host, "100.00")
    ready("purchase", "--amount", "2.00", *card(pan))
    batch = ready("status", "--json").json["batch"]
    ready.host.admin("keys", "revoke", ready.tid)
    done = ready("settle", "--auto-signon", "--json")
    assert done.code == 0, done.out + done.err
    commands = [step["command"] for step in done.json["steps"]]
    assert commands == ["settle", "signon", "settle"], commands
    assert done.json["steps"][0]["rc"] == "14" and done.json["new_batch"] == batch + 1


def test_settle_unbalanced_uploads_the_batch_then_starts_a_new_one(ready: Rig) -> None:
    pan = new_card(ready.host, "500.00")
    for _ in range(10):
        assert ready("purchase", "--amount", "1.00", *card(pan)).code == 0
    ledger = ready.folder / "ledger.json"
    doc = json.loads(ledger.read_text())
    doc["entries"] = doc["entries"][1:]  # the terminal lost one record: its totals are short
    ledger.write_text(json.dumps(doc))
    done = ready("settle", "--json")
    assert done.code == 0, done.out + done.err
    host_view = ready.host.admin("batch", "show", ready.tid, "--batch", f"{done.json['batch']:06d}")
    assert host_view["uploaded"] == 9 and host_view["totals"]["debit_count"] == 10
    assert not done.json["balanced"] and done.json["codes"][0] == "2"
    assert done.json["uploaded"] == 9
    commands = [step["command"] for step in done.json["steps"]]
    assert commands == ["settle", "upload", "upload"]
    assert done.json["new_batch"] is not None
    text = ready("settle").out
    assert "settlement: BALANCED" in text  # the new batch is empty on both sides


def test_status_batch_and_settle_keep_json_and_never_show_the_pan(ready: Rig) -> None:
    pan = new_card(ready.host)
    ready("purchase", "--amount", "2.00", *card(pan))
    for command in ("batch", "status", "settle"):
        run = ready(command, "--json")
        assert isinstance(run.json, dict) and pan not in run.out, command
    assert pan.encode() not in (ready.folder / "ledger.json").read_bytes()


def test_the_pending_record_is_written_before_the_request_leaves(ready: Rig,
                                                                 tmp_path: Path) -> None:
    """What the silent host reads, the pending record already holds."""
    pan = new_card(ready.host)
    with silent_listener() as silent:
        process = subprocess.Popen(
            [*terminal_command(), "purchase", "--amount", "3.00", *card(pan),
             "--data", str(ready.folder), "--host", silent.url, "--timeout", "60"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
        try:
            assert silent.arrived.wait(WAIT)
            pending = ready.folder / "pending.json"
            assert pending.exists()  # read while the process still waits for its answer
        finally:
            process.kill()
            process.wait(COMMAND_TIMEOUT)


# --- the same day in the cup dialect --------------------------------------------------------


@pytest.fixture(scope="module")
def cup_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    yield from start(tmp_path_factory, "cup")


def test_the_whole_day_in_cup(cup_host: Host, tmp_path: Path) -> None:
    rig = new_rig(cup_host, tmp_path)
    assert rig.init().code == 0 and rig.load_tmk().code == 0 and rig("signon").code == 0
    pan = new_card(cup_host, "100.00")
    relay(cup_host, killed_mid_purchase(rig, pan, "25.00"))
    assert balance(cup_host, pan) == "75.00"
    inquiry = rig("inquiry", *card(pan), "--pin", "1234", "--json")
    assert [s["command"] for s in inquiry.json["steps"]] == ["reversal", "inquiry"]
    assert inquiry.json["balance"] == "100.00"
    sale = rig("purchase", "--amount", "30.00", *card(pan), "--json").json
    assert rig("refund", "--stan", stan_of(sale), "--amount", "10.00", *card(pan)).code == 0
    assert rig("void", "--stan", stan_of(sale), *card(pan), "--json").json["rc"] == "12"
    assert balance(cup_host, pan) == "80.00"
    done = rig("settle", "--json")
    assert done.code == 0 and done.json["balanced"], done.out

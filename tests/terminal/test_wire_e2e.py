"""A device's wire format end to end: `pos-host serve` and `pos-terminal` as real processes over
real TCP, with `--pcap` on both ends read back by tshark and the shipped dissector, and a
spec file's framing (ASCII or BCD length headers, no header) carrying a whole purchase."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.dissector import READER
from tests.support import add_card, init_host, provision_terminal, running_host
from tests.terminal.conftest import EXPIRY, MERCHANT, PAN, PIN
from tests.terminal.processes import pos_terminal

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(
    TSHARK is None, reason="tshark is not installed (scripts/_setup.sh installs it with apt-get)")


def terminal_day(data: Path, folder: Path, url: str, dialect: str, *extra: str) -> list:
    """init, load the TMK, sign on, purchase with a PIN: each a real `pos-terminal` process."""
    ceremony = provision_terminal(data, "TERM0001", MERCHANT)
    keys = []
    for part in ceremony["components"]:
        keys += ["--component", part["component"], "--kcv", part["kcv"]]
    common = ["--data", str(folder), "--host", url, "--timeout", "10"]
    runs = [
        pos_terminal("init", "TERM0001", "--merchant", MERCHANT, "--dialect", dialect, *common),
        pos_terminal("load-tmk", *keys, "--tmk-kcv", ceremony["tmk_kcv"], *common),
        pos_terminal("signon", *common, *extra),
        pos_terminal("purchase", "--amount", "12.34", "--pan", PAN, "--expiry", EXPIRY,
                     "--pin", PIN, "--json", *common, *extra),
    ]
    for run in runs:
        assert run.code == 0, (run.code, run.out, run.err)
    return runs


@pytest.fixture
def host_data(tmp_path: Path) -> Path:
    data = init_host(tmp_path / "host")
    add_card(data, PAN, expiry=EXPIRY, pin=PIN, balance="1000.00")
    return data


def tshark(path: Path, dialect: str, port: int, script: Path = READER) -> str:
    assert TSHARK is not None
    out = subprocess.run(
        [TSHARK, "-r", str(path), "-X", f"lua_script:{script}", "-o", f"posemu.dialect:{dialect}",
         "-o", f"posemu.port:{port}", "-V"], capture_output=True, text=True, timeout=120, check=True)
    assert "Lua: Error" not in out.stderr, out.stderr
    return out.stdout


@needs_tshark
def test_pcap_on_both_ends_opens_in_tshark(host_data: Path, tmp_path: Path) -> None:
    host_pcap, terminal_pcap = tmp_path / "host.pcap", tmp_path / "terminal.pcap"
    with running_host(host_data, "--dialect", "cup", "--pcap", str(host_pcap)) as host:
        runs = terminal_day(host_data, tmp_path / "t", f"tcp://{host.endpoint}", "cup",
                            "--pcap", str(terminal_pcap))
        assert '"outcome": "approved"' in runs[-1].out
        port = host.port
    for path in (host_pcap, terminal_pcap):
        assert path.stat().st_mode & 0o777 == 0o600
        tree = tshark(path, "cup", port)
        assert "TPDU: 6000000000" in tree, path
        assert "MTI: 0200" in tree and "MTI: 0210" in tree, path
        assert " 39 Response code: 00" in tree, path
        assert "  2 Primary account number: 621234******1234" in tree, path
        assert PAN not in tree
    # the terminal's capture holds this command's exchange only (the purchase), the host's all
    assert "MTI: 0800" not in tshark(terminal_pcap, "cup", port)
    assert "MTI: 0800" in tshark(host_pcap, "cup", port)


SPECS = {
    # ASCII 4-digit length counting itself, no TPDU, a 2-byte header of its own
    "ascii4": '{"name": "dev-ascii4", "base": "iso87", "length": "ascii4", '
              '"length_includes_self": true, "header": "4142"}',
    # BCD 2-byte length, the cup table without a 6-byte header
    "bcd2": '{"name": "dev-bcd2", "base": "cup", "length": "bcd2", "header": ""}',
}


@pytest.fixture(params=sorted(SPECS))
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    path = tmp_path / f"{request.param}.json"
    path.write_text(SPECS[request.param], encoding="utf-8")
    yield request.param, path


def test_spec_framing_carries_a_purchase(host_data: Path, tmp_path: Path,
                                         spec: tuple[str, Path]) -> None:
    kind, path = spec
    pcap = tmp_path / "host.pcap"
    with running_host(host_data, "--dialect", str(path), "--pcap", str(pcap)) as host:
        runs = terminal_day(host_data, tmp_path / "t", f"tcp://{host.endpoint}", str(path))
        assert '"outcome": "approved"' in runs[-1].out
    # the first bytes the terminal sent (after the 3 handshake packets) are the spec's header
    first = _payloads(pcap)[0]
    if kind == "ascii4":
        assert first[:4] == b"%04d" % len(first) and first[4:6] == b"AB"
        assert first[6:10] == b"0800"
    else:
        assert first[:2] == bytes.fromhex(f"{len(first) - 2:04d}") and first[2] == 0x60
        assert first[7:9] == bytes.fromhex("0800")  # the MTI right after the TPDU


@needs_tshark
def test_dissector_with_a_spec_files_dialect_reads_the_capture(host_data: Path, tmp_path: Path) -> None:
    path = tmp_path / "dev.json"  # the dissector reads lengths that do not count themselves
    path.write_text('{"name": "dev-ascii4", "base": "iso87", "length": "ascii4", "header": "4142"}',
                    encoding="utf-8")
    pcap = tmp_path / "host.pcap"
    with running_host(host_data, "--dialect", str(path), "--pcap", str(pcap)) as host:
        terminal_day(host_data, tmp_path / "t", f"tcp://{host.endpoint}", str(path))
        port = host.port
    out = tmp_path / "ws"
    made = subprocess.run([sys.executable, "-m", "protocol", "wireshark", "--dialect", str(path),
                           "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    tree = tshark(pcap, "dev-ascii4", port, out / "posemu.lua")
    assert "MTI: 0800" in tree and "MTI: 0210" in tree and " 39 Response code: 00" in tree


def test_serve_refuses_tcp_for_a_dialect_without_length(host_data: Path, tmp_path: Path) -> None:
    from tests.support import host_command
    path = tmp_path / "nolen.json"
    path.write_text('{"name": "nolen", "base": "iso87", "length": "none"}', encoding="utf-8")
    done = subprocess.run([*host_command(), "--data", str(host_data), "serve", "--tcp",
                           "127.0.0.1:0", "--dialect", str(path)], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2 and "no length header" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def _payloads(pcap: Path) -> list[bytes]:
    """The TCP payloads of a RAW pcap, in order (20-byte IPv4 and TCP headers, as written)."""
    data = pcap.read_bytes()
    out, pos = [], 24
    while pos < len(data):
        size = int.from_bytes(data[pos + 8:pos + 12], "little")
        packet = data[pos + 16:pos + 16 + size]
        if packet[40:]:
            out.append(packet[40:])
        pos += 16 + size
    return out


def test_the_terminal_refuses_tcp_for_a_dialect_without_length() -> None:
    from protocol.framing import LENGTH_HEADERS
    from protocol.transport.tcp import TransportError
    from terminal.channel import Wire, open_channel

    with pytest.raises(TransportError, match="no length header"):
        open_channel(Wire(host="tcp://127.0.0.1:9"), LENGTH_HEADERS["none"])

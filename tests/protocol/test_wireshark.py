"""Captures (pcap) and the Lua dissector: files the tests write are read back by tshark itself."""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from protocol import emv
from protocol.codec import get_codec
from protocol.dialects import CUP, ISO87
from protocol.dissector import DEFAULT_PORT, READER, SHIPPED, render
from protocol.framing import Framing
from protocol.link import LinkOptions, encode_frame
from protocol.message import Message
from protocol.pcap import LINKTYPE_RAW, LINKTYPE_USER0, LinkCapture, TcpCapture, _checksum, open_capture

PAN = "6222020200112233445"
TRACK = "6222020200112233445=2512"
CLOCK = 1764583200.25  # 2025-12-01 10:00:00.25 UTC


def cup_purchase() -> tuple[Message, Message]:
    icc = emv.purchase_tags("000000001234", "0156", "251130", bytes.fromhex("A1B2C3D4"), 7,
                            bytes.fromhex("1122334455667788")) + bytes.fromhex("5A0A" "6222020200112233445F")
    request = Message("0200", {
        2: PAN, 3: "000000", 4: "000000001234", 11: "000042", 22: "051", 23: "001", 25: "00",
        35: TRACK, 41: "TERM0001", 49: "156", 55: icc, 60: "22000001000",
        64: bytes.fromhex("3132333435363738"),
    })
    reply = Message("0210", {3: "000000", 11: "000042", 39: "14", 41: "TERM0001",
                             44: "K2 MAK missed rotation", 60: "22000001000"})
    return request, reply


def write_tcp(path, dialect, messages) -> None:
    writer = open_capture(path, LINKTYPE_RAW, clock=lambda: CLOCK)
    capture = TcpCapture(writer, ("127.0.0.1", 40001), ("127.0.0.1", DEFAULT_PORT))
    capture.opened()
    framing, codec = Framing(dialect), get_codec(dialect.name)
    for i, message in enumerate(messages):
        capture.sent(framing.frame(codec.encode(message)), by_client=i % 2 == 0)
    capture.closed()
    writer.close()


def test_shipped_dissector_is_generated_from_the_tables():
    assert SHIPPED.read_text(encoding="utf-8") == render(), "regenerate: python -m protocol wireshark"


def test_pcap_headers_and_checksums(tmp_path):
    path = tmp_path / "c.pcap"
    write_tcp(path, ISO87, [Message("0800", {11: "000001"})])
    data = path.read_bytes()
    assert (path.stat().st_mode & 0o777) == 0o600
    # pcap global header: magic, version 2.4, zone 0, sigfigs 0, snaplen 65535, LINKTYPE_RAW (101)
    assert data[:24] == struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)
    records, pos = [], 24
    while pos < len(data):
        sec, usec, incl, orig = struct.unpack("<IIII", data[pos:pos + 16])
        assert (sec, usec, incl == orig) == (1764583200, 250000, True)
        records.append(data[pos + 16:pos + 16 + incl])
        pos += 16 + incl
    assert len(records) == 3 + 1 + 3  # handshake, one frame, close
    for packet in records:
        assert _checksum(packet[:20]) == 0  # a valid IPv4 header checksums to zero
    syn, push = records[0], records[3]
    assert syn[33] == 0x02 and push[33] == 0x18  # SYN; PSH|ACK
    assert push[40:] == Framing(ISO87).frame(get_codec("iso87").encode(Message("0800", {11: "000001"})))
    # the data segment's sequence number follows the SYN's
    assert struct.unpack("!I", push[24:28])[0] == struct.unpack("!I", syn[24:28])[0] + 1


TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(
    TSHARK is None, reason="tshark is not installed (scripts/_setup.sh installs it with apt-get)")


def tshark(path, dialect: str, *args: str) -> str:
    out = subprocess.run(
        [TSHARK, "-r", str(path), "-X", f"lua_script:{READER}", "-o", f"posemu.dialect:{dialect}",
         *args], capture_output=True, text=True, timeout=120, check=True)
    assert "Lua: Error" not in out.stderr, out.stderr
    return out.stdout


@needs_tshark
def test_tshark_decodes_a_cup_purchase_masked(tmp_path):
    path = tmp_path / "cup.pcap"
    write_tcp(path, CUP, cup_purchase())
    tree = tshark(path, "cup", "-V")
    assert "MTI: 0200" in tree and "MTI: 0210" in tree
    assert "  2 Primary account number: 622202*********3445" in tree
    assert " 22 Point of service entry mode: 051" in tree
    assert " 23 Application PAN sequence number: 001" in tree
    assert "35 Track 2 data: <track data masked, 24 chars>" in tree
    assert "64 Message authentication code: <MAC masked, 8 bytes>" in tree
    assert "EMV tag: 9F26 Application cryptogram (ARQC): 1122334455667788" in tree
    assert "EMV tag: 5A Application PAN: 622202*********3445" in tree
    assert "Key error reason: K2 stale, key MAK: missed rotation" in tree
    assert PAN not in tree and TRACK not in tree and "D2512" not in tree
    fields = tshark(path, "cup", "-T", "fields", "-e", "posemu.mti", "-e", "posemu.f2", "-e", "posemu.f39")
    rows = [line.split("\t") for line in fields.splitlines() if line.strip()]
    assert ["0200", "622202*********3445", ""] in rows and ["0210", "", "14"] in rows


@needs_tshark
def test_tshark_decodes_iso87_and_serial_link_frames(tmp_path):
    path = tmp_path / "iso.pcap"
    sign_on = Message("0800", {11: "000001", 41: "TERM0001", 60: "00000001003", 63: "01 "})
    keys = Message("0810", {11: "000001", 39: "00", 41: "TERM0001", 62: bytes(40)})
    write_tcp(path, ISO87, [sign_on, keys])
    tree = tshark(path, "iso87", "-V")
    assert "MTI: 0800" in tree and " 60 Reserved national: 00000001003" in tree
    assert "62 Reserved private (working keys): <key material masked, 40 bytes>" in tree

    link = tmp_path / "link.pcap"
    writer = open_capture(link, LINKTYPE_USER0, clock=lambda: CLOCK)
    capture = LinkCapture(writer)
    request = cup_purchase()[0]
    payload = Framing(CUP).payload(get_codec("cup").encode(request))
    capture.sent(encode_frame(payload, LinkOptions()), to_host=True)
    capture.sent(b"\x06", to_host=False)
    writer.close()
    tree = tshark(link, "cup", "-V")
    assert "Direction: terminal to host" in tree and "Link control: ACK" in tree
    assert "  2 Primary account number: 622202*********3445" in tree and PAN not in tree


def test_cli_writes_the_dissector_with_a_spec_files_dialect(tmp_path):
    import json
    import sys

    spec = tmp_path / "dev.json"
    spec.write_text('{"name": "dev", "base": "iso87", "length": "ascii4"}', encoding="utf-8")
    out = tmp_path / "ws"
    run = subprocess.run([sys.executable, "-m", "protocol", "wireshark", "--dialect", str(spec),
                          "--out", str(out), "--json"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"path": str(out / "posemu.lua"), "dialects": ["iso87", "cup", "dev"]}
    assert 'dialects["dev"]' in (out / "posemu_dialects.lua").read_text(encoding="utf-8")
    assert (out / "posemu.lua").read_text(encoding="utf-8") == READER.read_text(encoding="utf-8")
    spec.write_text('{"name": "dev", "base": "iso87", "text": "ebcdic"}', encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "protocol", "wireshark", "--dialect", str(spec),
                          "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "ASCII/BCD" in run.stderr


@needs_tshark
def test_tap_records_a_real_tcp_exchange(tmp_path):
    """The `--pcap` hook on both ends of a real 127.0.0.1 connection, as the host and the
    terminal drivers use it; tshark reads each side's capture back."""
    import socket

    from protocol.pcap import PcapTap

    request, reply = cup_purchase()
    framing, codec = Framing(CUP), get_codec("cup")
    def read_exactly(sock: socket.socket, n: int) -> bytes:
        got = b""
        for _ in range(100):  # bounded: a frame of this size comes in a few reads at most
            if len(got) >= n:
                break
            chunk = sock.recv(n - len(got))
            assert chunk, "peer closed early"
            got += chunk
        return got

    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(10)
        port = server.getsockname()[1]
        terminal_tap, host_tap = PcapTap(tmp_path / "t.pcap"), PcapTap(tmp_path / "h.pcap")
        client = socket.create_connection(server.getsockname(), timeout=10)
        conn, _ = server.accept()
        with client, conn:
            t = terminal_tap.connection(client.getsockname(), client.getpeername(), local_is_client=True)
            h = host_tap.connection(conn.getsockname(), conn.getpeername(), local_is_client=False)
            out = framing.frame(codec.encode(request))
            client.sendall(out)
            t.wrote(out)
            h.read(read_exactly(conn, len(out)))
            answer = framing.frame(codec.encode(reply))
            conn.sendall(answer)
            h.wrote(answer)
            t.read(read_exactly(client, len(answer)))
            t.closed()
            h.closed()
        terminal_tap.close()
        host_tap.close()
    for name in ("t.pcap", "h.pcap"):
        tree = tshark(tmp_path / name, "cup", "-V", "-o", f"posemu.port:{port}")
        assert "MTI: 0200" in tree and "MTI: 0210" in tree, name
        assert "622202*********3445" in tree and PAN not in tree

"""`--pcap` on a serial line: `pos-host serve --tcp ... --serial pty --pcap FILE` writes the link
frames (STX LEN payload ETX LRC, ACK/NAK) to FILE-serial on the user link type, the terminal's
`--pcap` its own side of the same line; tshark with the shipped dissector reads both."""

from __future__ import annotations

from pathlib import Path

from tests.support import add_card, init_host, start_host
from tests.terminal.conftest import EXPIRY, PAN, PIN, Host, new_rig
from tests.terminal.test_serial import over_serial
from tests.terminal.test_wire_e2e import needs_tshark, tshark

LINKTYPE_USER0 = 147


@needs_tshark
def test_serial_link_frames_are_captured_on_both_ends(tmp_path: Path) -> None:
    data = init_host(tmp_path / "host")
    add_card(data, PAN, expiry=EXPIRY, pin=PIN, balance="100.00")
    host_pcap = tmp_path / "host.pcap"
    running = start_host(data, "--serial", "pty", "--pcap", str(host_pcap))
    try:
        line = running.next_line()
        port = line.split()[2]
        rig = new_rig(Host(running, data, "iso87"), tmp_path)
        assert rig.init().code == 0 and rig.load_tmk().code == 0
        terminal_pcap = tmp_path / "terminal.pcap"
        code, out, err = over_serial(rig, port, "signon", "--pcap", str(terminal_pcap))
        assert code == 0, out + err
    finally:
        assert running.stop() == 0
    serial_pcap = tmp_path / "host-serial.pcap"  # --tcp too: the serial link has its own file
    for path in (serial_pcap, terminal_pcap):
        raw = path.read_bytes()
        assert int.from_bytes(raw[20:24], "little") == LINKTYPE_USER0
        assert path.stat().st_mode & 0o777 == 0o600
        tree = tshark(path, "iso87", 8583)
        assert "Direction: terminal to host" in tree and "Direction: host to terminal" in tree
        assert "Link control: ACK" in tree and "MTI: 0800" in tree and "MTI: 0810" in tree, path
        assert "62 Reserved private (working keys): <key material masked" in tree

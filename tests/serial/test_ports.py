"""The serial transport over real kernel ptys: os.openpty() pairs and socat pairs."""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from pathlib import Path
from subprocess import Popen

import pytest

from protocol.link import ACK, NAK, LinkOptions, encode_frame
from protocol.trace import TraceOptions
from protocol.transport.serial import (
    PortSpec,
    PortSpecError,
    SerialChannel,
    SerialLinkError,
    SerialTimeout,
    parse_port_spec,
    serve_serial,
)
from tests.serial.conftest import FAST, WAIT, RawPeer, ServerFactory


def reverse(payload: bytes) -> bytes:
    return payload[::-1]


class Recorder:
    """A handler that answers by reversing and remembers every payload it was given."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def __call__(self, payload: bytes) -> bytes:
        self.calls.append(payload)
        return reverse(payload)


# --- round trips ---------------------------------------------------------------------------------

def test_round_trip_over_a_pty_the_server_creates(serial_server: ServerFactory) -> None:
    path = serial_server(reverse)
    assert path.startswith("/dev/pts/")
    with SerialChannel(path) as channel:
        assert channel.exchange(b"\x02hello\x03\x06\x15\x10", WAIT) == b"\x10\x15\x06\x03olleh\x02"
        assert channel.exchange(bytes(range(256)) * 4, WAIT) == bytes(range(255, -1, -1)) * 4
    with SerialChannel(path) as channel:  # a terminal run after another finds the port alive
        assert channel.exchange(b"again", WAIT) == b"niaga"


def test_round_trip_over_a_socat_pair(serial_server: ServerFactory,
                                      socat_pair: tuple[str, str, Popen[bytes]]) -> None:
    a, b, _ = socat_pair
    serial_server(reverse, f"{a},baud=115200,length=binary,lrc=stx-etx")
    with SerialChannel(f"{b},baud=115200,length=binary,lrc=stx-etx") as channel:
        assert channel.exchange(b"over socat", WAIT) == b"tacos revo"


def test_dle_stuffed_frames_over_a_pty(serial_server: ServerFactory) -> None:
    path = serial_server(reverse, "pty,length=none")
    with SerialChannel(path, LinkOptions(length="none")) as channel:
        assert channel.exchange(b"\x02\x10\x03", WAIT) == b"\x03\x10\x02"


def test_pyserial_urls_are_ports_too(serial_server: ServerFactory,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    # loop:// echoes: the channel receives (and ACKs) its own frame as the response.
    with SerialChannel("loop://") as channel:
        assert channel.exchange(b"echo", WAIT) == b"echo"
    with SerialChannel(f"spy://{serial_server(reverse)}") as channel:  # hexdumps to stderr
        assert channel.exchange(b"spied", WAIT) == b"deips"
    assert b"spied".hex(" ") in capsys.readouterr().err


# --- errors on the line --------------------------------------------------------------------------

def test_a_corrupted_frame_is_nak_ed_and_the_resent_one_served_once(
        serial_server: ServerFactory, raw_pty: RawPeer, caplog: pytest.LogCaptureFixture) -> None:
    handler = Recorder()
    serial_server(handler, raw_pty.path, link_options=FAST)
    good = encode_frame(b"request", FAST)
    with caplog.at_level(logging.INFO):
        raw_pty.write(good[:4] + b"X" + good[5:])
        raw_pty.expect(bytes([NAK]))
        raw_pty.write(good)
        raw_pty.expect(bytes([ACK]) + encode_frame(b"tseuqer", FAST))
        raw_pty.write(bytes([ACK]))
    # The server logs a rejection after sending its NAK; once it has answered the resent frame,
    # that log line is certainly written.
    assert f"serial {raw_pty.path}: rejected 12 bytes: bad LRC" in caplog.text
    assert handler.calls == [b"request"]


def test_the_terminal_resends_a_nak_ed_request(raw_pty: RawPeer) -> None:
    with SerialChannel(raw_pty.path, FAST) as channel:
        result: list[bytes] = []
        client = threading.Thread(target=lambda: result.append(channel.exchange(b"req", WAIT)))
        client.start()
        raw_pty.expect_frame(b"req")
        raw_pty.write(bytes([NAK]))
        raw_pty.expect_frame(b"req")
        raw_pty.write(bytes([ACK]) + encode_frame(b"resp", FAST))
        raw_pty.expect(bytes([ACK]))
        client.join(WAIT)
    assert result == [b"resp"]


def test_a_lost_ack_does_not_deliver_twice(serial_server: ServerFactory,
                                           raw_pty: RawPeer) -> None:
    handler = Recorder()
    serial_server(handler, raw_pty.path, link_options=FAST)
    first = encode_frame(b"first", FAST)
    raw_pty.write(first)
    raw_pty.expect(bytes([ACK]) + encode_frame(b"tsrif", FAST))
    raw_pty.write(bytes([ACK]))
    raw_pty.write(first)  # as if our ACK had been lost: the terminal sends it again
    raw_pty.expect(bytes([ACK]))
    raw_pty.write(encode_frame(b"second", FAST))  # served in order, so after any second "first"
    raw_pty.expect(bytes([ACK]) + encode_frame(b"dnoces", FAST))
    raw_pty.write(bytes([ACK]))
    assert handler.calls == [b"first", b"second"]


def test_a_response_whose_request_ack_was_lost_still_completes_the_exchange(
        raw_pty: RawPeer) -> None:
    with SerialChannel(raw_pty.path, FAST) as channel:
        result: list[bytes] = []
        client = threading.Thread(target=lambda: result.append(channel.exchange(b"req", WAIT)))
        client.start()
        raw_pty.expect_frame(b"req")
        raw_pty.write(encode_frame(b"resp", FAST))  # our ACK for "req" is lost on the way
        raw_pty.expect(bytes([ACK]))
        raw_pty.expect_frame(b"req")  # retransmitted after ack_timeout
        raw_pty.write(bytes([ACK]))
        client.join(WAIT)
    assert result == [b"resp"]


def test_after_the_retry_limit_the_user_sees_a_link_error(raw_pty: RawPeer) -> None:
    with SerialChannel(raw_pty.path, FAST) as channel:
        with pytest.raises(SerialLinkError, match="no ACK after 4 transmissions"):
            channel.exchange(b"anyone?", WAIT)
        assert raw_pty.read(1000, timeout=0.2) == encode_frame(b"anyone?", FAST) * 4


def test_an_acked_request_without_response_times_out(raw_pty: RawPeer) -> None:
    with SerialChannel(raw_pty.path, FAST) as channel:
        raw_pty.write(bytes([ACK]))  # early: the ACK waits in the line until the frame is sent
        with pytest.raises(SerialTimeout, match=r"no response within 0\.5 s"):
            channel.exchange(b"req", 0.5)


def test_a_port_that_cannot_be_opened_is_reported_and_the_server_returns() -> None:
    errors: list[SerialLinkError] = []
    error = serve_serial("/dev/ttyNOSUCH0", reverse, stop=threading.Event(),
                         on_error=errors.append)
    assert errors == [error]
    assert str(error) == "port /dev/ttyNOSUCH0 cannot be opened: no such device: is it " \
        "plugged in, and is the path right?"
    with pytest.raises(SerialLinkError, match="cannot be opened"):
        SerialChannel("/dev/ttyNOSUCH0")


def test_a_port_that_vanishes_ends_its_server_with_a_message(raw_pty: RawPeer) -> None:
    errors: list[SerialLinkError] = []
    opened = threading.Event()
    result: list[SerialLinkError | None] = []
    server = threading.Thread(target=lambda: result.append(serve_serial(
        raw_pty.path, reverse, stop=threading.Event(), on_ready=lambda _: opened.set(),
        on_error=errors.append)))
    server.start()
    assert opened.wait(WAIT)
    raw_pty.close()  # the cable is pulled
    server.join(WAIT)
    assert not server.is_alive()
    assert result == errors and len(errors) == 1
    assert str(errors[0]).startswith(f"port {raw_pty.path} vanished: ")


def test_a_socat_pair_that_dies_ends_the_terminal_exchange(
        socat_pair: tuple[str, str, Popen[bytes]]) -> None:
    a, _, proc = socat_pair
    with SerialChannel(a, FAST) as channel:
        proc.terminate()
        proc.wait(WAIT)
        with pytest.raises(SerialLinkError, match="vanished"):
            channel.exchange(b"hello?", WAIT)


def test_a_failing_handler_or_an_oversized_answer_costs_one_message_not_the_port(
        serial_server: ServerFactory, caplog: pytest.LogCaptureFixture) -> None:
    def handle(payload: bytes) -> bytes:
        if payload == b"boom":
            raise RuntimeError("a bug in the host")
        return b"x" * 10_000 if payload == b"big" else reverse(payload)

    path = serial_server(handle)
    with caplog.at_level(logging.INFO), SerialChannel(path, FAST) as channel:
        for request in (b"boom", b"big"):
            with pytest.raises(SerialTimeout):
                channel.exchange(request, 0.3)
        assert channel.exchange(b"ok", WAIT) == b"ko"  # the port is still served
    assert "the handler failed" in caplog.text
    assert "message not sent: a link frame carries 1..9999 bytes" in caplog.text


# --- trace ---------------------------------------------------------------------------------------

def test_trace_names_control_bytes_and_masks_the_whole_message_by_default(
        serial_server: ServerFactory) -> None:
    lines: list[str] = []
    path = serial_server(reverse)
    with SerialChannel(path, trace=TraceOptions(lines.append)) as channel:
        channel.exchange(b"secret", WAIT)
    text = "\n".join(lines)
    assert "> STX 00 06 2A 2A 2A 2A 2A 2A ETX LRC" in text
    assert "< ACK" in text and "> ACK" in text
    assert b"secret".hex().upper() not in text.replace(" ", "")


# --- port specs ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "spec"), [
    ("/dev/ttyUSB0", PortSpec("/dev/ttyUSB0")),
    ("/dev/ttyS1,baud=115200,bytesize=7,parity=e,stopbits=2,rtscts",
     PortSpec("/dev/ttyS1", 115200, 7, "E", 2, rtscts=True)),
    ("socket://10.0.0.5:4001,xonxoff=on,length=binary,ack_nak=off,retries=5,ack_timeout=3",
     PortSpec("socket://10.0.0.5:4001", xonxoff=True, link=(
         ("length", "binary"), ("ack_nak", False), ("retries", 5), ("ack_timeout", 3.0)))),
    ("pty,lrc=msg-etx,inter_byte_timeout=0.2,max_length=2048",
     PortSpec("pty", link=(("lrc", "msg-etx"), ("inter_byte_timeout", 0.2),
                           ("max_length", 2048)))),
])
def test_port_specs_parse(text: str, spec: PortSpec) -> None:
    assert parse_port_spec(text) == spec


def test_spec_link_settings_apply_over_the_programs_options() -> None:
    spec = parse_port_spec("pty,retries=1")
    assert spec.link_options(LinkOptions(length="binary")) == LinkOptions(length="binary",
                                                                          retries=1)


@pytest.mark.parametrize(("text", "message"), [
    ("", "no port"),
    ("/dev/ttyS0,baud=fast", "baud: invalid literal"),
    ("/dev/ttyS0,parity=X", "parity: must be one of N, E, O, M, S"),
    ("/dev/ttyS0,speed=9600", "speed: unknown setting"),
    ("/dev/ttyS0,rtscts=maybe", "rtscts: must be on or off"),
    ("/dev/ttyS0,length=ascii", "length must be one of"),
    ("/dev/ttyS0,inter_byte_timeout=5", "inter_byte_timeout must be shorter"),
])
def test_bad_port_specs_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(PortSpecError, match=message):
        parse_port_spec(text)


# --- scripts/vserial -----------------------------------------------------------------------------

def test_vserial_makes_a_working_pair_and_ending_it_pulls_the_cable(
        serial_server: ServerFactory, tmp_path: Path) -> None:
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed (scripts/_setup.sh installs it)")
    script = Path(__file__).parents[2] / "scripts" / "vserial"
    proc = subprocess.Popen([str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]  # socat is up when these are printed
        paths = [line.split()[1] for line in lines]
        assert paths == [str(tmp_path / "ttyA"), str(tmp_path / "ttyB")]
        serial_server(reverse, paths[0])
        with SerialChannel(paths[1]) as channel:
            assert channel.exchange(b"through the cable", WAIT) == b"elbac eht hguorht"
            proc.terminate()
            proc.wait(WAIT)
            with pytest.raises(SerialLinkError, match="vanished"):
                channel.exchange(b"anyone?", WAIT)
    finally:
        proc.kill()
        proc.wait(WAIT)
        assert proc.stdout is not None
        proc.stdout.close()

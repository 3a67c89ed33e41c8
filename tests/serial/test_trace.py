"""The link trace shows every byte a tester needs and none that PROTOCOL.md §6 forbids."""

from __future__ import annotations

import pytest

from protocol.codec import get_codec
from protocol.dialects import get_dialect
from protocol.framing import Framing
from protocol.link import ACK, NAK, LinkOptions, encode_frame
from protocol.message import Message
from protocol.trace import LinkTrace, TraceOptions

PAN = "6222021234567890123"
TRACK2 = PAN + "=30121010000012345"
PIN_BLOCK = bytes.fromhex("A1B2C3D4E5F60718")
MAC = bytes.fromhex("0F1E2D3C4B5A6978")


def purchase_payload(dialect_name: str) -> bytes:
    dialect = get_dialect(dialect_name)
    message = Message("0200", {2: PAN, 3: "000000", 4: "000000001000", 11: "000123",
                               35: TRACK2, 41: "TERM0001", 42: "MERCHANT0000001",
                               52: PIN_BLOCK, 64: MAC})
    return Framing(dialect).payload(get_codec(dialect_name).encode(message))


def traced(options: LinkOptions, trace: TraceOptions, feed: list[tuple[str, bytes, float]],
           until: float = 0.0) -> None:
    """Plays `feed` (direction, bytes, time) through a trace started at t=100."""
    link_trace = LinkTrace(options, trace, start=100.0)
    for direction, data, now in feed:
        (link_trace.sent if direction == ">" else link_trace.received)(data, now)
    link_trace.tick(until)


def secrets_in(text: str) -> list[str]:
    flat = text.replace(" ", "").upper()
    middle = PAN[6:-4]
    candidates = {"PAN middle digits": middle, "track 2": TRACK2[20:],
                  "PIN block": PIN_BLOCK.hex().upper(), "MAC": MAC.hex().upper(),
                  "PAN digits as BCD": middle[1:9], "PAN digits as ASCII": middle.encode().hex()}
    return [name for name, secret in candidates.items() if secret in flat]


@pytest.mark.parametrize("dialect_name", ["cup", "iso87"])
def test_a_dialect_trace_masks_pan_track_pin_and_mac_in_bytes_and_text(dialect_name: str) -> None:
    payload = purchase_payload(dialect_name)
    options = LinkOptions()
    lines: list[str] = []
    traced(options, TraceOptions.for_dialect(get_dialect(dialect_name), lines.append),
           [(">", encode_frame(payload, options), 100.0), ("<", bytes([ACK]), 100.25)])
    text = "\n".join(lines)
    assert secrets_in(text) == []
    assert lines[0].startswith("    0.000 > STX ")
    assert "ETX LRC" in text  # the LRC would tell the XOR of the masked bytes
    assert f"2={PAN[:6]}*********{PAN[-4:]}" in text and "35=<track data masked" in text
    assert lines[-1] == "    0.250 < ACK"


def test_unmasked_bytes_show_as_they_are_on_the_wire() -> None:
    options = LinkOptions()
    lines: list[str] = []
    payload = bytes.fromhex("6000010000")
    traced(options, TraceOptions(lines.append, mask_payload=lambda p: p),
           [("<", encode_frame(payload, options), 100.5)])
    text = "\n".join(lines)
    assert text == "    0.500 < STX 00 05 60 00 01 00 00 ETX 67"


def test_without_a_dialect_every_message_byte_is_masked() -> None:
    options = LinkOptions(length="binary")
    lines: list[str] = []
    traced(options, TraceOptions(lines.append),
           [("<", encode_frame(purchase_payload("cup"), options), 101.0)])
    text = "\n".join(lines)
    assert secrets_in(text) == []
    assert set(text.split()) <= {"1.000", "<", "STX", "00", "ETX", "LRC", "2A",
                                 f"{len(purchase_payload('cup')):02X}"}


def test_a_stuffed_byte_keeps_its_dle_only_when_it_is_not_masked() -> None:
    options = LinkOptions(length="none")
    lines: list[str] = []
    payload = b"\x02\x03AB"

    def mask_first_two(p: bytes) -> bytes:
        return b"**" + p[2:]

    traced(options, TraceOptions(lines.append, mask_first_two),
           [(">", encode_frame(payload, options), 100.0)])
    assert lines == ["    0.000 > STX 2A 2A 41 42 ETX LRC"]
    lines.clear()
    traced(options, TraceOptions(lines.append, lambda p: p),
           [(">", encode_frame(payload, options), 100.0)])
    assert lines[0].startswith("    0.000 > STX DLE 02 DLE 03 41 42 ETX ")


def test_rejected_bytes_show_as_a_count_and_a_reason() -> None:
    options = LinkOptions()
    lines: list[str] = []
    frame = encode_frame(b"4761739001010119", options)
    traced(options, TraceOptions(lines.append),
           [("<", frame[:-1] + b"\x00", 100.0), (">", bytes([NAK]), 100.001),
            ("<", frame[:10], 100.1)], until=101.0)
    assert lines == ["    0.000 < [21 bytes rejected: bad LRC]",
                     "    0.001 > NAK",
                     "    1.000 < [10 bytes rejected: inter-byte timeout: frame cut after 10 bytes]"]


def test_a_long_frame_wraps_and_its_description_follows() -> None:
    options = LinkOptions()
    lines: list[str] = []
    traced(options, TraceOptions(lines.append, describe_payload=lambda p: "described"),
           [(">", encode_frame(b"x" * 50, options), 100.0)])
    text = "\n".join(lines)
    assert len(lines) == 4 and lines[-1] == " " * 12 + "described"
    assert all(len(line) < 100 for line in lines) and text.count("2A") == 50

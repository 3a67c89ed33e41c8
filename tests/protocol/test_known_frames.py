"""Frames written out by hand from PROTOCOL.md §1, checked byte for byte in both directions.

The expected bytes are spelled here field by field (bitmaps worked out bit by bit in the
comments), not captured from the codec, so they catch a codec that agrees only with itself.
"""

from __future__ import annotations

from protocol.codec import get_codec
from protocol.dialects import CUP, ISO87
from protocol.framing import FrameReader, Framing, Tpdu
from protocol.message import Message

# iso87 0800: fields 2, 11, 41, 60, 70.
# primary bitmap: bit 1 (secondary present) 0x80 + bit 2 0x40 = C0; bit 11 -> byte 1 0x20;
# bit 41 -> byte 5 0x80; bit 60 -> byte 7 0x10. secondary: bit 70 -> byte 0 0x04.
ISO87_MESSAGE = Message("0800", {
    2: "4761739001010119",
    11: "000123",
    41: "TERM0001",
    60: "00000001003",
    70: "301",
})
ISO87_FRAME_HEX = (
    "0045"                                   # length: 69 bytes follow
    "30383030"                               # MTI "0800"
    "C020000000800010"                       # primary bitmap
    "0400000000000000"                       # secondary bitmap
    "3136" "34373631373339303031303130313139"  # 2: LL "16" + PAN
    "303030313233"                           # 11: "000123"
    "5445524D30303031"                       # 41: "TERM0001"
    "303131" "3030303030303031303033"        # 60: LLL "011" + "00000001003"
    "333031"                                 # 70: "301"
)

# cup 0200: fields 2, 3, 4, 11, 14, 22, 25, 35, 41, 49, 60, 64.
# bitmap byte 0: 2,3,4 -> 40+20+10 = 70; byte 1: 11 -> 20, 14 -> 04 = 24; byte 2: 22 -> 04;
# byte 3: 25 -> 80; byte 4: 35 -> 20; byte 5: 41 -> 80; byte 6: 49 -> 80; byte 7: 60 -> 10, 64 -> 01.
CUP_MESSAGE = Message("0200", {
    2: "6222020200112233445",
    3: "000000",
    4: "000000010000",
    11: "000123",
    14: "2512",
    22: "021",
    25: "00",
    35: "6222020200112233445=25121",
    41: "TERM0001",
    49: "156",
    60: "22000001000",
    64: bytes.fromhex("0102030405060708"),
})
CUP_FRAME_HEX = (
    "005A"                                   # length: 90 = 5 TPDU + 6 header + 79 message
    "6000030000"                             # TPDU: 60, destination 0003, source 0000
    "603100000000"                           # header
    "0200"                                   # MTI, BCD
    "7024048020808011"                       # bitmap
    "19" "62220202001122334450"              # 2: LL 19 digits, left-aligned, trailing 0 nibble
    "000000"                                 # 3
    "000000010000"                           # 4
    "000123"                                 # 11
    "2512"                                   # 14
    "0210"                                   # 22: n3, left-aligned, trailing 0 nibble (PROTOCOL.md §1)
    "00"                                     # 25
    "25" "6222020200112233445D251210"        # 35: 25 digits, '=' as D, trailing 0 nibble
    "5445524D30303031"                       # 41: ASCII
    "313536"                                 # 49: an3 ASCII
    "0011" "220000010000"                    # 60: LLL 2-byte BCD 11 digits, trailing 0 nibble
    "0102030405060708"                       # 64
)


def test_iso87_frame_byte_for_byte():
    frame = bytes.fromhex(ISO87_FRAME_HEX)
    codec = get_codec("iso87")
    assert Framing(ISO87).frame(codec.encode(ISO87_MESSAGE)) == frame
    (payload,) = FrameReader().feed(frame)
    unframed = Framing(ISO87).unframe(payload)
    assert unframed.tpdu is None and unframed.header == b""
    assert codec.decode(unframed.message) == ISO87_MESSAGE


def test_cup_frame_byte_for_byte():
    frame = bytes.fromhex(CUP_FRAME_HEX)
    codec = get_codec("cup")
    framing = Framing(CUP)
    tpdu = Tpdu(destination=0x0003, source=0x0000)
    assert framing.frame(codec.encode(CUP_MESSAGE), tpdu=tpdu) == frame
    (payload,) = FrameReader().feed(frame)
    unframed = framing.unframe(payload)
    assert unframed.tpdu == tpdu
    assert unframed.header == bytes.fromhex("603100000000")
    assert codec.decode(unframed.message) == CUP_MESSAGE


def test_cup_reply_swaps_tpdu_addresses():
    request = Tpdu(destination=0x0003, source=0x0102)
    reply = request.reply()
    assert reply == Tpdu(destination=0x0102, source=0x0003)
    assert reply.build() == bytes.fromhex("6001020003")
    assert reply.reply() == request
    framed = Framing(CUP).frame(b"\x08\x10" + bytes(8), tpdu=reply)
    assert framed[:7] == bytes.fromhex("0015" "6001020003")  # 5 + 6 + 10 bytes

"""A noisy serial line on purpose: a relay between the terminal's pty and the host's.

The TCP relay (`protocol.transport.noisy`) damages a message; on a serial line the damage is to
the bytes of a link frame (PROTOCOL.md §5), under the link's own protection: a byte flipped in
a frame breaks its LRC, so the terminal NAKs it and the host sends it again; a line cut in the
middle of a frame leaves the terminal a partial frame (NAKed after the inter-byte timeout, the
NAK lost on the dead line) and the host retransmitting into nothing until its retries run out.
The relay counts what crossed each way (frames, repeats, ACKs, NAKs) so a scenario can check the
link's reaction, and it notes what it did, with the time, for the ladder.

The host serves `pos-host serve --serial pty` (it prints the path); the relay opens that path,
makes a pty pair of its own and gives the terminal the other end. Frames are cut with the link's
own parser, for the default framing (BCD length, LRC over LEN..ETX); only the host's answers are
damaged, as the TCP relay does. Its thread polls with a short bound and stops at `close`.
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from collections import Counter
from dataclasses import dataclass
from typing import Any

from protocol.link import ACK, NAK, BadFrame, Control, FrameParser, GoodFrame, LinkOptions, encode_frame

POLL = 0.05
"""Seconds between looks at the stop flag and the parsers' inter-byte deadlines."""

FRAMING = LinkOptions()


@dataclass(frozen=True)
class LineFault:
    """What the line does to the host's answer frames: `flip` bit `bit` of the message byte
    `offset` from its end (1: the last), or `cut` the line `offset` bytes into the next frame
    (then nothing passes either way); `frames` limits how many frames are damaged (None: all).
    `clean` passes everything."""

    kind: str = "clean"
    offset: int = 2
    bit: int = 0x10
    frames: int | None = None


class SerialRelay:
    def __init__(self, host_port: str, fault: LineFault) -> None:
        self.fault = fault
        self._host = os.open(host_port, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self._host)
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # kept open: with no reader on the far end, reads would fail
        self.path = os.ttyname(self._slave)
        for fd in (self._host, self._master):  # a full buffer drops bytes, never hangs the relay
            os.set_blocking(fd, False)
        self._to_terminal = FrameParser(FRAMING)
        self._to_host = FrameParser(FRAMING)
        self._counts: Counter[str] = Counter()
        self._notes: list[tuple[float, str]] = []
        self._last: dict[str, bytes] = {}
        self._damaged = 0
        self._cut = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._relay, name="serial-relay", daemon=True)
        self._thread.start()

    # --- what a scenario reads -----------------------------------------------------------------

    def take(self) -> tuple[dict[str, Any], list[tuple[float, str]]]:
        """The counts since the last take, and the notes for the ladder (then both start over)."""
        with self._lock:
            counts = {key: self._counts[key] for key in COUNTS}
            counts["cut"] = self._cut
            notes = self._notes
            self._counts, self._notes = Counter(), []
        return counts, notes

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for fd in (self._master, self._slave, self._host):
            try:
                os.close(fd)
            except OSError:
                continue

    # --- the line ------------------------------------------------------------------------------

    def _note(self, text: str) -> None:
        self._notes.append((time.time(), text))

    def _relay(self) -> None:
        ends = {self._host: (self._master, self._to_terminal, "answer"),
                self._master: (self._host, self._to_host, "request")}
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select(list(ends), [], [], POLL)
                for fd in ends:
                    target, parser, kind = ends[fd]
                    data = os.read(fd, 4096) if fd in ready else b""
                    with self._lock:
                        for token in parser.feed(data, time.monotonic()):
                            self._pass(token, target, kind)
            except OSError:
                return  # a side hung up: the line is gone, as when a cable is pulled

    def _pass(self, token: Control | GoodFrame | BadFrame, target: int, kind: str) -> None:
        """Count one token and send it on (damaged, if it is an answer and the fault says so)."""
        sender = "host" if kind == "answer" else "terminal"
        if isinstance(token, BadFrame):
            self._counts[f"{kind}_rejects"] += 1
            return
        if isinstance(token, Control):
            self._counts[f"{sender}_{'acks' if token.byte == ACK else 'naks'}"] += 1
            data = bytes([token.byte])
        else:
            self._counts[f"{kind}s"] += 1
            if self._last.get(kind) == token.payload:
                self._counts[f"{kind}_repeats"] += 1
            self._last[kind] = token.payload
            data = encode_frame(token.payload, FRAMING)
        if self._cut:
            self._counts["dropped"] += 1
            return
        if isinstance(token, Control) and token.byte == NAK:
            self._note(f"line: the {sender} NAKs a frame")
        if isinstance(token, GoodFrame) and kind == "answer":
            data = self._damage(data)
        try:
            os.write(target, data)
        except BlockingIOError:  # nobody reading that end: what a line does, it loses them
            self._counts["dropped"] += 1

    def _damage(self, frame: bytes) -> bytes:
        """The frame as the terminal gets it; a cut sends the part before it, then no more."""
        fault = self.fault
        if fault.kind == "clean" or (fault.frames is not None and self._damaged >= fault.frames):
            return frame
        self._damaged += 1
        self._counts["damaged"] += 1
        if fault.kind == "cut":
            self._cut = True
            self._note(f"line cut {fault.offset} bytes into an answer frame")
            return frame[:fault.offset]
        damaged = bytearray(frame)
        damaged[len(frame) - 2 - fault.offset] ^= fault.bit  # the message byte, before ETX and LRC
        self._note("line noise: a byte of an answer frame flipped")
        return bytes(damaged)


COUNTS = ("requests", "request_repeats", "answers", "answer_repeats", "terminal_acks",
          "terminal_naks", "host_acks", "host_naks", "damaged", "dropped", "answer_rejects",
          "request_rejects")

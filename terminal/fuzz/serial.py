"""The serial shell: a raw line, so the link layer can send what no correct link would.

It speaks §5 itself (frames, ACKs, retransmission on NAK) with the protocol package's frame
encoder and parser, and writes raw bytes past them when a step asks for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from protocol.link import ACK, CONTROL_NAMES, Control, FrameParser, GoodFrame, encode_frame
from protocol.transport.serial import SerialLinkError, open_port, parse_port_spec
from terminal.fuzz.oracles import Observation
from terminal.fuzz.probe import Step
from terminal.fuzz.tcp import TargetDown

SETTLE = 0.2
"""Seconds past the target's inter-byte timeout to wait for its NAK of a bad frame."""


class SerialTarget:
    def __init__(self, spec: str, timeout: float, separator: bytes = b"") -> None:
        parsed = parse_port_spec(spec)
        self.separator = separator
        """A message the peer ignores (a response MTI, §3), sent by `reset`."""
        self.name = parsed.port
        self.options = parsed.link_options()
        self.timeout = timeout
        try:
            self._port = open_port(parsed)
        except SerialLinkError as exc:
            raise TargetDown(str(exc)) from None
        self._parser = FrameParser(self.options)
        self._heard = False
        self._last: tuple[bytes, float] | None = None

    def __str__(self) -> str:
        return f"serial {self.name}"

    def _read(self, seen: Observation, until: float) -> bool:
        """Feed what arrives before `until` to the parser; False when the time is up."""
        left = until - time.monotonic()
        if left <= 0:
            return False
        try:
            data = self._port.read()
        except OSError as exc:
            raise TargetDown(f"{self}: the port vanished ({exc})") from None
        now = time.monotonic()
        for token in self._parser.feed(data, now) + self._parser.expire(now):
            self._heard = True
            if isinstance(token, Control):
                seen.link.append(CONTROL_NAMES[token.byte])
            elif isinstance(token, GoodFrame):
                if self.options.ack_nak:
                    self._port.write(bytes([ACK]))
                seen.answers.append(token.payload)
                seen.latencies.append(now - self._started)
        return True

    def _send_frame(self, payload: bytes, seen: Observation) -> bool:
        frame = encode_frame(payload, self.options)
        for _ in range(self.options.retries + 1):
            self._port.write(frame)
            if not self.options.ack_nak:
                return True
            mark = len(seen.link)
            until = time.monotonic() + self.options.ack_timeout
            while self._read(seen, until):
                if "ACK" in seen.link[mark:]:
                    del seen.link[mark:]
                    return True
                if "NAK" in seen.link[mark:]:
                    break
            del seen.link[mark:]
        return False

    def run(self, step: Step, payloads: tuple[bytes, ...], due: int,
            meanwhile: Callable[[], object] | None = None) -> Observation:
        seen = Observation(sent=payloads)
        self._started = time.monotonic()
        if step.raw:
            for i, data in enumerate(step.raw):
                if i and step.pause:
                    time.sleep(step.pause)
                self._port.write(data)
            if step.answered:
                self._last = (step.answered[-1], time.monotonic())
        else:
            for payload in payloads:
                if self._retransmission(payload):
                    seen.absorbed.append(payload)
                    due -= 1
                if not self._send_frame(payload, seen):
                    seen.timed_out = True
                    return seen
        if meanwhile is not None:
            meanwhile()
        sent_at = time.monotonic()
        wait = self.options.inter_byte_timeout + SETTLE if (step.link or step.quiet) else 0.0
        until = sent_at + max(wait, self.timeout if due else 0.0)
        while len(seen.answers) < due or (step.link and step.link not in seen.link) or step.quiet:
            if not self._read(seen, until):
                seen.timed_out = len(seen.answers) < due
                break
            if step.quiet and time.monotonic() - sent_at >= wait and len(seen.answers) >= due:
                break
        return seen

    def _retransmission(self, payload: bytes) -> bool:
        """§5: the frame last delivered, sent again within the duplicate window, is ACKed and
        not delivered again; so it is not a request the host can answer."""
        now = time.monotonic()
        last, self._last = self._last, (payload, now)
        return last is not None and last[0] == payload and \
            now - last[1] <= self.options.duplicate_window

    def alive(self, payload: bytes = b"") -> bool:
        """The line still reacts: a good frame of `payload` gets an ACK or a NAK back."""
        self._heard = False
        seen = self.run(Step(payloads=(payload,), answered=(payload,)), (payload,), 1)
        return self._heard or bool(seen.answers)

    def reset(self) -> None:
        """A line has no connection to drop: the parser starts clean, and a frame that is not the
        last one sent goes first, so that sending that one again (a confirmation, a shrink, a
        replay) is a new message to the peer, not a retransmission it must not deliver (§5)."""
        self._parser = FrameParser(self.options)
        if self._last is not None and self.separator:
            self._send_frame(self.separator, Observation())
            self._last = None

    def close(self) -> None:
        self._port.close()

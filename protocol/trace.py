"""The masked trace of a serial line (PROTOCOL.md §5 framing, §6 masking): every byte of both
directions for a person reading along, the link's state machine (protocol.link) left untouched."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from protocol.link import (
    CONTROL_NAMES,
    LENGTH_ENCODINGS,
    STUFFED,
    BadFrame,
    Control,
    FrameParser,
    LinkOptions,
    Token,
    lrc,
)
from protocol.shown import mask_all, show
from protocol.spec import Dialect


@dataclass(frozen=True, slots=True)
class TraceOptions:
    """Where a link trace goes and how it masks: injected, because only the caller knows the
    dialect. The defaults show the framing and hide every message byte."""

    write: Callable[[str], None]
    mask_payload: Callable[[bytes], bytes] = mask_all
    describe_payload: Callable[[bytes], str] | None = None

    @classmethod
    def for_dialect(cls, dialect: Dialect, write: Callable[[str], None]) -> TraceOptions:
        """Bytes masked field by field, and a line of the decoded fields, masked as in every
        log (PROTOCOL.md §6)."""
        def describe(payload: bytes) -> str:
            shown = show(payload, dialect)
            if shown.error is not None:  # its text names field and offset, never a value
                return f"not a {dialect.name} message: {shown.error}"
            return shown.line()

        return cls(write, lambda payload: show(payload, dialect).masked, describe)


BYTES_PER_LINE = 24


class LinkTrace:
    """Every byte of a serial line, both directions, for a person reading along.

    ACK/NAK print as they pass; a frame prints once whole, since masking needs the whole message.
    Message bytes show as masked by `mask_payload`; a DLE escape and the LRC are hidden when they
    would tell something about a masked byte; rejected bytes print as a count with the reason.
    """

    def __init__(self, options: LinkOptions, trace: TraceOptions, start: float):
        self._options = options
        self._trace = trace
        self._start = start
        self._parsers = {">": FrameParser(options), "<": FrameParser(options)}

    def sent(self, data: bytes, now: float) -> None:
        self._feed(">", data, now)

    def received(self, data: bytes, now: float) -> None:
        self._feed("<", data, now)

    def tick(self, now: float) -> None:
        """Lets a cut frame or noise show when the line goes quiet, not at the next byte."""
        for direction, parser in self._parsers.items():
            for token in parser.expire(now):
                self._show(direction, token, now)

    def _feed(self, direction: str, data: bytes, now: float) -> None:
        for token in self._parsers[direction].feed(data, now):
            self._show(direction, token, now)

    def _show(self, direction: str, token: Token, now: float) -> None:
        stamp = f"{now - self._start:9.3f} {direction} "
        if isinstance(token, Control):
            lines = [CONTROL_NAMES[token.byte]]
        elif isinstance(token, BadFrame):
            lines = [f"[{token.size} bytes rejected: {token.reason}]"]
        else:
            lines = self._frame_lines(token.payload)
        indent = " " * len(stamp)
        self._trace.write(stamp + lines[0])
        for line in lines[1:]:
            self._trace.write(indent + line)

    def _frame_lines(self, payload: bytes) -> list[str]:
        options = self._options
        masked = self._trace.mask_payload(payload)
        head = LENGTH_ENCODINGS[options.length].encode(len(payload))
        cells = ["STX", *(f"{b:02X}" for b in head)]
        for original, shown in zip(payload, masked, strict=True):
            if options.stuffing and original in STUFFED and original == shown:
                cells.append("DLE")
            cells.append(f"{shown:02X}")
        check = lrc(options, head, payload)
        cells += ["ETX", f"{check:02X}" if masked == payload else "LRC"]
        lines = [" ".join(cells[i:i + BYTES_PER_LINE])
                 for i in range(0, len(cells), BYTES_PER_LINE)]
        if self._trace.describe_payload is not None:
            lines.append(self._trace.describe_payload(payload))
        return lines

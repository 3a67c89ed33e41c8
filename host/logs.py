"""One JSON line per message, masked as PROTOCOL.md §6 says.

The line is built from the decoded request and response through `protocol.mask`, never from raw
bytes, so a PAN shows as first six and last four digits and track 2, PIN blocks, keys and MACs
show only their size. `--trace` adds the masked fields of both messages to the same line.
"""

from __future__ import annotations

import json
from typing import TextIO

from protocol.mask import mask_pan, masked_fields
from protocol.message import Message
from protocol.spec import Dialect


class MessageLog:
    def __init__(self, stream: TextIO, dialect: Dialect, trace: bool = False) -> None:
        self.stream = stream
        self.dialect = dialect
        self.trace = trace

    def message(
        self, *, ts: float, conn: str, request: Message | None, reply: Message | None,
        rc: str | None, reason: str | None, note: str, cpu_us: float,
    ) -> None:
        entry: dict[str, object] = {"ts": round(ts, 6), "conn": conn}
        if request is not None:
            entry["mti"] = request.mti
            for name, number in (("tid", 41), ("stan", 11), ("amount", 4)):
                if number in request.fields:
                    entry[name] = request.text(number).rstrip()
            pan = request.text(2) or request.text(35).partition("=")[0]
            if pan:
                entry["pan"] = mask_pan(pan)
        if reply is not None:
            entry["reply"] = reply.mti
        if rc is not None:
            entry["rc"] = rc
        if reason:
            entry["reason"] = reason
        if note:
            entry["note"] = note
        entry["us"] = round(cpu_us, 1)
        if self.trace:
            for name, msg in (("request_fields", request), ("reply_fields", reply)):
                if msg is not None:
                    entry[name] = masked_fields(msg, self.dialect)
        self.write(entry)

    def event(self, **entry: object) -> None:
        """Lines other than messages: listening, connections refused, shutdown."""
        self.write(entry)
        self.flush()

    def write(self, entry: dict[str, object]) -> None:
        """Buffered: the server flushes once per batch of messages, not once per line."""
        self.stream.write(json.dumps(entry, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        self.stream.flush()

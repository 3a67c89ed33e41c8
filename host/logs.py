"""One JSON line per message, masked as PROTOCOL.md §6 says.

The line is built from the decoded request and response through `protocol.mask`, never from raw
bytes, so a PAN shows as first six and last four digits and track 2, PIN blocks, keys and MACs
show only their size. `--trace` adds the masked fields of both messages to the same line.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import TextIO

from protocol.mask import mask_pan, masked_fields
from protocol.message import Message
from protocol.spec import Dialect

_q = encode_basestring_ascii


class MessageLog:
    def __init__(self, stream: TextIO, dialect: Dialect, trace: bool = False) -> None:
        self.stream = stream
        self.dialect = dialect
        self.trace = trace

    def message(
        self, *, ts: float, conn: str, request: Message | None, reply: Message | None,
        rc: str | None, reason: str | None, note: str, elapsed_us: float,
    ) -> None:
        """One line per message. Built by hand, as one string grown in place (every value
        through the JSON string encoder): json.dumps of a dict costs several times more, on
        every message the host answers."""
        q = _q
        line = f'{{"ts":{ts:.6f},"conn":{q(conn)}'
        if request is not None:
            fields = request.fields
            line += f',"mti":{q(request.mti)}'
            tid, stan, amount = fields.get(41), fields.get(11), fields.get(4)
            if type(tid) is str:
                line += f',"tid":{q(tid.rstrip())}'
            if type(stan) is str:
                line += f',"stan":{q(stan.rstrip())}'
            if type(amount) is str:
                line += f',"amount":{q(amount.rstrip())}'
            pan = request.text(2) or request.text(35).partition("=")[0]
            if pan:
                line += f',"pan":{q(mask_pan(pan))}'
        if reply is not None:
            line += f',"reply":{q(reply.mti)}'
        if rc:
            line += f',"rc":{q(rc)}'
        if reason:
            line += f',"reason":{q(reason)}'
        if note:
            line += f',"note":{q(note)}'
        line += f',"us":{elapsed_us:.1f}'  # wall time from frame to answer built
        if self.trace:
            for name, msg in (("request_fields", request), ("reply_fields", reply)):
                if msg is not None:
                    line += f',"{name}":{json.dumps(masked_fields(msg, self.dialect))}'
        self.stream.write(line + "}\n")

    def event(self, **entry: object) -> None:
        """Lines other than messages: listening, connections refused, shutdown."""
        self.write(entry)
        self.flush()

    def write(self, entry: dict[str, object]) -> None:
        """Buffered: the server flushes once per batch of messages, not once per line."""
        self.stream.write(json.dumps(entry, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        self.stream.flush()

"""One JSON line per message, masked as PROTOCOL.md §6 says.

The line is built from the decoded request and response through `protocol.mask`, never from raw
bytes, so a PAN shows as first six and last four digits and track 2, PIN blocks, keys and MACs
show only their size. `--trace` adds the masked fields of both messages to the same line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
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


class RateLimited:
    """Events a peer can cause thousands of times a second (failed accepts, shed connections):
    the first of a kind is logged at once, the rest counted and logged as one line per
    `interval` with the count, so that no peer can fill a disk or a terminal through the log.
    Kinds are fixed strings (an event and a reason such as `idle timeout` or `EMFILE`)."""

    def __init__(self, log: MessageLog, interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.interval = interval
        self.clock = clock
        self._counts: dict[tuple[str, str], int] = {}
        self._logged: dict[tuple[str, str], float] = {}

    def note(self, event: str, reason: str) -> None:
        key = (event, reason)
        self._counts[key] = self._counts.get(key, 0) + 1
        last = self._logged.get(key)
        if last is None or self.clock() - last >= self.interval:
            self._write(key)

    def flush(self, force: bool = False) -> None:
        """Log the counts whose interval has passed (all of them with `force`)."""
        due = self.clock() - self.interval
        for key in list(self._counts):
            if force or self._logged.get(key, due) <= due:
                self._write(key)

    def _write(self, key: tuple[str, str]) -> None:
        event, reason = key
        self.log.event(event=event, reason=reason, count=self._counts.pop(key))
        self._logged[key] = self.clock()

"""The one exception family that wire-facing code may raise.

Everything that reads bytes from a peer raises `ProtocolError` (or a subclass) and nothing else,
so a server can catch exactly one type and keep serving other terminals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from protocol.message import Message


class ProtocolError(ValueError):
    """Malformed input, located: which field, at which byte offset, and why.

    The text never includes field values, so a PAN or a key in a bad frame cannot reach a log
    through an error message.
    """

    def __init__(self, reason: str, field: int | str | None = None, offset: int | None = None):
        self.reason = reason
        self.field = field
        self.offset = offset
        self.partial: Message | None = None
        """What decoded before the failure: lets a host echo STAN and terminal in its 30."""
        where = []
        if field is not None:
            where.append(f"field {field}")
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)


class SpecError(ValueError):
    """A dialect spec (built-in or loaded from a file) that cannot describe a wire format."""


class FramingError(ProtocolError):
    """A TCP frame whose length prefix, TPDU or header is wrong."""

    def __init__(self, reason: str, field: int | str | None = None, offset: int | None = None,
                 frames: list[bytes] | None = None):
        super().__init__(reason, field, offset)
        self.frames: list[bytes] = frames or []
        """Whole frames that arrived before the bad length, in the same bytes: a server still
        answers them, as it would have had they come in an earlier read."""

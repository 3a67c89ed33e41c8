"""The one exception family that wire-facing code may raise.

Everything that reads bytes from a peer raises `ProtocolError` (or a subclass) and nothing else,
so a server can catch exactly one type and keep serving other terminals. The two halves say whose
fault it is: a `DecodeError` is the peer's (bytes that arrived malformed: answer `30`, log it),
an `EncodeError` is ours (a value we were asked to send does not fit the dialect: a bug or a bad
configuration, never the peer's doing).
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

    def __init__(self, reason: str, field: int | str | None = None, offset: int | None = None,
                 path: str | None = None):
        self.reason = reason
        self.field = field
        """The top-level element: a field number, or `MTI`, `bitmap`, `TPDU`, `length`, ..."""
        self.path = path if path is not None else ("" if field is None else str(field))
        """Where inside it, dotted: `60.3` (a subfield), `55.9F26` (a tag), `62`, `MTI`."""
        self.offset = offset
        self.partial: Message | None = None
        """What decoded before the failure: lets a host echo STAN and terminal in its 30."""
        where = []
        if self.path:
            where.append(f"field {self.path}")
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)


class DecodeError(ProtocolError):
    """The peer's fault: bytes that arrived and do not decode. `partial` holds what did."""


class EncodeError(ProtocolError):
    """Our fault: a value this side was asked to send that the dialect cannot carry."""


class SpecError(ValueError):
    """A dialect spec (built-in or loaded from a file) that cannot describe a wire format."""


class FramingError(ProtocolError):
    """A TCP frame whose length prefix, TPDU or header is wrong (either side: see the two below)."""

    def __init__(self, reason: str, field: int | str | None = None, offset: int | None = None,
                 frames: list[bytes] | None = None):
        super().__init__(reason, field, offset)
        self.frames: list[bytes] = frames or []
        """Whole frames that arrived before the bad length, in the same bytes: a server still
        answers them, as it would have had they come in an earlier read."""


class FrameDecodeError(FramingError, DecodeError):
    """A frame that arrived with a bad length, TPDU or header."""


class FrameEncodeError(FramingError, EncodeError):
    """A frame this side was asked to build that cannot be built (too long, wrong header size)."""

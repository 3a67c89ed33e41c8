"""The decoded message: an MTI and field values by number, nothing else.

Values of digit and text fields are `str`, values of `b` fields are `bytes`. Bitmaps are not
stored: the codec derives them from which fields are present, so they can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FieldValue = str | bytes


@dataclass(slots=True)
class Message:
    mti: str
    fields: dict[int, FieldValue] = field(default_factory=dict)

    def __contains__(self, number: object) -> bool:
        return number in self.fields

    def __getitem__(self, number: int) -> FieldValue:
        return self.fields[number]

    def get(self, number: int, default: FieldValue | None = None) -> FieldValue | None:
        return self.fields.get(number, default)

    def text(self, number: int, default: str = "") -> str:
        """A text/digit field as str (or `default` when absent): saves callers an isinstance."""
        value = self.fields.get(number)
        if value is None:
            return default
        return value if isinstance(value, str) else value.decode("ascii", "replace")

    def copy(self) -> Message:
        return Message(self.mti, dict(self.fields))

    def __repr__(self) -> str:
        # A Message can hold a PAN, track 2, a PIN block or keys: its repr names fields only.
        return f"Message(mti={self.mti!r}, fields={sorted(self.fields)})"

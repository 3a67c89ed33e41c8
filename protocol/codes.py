"""Response codes and the key-error reasons (PROTOCOL.md §4) as data."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

APPROVED: Final = "00"
KEY_ERROR: Final = "14"
NOT_REGISTERED: Final = "03"
FORMAT_ERROR: Final = "30"
INVALID_TRANSACTION: Final = "12"
INSUFFICIENT_FUNDS: Final = "51"
EXPIRED_CARD: Final = "54"
INCORRECT_PIN: Final = "55"
NO_CARD_RECORD: Final = "56"
NO_ORIGINAL: Final = "25"
AMOUNT_DIFFERS: Final = "64"
DUPLICATE: Final = "94"
SYSTEM_MALFUNCTION: Final = "96"

RESPONSE_CODES: Final[dict[str, str]] = {
    APPROVED: "approved",
    KEY_ERROR: "key error: a key is absent, stale or mismatched",
    NOT_REGISTERED: "terminal or merchant not registered",
    FORMAT_ERROR: "format error",
    INVALID_TRANSACTION: "invalid transaction",
    INSUFFICIENT_FUNDS: "insufficient funds",
    EXPIRED_CARD: "expired card",
    INCORRECT_PIN: "incorrect PIN",
    NO_CARD_RECORD: "no card record",
    NO_ORIGINAL: "no original transaction found",
    AMOUNT_DIFFERS: "amount differs from the original's",
    DUPLICATE: "duplicate transmission",
    SYSTEM_MALFUNCTION: "system malfunction",
}

# Codes answered after the request MAC verified: these 0210s carry a response MAC (§3).
MACED_RESPONSE_CODES: Final = frozenset({APPROVED, INSUFFICIENT_FUNDS, EXPIRED_CARD,
                                         INCORRECT_PIN, NO_CARD_RECORD, DUPLICATE,
                                         NO_ORIGINAL, AMOUNT_DIFFERS})
# Codes answered before the MAC could be checked, or a key error: never MACed, never remembered.
UNMACED_RESPONSE_CODES: Final = frozenset({FORMAT_ERROR, INVALID_TRANSACTION, NOT_REGISTERED,
                                           KEY_ERROR})

KEY_ERROR_KINDS: Final[dict[str, str]] = {
    "K1": "absent",
    "K2": "stale",
    "K3": "mismatched",
}
KEY_NAMES: Final[dict[str, str]] = {
    "TMK": "terminal master key",
    "PIK": "PIN key",
    "MAK": "MAC key",
    "TDK": "track data key",
    "WK": "working keys",
}
FIELD44_MAX: Final = 25
RENEWAL_DUE: Final = "P3 WK sign on"
"""Field 44 of a MACed answer whose working keys are about to expire: sign on after this
transaction. "P3" is CUP's processing requirement 3 (re-sign-on), carried under the MAC
(docs/protocol.md, Renewal before expiry)."""
_REASON = re.compile(r"^(K[123]) (TMK|PIK|MAK|TDK|WK)(?: (.*))?$")


@dataclass(frozen=True, slots=True)
class KeyErrorReason:
    """Why a 14 happened, as field 44 carries it: `K2 MAK missed rotation`."""

    code: str
    key: str
    text: str = ""

    def __post_init__(self) -> None:
        if self.code not in KEY_ERROR_KINDS:
            raise ValueError(f"key error code must be K1, K2 or K3, not {self.code!r}")
        if self.key not in KEY_NAMES:
            raise ValueError(f"key must be one of {sorted(KEY_NAMES)}, not {self.key!r}")

    def field44(self) -> str:
        """At most 25 characters: the text is cut, never the code or the key."""
        head = f"{self.code} {self.key}"
        if not self.text:
            return head
        return f"{head} {self.text}"[:FIELD44_MAX].rstrip()

    @property
    def kind(self) -> str:
        return KEY_ERROR_KINDS[self.code]

    @property
    def is_tmk(self) -> bool:
        return self.key == "TMK"

    def __str__(self) -> str:
        return self.field44()

    @classmethod
    def parse(cls, value: str | None) -> KeyErrorReason | None:
        """The reason in a field 44, or None: a real host's 14 carries none (ISO: invalid card)."""
        if not value:
            return None
        match = _REASON.match(value.strip())
        if not match:
            return None
        return cls(match.group(1), match.group(2), match.group(3) or "")


def describe_code(code: str) -> str:
    return RESPONSE_CODES.get(code, "unknown response code")

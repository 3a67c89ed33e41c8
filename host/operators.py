"""The host's operators: names, roles, and their rows' MAC. The credential is a scrypt hash
(`protocol.passwords`); an unknown name is checked against a dummy hash at the same cost, so a
refusal costs the same time whether or not the name exists (`host.access`).
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

from protocol.passwords import PasswordError

ROLES = ("administrator", "custodian", "auditor", "operator")
"""`custodian` is the key custodian of the guide; docs/operations.md lists what each may do."""
_NAME = re.compile(r"[a-z][a-z0-9._-]{0,31}")
RESERVED = frozenset({"lab", "host"})  # the audit trail's names for no login and the host itself


class CredentialError(PasswordError):
    """A name or role that cannot be used."""


@dataclass(frozen=True, slots=True)
class Operator:
    name: str
    role: str
    credential: str  # the scrypt string: never shown
    created: float


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or name in RESERVED:
        raise CredentialError(f"operator name {name[:40]!r} is not valid: 1 to 32 of a-z, 0-9, "
                              f". _ - starting with a letter, not lab or host")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise CredentialError(f"role {role[:40]!r} is not one of {', '.join(ROLES)}")
    return role


def row_mac(key: bytes, name: str, role: str, credential: str) -> str:
    """Each operator row is MACed under the audit key: a role or credential edited in the file
    (a custodian made administrator by SQL) is refused at login."""
    return hmac.digest(key, f"operator|{name}|{role}|{credential}".encode(), "sha256").hex()


"""Who may run which `pos-host` command: the permission table, and the check of a login.

The table is data (`RULES`): a command's roles, whether it needs two different key custodians
(dual control), and whether it is a fault (audited as one). docs/operations.md shows the same
table. A host without access control (lab mode) runs every command as operator `lab`; with it,
each command names its operator and the password is checked against its scrypt hash.

A refusal is one line, the same words and the same work whether the name is unknown or the
password wrong (an unknown name is checked against a dummy hash), and it is audited.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from host import operators
from host.operators import Operator
from protocol import passwords

LAB, HOST = "lab", "host"
ADMIN, CUSTODIAN, AUDITOR, OPERATOR = operators.ROLES
ANY = frozenset(operators.ROLES)


@dataclass(frozen=True, slots=True)
class Rule:
    roles: frozenset[str]
    dual: bool = False  # two different key custodians, each with their own password
    fault: bool = False  # makes a key error on purpose: administrator only, marked in the trail


def _roles(*names: str) -> frozenset[str]:
    return frozenset(names)


_DUAL = Rule(_roles(CUSTODIAN), dual=True)
_FAULT = Rule(_roles(ADMIN), fault=True)
RULES: Mapping[str, Rule] = {
    "terminal add": _DUAL,
    "terminal rekey": _DUAL,
    "keys revoke --tmk": _DUAL,
    "lmk components": _DUAL,
    "lmk rotate": _DUAL,
    "restore": _DUAL,
    "access off": _DUAL,
    "keys expire": _FAULT,
    "keys rotate": _FAULT,
    "keys tamper": _FAULT,
    "keys revoke": Rule(_roles(ADMIN, CUSTODIAN)),
    "keys rotate --all": Rule(_roles(ADMIN, CUSTODIAN)),
    "terminal remove": Rule(_roles(ADMIN)),
    "backup": Rule(_roles(ADMIN, CUSTODIAN)),
    "backup verify": Rule(_roles(ADMIN, CUSTODIAN, AUDITOR)),
    "card add": Rule(_roles(ADMIN, OPERATOR)),
    "operator add": Rule(_roles(ADMIN)),
    "operator remove": Rule(_roles(ADMIN)),
    "operator passwd": Rule(ANY),  # one's own; another's only as administrator (`passwd_allowed`)
    "operator list": Rule(_roles(ADMIN, AUDITOR)),
    "access on": Rule(_roles(ADMIN)),
    "access show": Rule(ANY),
    "audit show": Rule(_roles(ADMIN, AUDITOR)),
    "audit verify": Rule(_roles(ADMIN, AUDITOR)),
    "terminal list": Rule(ANY),
    "terminal show": Rule(ANY),
    "keys show": Rule(ANY),
    "keys schedule": Rule(ANY),
    "report keys": Rule(ANY),
    "card list": Rule(ANY),
    "card show": Rule(ANY),
    "batch show": Rule(ANY),
}
"""Every command that opens the key database. `serve`, `init`, `top`, `ladder`, `bridge` and
`rules show` are not here: serving is the host's own work, and the others do not open it."""


class AccessDenied(PermissionError):
    """A refusal of access control: its text is the one line shown."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who runs a command, as the audit trail names them."""

    operator: str
    second: str | None
    command: str
    at: float
    fault: bool = False
    role: str | None = None  # the first operator's role; None for lab

    def detail(self) -> dict[str, object]:
        detail: dict[str, object] = {"command": self.command}
        if self.second:
            detail["second"] = self.second
        if self.fault:
            detail["fault"] = True
        return detail


@dataclass(frozen=True, slots=True)
class Login:
    """What one command was given: names and the means to read each password (called only
    when the host is in access-control mode, so a lab host never prompts)."""

    operator: str | None
    second: str | None
    password: Callable[[], str]
    second_password: Callable[[], str]


def mode_text(on: bool) -> str:
    return "access control on" if on else "lab mode, no access control"


def refusal(on: bool, text: str) -> AccessDenied:
    return AccessDenied(f"refused ({mode_text(on)}): {text}")


def _check_one(lookup: Callable[[str], Operator | None], name: str, password: str,
               log2n: int) -> Operator | None:
    """The operator if name and password match; the same work either way."""
    found = lookup(name)
    credential = found.credential if found else passwords.dummy_credential(log2n)
    good = passwords.verify_password(credential, password)
    return found if good and found is not None else None


def shown_name(name: str) -> str:
    """A name as a refusal shows it: only if it is a name at all (a password typed into
    --operator by mistake is not echoed or audited)."""
    try:
        return repr(operators.check_name(name))
    except operators.CredentialError:
        return "(not an operator name)"


def authenticate(command: str, login: Login, lookup: Callable[[str], Operator | None],
                 at: float, log2n: int, on: bool = True) -> Actor:
    """The checked Actor of a command, or AccessDenied (the caller audits it). `on`: the
    host's mode, which every refusal names. The wording names only the name given, never
    whether it exists; both passwords are checked (each costs the same) before any verdict."""
    rule = RULES[command]
    if login.operator is None:
        raise refusal(on, f"`{command}` needs --operator NAME (and its password)")
    if rule.dual and login.second is None:
        raise refusal(on, f"`{command}` is under dual control: it needs a second key "
                          f"custodian (--second-operator NAME)")
    if rule.dual and hmac.compare_digest(str(login.second).encode(), login.operator.encode()):
        raise refusal(on, f"`{command}` is under dual control: the second custodian must be "
                          f"another person than {shown_name(login.operator)}")
    first = _check_one(lookup, login.operator, login.password(), log2n)
    second = (_check_one(lookup, login.second, login.second_password(), log2n)
              if rule.dual and login.second is not None else None)
    for which, found in (("operator", first), *((("second operator", second),) if rule.dual else ())):
        if found is None:  # the same words for an unknown name and a wrong password
            raise refusal(on, f"{which}: unknown name or wrong password")
        if found.role not in rule.roles:
            raise refusal(on, f"`{command}` needs {_needs(rule)}; {found.name} is {found.role}")
    assert first is not None
    return Actor(first.name, second.name if second else None, command, at, rule.fault, first.role)


def lab_actor(command: str, at: float) -> Actor:
    return Actor(LAB, None, command, at, RULES[command].fault if command in RULES else False)


def _needs(rule: Rule) -> str:
    if rule.dual:
        return "two different key custodians"
    return " or ".join(r for r in operators.ROLES if r in rule.roles)

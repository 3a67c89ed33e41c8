"""The rules file: the matcher against a reference model (the first matching rule acts, counts
add up), reloads that never lose a message, every action through a real HostCore and SQLite
file, the shell's deliveries over real TCP, and refusals that name the file, line or key."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host.rules import (
    Action,
    Match,
    Rule,
    RuleBook,
    RulesError,
    RuleSet,
    describe,
    load_rules,
    parse_rules,
    static_match,
)
from protocol.fields import parse_key_set
from protocol.message import Message
from tests.host.client import ClientTerminal, tmk_from_ceremony
from tests.host.test_core import CARD, Site, site
from tests.support import add_card, init_host, pos_host, provision_terminal, running_host

__all__ = ["site"]  # the fixture, imported for pytest
MTIS = ("0200", "0800", "0820")
TIDS = ("T1", "T2")


def request(mti: str, tid: str, amount: int) -> Message:
    fields: dict[int, str | bytes] = {41: tid, 11: "000001"}
    if mti == "0200":
        fields[4] = f"{amount:012d}"
    return Message(mti, fields)


matches = st.builds(
    Match,
    mti=st.none() | st.frozensets(st.sampled_from(MTIS), min_size=1),
    terminal=st.none() | st.frozensets(st.sampled_from(TIDS), min_size=1),
    amount_min=st.none() | st.integers(0, 1000),
    nth=st.none() | st.integers(1, 4),
    every=st.none() | st.integers(1, 3),
    times=st.none() | st.integers(1, 3),
)
rule_lists = st.lists(matches, max_size=5).map(
    lambda ms: tuple(Rule(f"r{i}", m, Action("drop")) for i, m in enumerate(ms)))
streams = st.lists(st.tuples(st.sampled_from(MTIS), st.sampled_from(TIDS), st.integers(0, 1200)),
                   max_size=40)


def reference(rules: tuple[Rule, ...], stream: list[tuple[str, str, int]]) -> list[str | None]:
    """The rules' meaning written the plain way: each rule counts what it could act on."""
    seen = dict.fromkeys((r.name for r in rules), 0)
    hits = dict.fromkeys((r.name for r in rules), 0)
    picked: list[str | None] = []
    for mti, tid, amount in stream:
        chosen = None
        for rule in rules:
            m = rule.match
            ok = ((m.mti is None or mti in m.mti) and (m.terminal is None or tid in m.terminal)
                  and (m.amount_min is None or (mti == "0200" and amount >= m.amount_min)))
            if not ok:
                continue
            seen[rule.name] += 1
            n = seen[rule.name]
            if ((m.nth is None or n == m.nth) and (m.every is None or n % m.every == 0)
                    and (m.times is None or hits[rule.name] < m.times)):
                hits[rule.name] += 1
                chosen = rule.name
                break
        picked.append(chosen)
    return picked


@given(rule_lists, streams)
def test_the_first_matching_rule_acts_and_counts_add_up(
        rules: tuple[Rule, ...], stream: list[tuple[str, str, int]]) -> None:
    ruleset = RuleSet(rules)
    picked = [(r.name if (r := ruleset.pick(request(*item), None)) else None) for item in stream]
    assert picked == reference(rules, stream)
    hits = ruleset.hits()
    assert sum(hits.values()) == sum(p is not None for p in picked)
    for name, count in hits.items():
        assert count == picked.count(name)


@given(st.floats(0, 1), st.integers(0, 2**32), st.integers(1, 60))
def test_a_seeded_probability_is_the_same_every_run(p: float, seed: int, n: int) -> None:
    rules = (Rule("dice", Match(probability=p, seed=seed), Action("drop")),)
    one, two = RuleSet(rules), RuleSet(rules)
    first = [one.pick(request("0800", "T1", 0), None) is not None for _ in range(n)]
    second = [two.pick(request("0800", "T1", 0), None) is not None for _ in range(n)]
    assert first == second
    if p == 0:
        assert not any(first)
    if p == 1:
        assert all(first)


def test_pan_prefix_and_range_match_on_the_clear_pan() -> None:
    message = Message("0200", {2: "6212345678901234", 4: "000000001000"})
    assert static_match(Match(pan_prefix=("6212",)), message, None)
    assert not static_match(Match(pan_prefix=("4",)), message, None)
    assert static_match(Match(pan_range=("621200", "621299")), message, None)
    assert not static_match(Match(pan_range=("621300", "621399")), message, None)
    assert static_match(Match(amount_min=500, amount_max=1000), message, None)
    assert not static_match(Match(amount_max=999), message, None)


RULES_TOML = """
[[rule]]
name = "big"
match = { mti = "0200", amount_min = "50.00" }
action = { answer = "51" }

[[rule]]
name = "force"
match = { mti = "0200", equal = { "4" = "000000000200" } }
action = { force14 = "K2 MAK missed rotation" }

[[rule]]
name = "regex"
match = { mti = "0200", regex = { "11" = "^0000[0-9]7$" }, present = [52] }
action = { mac = "off" }
"""


def book(site: Site, tmp_path: Path, text: str) -> RuleBook:
    path = tmp_path / "rules.toml"
    path.write_text(text, encoding="utf-8")
    site.core.rules = RuleBook(path, tmp_path / "hits.json")
    return site.core.rules


def answer(site: Site, message: bytes) -> Message:
    raw = site.core.handle_payload(site.terminal.payload(message))
    assert raw is not None
    return site.codec.decode(site.terminal.unpayload(raw))


def test_answer_a_code_is_maced_as_section_3_says(site: Site, tmp_path: Path) -> None:
    book(site, tmp_path, RULES_TOML)
    before = site.db.card(site.core.config.vault.pan_ref(CARD.pan))
    reply = answer(site, site.terminal.purchase(CARD, 6000))
    assert reply.text(39) == "51" and 64 in reply.fields
    raw = site.terminal.payload(site.terminal.purchase(CARD, 6000))
    out = site.core.handle_payload(raw)
    assert out is not None and site.terminal.response_mac_ok(site.terminal.unpayload(out))
    assert site.db.card(site.core.config.vault.pan_ref(CARD.pan)) == before  # nothing debited


def test_force14_gives_the_reason_without_touching_the_key_database(site: Site, tmp_path: Path) -> None:
    book(site, tmp_path, RULES_TOML)
    keys_before = site.db.load_terminal("T0000001")
    reply = answer(site, site.terminal.purchase(CARD, 200))
    assert (reply.text(39), reply.text(44)) == ("14", "K2 MAK missed rotation")
    assert 64 not in reply.fields  # a 14 carries no MAC
    assert site.db.load_terminal("T0000001") == keys_before
    assert answer(site, site.terminal.purchase(CARD, 300)).text(39) == "00"


def test_mac_off_and_spoiled_and_a_wrong_stan(site: Site, tmp_path: Path) -> None:
    book(site, tmp_path, """
[[rule]]
match = { mti = "0200", times = 1 }
action = { mac = "spoil" }
[[rule]]
match = { mti = "0200", times = 1 }
action = { mac = "off" }
[[rule]]
match = { mti = "0200", times = 1 }
action = { wrong_stan = true }
""")
    raws = []
    for _ in range(3):
        message = site.terminal.purchase(CARD, 100)
        out = site.core.handle_payload(site.terminal.payload(message))
        assert out is not None
        raws.append((site.codec.decode(message), site.terminal.unpayload(out)))
    (_, spoiled), (_, bare), (sent, wrong) = raws
    assert not site.terminal.response_mac_ok(spoiled)
    assert 64 not in site.codec.decode(bare).fields
    assert site.codec.decode(wrong).text(11) != sent.text(11)
    assert site.terminal.response_mac_ok(wrong)  # MACed again: only the STAN is wrong


@pytest.mark.parametrize("kind", ["bitflip", "parity", "kcv", "short", "length"])
def test_sign_on_corruptions_spoil_what_the_terminal_receives(
        site: Site, tmp_path: Path, kind: str) -> None:
    book(site, tmp_path, f'[[rule]]\nmatch = {{ mti = "0800" }}\naction = {{ signon = "{kind}" }}\n')
    generations = len(site.db.load_terminal("T0000001").working)  # type: ignore[union-attr]
    reply = answer(site, site.terminal.sign_on_request())
    assert reply.text(39) == "00"
    block = reply.fields[62]
    assert isinstance(block, bytes)
    fresh = ClientTerminal("T0000001", site.terminal.merchant, site.terminal.tmk)
    if kind in ("short", "length"):
        with pytest.raises(ValueError):
            parse_key_set(block, "003", site.codec.dialect)
    else:
        with pytest.raises(Exception):  # noqa: B017 - a parity or a check-value failure
            fresh.install(reply, "003")
    # the host did issue the keys: the changes of an altered answer are kept
    assert len(site.db.load_terminal("T0000001").working) == generations + 1  # type: ignore[union-attr]


def test_a_reload_never_drops_a_message_and_a_bad_file_keeps_the_last_good(
        site: Site, tmp_path: Path) -> None:
    rules = book(site, tmp_path, '[[rule]]\nname = "a"\nmatch = { mti = "0820" }\n'
                                 'action = { answer = "96" }\n')
    path = rules.path
    codes = []
    for index in range(12):
        if index % 3 == 0:
            text = ('[[rule]]\nname = "a"\nmatch = { mti = "0820" }\naction = { answer = "96" }\n'
                    + "#" * index) if index % 2 == 0 else "[[rule]\nbroken = "
            path.write_text(text, encoding="utf-8")
        codes.append(answer(site, site.terminal.network_request()).text(39))
    assert codes == ["96"] * 12  # every message answered, by the last good rules
    assert rules.rules.hits() == {"a": 12}


@given(st.lists(st.sampled_from(["good", "other", "bad", "same"]), min_size=1, max_size=8))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_reloads_between_messages_lose_none(site: Site, tmp_path: Path, edits: list[str]) -> None:
    """Each message is answered, by the rules of the last good file written before it."""
    texts = {"good": '[[rule]]\nname = "g"\nmatch = { mti = "0820" }\naction = { answer = "96" }\n',
             "other": '[[rule]]\nname = "o"\nmatch = { mti = "0200" }\naction = { drop = true }\n',
             "bad": 'rule = 3\n'}
    path = tmp_path / "rules.toml"
    path.write_text(texts["good"], encoding="utf-8")
    site.core.rules = rules = RuleBook(path)
    in_force, expected, got = "good", [], []
    for count, edit in enumerate(edits):
        if edit != "same":
            path.write_text(texts[edit] + "#" * count, encoding="utf-8")  # a new size: a change
            in_force = in_force if edit == "bad" else edit
        expected.append("96" if in_force == "good" else "00")
        got.append(answer(site, site.terminal.network_request()).text(39))
    assert got == expected
    assert sum(rules.rules.hits().values()) <= expected.count("96")


@pytest.mark.parametrize(("text", "where"), [
    ("[[rule]]\naction = { drop = true }\nmatch = { mti = 200 }\n", "rule[1].match.mti"),
    ("[[rule]]\naction = { explode = true }\n", "rule[1].action.explode"),
    ("[[rule]]\nmatch = { amount_min = \"1,00\" }\naction = { drop = true }\n", "amount_min"),
    ("[[rule]]\nmatch = { regex = { \"2\" = \"(\" } }\naction = { drop = true }\n", "regex"),
    ("[[rule]]\nmatch = {}\naction = { force14 = \"K9 MAK x\" }\n", "force14"),
    ("[[rule]]\naction = { drop = true }\n[[rule]]\naction = { drop = true }\nname = \"rule 1\"\n",
     "rule[2].name"),
    ("[[rule]\n", "line 1"),
])
def test_a_bad_file_is_refused_with_the_key_or_line_and_why(tmp_path: Path, text: str,
                                                            where: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    message = str(caught.value)
    assert str(path) in message and where in message and "\n" not in message


def test_json_is_accepted_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"rule": [{"action": {"close": True}}]}), encoding="utf-8")
    assert load_rules(path)[0].action == Action("close")
    path.write_text('{\n"rule": [\n,]}', encoding="utf-8")
    with pytest.raises(RulesError, match="line 3"):
        load_rules(path)
    assert parse_rules({}) == ()


# --- the shell's deliveries, over real TCP -------------------------------------------------------


def _frame(payload: bytes) -> bytes:
    return struct.pack(">H", len(payload)) + payload


def _read(sock: socket.socket) -> bytes:
    chunks = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return chunks
        if not chunk:
            return chunks
        chunks += chunk


def test_drop_close_cut_twice_and_rules_show_over_tcp(tmp_path: Path) -> None:
    data = init_host(tmp_path / "host")
    ceremony = provision_terminal(data, "T0000001", "M00000000000001")
    add_card(data, CARD.pan, CARD.expiry, CARD.pin, "100.00")
    rules = tmp_path / "rules.toml"
    rules.write_text("".join(
        f'[[rule]]\nname = "{kind}"\nmatch = {{ mti = "0820", times = 1 }}\n'
        f'action = {{ {kind} = {value} }}\n'
        for kind, value in [("drop", "true"), ("close", "true"), ("cut", "true"),
                            ("twice", "true"), ("delay", "0.2")]),
        encoding="utf-8")
    client = ClientTerminal("T0000001", "M00000000000001", tmk_from_ceremony(ceremony))
    with running_host(data, "--rules", str(rules)) as host:
        got = {}
        for kind in ("drop", "close", "cut", "twice", "delay"):
            with socket.create_connection((host.host, host.port), timeout=2) as sock:
                sock.sendall(_frame(client.network_request()))
                sock.settimeout(0.8 if kind == "drop" else 3)
                got[kind] = _read(sock) if kind != "twice" and kind != "delay" else b""
                if kind in ("twice", "delay"):
                    sock.settimeout(0.8)
                    got[kind] = _read(sock)
        shown = pos_host(data, "rules", "show")
        ladder_out = pos_host(data, "ladder", "--log", str(host.log_path), "--tid", "T0000001")
    assert got["drop"] == b"" and got["close"] == b""
    length = struct.unpack(">H", got["cut"][:2])[0]
    assert 2 < len(got["cut"]) < length + 2  # a frame cut short, then closed
    one = len(got["delay"])
    assert one > 2 and len(got["twice"]) == 2 * one
    assert got["twice"][:one] == got["twice"][one:]
    assert [r["hits"] for r in shown["rules"]] == [1, 1, 1, 1, 1]
    lost = [r for r in ladder_out["rungs"] if r["lost"]]
    assert len(lost) == 3  # drop, close and cut: answers the terminal never got


def test_rules_show_masks_what_a_condition_compares_a_card_field_with() -> None:
    """A rule may name a whole PAN or track to match; `rules show` shows it masked, and the
    conditions on other fields as written."""
    rules = parse_rules({"rule": [{
        "name": "one card", "action": {"answer": "05"},
        "match": {"equal": {"2": "6212345678901234", "4": "000000000200"},
                  "regex": {"35": "^6212345678901234=28", "11": "^0000"}}}]})
    shown = json.dumps(describe(rules, {}))
    assert "6212345678901234" not in shown and "621234******1234" in shown
    assert "000000000200" in shown and "^0000" in shown


def test_hits_that_cannot_be_saved_cost_no_answer(site: Site, tmp_path: Path) -> None:
    """The hits file's folder gone (a full or read-only disk): the batch is still answered, the
    failure is a log line, and the counts are written once the file can be again."""
    rules = book(site, tmp_path, RULES_TOML)
    hits = tmp_path / "gone" / "hits.json"
    rules.hits_path = hits
    site.core.rules = rules
    assert answer(site, site.terminal.purchase(CARD, 20000)).text(39) == "51"  # "big" acted
    assert "rule hits not saved" in site.log.getvalue() and not hits.exists()
    hits.parent.mkdir()
    assert answer(site, site.terminal.purchase(CARD, 20000)).text(39) == "51"
    assert json.loads(hits.read_text())["hits"]["big"] == 2

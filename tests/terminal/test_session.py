"""The session without any I/O: requests as the contract shapes them, and every judgement the
terminal makes of an answer (key checks before install, response MACs, K reasons)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

import pytest

from protocol import fields, macing
from protocol.clock import Rng
from protocol.codec import get_codec
from protocol.codes import KeyErrorReason
from protocol.crypto import decrypt_pin_block, generate_key, kcv, wrap_ecb
from protocol.crypto.ciphers import des_ecb
from protocol.crypto.keys import Key
from protocol.dialects import get_dialect
from protocol.errors import ProtocolError
from protocol.message import Message
from terminal.keystore import KeySet, StoredKey
from terminal.session import (
    Purchase,
    Request,
    Session,
    TerminalKeyError,
)
from terminal.store import Config

Mangle = Callable[[list[fields.WrappedKey]], list[fields.WrappedKey]]
NOW = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
PAN = "6212345678901234"


def rng_from(seed: int) -> Rng:
    return random.Random(seed).randbytes


TMK = generate_key("TDES", 16, "TMK", rng_from(1))
CONFIG = Config(tid="TERM0001", mid="MERCHANT0000001", wk_lifetime=3600)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def session(keys: KeySet, dialect: str = "iso87", clock: Clock | None = None,
            config: Config = CONFIG) -> Session:
    return Session(replace(config, dialect=dialect), get_dialect(dialect), keys,
                   clock or Clock())


def with_tmk() -> KeySet:
    return KeySet().with_tmk(StoredKey(TMK, 1, NOW - 10))


def working_keys(code: str = "003", dialect: str = "iso87", seed: int = 2) -> dict[str, Key]:
    ks = fields.key_set(code)
    d = get_dialect(dialect)
    out = {}
    rng = rng_from(seed)
    for usage, length in ks.keys:
        if usage == "MAK":
            length = ks.mak_length(d)
        out[usage] = generate_key("DES" if length == 8 else "TDES", length, usage, rng)
    return out


def answer_signon(request: Request, keys: dict[str, Key], dialect: str = "iso87",
                  tmk: Key = TMK, rc: str = "00", field44: str | None = None,
                  mangle: Mangle | None = None) -> bytes:
    codec = get_codec(dialect)
    code = fields.Field60.parse(request.message.text(60)).nmic
    msg = Message("0810", {n: request.message.fields[n] for n in (11, 12, 13, 41, 42, 60)})
    msg.fields.update({37: "000000000001", 39: rc})
    if rc == "00":
        wrapped = [fields.WrappedKey(u, wrap_ecb(tmk, k), kcv(k.material, 4))
                   for u, k in keys.items()]
        if mangle:
            wrapped = mangle(wrapped)
        msg.fields[62] = fields.build_key_set(wrapped, code)
    if field44:
        msg.fields[44] = field44
    return codec.encode(msg)


def signed_on(code: str = "003", dialect: str = "iso87") -> tuple[KeySet, dict[str, Key]]:
    s = session(with_tmk(), dialect)
    request = s.signon(1, 1, code)
    keys = working_keys(code, dialect)
    result = s.receive(request, answer_signon(request, keys, dialect))
    assert result.outcome == "ok", result
    assert result.keyset is not None
    return result.keyset, keys


def answer_purchase(request: Request, mak: Key | None, rc: str = "00", dialect: str = "iso87",
                    field44: str | None = None) -> bytes:
    codec = get_codec(dialect)
    keep = (3, 4, 11, 41, 42, 49, 60)
    msg = Message("0210", {n: request.message.fields[n] for n in keep})
    msg.fields.update({12: "101500", 13: "1125", 37: "000000000002", 39: rc})
    if rc == "00":
        msg.fields[38] = "123456"
    if field44:
        msg.fields[44] = field44
    if mak is None:
        return codec.encode(msg)
    return macing.sign(codec, msg, mak)


# --- requests ---------------------------------------------------------------------------------


def test_signon_request_carries_what_the_contract_lists() -> None:
    request = session(with_tmk()).signon(42, 7, "004")
    msg = get_codec("iso87").decode(request.encoded)
    assert msg.mti == "0800"
    assert sorted(msg.fields) == [11, 12, 13, 41, 42, 60, 63]
    assert msg.text(11) == "000042"
    assert msg.text(60) == "00000007004"
    assert msg.text(63) == "01 "
    assert (msg.text(12), msg.text(13)) == ("080000", "0115"), "the injected clock, in UTC"


@pytest.mark.parametrize(("kind", "nmic"), [("signoff", "002"), ("echo", "301")])
def test_network_requests(kind: str, nmic: str) -> None:
    request = session(KeySet()).network(kind, 5, 1)  # type: ignore[arg-type]
    msg = get_codec("iso87").decode(request.encoded)
    assert msg.mti == "0820"
    assert sorted(msg.fields) == [11, 41, 42, 60]
    assert msg.text(60) == f"00000001{nmic}"


@pytest.mark.parametrize("dialect", ["iso87", "cup"])
@pytest.mark.parametrize("code", ["001", "003", "004"])
def test_purchase_is_maced_and_carries_the_pin_fields(dialect: str, code: str) -> None:
    keyset, keys = signed_on(code, dialect)
    s = session(keyset, dialect)
    request = s.purchase(9, 1, Purchase(1234, PAN, "2812", "1234"))
    codec = get_codec(dialect)
    msg = codec.decode(request.encoded)
    assert msg.mti == "0200"
    assert sorted(msg.fields) == [2, 3, 4, 11, 14, 22, 25, 26, 41, 42, 49, 52, 53, 60, 64]
    assert msg.text(4) == "000000001234" and msg.text(22) == "011" and msg.text(3) == "000000"
    assert msg.text(53) == fields.key_set(code).security_control
    assert msg.text(60) == "22000001000"
    assert macing.verify(codec, request.encoded, keys["MAK"])
    pin_block = msg.fields[52]
    assert isinstance(pin_block, bytes)
    assert decrypt_pin_block(keys["PIK"], pin_block, PAN) == "1234"


def test_purchase_without_pin_is_keyed_entry_012() -> None:
    keyset, _ = signed_on()
    msg = get_codec("iso87").decode(session(keyset).purchase(3, 1, Purchase(100, PAN, "2812"))
                                    .encoded)
    assert msg.text(22) == "012"
    assert not {26, 52, 53} & set(msg.fields)


# --- what the terminal finds itself ----------------------------------------------------------


def reason_of(exc: pytest.ExceptionInfo[TerminalKeyError]) -> str:
    return exc.value.reason.field44()


def test_no_tmk_is_k1_tmk() -> None:
    with pytest.raises(TerminalKeyError) as info:
        session(KeySet()).signon(1, 1)
    assert reason_of(info) == "K1 TMK not loaded"
    with pytest.raises(TerminalKeyError) as info:
        session(KeySet()).purchase(1, 1, Purchase(1, PAN, "2812"))
    assert reason_of(info).startswith("K1 TMK")


def test_no_working_keys_is_k1_wk() -> None:
    with pytest.raises(TerminalKeyError) as info:
        session(with_tmk()).purchase(1, 1, Purchase(1, PAN, "2812"))
    assert reason_of(info) == "K1 WK not signed on"


def test_a_pin_without_a_pik_is_k1_pik() -> None:
    keyset, _ = signed_on()
    without_pik = KeySet({n: k for n, k in keyset.keys.items() if n != "PIK"}, "003")
    with pytest.raises(TerminalKeyError) as info:
        session(without_pik).purchase(1, 1, Purchase(1, PAN, "2812", "1234"))
    assert reason_of(info) == "K1 PIK not signed on"


def test_an_undecodable_answer_to_a_signon_is_k3_but_to_a_purchase_a_protocol_error() -> None:
    keyset, _ = signed_on()
    s = session(keyset)
    signon = s.signon(2, 1)
    assert s.receive(signon, b"0810garbage").reason == KeyErrorReason("K3", "WK",
                                                                      "download corrupt")
    with pytest.raises(ProtocolError):
        s.receive(s.purchase(3, 1, Purchase(1, PAN, "2812")), b"0210garbage")


def test_working_keys_past_local_lifetime_are_k2() -> None:
    keyset, _ = signed_on()
    clock = Clock()
    clock.now = NOW + CONFIG.wk_lifetime + 1
    with pytest.raises(TerminalKeyError) as info:
        session(keyset, clock=clock).purchase(1, 1, Purchase(1, PAN, "2812"))
    assert reason_of(info) == "K2 WK lifetime over"


def mismatch(wrapped: list[fields.WrappedKey]) -> list[fields.WrappedKey]:
    last = wrapped[-1]
    return [*wrapped[:-1], replace(last, kcv=bytes(4))]


def flip_parity(wrapped: list[fields.WrappedKey]) -> list[fields.WrappedKey]:
    """A key whose parity is wrong but whose check value was computed over it: only the parity
    check can refuse it (DES ignores parity bits)."""
    first = wrapped[0]
    clear = bytearray(get_key_material(first))
    clear[0] ^= 0x01
    bad = bytes(clear)
    return [replace(first, ciphertext=des_ecb(TMK.material).encrypt(bad), kcv=kcv(bad, 4)),
            *wrapped[1:]]


def get_key_material(item: fields.WrappedKey) -> bytes:
    return des_ecb(TMK.material).decrypt(item.ciphertext)


@pytest.mark.parametrize(
    ("mangle", "tmk", "expected"),
    [
        (mismatch, TMK, "K3 MAK KCV mismatch"),
        (flip_parity, TMK, "K3 PIK bad length/parity"),
        (None, generate_key("TDES", 16, "TMK", rng_from(99)), "K3 PIK"),
    ],
)
def test_a_bad_download_is_k3_and_keeps_the_old_keys(mangle: Mangle | None, tmk: Key,
                                                     expected: str) -> None:
    old, _ = signed_on()
    s = session(old)
    request = s.signon(2, 1, "003")
    result = s.receive(request, answer_signon(request, working_keys(seed=5), tmk=tmk,
                                              mangle=mangle))
    assert result.outcome == "key_error" and result.source == "terminal"
    assert result.reason is not None and result.reason.field44().startswith(expected)
    assert result.keyset is None, "no key is installed from a download that fails a check"


def test_a_cut_download_is_k3() -> None:
    s = session(with_tmk())
    request = s.signon(2, 1, "003")
    data = answer_signon(request, working_keys(), mangle=lambda w: w)
    msg = get_codec("iso87").decode(data)
    value = msg.fields[62]
    assert isinstance(value, bytes)
    msg.fields[62] = value[:-5]
    result = s.receive(request, get_codec("iso87").encode(msg))
    assert result.reason == KeyErrorReason("K3", "WK", "download corrupt")


def test_signon_installs_every_key_with_a_new_generation() -> None:
    keyset, keys = signed_on("004")
    assert {n: k.key.material for n, k in keyset.working().items()} == {
        n: k.material for n, k in keys.items()}
    assert {k.generation for k in keyset.working().values()} == {1}
    s = session(keyset)
    request = s.signon(3, 1, "004")
    again = s.receive(request, answer_signon(request, working_keys("004", seed=8)))
    assert again.keyset is not None
    assert {k.generation for k in again.keyset.working().values()} == {2}
    assert again.keyset.tmk == keyset.tmk


# --- answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["iso87", "cup"])
def test_an_approval_with_a_valid_mac_is_approved(dialect: str) -> None:
    keyset, keys = signed_on(dialect=dialect)
    s = session(keyset, dialect)
    request = s.purchase(4, 1, Purchase(500, PAN, "2812"))
    result = s.receive(request, answer_purchase(request, keys["MAK"], dialect=dialect))
    assert result.outcome == "approved" and result.rc == "00"


@pytest.mark.parametrize("rc", ["00", "51", "55"])
def test_an_answer_without_its_mac_is_k3(rc: str) -> None:
    keyset, _keys = signed_on()
    s = session(keyset)
    request = s.purchase(4, 1, Purchase(500, PAN, "2812"))
    missing = s.receive(request, answer_purchase(request, None, rc))
    assert missing.reason == KeyErrorReason("K3", "MAK", "no response MAC")
    other = working_keys(seed=77)["MAK"]
    bad = s.receive(request, answer_purchase(request, other, rc))
    assert bad.reason == KeyErrorReason("K3", "MAK", "response MAC bad")
    assert bad.source == "terminal"


@pytest.mark.parametrize("rc", ["30", "12", "03"])
def test_unmaced_codes_are_reported_as_they_are(rc: str) -> None:
    keyset, _ = signed_on()
    s = session(keyset)
    request = s.purchase(4, 1, Purchase(500, PAN, "2812"))
    result = s.receive(request, answer_purchase(request, None, rc))
    assert result.outcome == "refused" and result.rc == rc and result.reason is None


def test_a_host_14_with_a_reason_is_a_host_key_error() -> None:
    keyset, _ = signed_on()
    s = session(keyset)
    request = s.purchase(4, 1, Purchase(500, PAN, "2812"))
    result = s.receive(request, answer_purchase(request, None, "14", field44="K2 MAK missed rot"))
    assert result.outcome == "key_error" and result.source == "host"
    assert result.reason == KeyErrorReason("K2", "MAK", "missed rot")


def test_a_14_without_a_reason_is_the_hosts_own_code() -> None:
    keyset, _ = signed_on()
    s = session(keyset)
    request = s.purchase(4, 1, Purchase(500, PAN, "2812"))
    result = s.receive(request, answer_purchase(request, None, "14"))
    assert result.outcome == "host_code" and result.reason is None


def test_an_answer_to_another_request_is_a_protocol_error() -> None:
    keyset, keys = signed_on()
    s = session(keyset)
    request = s.purchase(4, 1, Purchase(500, PAN, "2812"))
    other = s.purchase(5, 1, Purchase(500, PAN, "2812"))
    with pytest.raises(ProtocolError):
        s.receive(request, answer_purchase(other, keys["MAK"]))


def test_signoff_drops_working_keys_and_keeps_the_tmk() -> None:
    keyset, _ = signed_on()
    s = session(keyset)
    request = s.network("signoff", 6, 1)
    reply = Message("0830", {n: request.message.fields[n] for n in (11, 41, 42, 60)})
    reply.fields[39] = "00"
    result = s.receive(request, get_codec("iso87").encode(reply))
    assert result.keyset is not None
    assert result.keyset.working() == {} and result.keyset.tmk == keyset.tmk

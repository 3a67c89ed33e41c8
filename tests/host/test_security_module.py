"""The security-module boundary: every operation by handle, and no key material outside it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from host import hsm
from host.state import ACTIVE, HeldKey, KeyHandle, TerminalKeys
from protocol.clock import seeded_rng
from protocol.crypto import Key, KeyBlockError, dialect_mac, encrypt_pin_block, unwrap_ecb
from protocol.dialects import get_dialect
from protocol.fields import KEY_SETS, parse_key_set

LMK = bytes(range(32))
NOW = 1_800_000_000.0
PAN, PIN = "6212345678901234", "1234"


def terminal_keys(dialect: str = "iso87", key_set: str = "003") -> TerminalKeys[Key]:
    rng = seeded_rng(11)
    working = hsm.new_working_set(KEY_SETS[key_set], get_dialect(dialect), 1, NOW, 3600.0, rng)
    tmk = HeldKey("TMK", 1, hsm.new_tmk(rng), NOW, 86400.0, ACTIVE)
    return TerminalKeys("T0000001", "M00000000000001", tmk, (working,), 1)


def module(dialect: str = "iso87") -> hsm.SoftwareSecurityModule:
    return hsm.SoftwareSecurityModule(LMK, seeded_rng(3), get_dialect(dialect))


def test_admitted_state_holds_handles_and_no_material() -> None:
    keys = terminal_keys(key_set="004")
    admitted = module().admit(keys)
    assert admitted.tmk is not None and isinstance(admitted.tmk.key, KeyHandle)
    working = admitted.working[0]
    handles = (admitted.tmk.key, working.pik, working.mak, working.tdk)
    assert all(isinstance(h, KeyHandle) for h in handles)
    original = keys.working[0]
    assert [h.kcv for h in handles[1:]] == [original.pik.kcv_hex, original.mak.kcv_hex,
                                             original.tdk.kcv_hex]  # type: ignore[union-attr]
    assert [(h.usage, h.generation) for h in handles] == [("TMK", 1), ("PIK", 1), ("MAK", 1),
                                                          ("TDK", 1)]
    shown = repr(admitted)
    for key in (keys.tmk.key, original.pik, original.mak, original.tdk):  # type: ignore[union-attr]
        assert key is not None
        assert key.material.hex() not in shown.lower() and key.material.hex().upper() not in shown


def test_admitting_again_gives_the_same_handles() -> None:
    sm = module()
    keys = terminal_keys()
    assert sm.admit(keys) == sm.admit(keys)
    assert repr(sm) == "<SoftwareSecurityModule keys=3>"


def test_keys_that_left_a_terminals_state_are_dropped() -> None:
    sm = module()
    keys = terminal_keys()
    old_mak = sm.admit(keys).working[0].mak
    newer = hsm.new_working_set(KEY_SETS["003"], get_dialect("iso87"), 2, NOW, 3600.0,
                                seeded_rng(12))
    both = sm.admit(replace(keys, working=(newer, *keys.working)))
    assert both.working[1].mak == old_mak and repr(sm) == "<SoftwareSecurityModule keys=5>"
    sm.admit(replace(keys, working=(newer,)))
    assert repr(sm) == "<SoftwareSecurityModule keys=3>"
    with pytest.raises(LookupError):
        sm.generate_mac(old_mak, b"data")


@pytest.mark.parametrize(("dialect", "key_set"), [("iso87", "003"), ("iso87", "001"),
                                                  ("cup", "003")])
def test_a_mac_by_handle_is_the_dialects_mac(dialect: str, key_set: str) -> None:
    sm = module(dialect)
    keys = terminal_keys(dialect, key_set)
    mak = sm.admit(keys).working[0].mak
    data = b"0200 some message bytes to MAC, not a multiple of eight"
    expected = dialect_mac(get_dialect(dialect).mac, keys.working[0].mak, data)
    assert sm.generate_mac(mak, data) == expected
    assert sm.verify_mac(mak, data, expected)
    assert not sm.verify_mac(mak, data + b"!", expected)
    assert not sm.verify_mac(mak, data, bytes(8))


def test_a_pin_block_by_handle() -> None:
    sm = module()
    keys = terminal_keys()
    pik = sm.admit(keys).working[0].pik
    block = encrypt_pin_block(keys.working[0].pik, PIN, PAN)
    assert sm.decrypt_pin(pik, block, PAN) == PIN
    with pytest.raises(hsm.PinBlockInvalid):
        sm.decrypt_pin(pik, block, "6299999999999999")  # another PAN: not a valid format 0 block
    with pytest.raises(hsm.PinBlockInvalid):
        sm.decrypt_pin(pik, bytes(8), PAN)


def test_issued_keys_unwrap_under_the_tmk_to_the_stored_keys() -> None:
    sm = module()
    keys = terminal_keys()
    admitted = sm.admit(keys)
    assert admitted.tmk is not None
    issued = sm.issue_working_set(admitted.tmk.key, KEY_SETS["004"], 2, NOW, 60.0)
    assert (issued.stored.generation, issued.stored.key_set) == (2, "004")
    stored = {"PIK": issued.stored.pik, "MAK": issued.stored.mak, "TDK": issued.stored.tdk}
    wrapped = parse_key_set(issued.field62, "004", get_dialect("iso87"))
    assert [w.usage for w in wrapped] == ["PIK", "MAK", "TDK"]
    assert keys.tmk is not None
    for w in wrapped:
        key = unwrap_ecb(keys.tmk.key, w.ciphertext, w.usage, "TDES")
        assert key == stored[w.usage] and key.kcv(4) == w.kcv


def test_seal_and_unseal_by_handle() -> None:
    sm = module()
    mak = sm.admit(terminal_keys()).working[0].mak
    block = sm.seal(mak)
    opened = sm.unseal("MAK", 1, block)
    assert (opened.kcv, opened.generation, opened.usage) == (mak.kcv, 1, "MAK")
    assert sm.unseal("MAK", 1, block) == opened  # the same key: the same handle
    assert sm.generate_mac(opened, b"data") == sm.generate_mac(mak, b"data")
    other = module()  # another module under the same LMK opens it too
    assert other.generate_mac(other.unseal("MAK", 1, block), b"data") == sm.generate_mac(mak, b"data")
    with pytest.raises(KeyBlockError):
        sm.unseal("MAK", 1, block[:-2] + ("00" if block[-2:] != "00" else "11"))


def test_a_handle_from_elsewhere_is_refused() -> None:
    made_up = KeyHandle(99, "000000", 1, "MAK")
    sm = module()
    with pytest.raises(LookupError):
        sm.generate_mac(made_up, b"data")
    with pytest.raises(LookupError):
        sm.decrypt_pin(made_up._replace(usage="PIK"), bytes(8), PAN)

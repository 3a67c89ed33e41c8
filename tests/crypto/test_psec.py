"""Differential tests against psec, an independent implementation (pure Python over pyca).

psec imports TripleDES from its old place and warns under current ``cryptography``; its
warnings are silenced around its own calls only, so the suite still runs with ``-W error``.
"""

import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.crypto import (
    Key,
    decrypt_pin_block,
    encrypt_pin_block,
    fix_parity,
    iso9797_mac,
    kcv,
    tr31,
    x919_mac,
)


def psec_call(function: Callable[..., Any], *args: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args)


def _import_psec() -> ModuleType:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import psec

        return psec


psec = _import_psec()
# psec is slow (pure Python around pyca); a fixed, modest example count keeps the suite quick
# under the CI profile too.
differential = settings(max_examples=40)
pans = st.from_regex(r"[0-9]{13,19}", fullmatch=True)
pins = st.from_regex(r"[0-9]{4,12}", fullmatch=True)


def des_material(length: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=length, max_size=length).map(fix_parity)


@differential
@given(key=des_material(16), data=st.binary(min_size=1, max_size=256), padding=st.sampled_from([1, 2, 3]))
def test_x919_matches_psec_retail_mac(key: bytes, data: bytes, padding: int) -> None:
    theirs = psec_call(psec.mac.generate_retail_mac, key[:8], key[8:], data, padding)
    assert x919_mac(key, data, padding) == theirs


@differential
@given(
    key=st.sampled_from([8, 16, 24]).flatmap(des_material),
    data=st.binary(min_size=1, max_size=256),
    padding=st.sampled_from([1, 2, 3]),
)
def test_algorithm1_matches_psec_cbc_mac(key: bytes, data: bytes, padding: int) -> None:
    theirs = psec_call(psec.mac.generate_cbc_mac, key, data, padding)
    assert iso9797_mac(key, data, 1, padding) == theirs


@differential
@given(key=st.sampled_from([8, 16, 24]).flatmap(des_material))
def test_kcv_matches_psec(key: bytes) -> None:
    assert kcv(key, 4) == psec_call(psec.des.generate_kcv, key, 4)


VERSIONS = {
    "A": (("TDES", 16), ("TDES", 24)),
    "B": (("TDES", 16), ("TDES", 24)),
    "C": (("TDES", 16),),
    "D": (("AES", 16), ("AES", 24), ("AES", 32)),
}


@differential
@given(
    version=st.sampled_from(sorted(VERSIONS)),
    data=st.data(),
    key_length=st.sampled_from([16, 24]),
    ks=st.text(alphabet="0123456789ABCDEF", max_size=40),
)
def test_tr31_interoperates_with_psec(version: str, data: st.DataObject, key_length: int, ks: str) -> None:
    algorithm, length = data.draw(st.sampled_from(VERSIONS[version]))
    kbpk = Key(algorithm, "K0", data.draw(des_material(length)))
    key = Key("TDES", "D0", data.draw(des_material(key_length)))
    blocks = (("KS", ks),) if ks else ()
    ours = tr31.wrap(
        kbpk, key, "D0", version=version, mode_of_use="B", exportability="E", optional_blocks=blocks
    )
    header, theirs = psec_call(psec.tr31.unwrap, kbpk.material, ours)
    assert theirs == key.material and header.key_usage == "D0"
    assert dict(header.blocks.items()) == dict(blocks)
    their_header = psec.tr31.Header(version, "D0", "T", "B", "00", "E")
    if ks:
        their_header.blocks["KS"] = ks
    block = psec_call(psec.tr31.wrap, kbpk.material, their_header, key.material)
    parsed, back = tr31.unwrap(kbpk, block)
    assert back.material == key.material
    assert (parsed.key_usage, parsed.mode_of_use, parsed.exportability) == ("D0", "B", "E")
    assert parsed.optional_blocks == blocks


@differential
@given(key=st.sampled_from([8, 16, 24]).flatmap(des_material), pin=pins, pan=pans)
def test_pin_block_format0_matches_psec(key: bytes, pin: str, pan: str) -> None:
    clear = psec_call(psec.pinblock.encode_pinblock_iso_0, pin, pan)
    theirs = psec_call(psec.des.encrypt_tdes_ecb, key if len(key) > 8 else key * 2, clear)
    assert encrypt_pin_block(key, pin, pan, 0) == theirs
    assert decrypt_pin_block(key, theirs, pan) == pin


@differential
@given(key=des_material(16), pin=pins, pan=pans)
def test_pin_block_format3_interoperates_with_psec(key: bytes, pin: str, pan: str) -> None:
    ours = encrypt_pin_block(key, pin, pan, 3)
    clear = psec_call(psec.des.decrypt_tdes_ecb, key, ours)
    assert psec_call(psec.pinblock.decode_pinblock_iso_3, clear, pan) == pin
    theirs = psec_call(psec.pinblock.encode_pinblock_iso_3, pin, pan)
    assert decrypt_pin_block(key, psec_call(psec.des.encrypt_tdes_ecb, key, theirs), pan) == pin


@differential
@given(
    key=st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)), pin=pins, pan=pans
)
def test_pin_block_format4_interoperates_with_psec(key: bytes, pin: str, pan: str) -> None:
    ours = encrypt_pin_block(key, pin, pan, 4)
    assert psec_call(psec.pinblock.decipher_pinblock_iso_4, key, ours, pan) == pin
    theirs = psec_call(psec.pinblock.encipher_pinblock_iso_4, key, pin, pan)
    assert decrypt_pin_block(key, theirs, pan) == pin

"""Key downloads of other acquirers: an 0810 that names key set 005 or 011 (layouts this
terminal does not know) is refused by name, K3, and the keystore is byte for byte what it was."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from protocol.codec import get_codec
from protocol.fields import Field60
from protocol.framing import length_prefixed
from protocol.message import Message
from protocol.transport.noisy import read_frame, serving
from tests.terminal.conftest import Rig


@contextmanager
def acquirer(key_set: str, size: int) -> Iterator[str]:
    """A host that answers a sign-on `00` with 60.3 = `key_set` and `size` bytes of field 62."""
    codec = get_codec("iso87")

    def handle(conn: socket.socket) -> None:
        request = read_frame(conn)
        if request is None:
            return
        msg = codec.decode(request)
        field60 = Field60.parse(msg.text(60))
        reply = Message("0810", {11: msg.text(11), 12: "101500", 13: "1201", 37: "000000000001",
                                 39: "00", 41: msg.text(41), 42: msg.text(42),
                                 60: Field60(field60.type_code, field60.batch, key_set).format(),
                                 62: bytes(range(size))})
        conn.sendall(length_prefixed(codec.encode(reply)))

    with serving(handle) as url:
        yield url


@pytest.mark.parametrize(("key_set", "size", "reason"), [
    ("005", 40, "K3 WK key set 005 unknown"),
    ("011", 64, "K3 WK key set 011 unknown"),
    ("001", 24, "K3 WK key set 001 unasked"),  # a set we know, but not the one asked for
])
def test_another_acquirers_key_set_is_refused_and_old_keys_kept(ready: Rig, key_set: str, size: int,
                                                                  reason: str) -> None:
    keystore = ready.folder / "keystore.json"
    before = keystore.read_bytes()
    with acquirer(key_set, size) as url:
        run = ready("signon", "--host", url, "--json")
    assert run.code != 0, run.out
    assert run.json["reason"] == reason, run.out
    assert f"key set {key_set}" in run.json["detail"] and "old keys kept" in run.json["detail"]
    assert keystore.read_bytes() == before
    assert ready.purchase("--json").json["outcome"] == "approved"  # the old keys still work


def test_a_double_length_mak_under_003_in_cup_is_refused_by_what_it_is() -> None:
    """Some CUP hosts send a 16-byte MAK under 003; our cup MAC takes a single-length one."""
    from protocol.dialects import CUP
    from protocol.errors import DecodeError
    from protocol.fields import parse_key_set

    data = bytes(16) + bytes(4) + bytes(range(1, 17)) + bytes(4)
    with pytest.raises(DecodeError, match="a MAK of 16 bytes where cup's MAC takes one of 8"):
        parse_key_set(data, "003", CUP)

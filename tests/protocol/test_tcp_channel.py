"""The terminal's TCP channel against a real listener on 127.0.0.1 that answers with broken bytes."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from protocol.framing import length_prefixed
from protocol.transport.errors import TransportError
from protocol.transport.noisy import read_frame, serving
from protocol.transport.tcp import TcpChannel, parse_endpoint


def answering(answer: bytes) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        if read_frame(conn) is not None:
            conn.sendall(answer)
    return handle


def test_an_answer_before_a_bad_length_in_the_same_bytes_is_not_lost() -> None:
    with serving(answering(length_prefixed(b"answer") + b"\x00\x00")) as url:
        channel = TcpChannel(parse_endpoint(url), response_timeout=5)
        try:
            assert channel.exchange(b"request") == b"answer"
        finally:
            channel.close()


def test_a_bad_length_alone_is_a_transport_error_that_names_it() -> None:
    with serving(answering(b"\x00\x00")) as url:
        channel = TcpChannel(parse_endpoint(url), response_timeout=5)
        with pytest.raises(TransportError, match=r"bad frame.*zero-length"):
            channel.exchange(b"request")

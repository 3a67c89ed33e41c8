"""The TCP shell: one step's bytes out, its answers in. No decisions here beyond timing."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from protocol.errors import FramingError
from protocol.framing import MAX_FRAME, FrameReader, length_prefixed
from protocol.transport.tcp import Endpoint
from terminal.fuzz.oracles import Observation
from terminal.fuzz.probe import Step


class TargetDown(ConnectionError):
    """The target does not accept a connection (or its port does not answer at all)."""


class TcpTarget:
    pipelines = True
    """A stream answers a connection's requests in order: the runner may send several at once."""

    def __init__(self, endpoint: Endpoint, timeout: float, connect_timeout: float = 3.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._sock: socket.socket | None = None
        self._reader = FrameReader(MAX_FRAME)

    def __str__(self) -> str:
        return f"tcp://{self.endpoint}"

    def connect(self) -> socket.socket:
        if self._sock is None:
            try:
                sock = socket.create_connection((self.endpoint.host, self.endpoint.port),
                                                timeout=self.connect_timeout)
            except OSError as exc:
                raise TargetDown(f"{self} does not accept connections: "
                                 f"{exc.strerror or type(exc).__name__}") from None
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock, self._reader = sock, FrameReader(MAX_FRAME)
        return self._sock

    def alive(self, payload: bytes = b"") -> bool:
        """A fresh connection is accepted (and not reset at once)."""
        self.reset()
        try:
            self.connect()
        except TargetDown:
            return False
        self.reset()
        return True

    def reset(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def run(self, step: Step, payloads: tuple[bytes, ...], due: int,
            meanwhile: Callable[[], object] | None = None) -> Observation:
        seen = Observation(sent=payloads)
        sock = self.connect()
        writes = step.raw or (b"".join(length_prefixed(p) for p in payloads),)
        started = time.perf_counter()
        try:
            for i, data in enumerate(writes):
                if i and step.pause:
                    time.sleep(step.pause)
                sock.sendall(data)
        except OSError:
            seen.closed = True
            self.reset()
            return seen
        if meanwhile is not None:
            meanwhile()
        if due:
            self._collect(sock, seen, due, started)
        if step.fresh or seen.closed or seen.timed_out or seen.bad_frame:
            self.reset()
        return seen

    def _collect(self, sock: socket.socket, seen: Observation, due: int, started: float) -> None:
        deadline = started + self.timeout  # for each answer: the host may take its time with each
        while len(seen.answers) < due:
            left = deadline - time.perf_counter()
            if left <= 0:
                seen.timed_out = True
                return
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                seen.timed_out = True
                return
            except OSError:
                seen.closed = True
                return
            if not chunk:
                seen.closed = True
                return
            now = time.perf_counter()
            try:
                frames = self._reader.feed(chunk)
            except FramingError as exc:
                seen.answers.extend(exc.frames)
                seen.bad_frame = f"the answer is not a well-formed frame: {exc}"
                return
            seen.answers.extend(frames)
            seen.latencies.extend([now - started] * len(frames))
            if frames:  # the next answer's time counts from this one
                started, deadline = now, now + self.timeout

    def close(self) -> None:
        self.reset()

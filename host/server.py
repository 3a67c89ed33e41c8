"""The serving host's shell: `HostCore` (host.core) behind asyncio TCP connections and serial
ports.

One thread owns the core, the event loop's: TCP connections feed it on that loop, serial ports
(through `LoopHandler`) hand their messages to it from their threads, and `Batcher` commits once
per turn of the loop in which messages arrived. How TCP peers are kept from holding more than
their share (descriptors, time, memory) is in host.connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial

from host.connections import Limits, Listener, Registry, default_max_connections
from host.core import CLOSE, IGNORED, Cut, HostCore
from host.logs import RateLimited
from protocol.errors import FramingError
from protocol.framing import length_prefixed
from protocol.pcap import LinkCapture, PcapTap, TapConnection
from protocol.trace import TraceOptions
from protocol.transport.serial import SerialLinkError, start_serial_server

LISTEN_BACKLOG = 4096
READ_SIZE = 8192  # bytes per read, into the one buffer every connection shares


# --- TCP -----------------------------------------------------------------------------------------


class Batcher:
    """Runs `HostCore.commit` once per turn of the event loop in which messages arrived."""

    def __init__(self, core: HostCore, loop: asyncio.AbstractEventLoop) -> None:
        self.core = core
        self.loop = loop
        self.scheduled = False

    def schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        self.core.commit()


class HostConnection(asyncio.BufferedProtocol):
    """One terminal connection: frames in, answers out; a broken stream closes only itself.

    Reads go into one buffer shared by every connection (`READ_SIZE`): a peer's bytes are
    taken into its frame reader at once, so no connection holds a read buffer of its own,
    and one read is at most a few dozen frames, so a peer pipelining thousands of requests
    is answered a read per turn of the event loop, taking turns with every other connection.
    A peer that does not read its answers stops being read once they pass the high mark
    (`pause_writing`), so it can grow neither the host's memory nor other terminals' wait.
    """

    def __init__(self, core: HostCore, batcher: Batcher, conn: str, registry: Registry,
                 buffer: memoryview, limits: Limits) -> None:
        self.core = core
        self.batcher = batcher
        self.conn = conn
        self.registry = registry
        self.buffer = buffer
        self.limits = limits
        framing = core.framing
        self.reader = framing.reader()
        # The default header frames with the one call the host always made (no per-answer
        # attribute lookups on the hot path); a spec file's header goes by its own `prefix`.
        self.frame: Callable[[bytes], bytes] = (
            length_prefixed if framing.length.name == "binary2" and not framing.length.includes_self
            else framing.length.prefix)
        self.transport: asyncio.Transport | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(self.limits.write_high, self.limits.write_low)
        self.registry.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.registry.drop(self)
        self.transport = None

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.received(self.buffer[:nbytes])

    def received(self, data: bytes | memoryview) -> None:
        if self.closing:
            return
        broken = False
        try:
            payloads = self.reader.feed(data)
        except FramingError as exc:
            self.core.log.event(event="bad frame", conn=self.conn, error=str(exc))
            payloads = exc.frames  # whole frames before the bad length are still answered
            broken = True
        self.registry.heard(self, self.reader.pending > 0)
        if not payloads and not broken:
            return  # part of a frame: nothing to do until the rest comes
        core = self.core
        for payload in payloads:
            if core.submit(payload, self.send, self.conn) == CLOSE:
                self.closing = True
                break
        if broken and not self.closing:
            core.close_later(self.send)
            self.closing = True
        self.batcher.schedule()

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()
            self.registry.hold(self)

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()
            self.registry.release(self, self.reader.pending > 0)

    def send(self, payload: bytes | None) -> None:
        if self.transport is None:
            return
        if payload is None:
            self.finish()
        elif type(payload) is Cut:
            self.transport.write(payload.framed(self.frame))
            self.finish()
        else:
            self.transport.write(self.frame(payload))

    def finish(self) -> None:
        """Close after the answers already due, telling the peer (FIN) and dropping what it
        still sends until it closes too, within the frame timeout: a socket closed with
        unread bytes resets the connection, and the peer loses answers it has not read."""
        if self.transport is not None:
            self.closing = True
            self.transport.write_eof()
            self.registry.closing(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def shed(self) -> None:
        """Close now: answers still buffered for a peer that does not read them are dropped."""
        if self.transport is not None:
            if self.transport.get_write_buffer_size():
                self.transport.abort()
            else:
                self.transport.close()


class TappedConnection(HostConnection):
    """`serve --pcap`: a connection that also writes what it reads and sends to a capture.
    A subclass, so a host serving without a capture does no per-frame work for it."""

    tap: PcapTap
    capture: TapConnection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        try:
            self.capture = self.tap.connection(transport.get_extra_info("sockname"),
                                               transport.get_extra_info("peername"),
                                               local_is_client=False)
        except (ValueError, TypeError) as exc:  # not IPv4: the capture holds IPv4 packets only
            self.core.log.event(event="not captured", conn=self.conn, error=str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.capture is not None:
            self.capture.closed(by_client=True)
            self.capture = None
        super().connection_lost(exc)

    def received(self, data: bytes | memoryview) -> None:
        if self.capture is not None:  # everything that arrived, as a tap on the line saw it
            self.capture.read(bytes(data))
        super().received(data)

    def send(self, payload: bytes | None) -> None:
        if self.capture is not None and payload is not None and self.transport is not None:
            self.capture.wrote(payload.framed(self.frame) if type(payload) is Cut else self.frame(payload))
        super().send(payload)


class LoopHandler:
    """`handle(payload) -> answer` for serial threads: the message is handled on the event loop
    thread, in the same batches as TCP, and the calling thread waits for its answer."""

    def __init__(self, batcher: Batcher, name: str, timeout: float = 30.0) -> None:
        self.batcher = batcher
        self.name = name
        self.timeout = timeout

    def __call__(self, payload: bytes) -> bytes | None:
        answer: Future[bytes | None] = Future()

        def submit() -> None:
            if self.batcher.core.submit(payload, answer.set_result, self.name) == IGNORED:
                answer.set_result(None)
            self.batcher.schedule()

        self.batcher.loop.call_soon_threadsafe(submit)
        result = answer.result(self.timeout)
        if type(result) is Cut:  # a link frame holds the first half of the message only
            return bytes(result[:len(result) // 2])
        return result


@dataclass
class TcpHost:
    """A listening TCP server around a HostCore; `stop` drains and closes it."""

    core: HostCore
    batcher: Batcher
    listener: Listener
    registry: Registry
    adopting: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def address(self) -> tuple[str, int]:
        return self.listener.address

    async def stop(self) -> None:
        """Stop accepting, answer what was already read, then close every connection."""
        self.listener.close()
        self.batcher.flush()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while self.registry or self.adopting:
                    for connection in self.registry:  # again: some were adopted meanwhile
                        connection.close()
                    await asyncio.sleep(0.01)
        for connection in self.registry:  # peers that would not take their last answers
            connection.shed()
        self.registry.stop()


async def start_tcp(core: HostCore, batcher: Batcher, host: str, port: int,
                    limits: Limits, tap: PcapTap | None = None) -> TcpHost:
    """`tap`: write every connection to a capture (`serve --pcap`)."""
    loop = asyncio.get_running_loop()
    events = RateLimited(core.log, limits.log_interval)
    registry = Registry(limits, events)
    buffer = memoryview(bytearray(READ_SIZE))
    numbers = itertools.count(1)

    def connection() -> HostConnection:
        if tap is None:
            return HostConnection(core, batcher, f"tcp-{next(numbers)}", registry, buffer, limits)
        tapped = TappedConnection(core, batcher, f"tcp-{next(numbers)}", registry, buffer, limits)
        tapped.tap = tap
        return tapped

    async def connect(sock: socket.socket) -> None:
        try:
            await loop.connect_accepted_socket(connection, sock)
        except OSError:  # the peer went away before its transport was made
            sock.close()

    def adopt(sock: socket.socket) -> None:
        task = loop.create_task(connect(sock))
        tcp.adopting.add(task)
        task.add_done_callback(tcp.adopting.discard)

    listener = Listener.bind(host, port, LISTEN_BACKLOG, loop, adopt, events)
    tcp = TcpHost(core, batcher, listener, registry)
    listener.start()
    registry.start(loop)
    return tcp


@dataclass(frozen=True, slots=True)
class SerialPorts:
    """What `serve --serial` needs beyond the core: the specs and how to trace a line."""

    specs: list[str]
    trace: TraceOptions | None = None
    capture: LinkCapture | None = None  # `serve --pcap`: the link frames of every port


async def serve_until_signalled(
    core: HostCore, tcp: tuple[str, int] | None, serial: SerialPorts,
    announce: Callable[[str], None], limits: Limits | None = None, tap: PcapTap | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM, then finish the requests in flight and close cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    batcher = Batcher(core, loop)
    limits = limits or Limits(default_max_connections())
    listener = await start_tcp(core, batcher, *tcp, limits, tap) if tcp else None
    if listener is not None:
        core.metrics.watch_connections(listener.registry.__len__)
    if listener is not None:
        bound_host, bound_port = listener.address
        core.log.event(event="listening", tcp=f"{bound_host}:{bound_port}")
        announce(f"listening tcp {bound_host}:{bound_port}")
    serial_stop = threading.Event()

    def ready(name: str) -> None:
        loop.call_soon_threadsafe(partial(core.log.event, event="listening", serial=name))
        announce(f"listening serial {name}")

    def failed(error: SerialLinkError) -> None:
        loop.call_soon_threadsafe(
            partial(core.log.event, event="serial port failed", error=str(error)))

    threads = [
        start_serial_server(spec, LoopHandler(batcher, f"serial-{i}"), stop=serial_stop,
                            on_ready=ready, on_error=failed, trace=serial.trace,
                            capture=serial.capture)
        for i, spec in enumerate(serial.specs, 1)
    ]
    await stop.wait()
    serial_stop.set()
    for thread in threads:  # the loop keeps running, so their last answers still arrive
        await asyncio.to_thread(thread.join, 10)
    if listener is not None:
        await listener.stop()
    batcher.flush()
    core.log.event(event="stopped", messages=core.messages, commits=core.commits)

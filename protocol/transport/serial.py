"""The serial transport: `protocol.link.Link` driven over pyserial ports and pseudo-terminals.

One thread owns a port's `Link`; a reader thread only moves bytes from the port into that
thread's inbox, so the state machine is never shared and the owner waits on one queue for either
bytes or its next link deadline. The terminal uses `SerialChannel` (one request, one response),
the host `serve_serial` / `start_serial_server`; docs/serial.md is the user's side of all this.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import queue
import select
import termios
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import serial

from protocol.link import (
    Event,
    Link,
    LinkError,
    LinkOptionError,
    LinkOptions,
    LinkUsageError,
    MessageReceived,
    MessageSent,
)
from protocol.pcap import LinkCapture
from protocol.trace import LinkTrace, TraceOptions
from protocol.transport.errors import TransportError

log = logging.getLogger(__name__)

READ_QUANTUM = 0.05
"""How long a reader thread blocks in one read: only bounds how fast a port closes."""
WRITE_TIMEOUT = 5.0
"""A write that cannot finish in this time means nobody drains the line (flow control stuck)."""
STOP_POLL = 0.1
"""How often a server loop looks at its stop event while the line is quiet."""
PTY = "pty"


class SerialLinkError(TransportError):
    """The serial line failed: a port that cannot be opened or vanished, or a peer that never
    ACKs. A ConnectionError, so a caller that handles a dropped TCP connection handles this."""


class SerialTimeout(SerialLinkError, TimeoutError):
    """The request went through but no response came in time."""


class PortSpecError(ValueError):
    """A port spec string that does not parse."""


# --- port spec -----------------------------------------------------------------------------------

def _flag(text: str) -> bool:
    if text.lower() in ("", "1", "on", "yes", "true"):
        return True
    if text.lower() in ("0", "off", "no", "false"):
        return False
    raise ValueError("must be on or off")


def _choice(table: dict[str, Any]) -> Callable[[str], Any]:
    def pick(text: str) -> Any:
        if text.upper() not in table:
            raise ValueError(f"must be one of {', '.join(table)}")
        return table[text.upper()]
    return pick


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


SERIAL_SETTINGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "baud": ("baudrate", _positive_int),
    "bytesize": ("bytesize", _choice({"5": 5, "6": 6, "7": 7, "8": 8})),
    "parity": ("parity", _choice({p: p for p in "NEOMS"})),
    "stopbits": ("stopbits", _choice({"1": 1, "1.5": 1.5, "2": 2})),
    "rtscts": ("rtscts", _flag),
    "xonxoff": ("xonxoff", _flag),
}
LINK_SETTINGS: dict[str, Callable[[str], Any]] = {
    "length": str.lower,
    "lrc": str.lower,
    "ack_timeout": float,
    "inter_byte_timeout": float,
    "retries": int,
    "ack_nak": _flag,
    "max_length": int,
}
"""Spec keys that set `LinkOptions` fields of the same name."""


@dataclass(frozen=True, slots=True)
class PortSpec:
    """One port and its settings: the line's (pyserial's) and the link's (overrides only, so a
    spec applies over whatever link options the program was started with)."""

    port: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1
    rtscts: bool = False
    xonxoff: bool = False
    link: tuple[tuple[str, Any], ...] = ()

    def link_options(self, base: LinkOptions | None = None) -> LinkOptions:
        return dataclasses.replace(base or LinkOptions(), **dict(self.link))


def parse_port_spec(text: str) -> PortSpec:
    """`PORT[,key=value]...`: PORT is a device path, a pyserial URL or `pty`; see docs/serial.md."""
    port, *settings = [part.strip() for part in text.split(",")]
    if not port:
        raise PortSpecError(f"port spec {text!r}: no port before the first comma")
    serial_values: dict[str, Any] = {}
    link_values: dict[str, Any] = {}
    for setting in settings:
        key, _, value = setting.partition("=")
        key = key.strip().lower()
        try:
            if key in SERIAL_SETTINGS:
                name, convert = SERIAL_SETTINGS[key]
                serial_values[name] = convert(value.strip())
            elif key in LINK_SETTINGS:
                link_values[key] = LINK_SETTINGS[key](value.strip())
            else:
                known = ", ".join([*SERIAL_SETTINGS, *LINK_SETTINGS])
                raise ValueError(f"unknown setting; known: {known}")
        except ValueError as error:
            raise PortSpecError(f"port spec {text!r}: {key}: {error}") from None
    try:
        dataclasses.replace(LinkOptions(), **link_values)
    except LinkOptionError as error:
        raise PortSpecError(f"port spec {text!r}: {error}") from None
    return PortSpec(port, **serial_values, link=tuple(link_values.items()))


# --- the same settings as command-line flags ----------------------------------------------------

PORT_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("--baud", "baud", "line speed (a pty ignores it)"),
    ("--bytesize", "bytesize", "5, 6, 7 or 8"),
    ("--parity", "parity", "N, E, O, M or S"),
    ("--stopbits", "stopbits", "1, 1.5 or 2"),
    ("--ack-timeout", "ack_timeout", "seconds to wait for ACK before resending"),
    ("--retries", "retries", "resends after the first transmission"),
    ("--link-length", "length", "bcd, binary or none (none: DLE stuffing)"),
    ("--lrc", "lrc", "which bytes the LRC covers, e.g. len-etx"),
)
PORT_SWITCHES: tuple[tuple[str, str, str], ...] = (
    ("--rtscts", "rtscts", "RTS/CTS hardware flow control"),
    ("--xonxoff", "xonxoff", "XON/XOFF software flow control"),
    ("--no-ack-nak", "ack_nak=off", "send without waiting for ACK/NAK"),
)
"""`--serial PORT --baud 9600 ...` is the spec `PORT,baud=9600,...`: one parser, two spellings."""


def add_port_arguments(parser: Any, default: Any = None) -> None:
    """The line and link flags that go with `--serial PORT` on a command line."""
    for flag, key, text in PORT_FLAGS:
        parser.add_argument(flag, dest=f"port_{key}", default=default, metavar="V", help=text)
    for flag, key, text in PORT_SWITCHES:
        parser.add_argument(flag, dest=f"port_{key.partition('=')[0]}", action="store_const",
                            const=key, default=default, help=text)


def spec_from_arguments(port: str, args: Any) -> str:
    """`port` with the flags given on the command line appended as spec settings."""
    parts = [port]
    for _, key, _ in PORT_FLAGS:
        value = getattr(args, f"port_{key}", None)
        if value is not None:
            parts.append(f"{key}={value}")
    for _, key, _ in PORT_SWITCHES:
        value = getattr(args, f"port_{key.partition('=')[0]}", None)
        if value is not None:
            parts.append(value)
    return ",".join(parts)


# --- ports ---------------------------------------------------------------------------------------

class _Port(Protocol):
    name: str

    def read(self) -> bytes:
        """What arrived, waiting at most READ_QUANTUM; raises OSError when the port is gone."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class _PyserialPort:
    def __init__(self, spec: PortSpec):
        self.name = spec.port
        self._serial = serial.serial_for_url(
            spec.port, baudrate=spec.baudrate, bytesize=spec.bytesize, parity=spec.parity,
            stopbits=spec.stopbits, rtscts=spec.rtscts, xonxoff=spec.xonxoff,
            timeout=READ_QUANTUM, write_timeout=WRITE_TIMEOUT, exclusive=True,
        )

    def read(self) -> bytes:
        first = self._serial.read(1)
        waiting = self._serial.in_waiting if first else 0
        return first + self._serial.read(waiting) if waiting else first

    def write(self, data: bytes) -> None:
        try:
            self._serial.write(data)
            self._serial.flush()  # so the ACK timer starts when the frame has left the port
        except termios.error as error:  # tcdrain on a device that is gone; not an OSError
            raise OSError(*error.args) from None

    def close(self) -> None:
        self._serial.close()


class _PtyPort:
    """A pseudo-terminal we create and serve on; others open `name` (/dev/pts/N).

    We keep the slave side open ourselves, so a peer that opens and closes it (a terminal run
    after terminal run) does not hang the line up: the port lives as long as the server."""

    def __init__(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.name = os.ttyname(self._slave)

    def read(self) -> bytes:
        ready, _, _ = select.select([self._master], [], [], READ_QUANTUM)
        if not ready:
            return b""
        try:
            return os.read(self._master, 4096)
        except BlockingIOError:
            return b""

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + WRITE_TIMEOUT
        while view:
            _, ready, _ = select.select([], [self._master], [], deadline - time.monotonic())
            if not ready:
                raise OSError(f"write stuck for {WRITE_TIMEOUT:g} s: nobody reads {self.name}")
            view = view[os.write(self._master, view):]

    def close(self) -> None:
        os.close(self._master)
        os.close(self._slave)


OPEN_HINTS = {
    errno.ENOENT: "no such device: is it plugged in, and is the path right?",
    errno.EACCES: "permission denied: add the user to the dialout group, or use sudo",
    errno.EBUSY: "in use by another program",
    errno.EAGAIN: "in use by another program (it holds the port's lock)",
}
"""What a tester should do about the usual reasons a port does not open."""


def open_port(spec: PortSpec) -> _Port:
    """The port itself, or a SerialLinkError saying why not (never a pyserial exception)."""
    try:
        return _PtyPort() if spec.port == PTY else _PyserialPort(spec)
    except (OSError, ValueError) as error:
        why = OPEN_HINTS.get(getattr(error, "errno", None) or 0, str(error))
        raise SerialLinkError(f"port {spec.port} cannot be opened: {why}") from None


# --- the line: a port, its reader thread and its link -------------------------------------------

@dataclass(frozen=True, slots=True)
class _Gone:
    reason: str


@dataclass(frozen=True, slots=True)
class _Send:
    payload: bytes


_Item = bytes | _Gone | _Send


class _Reader(threading.Thread):
    def __init__(self, port: _Port, inbox: queue.Queue[_Item]):
        super().__init__(name=f"serial reader {port.name}", daemon=True)
        self._port = port
        self._inbox = inbox
        self.closing = threading.Event()

    def run(self) -> None:
        while not self.closing.is_set():
            try:
                data = self._port.read()
            except OSError as error:
                if not self.closing.is_set():
                    self._inbox.put(_Gone(str(error) or type(error).__name__))
                return
            if data:
                self._inbox.put(data)


class SerialLine:
    """A port with its link, used by exactly one thread (the one that calls `poll`)."""

    def __init__(self, spec: PortSpec, options: LinkOptions, trace: TraceOptions | None,
                 clock: Callable[[], float], capture: LinkCapture | None = None,
                 host_side: bool = False):
        self._port = open_port(spec)
        # `--pcap`: the bytes as they crossed the line, each way (the terminal writes to the host).
        self._capture = capture
        self._host_side = host_side
        self.name = self._port.name
        self._clock = clock
        self.link = Link(options)
        self._trace = LinkTrace(options, trace, clock()) if trace else None
        self._inbox: queue.Queue[_Item] = queue.Queue()
        self._reader = _Reader(self._port, self._inbox)
        self._reader.start()

    def send(self, payload: bytes) -> None:
        self.link.send(payload, self._clock())
        self._flush()

    def send_or_log(self, payload: bytes) -> None:
        """For servers: a message the link cannot carry is logged, not fatal to the port."""
        self._send_or_log(payload, self._clock())
        self._flush()

    def _send_or_log(self, payload: bytes, now: float) -> None:
        try:
            self.link.send(payload, now)
        except LinkUsageError as error:
            log.error("serial %s: message not sent: %s", self.name, error)

    def log_event(self, event: Event) -> None:
        """What a server's operator should see of the line without a trace."""
        if isinstance(event, LinkError):
            log.warning("serial %s: a message was lost: %s", self.name, event)
        elif not isinstance(event, MessageReceived | MessageSent):
            log.info("serial %s: %s", self.name, event)

    def send_from_thread(self, payload: bytes) -> None:
        """For another thread (the bridge's TCP side): the link itself is not thread-safe."""
        self._inbox.put(_Send(payload))

    def poll(self, timeout: float) -> list[Event]:
        """Waits at most `timeout` for bytes or the next link deadline; returns what happened."""
        now = self._clock()
        self.link.handle_timers(now)
        self._flush()
        events = self.link.events()
        if events:
            return events
        deadline = self.link.next_deadline()
        wait = timeout if deadline is None else min(timeout, deadline - now)
        try:
            item = self._inbox.get(timeout=max(wait, 0.0))
        except queue.Empty:
            item = None
        now = self._clock()
        if isinstance(item, bytes):
            if self._trace:
                self._trace.received(item, now)
            if self._capture is not None:
                self._capture.sent(item, to_host=self._host_side)
            self.link.receive_data(item, now)
        elif isinstance(item, _Send):
            self._send_or_log(item.payload, now)
        elif isinstance(item, _Gone):
            raise SerialLinkError(f"port {self.name} vanished: {item.reason}")
        self.link.handle_timers(now)
        if self._trace:
            self._trace.tick(now)
        self._flush()
        return self.link.events()

    def drain(self) -> list[Event]:
        """Whatever already arrived, without waiting."""
        events: list[Event] = []
        for _ in range(self._inbox.qsize() + 1):
            events += self.poll(0.0)
        return events

    def _flush(self) -> None:
        data = self.link.data_to_send()
        if not data:
            return
        if self._trace:
            self._trace.sent(data, self._clock())
        if self._capture is not None:
            self._capture.sent(data, to_host=not self._host_side)
        try:
            self._port.write(data)
        except OSError as error:
            raise SerialLinkError(f"port {self.name} vanished: {error}") from None
        self.link.transmitted(self._clock())

    def close(self) -> None:
        self._reader.closing.set()
        self._reader.join()
        self._port.close()


def resolve_spec(spec: PortSpec | str, link_options: LinkOptions | None) -> tuple[PortSpec,
                                                                                LinkOptions]:
    spec = parse_port_spec(spec) if isinstance(spec, str) else spec
    return spec, spec.link_options(link_options)


# --- terminal side -------------------------------------------------------------------------------

class SerialChannel:
    """The terminal's end of a serial line: `exchange` sends one payload and returns the next
    message that arrives, the same contract as a TCP channel."""

    def __init__(self, spec: PortSpec | str, link_options: LinkOptions | None = None,
                 trace: TraceOptions | None = None, *,
                 clock: Callable[[], float] = time.monotonic, capture: LinkCapture | None = None):
        spec, options = resolve_spec(spec, link_options)
        self._clock = clock
        self._line = SerialLine(spec, options, trace, clock, capture)
        self.name = self._line.name

    def exchange(self, payload: bytes, timeout: float) -> bytes:
        """Raises SerialLinkError when the peer never ACKs (and sent nothing back), or the port
        vanishes; SerialTimeout when the request was ACKed but no response came in `timeout`."""
        line = self._line
        for event in line.drain():
            if isinstance(event, MessageReceived):
                log.warning("serial %s: discarded a message that came in before the request",
                            self.name)
        line.send(payload)
        deadline = self._clock() + timeout
        response: bytes | None = None
        while response is None or line.link.sending:  # waits out a lost ACK's retransmission
            remaining = deadline - self._clock()
            if remaining <= 0 and response is not None:
                break
            if remaining <= 0:
                raise SerialTimeout(f"port {self.name}: no response within {timeout:g} s")
            for event in line.poll(remaining):
                if isinstance(event, MessageReceived) and response is None:
                    response = event.payload
                elif isinstance(event, LinkError) and response is None and \
                        event.payload == payload:
                    raise SerialLinkError(f"port {self.name}: {event}")
        return response

    def close(self) -> None:
        self._line.close()

    def __enter__(self) -> SerialChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- host side -----------------------------------------------------------------------------------

Handler = Callable[[bytes], bytes | None]


def log_error(error: SerialLinkError) -> None:
    log.error("%s", error)


def serve_serial(spec: PortSpec | str, handle: Handler, *,
                 link_options: LinkOptions | None = None, trace: TraceOptions | None = None,
                 stop: threading.Event, on_ready: Callable[[str], None] | None = None,
                 on_error: Callable[[SerialLinkError], None] = log_error,
                 clock: Callable[[], float] = time.monotonic,
                 capture: LinkCapture | None = None) -> SerialLinkError | None:
    """Serves one port until `stop` is set: each message goes to `handle`, its answer (unless
    None) goes back. A port that cannot be opened or vanishes ends this call with the error
    (also given to `on_error`), never the process, so a host keeps serving its other ports."""
    spec, options = resolve_spec(spec, link_options)
    try:
        line = SerialLine(spec, options, trace, clock, capture, host_side=True)
    except SerialLinkError as error:
        on_error(error)
        return error

    def answer(payload: bytes) -> None:
        try:
            reply = handle(payload)
        except Exception:  # one message that breaks the handler must not take the port down
            log.exception("serial %s: the handler failed; no answer sent", line.name)
            return
        if reply is not None:
            line.send_or_log(reply)

    return pump(line, stop, on_ready, on_error, answer)


def pump(line: SerialLine, stop: threading.Event, on_ready: Callable[[str], None] | None,
         on_error: Callable[[SerialLinkError], None],
         deliver: Callable[[bytes], None]) -> SerialLinkError | None:
    """The loop of every program on a serial line: each message received goes to `deliver`,
    link events to the log, until `stop` or the port fails (returned, and given to `on_error`).
    The line is closed on the way out."""
    try:
        if on_ready:
            on_ready(line.name)
        while not stop.is_set():
            for event in line.poll(STOP_POLL):
                if isinstance(event, MessageReceived):
                    deliver(event.payload)
                else:
                    line.log_event(event)
    except SerialLinkError as error:
        on_error(error)
        return error
    finally:
        line.close()
    return None


def start_serial_server(spec: PortSpec | str, handle: Handler, *, stop: threading.Event,
                        **options: Any) -> threading.Thread:
    """`serve_serial` in its own (started) thread; join it after setting `stop`."""
    thread = threading.Thread(target=serve_serial, args=(spec, handle),
                              kwargs={"stop": stop, **options}, name=f"serial {spec}",
                              daemon=True)
    thread.start()
    return thread

"""Serial ports for bench instruments: opened by URL, read with deadlines, errors in one line.

Ports are opened with pyserial's :func:`serial.serial_for_url`, so a device path
(``/dev/ttyUSB0``, ``COM3``), a pseudo-terminal, ``socket://127.0.0.1:PORT`` and
``loop://`` are all the same to a driver. pyserial is imported only when a port is
opened, so the drivers and the registry import without it.

A :class:`SerialLink` wraps one open port for one driver. It paces commands (some
instruments drop a command that follows the previous one too closely), discards
stale input before each command (a late reply to an earlier command must not be
taken for the answer to the next), and never waits past a deadline: every read
ends in a reply, an :class:`~hil.instruments.errors.InstrumentTimeoutError` or an
:class:`~hil.instruments.errors.InstrumentReplyError`.
"""

from __future__ import annotations

import importlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Protocol, cast

from hil.instruments.errors import (
    DriverUnavailableError,
    InstrumentError,
    InstrumentPortError,
    InstrumentReplyError,
    InstrumentSettingError,
    InstrumentTimeoutError,
)

_log = logging.getLogger(__name__)

POLL_S = 0.1
"""Longest single blocking read: how often a waiting read looks at its deadline."""


def _port_error_types() -> tuple[type[BaseException], ...]:
    try:
        import termios
    except ImportError:  # not on Windows
        return (OSError,)
    # pyserial lets termios.error (not an OSError) out of a tty that went away.
    return (OSError, termios.error)


PORT_ERRORS = _port_error_types()
"""What a port operation raises when the port itself fails."""


class SerialPort(Protocol):
    """What the drivers use of a port: the part of :class:`serial.Serial` they need.

    Tests and other transports can pass any object with these members.
    """

    @property
    def timeout(self) -> float | None:
        """Read timeout in seconds."""

    @timeout.setter
    def timeout(self, value: float | None) -> None: ...

    @property
    def in_waiting(self) -> int:
        """Bytes that can be read at once (pyserial's socket port says only 0 or 1)."""

    def read(self, size: int = 1) -> bytes:
        """Read up to ``size`` bytes; fewer when the timeout runs out."""

    def write(self, data: bytes, /) -> int | None:
        """Write ``data``."""

    def reset_input_buffer(self) -> None:
        """Discard everything received and not yet read."""

    def close(self) -> None:
        """Close the port."""


def pyserial() -> ModuleType:
    """Import and return pyserial's ``serial`` module, or raise a clear error without it."""
    try:
        return importlib.import_module("serial")
    except ImportError as exc:
        raise DriverUnavailableError(
            "the serial instrument drivers need pyserial (pip install pyserial)"
        ) from exc


def describe_os_error(exc: BaseException) -> str:
    """Return the operating system's reason behind ``exc`` (e.g. ``No such file or directory``).

    pyserial wraps the ``OSError`` it met in a ``SerialException`` whose text repeats
    the port name and the errno; the innermost ``strerror`` reads best in one line.
    """
    text = str(exc)
    seen: BaseException | None = exc
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        # The innermost OSError is the operating system's own word.
        if isinstance(seen, OSError) and seen.strerror:
            text = seen.strerror
        elif len(seen.args) == 2 and isinstance(seen.args[1], str):
            text = seen.args[1]  # termios.error: (errno, message)
        seen = seen.__cause__ or seen.__context__
    # "could not open port X: reason" -> "reason": the caller names the port itself.
    prefix, sep, rest = text.partition(": ")
    if sep and prefix.lower().startswith("could not open port"):
        text = rest
    return text or type(exc).__name__


def open_serial_port(
    url: str,
    *,
    baudrate: int = 9600,
    timeout_s: float = 0.5,
    bytesize: int = 8,
    parity: str = "N",
    stopbits: float = 1,
) -> SerialPort:
    """Open the port at ``url`` (a device path or a pyserial URL) and return it.

    Raises:
        InstrumentPortError: the port does not exist, is busy, or refuses the connection.
        DriverUnavailableError: pyserial is not installed.
    """
    serial = pyserial()
    try:
        port = serial.serial_for_url(
            url,
            baudrate=baudrate,
            bytesize=bytesize,
            parity=parity,
            stopbits=stopbits,
            timeout=timeout_s,
            # A write that cannot drain (a stalled USB adapter) must not hang either.
            write_timeout=timeout_s,
        )
    except (OSError, ValueError) as exc:
        raise InstrumentPortError(f"could not open port {url}: {describe_os_error(exc)}") from exc
    _no_delay(port)
    return cast(SerialPort, port)


def _no_delay(port: object) -> None:
    """Switch off Nagle's algorithm on a ``socket://`` port (pyserial leaves it on).

    Commands are a few bytes each; with Nagle, a command written right after one that
    has no reply waits for the peer's delayed ACK (40 ms on Linux) on the way to a
    serial-over-TCP bridge or a simulated instrument.
    """
    sock = getattr(port, "_socket", None)  # pyserial's socket:// port keeps its socket here
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            _log.debug("cannot set TCP_NODELAY on %r: %s", port, exc)


def _printable(data: bytes) -> str:
    return data.decode("ascii", errors="backslashreplace")


class SerialLink:
    """One open port used by one driver: paced commands and reads with deadlines.

    Args:
        port: the open port; the link closes it.
        port_name: how messages name the port (usually its URL).
        device: how messages name the instrument, e.g. ``"the power supply"``.
        timeout_s: default deadline of a reply.
        command_gap_s: least time from the end of one exchange to the next command.
        clock: monotonic clock (injected for tests).
        sleep: how to wait out the command gap (injected for tests).
    """

    def __init__(
        self,
        port: SerialPort,
        *,
        port_name: str,
        device: str,
        timeout_s: float,
        command_gap_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not timeout_s > 0:
            raise InstrumentSettingError(f"timeout_s must be positive, not {timeout_s!r}")
        if not command_gap_s >= 0:
            raise InstrumentSettingError(
                f"command_gap_s must not be negative, not {command_gap_s!r}"
            )
        self.port_name = port_name
        self.device = device
        self.timeout_s = timeout_s
        self.command_gap_s = command_gap_s
        self.lock = threading.RLock()
        """Held by a driver across one command and its reply, so threads can share it."""
        self._port = port
        self._clock = clock
        self._sleep = sleep
        self._last_io: float | None = None
        self._port_timeout: float | None = port.timeout
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def close(self) -> None:
        """Close the port; closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        try:
            self._port.close()
        except PORT_ERRORS as exc:
            # Nothing useful can follow a failed close; the port is gone either way.
            _log.debug("closing %s failed: %s", self.port_name, exc)

    def send(self, data: bytes, command: str) -> None:
        """Write one command, after the command gap; stale input is discarded first."""
        self._check_open()
        if self._last_io is not None:
            wait = self._last_io + self.command_gap_s - self._clock()
            if wait > 0:
                self._sleep(wait)
        try:
            self._port.reset_input_buffer()
            self._port.write(data)
        except PORT_ERRORS as exc:
            if type(exc).__name__ == "SerialTimeoutException":
                raise InstrumentTimeoutError(
                    f"could not send {command!r} to {self.device} on {self.port_name} "
                    f"within {self.timeout_s:g} s"
                ) from exc
            raise InstrumentPortError(
                f"I/O error on {self.port_name} sending {command!r}: {describe_os_error(exc)}"
            ) from exc
        finally:
            self._last_io = self._clock()

    def read_exact(self, size: int, command: str, *, timeout_s: float | None = None) -> bytes:
        """Read a fixed-width reply of ``size`` bytes."""
        return self._read(command, lambda buf: len(buf) >= size, timeout_s, max_bytes=size)

    def read_until(
        self,
        terminator: bytes,
        command: str,
        *,
        timeout_s: float | None = None,
        max_bytes: int = 1024,
    ) -> bytes:
        """Read a reply up to and including ``terminator``; anything after it is dropped."""
        reply = self._read(command, lambda buf: terminator in buf, timeout_s, max_bytes)
        end = reply.index(terminator) + len(terminator)
        if end < len(reply):
            _log.debug("%s: dropped %r after the reply to %r", self.port_name, reply[end:], command)
        return reply[:end]

    def read_when(
        self,
        done: Callable[[bytes], bool],
        command: str,
        *,
        timeout_s: float | None = None,
        max_bytes: int = 1024,
    ) -> bytes:
        """Read until ``done(reply so far)`` is true."""
        return self._read(command, done, timeout_s, max_bytes)

    def read_idle(
        self,
        command: str,
        *,
        idle_s: float,
        timeout_s: float | None = None,
        max_bytes: int = 256,
    ) -> bytes:
        """Read a reply of unknown length and no terminator: it ends when the line is quiet.

        The first byte must come within the timeout; the reply is complete once no
        byte has come for ``idle_s``.
        """
        return self._read(command, lambda _buf: False, timeout_s, max_bytes, idle_s=idle_s)

    def unexpected(
        self, reply: bytes | str, command: str, detail: str = ""
    ) -> InstrumentReplyError:
        """Return the error for a reply the driver cannot read."""
        text = _printable(reply) if isinstance(reply, bytes) else reply
        suffix = f" ({detail})" if detail else ""
        return InstrumentReplyError(
            f"unexpected reply {text!r} to {command!r} from {self.device} "
            f"on {self.port_name}{suffix}"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise InstrumentPortError(f"the port {self.port_name} is closed")

    def _set_port_timeout(self, timeout_s: float) -> None:
        # pyserial reconfigures a real port (tcsetattr) on every change: change it rarely.
        if timeout_s != self._port_timeout:
            self._port.timeout = timeout_s
            self._port_timeout = timeout_s

    def _read(
        self,
        command: str,
        done: Callable[[bytes], bool],
        timeout_s: float | None,
        max_bytes: int,
        idle_s: float | None = None,
    ) -> bytes:
        self._check_open()
        timeout = self.timeout_s if timeout_s is None else timeout_s
        deadline = self._clock() + timeout
        buf = b""
        try:
            while not done(buf):
                if len(buf) >= max_bytes:
                    raise self.unexpected(buf, command, f"longer than {max_bytes} bytes")
                remaining = deadline - self._clock()
                if remaining <= 0:
                    if idle_s is not None and buf:
                        break
                    raise self._timed_out(buf, command, timeout)
                wait = POLL_S if idle_s is None or not buf else idle_s
                self._set_port_timeout(min(wait, remaining))
                chunk = self._port.read(1)
                if not chunk:
                    if idle_s is not None and buf:
                        break  # the line went quiet: the reply is complete
                    continue
                pending = self._port.in_waiting
                if pending:
                    chunk += self._port.read(min(pending, max_bytes - len(buf) - 1))
                buf += chunk
        except InstrumentError:
            raise
        except PORT_ERRORS as exc:
            raise InstrumentPortError(
                f"I/O error on {self.port_name} waiting for the reply to {command!r}: "
                f"{describe_os_error(exc)}"
            ) from exc
        finally:
            self._last_io = self._clock()
        return buf

    def _timed_out(self, buf: bytes, command: str, timeout_s: float) -> Exception:
        if buf:
            return self.unexpected(buf, command, f"incomplete after {timeout_s:g} s")
        return InstrumentTimeoutError(
            f"no reply from {self.device} on {self.port_name} to {command!r} within {timeout_s:g} s"
        )

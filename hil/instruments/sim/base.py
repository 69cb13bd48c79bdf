"""The machinery every simulated instrument shares: sessions, faults, loopback servers.

A simulated instrument is protocol logic (a :class:`SimSession` per connection: bytes
in, replies out, no I/O) plus a :class:`SimInstrument` that serves it from threads

- on a TCP socket on 127.0.0.1, at a free port chosen by binding port 0, reached
  with pyserial's ``socket://127.0.0.1:PORT`` (:attr:`SimInstrument.tcp_url`);
- and, where ``os.openpty`` exists, on a pseudo-terminal reached by its tty path
  (:attr:`SimInstrument.pty_path`), as a real USB-serial device would be.

Faults (:class:`SimFaults`) apply to whole replies: dropped, garbled or late.
Nothing listens beyond the loopback interface.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import select
import socket
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, Self

_log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_READ_SIZE = 4096
_JOIN_TIMEOUT_S = 5.0


class Fault(enum.Enum):
    """What can go wrong with a reply."""

    NO_REPLY = "no-reply"
    """The reply is never sent."""
    GARBLED = "garbled"
    """The reply is sent corrupted (see :meth:`SimInstrument.garble`)."""
    SLOW = "slow"
    """The reply is sent after a delay."""


@dataclass
class _Armed:
    fault: Fault
    remaining: int | None
    """``None``: every reply from now on."""
    delay_s: float = 0.0


class SimFaults:
    """Faults armed on one simulated instrument, consumed reply by reply, first armed first.

    ``count`` is how many replies a fault hits; ``None`` hits every reply until
    :meth:`clear`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: list[_Armed] = []

    def no_reply(self, count: int | None = 1) -> None:
        """Drop the next ``count`` replies."""
        self._arm(_Armed(Fault.NO_REPLY, count))

    def garble(self, count: int | None = 1) -> None:
        """Corrupt the next ``count`` replies."""
        self._arm(_Armed(Fault.GARBLED, count))

    def slow(self, delay_s: float, count: int | None = 1) -> None:
        """Send the next ``count`` replies ``delay_s`` late."""
        self._arm(_Armed(Fault.SLOW, count, delay_s))

    def clear(self) -> None:
        """Disarm every fault."""
        with self._lock:
            self._armed.clear()

    @property
    def armed(self) -> bool:
        """Whether any fault is still armed."""
        with self._lock:
            return bool(self._armed)

    def take(self) -> tuple[Fault, float] | None:
        """Take the fault for the reply about to go out, if any, with its delay."""
        with self._lock:
            if not self._armed:
                return None
            armed = self._armed[0]
            if armed.remaining is not None:
                armed.remaining -= 1
                if armed.remaining <= 0:
                    self._armed.pop(0)
            return armed.fault, armed.delay_s

    def _arm(self, armed: _Armed) -> None:
        if armed.remaining is not None and armed.remaining < 1:
            raise ValueError(f"a fault's count is at least 1 (or None), not {armed.remaining}")
        with self._lock:
            self._armed.append(armed)


class SimSession(ABC):
    """The protocol logic of one connection to a simulated instrument: no I/O, no clock."""

    @abstractmethod
    def feed(self, data: bytes) -> list[bytes]:
        """Take received bytes; return the replies to send, in order."""

    @property
    def pending(self) -> bool:
        """Whether input is buffered that :meth:`idle` should settle."""
        return False

    def idle(self) -> list[bytes]:
        """Settle buffered input after :attr:`SimInstrument.idle_s` of quiet; return replies."""
        return []


class SimInstrument(ABC):
    """A simulated instrument served on loopback TCP and/or a pseudo-terminal.

    Use it as a context manager (or :meth:`start` / :meth:`close`)::

        with SimKoradPsu() as sim:
            psu = KoradPowerSupply.open(sim.tcp_url)

    Args:
        tcp: serve on a TCP socket on 127.0.0.1.
        pty: serve on a pseudo-terminal: ``True`` requires one, ``None`` (the default)
            serves one where the platform has ``os.openpty``.
    """

    idle_s: ClassVar[float] = 0.01
    """Quiet time after which buffered input is settled (instruments that frame by pauses)."""

    def __init__(self, *, tcp: bool = True, pty: bool | None = None) -> None:
        if not tcp and pty is False:
            raise ValueError("a simulated instrument needs TCP or a pseudo-terminal to serve on")
        self.lock = threading.RLock()
        """Held while a session changes the instrument's state."""
        self.faults = SimFaults()
        self.commands: list[str] = []
        """Every command received, as text, in order (for tests)."""
        self.errors: list[BaseException] = []
        """Unexpected exceptions in the serving threads (a healthy sim has none)."""
        self.replies_sent = 0
        """Replies written so far: late and garbled ones count, dropped ones do not.

        It counts a reply once written, which may be after the client has read it.
        """
        self.pty_problem: str | None = None
        """Why no pseudo-terminal is served, if none is."""
        self._want_tcp = tcp
        self._want_pty = pty
        self._stop = threading.Event()
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._pty_fds: tuple[int, int] | None = None
        self._pty_path: str | None = None
        self._threads: list[threading.Thread] = []
        self._started = False

    @abstractmethod
    def session(self) -> SimSession:
        """Return a new session for one connection."""

    def garble(self, reply: bytes) -> bytes:
        """Return ``reply`` corrupted: by default its first byte becomes ``x``."""
        return b"x" + reply[1:] if reply else b"x"

    def log_command(self, command: bytes | str) -> None:
        """Record a received command in :attr:`commands`."""
        text = command if isinstance(command, str) else command.decode("ascii", "backslashreplace")
        with self.lock:
            self.commands.append(text)

    @property
    def running(self) -> bool:
        """Whether any serving thread is alive."""
        return any(thread.is_alive() for thread in self._threads)

    @property
    def tcp_address(self) -> tuple[str, int]:
        """The (host, port) the TCP server listens on."""
        if self._listener is None:
            raise RuntimeError(f"{type(self).__name__} is not serving on TCP")
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def tcp_url(self) -> str:
        """The pyserial URL of the TCP server: ``socket://127.0.0.1:PORT``."""
        host, port = self.tcp_address
        return f"socket://{host}:{port}"

    @property
    def pty_path(self) -> str:
        """The path of the pseudo-terminal's tty (e.g. ``/dev/pts/3``)."""
        if self._pty_path is None:
            reason = f": {self.pty_problem}" if self.pty_problem else ""
            raise RuntimeError(f"{type(self).__name__} is not serving on a pseudo-terminal{reason}")
        return self._pty_path

    @property
    def has_pty(self) -> bool:
        """Whether a pseudo-terminal is served."""
        return self._pty_path is not None

    def start(self) -> Self:
        """Start serving; return ``self``. Starting twice is an error."""
        if self._started:
            raise RuntimeError(f"{type(self).__name__} was already started")
        self._started = True
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            if self._want_tcp:
                self._listener = socket.create_server((LOOPBACK, 0))
                self._spawn("tcp", self._serve_tcp, self._listener)
            if self._want_pty is not False:
                self._open_pty()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop serving, join the threads and release every socket and descriptor."""
        self._stop.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"\0")
        for thread in self._threads:
            thread.join(_JOIN_TIMEOUT_S)
            if thread.is_alive():
                self.errors.append(RuntimeError(f"{thread.name} did not stop"))
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        if self._pty_fds is not None:
            for fd in self._pty_fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._pty_fds = None

    def __enter__(self) -> Self:
        if not self._started:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open_pty(self) -> None:
        self.pty_problem = self._try_open_pty()
        if self.pty_problem is not None and self._want_pty:
            raise OSError(self.pty_problem)

    def _try_open_pty(self) -> str | None:
        """Open and serve a pseudo-terminal; return why not, if not."""
        openpty = getattr(os, "openpty", None)
        if openpty is None:
            return "this platform has no os.openpty"
        try:
            import termios
            import tty
        except ImportError as exc:
            return f"no terminal control on this platform: {exc}"
        try:
            master, slave = openpty()
        except OSError as exc:
            return f"cannot open a pseudo-terminal: {exc}"
        try:
            # Raw from the start: no echo, no CR/LF translation, whatever the client sets.
            tty.setraw(slave)
            path = os.ttyname(slave)
            os.set_blocking(master, False)
        except (OSError, termios.error) as exc:
            os.close(master)
            os.close(slave)
            return f"cannot set up a pseudo-terminal: {exc}"
        # The sim keeps the slave open, so the master never reads EIO between clients.
        self._pty_fds = (master, slave)
        self._pty_path = path
        self._spawn("pty", self._serve_pty, master)
        return None

    def _spawn(self, what: str, target: Callable[..., None], *args: object) -> None:
        def run() -> None:
            try:
                target(*args)
            except BaseException as exc:  # reported through self.errors, not lost in a thread
                if not self._stop.is_set():
                    _log.exception("%s %s server failed", type(self).__name__, what)
                    self.errors.append(exc)

        thread = threading.Thread(target=run, name=f"{type(self).__name__}-{what}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _serve_tcp(self, listener: socket.socket) -> None:
        # One client at a time, as on a serial port; the next waits in the backlog.
        assert self._wake_r is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([listener, self._wake_r], [], [])
            if self._wake_r in ready:
                return
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(_JOIN_TIMEOUT_S)
                # Replies are a few bytes each: Nagle would hold them for the peer's ACK.
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

                def read(conn: socket.socket = conn) -> bytes:
                    return conn.recv(_READ_SIZE)

                try:
                    self._serve_stream(conn, read, conn.sendall)
                except (ConnectionError, TimeoutError):
                    continue  # the client went away mid-reply

    def _serve_pty(self, master: int) -> None:
        def read() -> bytes:
            try:
                return os.read(master, _READ_SIZE)
            except BlockingIOError:
                return b""  # select saw data another read took: nothing now

        def write(data: bytes) -> None:
            try:
                os.write(master, data)
            except BlockingIOError:
                # Nobody reads the tty and its buffer is full: drop, as a UART would.
                _log.debug("%s: pty buffer full, reply dropped", type(self).__name__)

        # A pty has no connections: one endless session; a new client starts clean
        # because pyserial and the drivers discard stale input.
        self._serve_stream(master, read, write, eof_ends=False)

    def _serve_stream(
        self,
        source: socket.socket | int,
        read: Callable[[], bytes],
        write: Callable[[bytes], object],
        *,
        eof_ends: bool = True,
    ) -> bool:
        """Serve one session until the peer closes; return whether the sim is stopping."""
        assert self._wake_r is not None
        session = self.session()
        while True:
            timeout = self.idle_s if session.pending else None
            ready, _, _ = select.select([source, self._wake_r], [], [], timeout)
            if self._wake_r in ready or self._stop.is_set():
                return True
            if ready:
                data = read()
                if not data:
                    if eof_ends:
                        return False
                    continue
                with self.lock:
                    replies = session.feed(data)
            else:
                with self.lock:
                    replies = session.idle()
            for reply in replies:
                if not self._send_reply(reply, write):
                    return True

    def _send_reply(self, reply: bytes, write: Callable[[bytes], object]) -> bool:
        """Send one reply through the armed faults; ``False`` if the sim stopped meanwhile."""
        fault = self.faults.take()
        if fault is not None:
            kind, delay_s = fault
            if kind is Fault.NO_REPLY:
                return True
            if kind is Fault.GARBLED:
                reply = self.garble(reply)
            elif kind is Fault.SLOW and self._stop.wait(delay_s):
                return False
        write(reply)
        self.replies_sent += 1
        return True

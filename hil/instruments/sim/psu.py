"""Simulated power supplies: a Korad KA3005P and a SCPI supply, each driving a resistive load.

The physics is the same for both (:class:`PsuChannel`): with the output on, the
supply holds its set voltage (CV) while the load draws less than the current
limit; a load that would draw more gets exactly the limit, and the voltage drops
to ``limit * load_ohms`` (CC). No load (``load_ohms=None``) draws nothing.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass

from hil.instruments.sim.base import SimInstrument, SimSession


@dataclass
class PsuChannel:
    """One output of a simulated supply and the load on it."""

    max_voltage_v: float = 30.0
    max_current_a: float = 5.0
    set_voltage_v: float = 0.0
    current_limit_a: float = 1.0
    output_on: bool = False
    load_ohms: float | None = None
    """The resistive load; ``None`` is nothing connected, ``0`` a short circuit."""

    @property
    def constant_current(self) -> bool:
        """Whether the current limit holds the output (CC mode)."""
        if not self.output_on or self.load_ohms is None or math.isinf(self.load_ohms):
            return False
        if self.load_ohms <= 0:
            return True
        return self.set_voltage_v / self.load_ohms > self.current_limit_a

    @property
    def measured_voltage_v(self) -> float:
        """The voltage at the output terminals."""
        if not self.output_on:
            return 0.0
        if self.constant_current:
            return self.current_limit_a * max(self.load_ohms or 0.0, 0.0)
        return self.set_voltage_v

    @property
    def measured_current_a(self) -> float:
        """The current through the load."""
        if not self.output_on or self.load_ohms is None or math.isinf(self.load_ohms):
            return 0.0
        if self.constant_current:
            return self.current_limit_a
        return self.set_voltage_v / self.load_ohms

    def reset(self) -> None:
        """Power-on state: 0 V, 1 A limit, output off (the load stays)."""
        self.set_voltage_v = 0.0
        self.current_limit_a = 1.0
        self.output_on = False


class _SimPsu(SimInstrument):
    def __init__(
        self,
        *,
        channels: int,
        max_voltage_v: float,
        max_current_a: float,
        tcp: bool,
        pty: bool | None,
    ) -> None:
        super().__init__(tcp=tcp, pty=pty)
        if channels < 1:
            raise ValueError(f"a supply has at least one channel, not {channels}")
        self.channels = [
            PsuChannel(max_voltage_v=max_voltage_v, max_current_a=max_current_a)
            for _ in range(channels)
        ]

    def channel(self, number: int = 1) -> PsuChannel:
        """Output ``number`` (from 1)."""
        return self.channels[number - 1]

    # Channel 1 at a glance, for tests of single-output supplies.

    @property
    def output_on(self) -> bool:
        """Whether channel 1's output is on."""
        return self.channels[0].output_on

    @property
    def set_voltage_v(self) -> float:
        """Channel 1's voltage set point."""
        return self.channels[0].set_voltage_v

    @property
    def current_limit_a(self) -> float:
        """Channel 1's current limit."""
        return self.channels[0].current_limit_a

    @property
    def load_ohms(self) -> float | None:
        """The load on channel 1 (settable)."""
        return self.channels[0].load_ohms

    @load_ohms.setter
    def load_ohms(self, ohms: float | None) -> None:
        with self.lock:
            self.channels[0].load_ohms = ohms


# ---------------------------------------------------------------------------- Korad

_KORAD_COMPLETE = re.compile(
    rb"""
      (?P<query>\*IDN\?|STATUS\?|(?:VSET|ISET|VOUT|IOUT)\d\?)
    | (?P<switch>(?:OUT|OCP|OVP|BEEP|LOCK)[01]|(?:RCL|SAV)\d|TRACK[012])
    | (?P<set>(?:VSET|ISET)\d:[0-9.]*)(?=[A-Z*])   # a number ends where the next command starts
    """,
    re.VERBOSE,
)
_KORAD_SET = re.compile(rb"(VSET|ISET)(\d):([0-9]*\.?[0-9]*)")
_KORAD_QUERY = re.compile(rb"(VSET|ISET|VOUT|IOUT)(\d)\?")


def korad_number(value: float, decimals: int) -> bytes:
    """Five characters, as the supply answers: ``12.00``, ``05.00``, ``1.000``."""
    text = f"{value:05.{decimals}f}"
    if len(text) > 5:
        text = f"{value:05.{decimals - 1}f}"
    return text.encode("ascii")


class _KoradSession(SimSession):
    """Commands have no terminator: a command is known by its form, or ends with a pause."""

    def __init__(self, sim: SimKoradPsu) -> None:
        self._sim = sim
        self._buf = b""

    @property
    def pending(self) -> bool:
        return bool(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        replies: list[bytes] = []
        while match := _KORAD_COMPLETE.match(self._buf):
            self._buf = self._buf[match.end() :]
            replies += self._sim.execute(match.group(0))
        return replies

    def idle(self) -> list[bytes]:
        buf, self._buf = self._buf, b""
        # A set command's number ends with the pause; anything else is not a command.
        return self._sim.execute(buf)


class SimKoradPsu(_SimPsu):
    """A simulated Korad KA3005P (30 V, 5 A), speaking its serial protocol.

    Quirks kept: no terminators either way, fixed-width five-character numbers, a
    binary ``STATUS?`` byte, ``*IDN?`` of no fixed length, set points clamped to the
    supply's range without complaint, unknown input silently ignored (recorded in
    :attr:`unknown`), and optionally a stray byte after every ``ISET1?`` reply as on
    some firmware (``iset_extra_byte``).

    Args:
        idn: the ``*IDN?`` reply.
        channels: outputs (2 for a KA3305P).
        iset_extra_byte: a byte to send after every ``ISET?`` reply, or ``None``.
        tcp: serve on loopback TCP.
        pty: serve on a pseudo-terminal (``None``: where available).
    """

    def __init__(
        self,
        *,
        idn: str = "KORAD KA3005P V5.8 SN:00000001",
        channels: int = 1,
        max_voltage_v: float = 30.0,
        max_current_a: float = 5.0,
        iset_extra_byte: bytes | None = None,
        tcp: bool = True,
        pty: bool | None = None,
    ) -> None:
        super().__init__(
            channels=channels,
            max_voltage_v=max_voltage_v,
            max_current_a=max_current_a,
            tcp=tcp,
            pty=pty,
        )
        self.idn = idn
        self.iset_extra_byte = iset_extra_byte
        self.unknown: list[bytes] = []
        """Input the supply ignored."""

    def session(self) -> SimSession:
        """Return a new connection's command framing."""
        return _KoradSession(self)

    def status_byte(self) -> int:
        """Return the ``STATUS?`` byte: bit n-1 = channel n in CV, bit 6 = output on."""
        status = 0
        for index, channel in enumerate(self.channels[:2]):
            if not channel.constant_current:
                status |= 1 << index
        if self.channels[0].output_on:
            status |= 0x40
        return status

    def execute(self, command: bytes) -> list[bytes]:
        """Carry out one command (the caller holds :attr:`lock`); return its reply."""
        if not command:
            return []
        self.log_command(command)
        if command == b"*IDN?":
            return [self.idn.encode("ascii")]
        if command == b"STATUS?":
            return [bytes((self.status_byte(),))]
        if command in (b"OUT0", b"OUT1"):
            for channel in self.channels:
                channel.output_on = command == b"OUT1"
            return []
        if query := _KORAD_QUERY.fullmatch(command):
            return self._query(query.group(1), int(query.group(2)))
        if setting := _KORAD_SET.fullmatch(command):
            self._set(setting.group(1), int(setting.group(2)), setting.group(3))
            return []
        if _KORAD_COMPLETE.fullmatch(command):
            return []  # OCP/OVP/BEEP/LOCK/RCL/SAV/TRACK: accepted, not modelled
        self.unknown.append(command)
        return []

    def _channel(self, number: int) -> PsuChannel | None:
        return self.channels[number - 1] if 1 <= number <= len(self.channels) else None

    def _query(self, what: bytes, number: int) -> list[bytes]:
        channel = self._channel(number)
        if channel is None:
            return []
        if what == b"VSET":
            return [korad_number(channel.set_voltage_v, 2)]
        if what == b"VOUT":
            return [korad_number(channel.measured_voltage_v, 2)]
        if what == b"IOUT":
            return [korad_number(channel.measured_current_a, 3)]
        reply = korad_number(channel.current_limit_a, 3)
        return [reply + self.iset_extra_byte if self.iset_extra_byte else reply]

    def _set(self, what: bytes, number: int, text: bytes) -> None:
        channel = self._channel(number)
        try:
            value = float(text)
        except ValueError:
            value = None
        if channel is None or value is None:
            self.unknown.append(what + b"%d:" % number + text)
            return
        if what == b"VSET":
            channel.set_voltage_v = round(min(max(value, 0.0), channel.max_voltage_v), 2)
        else:
            channel.current_limit_a = round(min(max(value, 0.0), channel.max_current_a), 3)


# ---------------------------------------------------------------------------- SCPI

_SCPI_NODES = {
    "VOLT": "VOLTAGE",
    "CURR": "CURRENT",
    "OUTP": "OUTPUT",
    "MEAS": "MEASURE",
    "SYST": "SYSTEM",
    "ERR": "ERROR",
    "INST": "INSTRUMENT",
    "NSEL": "NSELECT",
    "SOUR": "SOURCE",
    "LEV": "LEVEL",
    "IMM": "IMMEDIATE",
    "AMPL": "AMPLITUDE",
    "STAT": "STATE",
    "NEXT": "NEXT",
    "DC": "DC",
}
_SCPI_OPTIONAL_TAIL = ("LEV", "IMM", "AMPL", "STAT", "NEXT", "DC")
_QUEUE_SIZE = 20

ERR_UNDEFINED_HEADER = (-113, "Undefined header")
ERR_DATA_TYPE = (-104, "Data type error")
ERR_MISSING_PARAMETER = (-109, "Missing parameter")
ERR_ILLEGAL_VALUE = (-224, "Illegal parameter value")
ERR_OUT_OF_RANGE = (-222, "Data out of range")
ERR_QUEUE_OVERFLOW = (-350, "Queue overflow")


def _scpi_node(token: str) -> str | None:
    """Return the short form of a header node given in short or long form, any case."""
    upper = token.upper()
    for short, long in _SCPI_NODES.items():
        if upper in (short, long):
            return short
    return None


def scpi_header(header: str) -> str | None:
    """Canonical short header, optional nodes dropped: ``SOURce:VOLTage:LEVel`` -> ``VOLT``."""
    query = header.endswith("?")
    body = header[:-1] if query else header
    if body.startswith("*"):
        return body.upper() + ("?" if query else "")
    nodes: list[str] = []
    for token in body.lstrip(":").split(":"):
        node = _scpi_node(token)
        if node is None:
            return None
        nodes.append(node)
    if nodes and nodes[0] == "SOUR":
        nodes.pop(0)
    while len(nodes) > 1 and nodes[-1] in _SCPI_OPTIONAL_TAIL:
        nodes.pop()
    return ":".join(nodes) + ("?" if query else "")


class _ScpiSession(SimSession):
    def __init__(self, sim: SimScpiPsu) -> None:
        self._sim = sim
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        replies: list[bytes] = []
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            reply = self._sim.execute_line(line.decode("ascii", "replace").strip())
            if reply is not None:
                replies.append(reply.encode("ascii") + b"\n")
        return replies


class SimScpiPsu(_SimPsu):
    r"""A simulated SCPI power supply with a real error queue, over ``\n``-terminated lines.

    It takes short and long header forms in any case, ``;``-separated commands on a
    line, the optional ``SOURce``/``LEVel``/... nodes, and ``INST:NSEL`` on
    multi-channel models. Errors go to a 20-entry queue read by ``SYST:ERR?``:
    out-of-range values give ``-222,"Data out of range"``, unknown headers
    ``-113,"Undefined header"``; a query in error gets no reply.

    Args:
        idn: the ``*IDN?`` reply.
        channels: outputs, selected with ``INST:NSEL``.
        tcp: serve on loopback TCP.
        pty: serve on a pseudo-terminal (``None``: where available).
    """

    def __init__(
        self,
        *,
        idn: str = "HIL,SIM-PSU-3005,0001,1.0",
        channels: int = 1,
        max_voltage_v: float = 30.0,
        max_current_a: float = 5.0,
        tcp: bool = True,
        pty: bool | None = None,
    ) -> None:
        super().__init__(
            channels=channels,
            max_voltage_v=max_voltage_v,
            max_current_a=max_current_a,
            tcp=tcp,
            pty=pty,
        )
        self.idn = idn
        self.selected = 1
        """The channel ``INST:NSEL`` selected."""
        self.error_queue: deque[tuple[int, str]] = deque()

    def session(self) -> SimSession:
        """Return a new connection's line framing."""
        return _ScpiSession(self)

    def push_error(self, error: tuple[int, str]) -> None:
        """Queue an error; a full queue's last entry becomes ``-350,"Queue overflow"``."""
        if len(self.error_queue) >= _QUEUE_SIZE:
            self.error_queue[-1] = ERR_QUEUE_OVERFLOW
        else:
            self.error_queue.append(error)

    def execute_line(self, line: str) -> str | None:
        """Carry out one line (the caller holds :attr:`lock`); return its reply, if any."""
        replies = []
        for command in line.split(";"):
            command = command.strip()
            if not command:
                continue
            self.log_command(command)
            reply = self._execute(command)
            if reply is not None:
                replies.append(reply)
        return ";".join(replies) if replies else None

    def _execute(self, command: str) -> str | None:
        raw_header, _, argument = command.partition(" ")
        argument = argument.strip()
        header = scpi_header(raw_header)
        channel = self.channels[self.selected - 1]
        if header == "*IDN?":
            return self.idn
        if header == "*CLS":
            self.error_queue.clear()
            return None
        if header == "*RST":
            for each in self.channels:
                each.reset()
            self.selected = 1
            return None
        if header == "*OPC?":
            return "1"
        if header == "SYST:ERR?":
            code, message = self.error_queue.popleft() if self.error_queue else (0, "No error")
            return f'{code},"{message}"'
        if header == "VOLT?":
            return f"{channel.set_voltage_v:.3f}"
        if header == "CURR?":
            return f"{channel.current_limit_a:.3f}"
        if header == "OUTP?":
            return "1" if channel.output_on else "0"
        if header == "MEAS:VOLT?":
            return f"{channel.measured_voltage_v:.3f}"
        if header == "MEAS:CURR?":
            return f"{channel.measured_current_a:.4f}"
        if header == "INST:NSEL?":
            return str(self.selected)
        if header == "VOLT":
            value = self._number(argument, channel.max_voltage_v)
            if value is not None:
                channel.set_voltage_v = value
            return None
        if header == "CURR":
            value = self._number(argument, channel.max_current_a)
            if value is not None:
                channel.current_limit_a = value
            return None
        if header == "OUTP":
            state = argument.upper()
            if state in ("ON", "1"):
                channel.output_on = True
            elif state in ("OFF", "0"):
                channel.output_on = False
            else:
                self.push_error(ERR_MISSING_PARAMETER if not argument else ERR_ILLEGAL_VALUE)
            return None
        if header == "INST:NSEL":
            value = self._number(argument, len(self.channels), minimum=1)
            if value is not None:
                if value != int(value):
                    self.push_error(ERR_ILLEGAL_VALUE)
                else:
                    self.selected = int(value)
            return None
        self.push_error(ERR_UNDEFINED_HEADER)
        return None

    def _number(self, argument: str, maximum: float, minimum: float = 0.0) -> float | None:
        if not argument:
            self.push_error(ERR_MISSING_PARAMETER)
            return None
        keyword = argument.upper()
        if keyword in ("MAX", "MAXIMUM"):
            return maximum
        if keyword in ("MIN", "MINIMUM"):
            return minimum
        try:
            value = float(argument)
        except ValueError:
            self.push_error(ERR_DATA_TYPE)
            return None
        if not minimum <= value <= maximum:
            self.push_error(ERR_OUT_OF_RANGE)
            return None
        return value

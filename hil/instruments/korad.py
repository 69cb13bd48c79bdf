"""Korad KA3005P-family power supplies over their USB/serial port.

The same firmware is sold as RND 320-KA3005P, Tenma 72-2540/72-2550 and Velleman
PS3005D. What this driver assumes of the protocol (from the KA3000 series remote
control syntax and libsigrok's ``korad-kaxxxxp`` driver; not checked on hardware
here):

- 9600 baud, 8N1, no flow control. Commands are ASCII with **no terminator**:
  ``VSET1:12.00``, ``ISET1:1.000``, ``OUT1``/``OUT0``, queries ``VSET1?``,
  ``ISET1?``, ``VOUT1?``, ``IOUT1?``, ``STATUS?``, ``*IDN?``.
- Replies have no terminator either. Voltages are five characters with two
  decimals (``12.00``, ``05.00``), currents five with three (``1.000``), so the
  driver reads exactly five bytes. ``STATUS?`` answers one binary byte: bit 0 is
  channel 1's mode (1 = CV, 0 = CC), bit 6 the output (1 = on); the other bits
  differ between firmware versions and are not used. ``*IDN?`` has no fixed length
  (``KORAD KA3005P V5.8 SN:...``): its reply ends when the line goes quiet.
- The supply tells one command from the next by the pause between them, so the
  driver waits ``command_gap_s`` (50 ms by default; libsigrok waits 80 ms) after
  each exchange before the next command.
- Some firmware sends a sixth byte after ``ISET1?``; the driver discards stale
  input before every command, which also drops it.
- The supply reports no errors: a set point it cannot take is clamped or ignored
  (firmware-dependent). With ``verify`` (the default) the driver reads the set
  point back and raises if it differs.
- Two-channel models (KA3305P) take ``VSET2:`` etc.; pass ``channel=2``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

from hil.instruments.base import PowerSupply
from hil.instruments.errors import InstrumentSettingError
from hil.instruments.link import SerialLink, SerialPort

_NUMBER = re.compile(rb"\d+\.\d+")
_WIDTH = 5
"""Every numeric reply is five characters."""

STATUS_CV = 0x01
"""``STATUS?`` bit: channel 1 regulates voltage (CV); clear means current (CC)."""
STATUS_OUTPUT = 0x40
"""``STATUS?`` bit: the output is on."""


@dataclass(frozen=True)
class KoradStatus:
    """The ``STATUS?`` byte, decoded where the bits are the same on all firmware."""

    raw: int
    output_on: bool
    constant_voltage: bool
    """``True`` in CV mode; ``False`` when the current limit holds the output (CC)."""


def _format_fixed(value: float, decimals: tuple[int, ...], what: str, unit: str) -> str:
    # The first number of decimals that fits five characters; currents of ten amperes
    # and more (KA3010P) take two decimals, "10.00".
    for places in decimals:
        text = f"{value:0{_WIDTH}.{places}f}"
        if len(text) <= _WIDTH:
            return text
    raise InstrumentSettingError(f"{value:g} {unit} is more {what} than a Korad supply takes")


class KoradPowerSupply(PowerSupply):
    """A Korad KA3005P-family supply (see the module docstring for the protocol).

    Args:
        port: the open serial port (9600 8N1); the driver closes it.
        port_name: how messages name the port.
        channel: the output channel (1, or 2 on two-channel models).
        timeout_s: how long to wait for a reply.
        command_gap_s: pause after each exchange before the next command.
        idn_idle_s: quiet time that ends the ``*IDN?`` reply.
        verify: read set points back after setting them.
        clock: monotonic clock (tests).
        sleep: how to wait out the command gap (tests).
    """

    kind = "korad"

    def __init__(
        self,
        port: SerialPort,
        *,
        port_name: str = "korad",
        channel: int = 1,
        timeout_s: float = 0.5,
        command_gap_s: float = 0.05,
        idn_idle_s: float = 0.1,
        verify: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if channel not in (1, 2):
            raise InstrumentSettingError(f"a Korad supply has channel 1 or 2, not {channel!r}")
        super().__init__(
            SerialLink(
                port,
                port_name=port_name,
                device=self.device,
                timeout_s=timeout_s,
                command_gap_s=command_gap_s,
                clock=clock,
                sleep=sleep,
            )
        )
        self.channel = channel
        self.verify = verify
        self._idn_idle_s = idn_idle_s

    @classmethod
    def open(
        cls,
        port_url: str,
        *,
        baudrate: int = 9600,
        channel: int = 1,
        timeout_s: float = 0.5,
        command_gap_s: float = 0.05,
        idn_idle_s: float = 0.1,
        verify: bool = True,
    ) -> Self:
        """Open the supply on ``port_url`` (a device path or a pyserial URL)."""
        return cls._on_port(
            port_url,
            baudrate=baudrate,
            timeout_s=timeout_s,
            channel=channel,
            command_gap_s=command_gap_s,
            idn_idle_s=idn_idle_s,
            verify=verify,
        )

    def identify(self) -> str:
        """Return the ``*IDN?`` string, e.g. ``KORAD KA3005P V5.8 SN:03379314``."""
        command = "*IDN?"
        with self._link.lock:
            self._link.send(command.encode("ascii"), command)
            reply = self._link.read_idle(command, idle_s=self._idn_idle_s)
        text = reply.decode("ascii", errors="replace").strip()
        if not text.isprintable():
            raise self._link.unexpected(reply, command)
        return text

    def status(self) -> KoradStatus:
        """Read and decode the ``STATUS?`` byte."""
        command = "STATUS?"
        with self._link.lock:
            self._link.send(command.encode("ascii"), command)
            reply = self._link.read_exact(1, command)
        raw = reply[0]
        cv_bit = STATUS_CV << (self.channel - 1)
        return KoradStatus(
            raw=raw, output_on=bool(raw & STATUS_OUTPUT), constant_voltage=bool(raw & cv_bit)
        )

    def is_on(self) -> bool:
        """Whether the output is on (``STATUS?`` bit 6)."""
        return self.status().output_on

    def measure_voltage(self) -> float:
        """Measure the output voltage (``VOUT1?``), in volts."""
        return self._query_number(f"VOUT{self.channel}?")

    def measure_current(self) -> float:
        """Measure the output current (``IOUT1?``), in amperes."""
        return self._query_number(f"IOUT{self.channel}?")

    def voltage_setpoint(self) -> float:
        """Read back the voltage set point (``VSET1?``), in volts."""
        return self._query_number(f"VSET{self.channel}?")

    def current_limit(self) -> float:
        """Read back the current limit (``ISET1?``), in amperes."""
        return self._query_number(f"ISET{self.channel}?")

    def _set_voltage(self, volts: float) -> None:
        text = _format_fixed(volts, (2,), "voltage", "V")
        with self._link.lock:
            self._command(f"VSET{self.channel}:{text}")
            if self.verify:
                self._check_readback(f"VSET{self.channel}:{text}", float(text), "V")

    def _set_current_limit(self, amps: float) -> None:
        text = _format_fixed(amps, (3, 2), "current", "A")
        with self._link.lock:
            self._command(f"ISET{self.channel}:{text}")
            if self.verify:
                self._check_readback(f"ISET{self.channel}:{text}", float(text), "A")

    def _output(self, on: bool) -> None:
        command = "OUT1" if on else "OUT0"
        with self._link.lock:
            self._command(command)
            if self.verify and self.is_on() != on:
                raise InstrumentSettingError(
                    f"{self.device} on {self.port_name} did not take {command!r}: "
                    f"STATUS? says the output is {'off' if on else 'on'}"
                )

    def _command(self, command: str) -> None:
        self._link.send(command.encode("ascii"), command)

    def _query_number(self, command: str) -> float:
        with self._link.lock:
            self._link.send(command.encode("ascii"), command)
            reply = self._link.read_exact(_WIDTH, command)
        if not _NUMBER.fullmatch(reply):
            raise self._link.unexpected(reply, command)
        return float(reply)

    def _check_readback(self, command: str, wanted: float, unit: str) -> None:
        query = command.split(":", 1)[0] + "?"
        got = self._query_number(query)
        # The supply rounds to its resolution (10 mV, 1 mA); more is a refusal.
        if abs(got - wanted) > 0.0015:
            raise InstrumentSettingError(
                f"{self.device} on {self.port_name} did not take {command!r}: "
                f"{query} reads {got:g} {unit}"
            )

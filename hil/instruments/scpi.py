r"""Power supplies that speak SCPI over a serial port (RS-232 or USB CDC).

What this driver assumes (SCPI-1999 and IEEE 488.2 common commands; instruments
differ in details, so check the manual of yours):

- Commands and replies end in ``\n`` (``terminator``); replies to ``\r\n`` are
  read as well.
- Set points: ``VOLT <v>``, ``CURR <a>``, ``OUTP ON|OFF``; queries ``VOLT?``,
  ``CURR?``, ``OUTP?`` (``1``/``0`` or ``ON``/``OFF``), ``MEAS:VOLT?``,
  ``MEAS:CURR?``, ``*IDN?``.
- Errors go to the error queue, read one at a time with ``SYST:ERR?`` as
  ``<code>,"<message>"`` until ``0,"No error"``. With ``check_errors`` (the default)
  the driver clears the queue (``*CLS``) when it opens, reads it after every set
  command, and raises :class:`~hil.instruments.errors.ScpiError` with the
  instrument's own message. A query the instrument rejects gets no reply; the
  driver then reads the queue too, so the error says why.
- Multi-channel supplies select the channel with ``INST:NSEL <n>``; the driver
  sends it once when it opens (``channel``), so each driver instance drives one
  channel and nothing else may change the selection meanwhile.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Self

from hil.instruments.base import PowerSupply
from hil.instruments.errors import InstrumentError, InstrumentTimeoutError, ScpiError
from hil.instruments.link import SerialLink, SerialPort

_ERROR = re.compile(r'\s*([+-]?\d+)\s*,\s*"?(.*?)"?\s*')
_MAX_QUEUED_ERRORS = 32
"""Enough for any real queue; bounds the drain if an instrument never says 0."""


def scpi_number(value: float) -> str:
    """Format a set point plainly: ``12``, ``12.5``, ``0.001`` (no exponent)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text or "0"


class ScpiPowerSupply(PowerSupply):
    """A SCPI power supply on a serial port (see the module docstring).

    Args:
        port: the open serial port; the driver closes it.
        port_name: how messages name the port.
        channel: select this channel with ``INST:NSEL`` (multi-channel supplies).
        timeout_s: how long to wait for a reply.
        command_gap_s: pause after each exchange before the next command.
        check_errors: read the error queue after each set command and raise on errors.
        terminator: what ends commands and replies.
        clock: monotonic clock (tests).
        sleep: how to wait out the command gap (tests).
    """

    kind = "scpi"

    def __init__(
        self,
        port: SerialPort,
        *,
        port_name: str = "scpi",
        channel: int | None = None,
        timeout_s: float = 1.0,
        command_gap_s: float = 0.0,
        check_errors: bool = True,
        terminator: str = "\n",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
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
        self.check_errors = check_errors
        self.channel = channel
        self._terminator = terminator.encode("ascii")
        if check_errors:
            # Errors left from before are not ours to report.
            self._send("*CLS")
        if channel is not None:
            self.write(f"INST:NSEL {int(channel)}")

    @classmethod
    def open(
        cls,
        port_url: str,
        *,
        baudrate: int = 9600,
        channel: int | None = None,
        timeout_s: float = 1.0,
        command_gap_s: float = 0.0,
        check_errors: bool = True,
        terminator: str = "\n",
    ) -> Self:
        """Open the supply on ``port_url`` (a device path or a pyserial URL)."""
        return cls._on_port(
            port_url,
            baudrate=baudrate,
            timeout_s=timeout_s,
            channel=channel,
            command_gap_s=command_gap_s,
            check_errors=check_errors,
            terminator=terminator,
        )

    def write(self, command: str) -> None:
        """Send a command that has no reply; with ``check_errors``, raise on a queued error."""
        with self._link.lock:
            self._send(command)
            if self.check_errors:
                errors = self.read_errors()
                if errors:
                    raise self._error(command, errors)

    def query(self, command: str) -> str:
        """Send a query and return its reply without the terminator."""
        with self._link.lock:
            self._send(command)
            try:
                reply = self._link.read_until(self._terminator, command)
            except InstrumentTimeoutError:
                errors = self._errors_after_timeout()
                if not errors:
                    raise
                raise self._error(command, errors) from None
        return reply.decode("ascii", errors="backslashreplace").strip()

    def read_errors(self) -> list[tuple[int, str]]:
        """Empty the error queue; return its entries, oldest first."""
        errors: list[tuple[int, str]] = []
        with self._link.lock:
            for _ in range(_MAX_QUEUED_ERRORS):
                command = "SYST:ERR?"
                self._send(command)
                reply = self._link.read_until(self._terminator, command)
                text = reply.decode("ascii", errors="backslashreplace").strip()
                match = _ERROR.fullmatch(text)
                if match is None:
                    raise self._link.unexpected(text, command)
                code = int(match.group(1))
                if code == 0:
                    break
                errors.append((code, match.group(2)))
        return errors

    def identify(self) -> str:
        """Return the ``*IDN?`` string: manufacturer, model, serial number, firmware."""
        return self.query("*IDN?")

    def is_on(self) -> bool:
        """Whether the output is on (``OUTP?``)."""
        command = "OUTP?"
        reply = self.query(command)
        state = reply.upper()
        if state in ("1", "ON"):
            return True
        if state in ("0", "OFF"):
            return False
        raise self._link.unexpected(reply, command)

    def measure_voltage(self) -> float:
        """Measure the output voltage (``MEAS:VOLT?``), in volts."""
        return self._query_number("MEAS:VOLT?")

    def measure_current(self) -> float:
        """Measure the output current (``MEAS:CURR?``), in amperes."""
        return self._query_number("MEAS:CURR?")

    def voltage_setpoint(self) -> float:
        """Read back the voltage set point (``VOLT?``), in volts."""
        return self._query_number("VOLT?")

    def current_limit(self) -> float:
        """Read back the current limit (``CURR?``), in amperes."""
        return self._query_number("CURR?")

    def _set_voltage(self, volts: float) -> None:
        self.write(f"VOLT {scpi_number(volts)}")

    def _set_current_limit(self, amps: float) -> None:
        self.write(f"CURR {scpi_number(amps)}")

    def _output(self, on: bool) -> None:
        self.write("OUTP ON" if on else "OUTP OFF")

    def _send(self, command: str) -> None:
        self._link.send(command.encode("ascii") + self._terminator, command)

    def _query_number(self, command: str) -> float:
        reply = self.query(command)
        try:
            return float(reply)
        except ValueError:
            raise self._link.unexpected(reply, command) from None

    def _errors_after_timeout(self) -> list[tuple[int, str]]:
        if not self.check_errors:
            return []
        try:
            return self.read_errors()
        except InstrumentError:
            # The instrument is silent altogether: the timeout says it best.
            return []

    def _error(self, command: str, errors: list[tuple[int, str]]) -> ScpiError:
        code, message = errors[0]
        more = f" (and {len(errors) - 1} more queued)" if len(errors) > 1 else ""
        return ScpiError(
            f'{self.device} on {self.port_name} reported {code},"{message}" '
            f"after {command!r}{more}",
            code=code,
            message=message,
            command=command,
        )

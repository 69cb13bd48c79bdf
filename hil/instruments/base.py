"""The two instrument interfaces a bench uses: :class:`PowerSupply` and :class:`RelayBoard`.

Both are small abstract bases in the shape of python-can's ``BusABC``: the public
methods check their arguments once, here, and call one internal hook per operation
that each driver implements. Every driver talks through a
:class:`~hil.instruments.link.SerialLink`, is a context manager, and is built by the
registry through :meth:`Instrument.from_config`.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, ClassVar, Self

from hil.instruments.errors import InstrumentSettingError
from hil.instruments.link import SerialLink, open_serial_port


class Instrument(ABC):
    """A bench instrument on one serial port.

    Subclasses set :attr:`kind` (their registry name) and implement :meth:`open`,
    whose keyword-only parameters are the options a bench configuration may give.
    """

    kind: ClassVar[str] = ""
    """Registry name, e.g. ``"korad"``."""

    device: ClassVar[str] = "the instrument"
    """How error messages name the instrument."""

    def __init__(self, link: SerialLink) -> None:
        self._link = link

    @classmethod
    @abstractmethod
    def open(cls, port_url: str) -> Self:
        """Open the port at ``port_url`` and return a driver on it.

        Drivers add keyword-only options (``timeout_s``, ``baudrate``...) with defaults.
        """

    @classmethod
    def _on_port(cls, port_url: str, *, baudrate: int, timeout_s: float, **settings: Any) -> Self:
        """Open ``port_url`` and build the driver on it; close the port if that fails."""
        # Drivers take the opened port (not a link) with their own settings.
        make: Callable[..., Self] = cls
        port = open_serial_port(port_url, baudrate=baudrate, timeout_s=timeout_s)
        try:
            return make(port, port_name=port_url, timeout_s=timeout_s, **settings)
        except BaseException:
            port.close()
            raise

    @classmethod
    def option_names(cls) -> list[str]:
        """Return the options :meth:`open` (and so :meth:`from_config`) accepts."""
        params = inspect.signature(cls.open).parameters.values()
        return sorted(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)

    @classmethod
    def from_config(cls, port_url: str, options: Mapping[str, Any]) -> Self:
        """Open the instrument from configuration: a port URL and a mapping of options.

        Raises:
            InstrumentSettingError: an option this driver does not know.
        """
        known = cls.option_names()
        unknown = sorted(set(options) - set(known))
        if unknown:
            name = cls.kind or cls.__name__
            raise InstrumentSettingError(
                f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                f"for the {name!r} instrument (it takes: {', '.join(known) or 'none'})"
            )
        opener: Callable[..., Self] = cls.open
        return opener(port_url, **options)

    @property
    def port_name(self) -> str:
        """The port the instrument is on, as given when it was opened."""
        return self._link.port_name

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._link.closed

    @property
    def timeout_s(self) -> float:
        """How long to wait for a reply (settable, e.g. around a slow command)."""
        return self._link.timeout_s

    @timeout_s.setter
    def timeout_s(self, seconds: float) -> None:
        if not seconds > 0:
            raise InstrumentSettingError(f"timeout_s must be positive, not {seconds!r}")
        self._link.timeout_s = seconds

    def close(self) -> None:
        """Close the port. The instrument keeps its state (outputs, relays) as it is."""
        self._link.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.port_name!r})"


def _check_amount(name: str, value: float, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InstrumentSettingError(f"{name} must be a number of {unit}, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise InstrumentSettingError(f"{name} must be a finite, non-negative number of {unit}")
    return float(value)


class PowerSupply(Instrument):
    """A programmable DC power supply (e.g. terminal 30, the ECUs' battery feed).

    Setting the voltage or current limit changes the set point; the output follows
    only while it is on. ``measure_*`` read what the supply measures at its output.
    """

    device = "the power supply"

    def set_voltage(self, volts: float) -> None:
        """Set the output voltage set point."""
        self._set_voltage(_check_amount("voltage", volts, "volts"))

    def set_current_limit(self, amps: float) -> None:
        """Set the current limit (above it the supply regulates current: CC mode)."""
        self._set_current_limit(_check_amount("current limit", amps, "amperes"))

    def output(self, on: bool) -> None:
        """Switch the output on or off."""
        self._output(bool(on))

    @abstractmethod
    def is_on(self) -> bool:
        """Whether the output is on, as the supply reports it."""

    @abstractmethod
    def measure_voltage(self) -> float:
        """Measure the voltage at the output, in volts."""

    @abstractmethod
    def measure_current(self) -> float:
        """Measure the current at the output, in amperes."""

    @abstractmethod
    def voltage_setpoint(self) -> float:
        """Read back the voltage set point, in volts."""

    @abstractmethod
    def current_limit(self) -> float:
        """Read back the current limit, in amperes."""

    @abstractmethod
    def identify(self) -> str:
        """Return the supply's identification string (``*IDN?``)."""

    @abstractmethod
    def _set_voltage(self, volts: float) -> None:
        """Send the voltage set point (already checked: finite, non-negative)."""

    @abstractmethod
    def _set_current_limit(self, amps: float) -> None:
        """Send the current limit (already checked: finite, non-negative)."""

    @abstractmethod
    def _output(self, on: bool) -> None:
        """Switch the output."""


class RelayBoard(Instrument):
    """A board of relays (e.g. terminal 15, ignition, or other switched lines).

    Channels are numbered as printed on the board: :attr:`channel_numbers` says
    which numbers are valid (LCUS boards count from 1, Numato boards from 0).
    """

    device = "the relay board"

    first_channel: ClassVar[int] = 1
    """The number of the board's first relay, as printed on it."""

    def __init__(self, link: SerialLink, channels: int) -> None:
        super().__init__(link)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise InstrumentSettingError(f"channels must be a positive count, not {channels!r}")
        self._channels = channels

    @property
    def channels(self) -> int:
        """How many relays the board has."""
        return self._channels

    @property
    def channel_numbers(self) -> range:
        """The valid channel numbers."""
        return range(self.first_channel, self.first_channel + self._channels)

    @property
    @abstractmethod
    def reports_state(self) -> bool:
        """Whether :meth:`get` asks the board; if not, it returns the last state set."""

    def set(self, channel: int, on: bool) -> None:
        """Switch one relay on (energised) or off."""
        self._set(self._check_channel(channel), bool(on))

    def get(self, channel: int) -> bool:
        """Whether one relay is on: read from the board if :attr:`reports_state`."""
        return self._get(self._check_channel(channel))

    def _check_channel(self, channel: int) -> int:
        if isinstance(channel, bool) or not isinstance(channel, int):
            raise InstrumentSettingError(f"a relay channel is an integer, not {channel!r}")
        numbers = self.channel_numbers
        if channel not in numbers:
            raise InstrumentSettingError(
                f"{self.device} on {self.port_name} has channels "
                f"{numbers.start}..{numbers.stop - 1}, not {channel}"
            )
        return channel

    @abstractmethod
    def _set(self, channel: int, on: bool) -> None:
        """Switch one relay (channel already checked)."""

    @abstractmethod
    def _get(self, channel: int) -> bool:
        """Read or recall one relay's state (channel already checked)."""

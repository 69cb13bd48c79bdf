"""Bench instruments on serial ports: power supplies and relay boards.

- Interfaces: :class:`PowerSupply` (e.g. terminal 30, the ECUs' battery feed) and
  :class:`RelayBoard` (terminal 15, ignition, or other switched lines).
- Drivers: ``korad`` (Korad KA3005P family, also RND and Tenma), ``scpi`` (SCPI
  over serial), ``lcus`` (LCUS USB relay boards), ``numato`` (Numato USB relay
  modules); more through the ``hil.instruments`` entry point group.
- :func:`open_instrument` and friends open a driver by kind on a port given as a
  device path or a pyserial URL (``/dev/ttyUSB0``, ``COM3``,
  ``socket://127.0.0.1:PORT``, ``loop://``).
- :mod:`hil.instruments.sim` has simulated instruments to run them against.

pyserial is imported only when a port is opened.
"""

from hil.instruments.base import Instrument, PowerSupply, RelayBoard
from hil.instruments.errors import (
    DriverUnavailableError,
    InstrumentError,
    InstrumentPortError,
    InstrumentReplyError,
    InstrumentSettingError,
    InstrumentTimeoutError,
    ScpiError,
    UnknownInstrumentError,
)
from hil.instruments.registry import (
    BUILTIN_DRIVERS,
    ENTRY_POINT_GROUP,
    available_instruments,
    load_driver,
    open_instrument,
    open_power_supply,
    open_relay_board,
)

__all__ = [
    "BUILTIN_DRIVERS",
    "ENTRY_POINT_GROUP",
    "DriverUnavailableError",
    "Instrument",
    "InstrumentError",
    "InstrumentPortError",
    "InstrumentReplyError",
    "InstrumentSettingError",
    "InstrumentTimeoutError",
    "PowerSupply",
    "RelayBoard",
    "ScpiError",
    "UnknownInstrumentError",
    "available_instruments",
    "load_driver",
    "open_instrument",
    "open_power_supply",
    "open_relay_board",
]

"""Instrument drivers by kind: the built-ins, extended through entry points.

A driver is an :class:`~hil.instruments.base.Instrument` subclass registered under
a short kind (``korad``, ``scpi``, ``lcus``, ``numato``). Other packages add kinds
in the ``hil.instruments`` entry point group::

    [project.entry-points."hil.instruments"]
    my_psu = "my_package.psu:MyPowerSupply"

The built-ins are also listed here, so a checkout whose package metadata is stale
(not reinstalled since a driver was added) still finds them; an entry point that
reuses a built-in kind for another class is ignored with a warning. Drivers are
imported only when asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib import metadata
from types import MappingProxyType
from typing import Any

from hil.instruments.base import Instrument, PowerSupply, RelayBoard
from hil.instruments.errors import (
    DriverUnavailableError,
    InstrumentError,
    InstrumentSettingError,
    UnknownInstrumentError,
)

_log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "hil.instruments"

BUILTIN_DRIVERS: Mapping[str, str] = MappingProxyType(
    {
        "korad": "hil.instruments.korad:KoradPowerSupply",
        "scpi": "hil.instruments.scpi:ScpiPowerSupply",
        "lcus": "hil.instruments.lcus:LcusRelayBoard",
        "numato": "hil.instruments.numato:NumatoRelayBoard",
    }
)
"""Kinds that ship with ``hil``, as ``module:Class`` (the same as in pyproject.toml)."""


def available_instruments() -> dict[str, str]:
    """Every known kind and its driver as ``module:Class``, sorted by kind."""
    drivers = dict(BUILTIN_DRIVERS)
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        builtin = BUILTIN_DRIVERS.get(entry.name)
        if builtin is not None and entry.value != builtin:
            _log.warning(
                "ignoring entry point %s = %r: %r is the built-in driver %s",
                entry.name,
                entry.value,
                entry.name,
                builtin,
            )
            continue
        drivers.setdefault(entry.name, entry.value)
    return dict(sorted(drivers.items()))


def load_driver(kind: str) -> type[Instrument]:
    """Import and return the driver class registered under ``kind``.

    Raises:
        UnknownInstrumentError: no driver has that kind; the message lists the known ones.
        DriverUnavailableError: the driver's module cannot be imported.
    """
    drivers = available_instruments()
    value = drivers.get(kind)
    if value is None:
        raise UnknownInstrumentError(
            f"unknown instrument kind {kind!r}; known kinds: {', '.join(drivers)}"
        )
    try:
        driver = metadata.EntryPoint(name=kind, value=value, group=ENTRY_POINT_GROUP).load()
    except (ImportError, AttributeError) as exc:
        raise DriverUnavailableError(
            f"the {kind!r} instrument driver ({value}) cannot be loaded: {exc}"
        ) from exc
    if not (isinstance(driver, type) and issubclass(driver, Instrument)):
        raise InstrumentError(f"the {kind!r} instrument driver ({value}) is not an Instrument")
    return driver


def open_instrument(kind: str, port: str, /, **options: Any) -> Instrument:
    """Open the instrument of ``kind`` on ``port`` (a device path or a pyserial URL).

    ``options`` are the driver's (see its ``open``); an unknown one is an error.
    """
    return load_driver(kind).from_config(port, options)


def open_power_supply(kind: str, port: str, /, **options: Any) -> PowerSupply:
    """Like :func:`open_instrument`, for a kind that must be a power supply."""
    driver = load_driver(kind)
    if not issubclass(driver, PowerSupply):
        raise InstrumentSettingError(f"instrument kind {kind!r} is not a power supply")
    return driver.from_config(port, options)


def open_relay_board(kind: str, port: str, /, **options: Any) -> RelayBoard:
    """Like :func:`open_instrument`, for a kind that must be a relay board."""
    driver = load_driver(kind)
    if not issubclass(driver, RelayBoard):
        raise InstrumentSettingError(f"instrument kind {kind!r} is not a relay board")
    return driver.from_config(port, options)

"""The physical state of the simulated vehicle that its ECUs observe and report."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any


class Ignition(IntEnum):
    """Terminal 15 position, as encoded in the status frames."""

    OFF = 0
    ACC = 1
    ON = 2
    START = 3


@dataclass
class VehicleState:
    """Live signals shared by all ECUs of one vehicle.

    Tests and scenarios change them directly (``state.vehicle_speed_kph = 30``)
    or with :meth:`update`; ECUs read them when they encode their frames and
    when they check programming preconditions.
    """

    ignition: Ignition = Ignition.ON
    kl30: bool = True
    vehicle_speed_kph: float = 0.0
    engine_speed_rpm: float = 0.0
    battery_voltage_v: float = 12.6
    battery_current_a: float = -1.5
    state_of_charge_pct: float = 80.0
    doors_locked: bool = True
    parking_brake: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def update(self, **values: Any) -> None:
        """Change several signals at once, atomically for readers of :meth:`snapshot`."""
        known = {f.name for f in fields(self) if not f.name.startswith("_")}
        unknown = set(values) - known
        if unknown:
            raise AttributeError(f"unknown vehicle signal(s): {', '.join(sorted(unknown))}")
        with self._lock:
            for key, value in values.items():
                setattr(self, key, Ignition(value) if key == "ignition" else value)

    def snapshot(self) -> dict[str, Any]:
        """Return a consistent copy of all signals."""
        with self._lock:
            return {
                f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")
            }

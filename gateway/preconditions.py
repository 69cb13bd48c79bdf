"""Update preconditions judged from the live restbus, decoded with cantools.

:class:`RestbusMonitor` is a listener on the bus's one notifier: it decodes
the frames that carry the signals named in the vehicle file's
``[[update.precondition]]`` entries and keeps each signal's latest value with
the time it arrived. :meth:`RestbusMonitor.unmet` says which conditions do not
hold now, in words a report can carry ("vehicle speed 30 km/h, must be at most
0.5"). A signal that has not been seen for ``max_age_s`` does not hold: a
gateway must not update a vehicle whose state it cannot see.

While ECUs are being programmed the vehicle's normal communication is off
(CommunicationControl), so no status frames arrive; :meth:`unmet` with
``stale_ok=True`` then judges the last values received.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import can
import cantools.database

from gateway.errors import GatewayError
from ota_formats.vehicle import PreconditionSpec


class PreconditionConfigError(GatewayError, ValueError):
    """A precondition names a signal or a value the DBC does not have."""


class PreconditionSource(Protocol):
    """Where an update orchestrator learns whether it may touch the ECUs."""

    def unmet(self, *, since: float | None = None, stale_ok: bool = False) -> list[str]:
        """Return the conditions that do not hold, in words (empty: all hold).

        ``since``: only values received at or after this clock reading count.
        """
        ...

    def now(self) -> float:
        """Return the clock reading that ``since`` is compared with."""
        ...


@dataclass(frozen=True)
class _Condition:
    spec: PreconditionSpec
    frame_id: int
    unit: str
    low: float | None
    high: float | None
    equals: float | None
    shown: str

    def judge(self, value: float) -> str | None:
        """Return why ``value`` fails the condition, or ``None``."""
        unit = f" {self.unit}" if self.unit else ""
        if self.equals is not None:
            if math.isclose(value, self.equals, abs_tol=1e-9):
                return None
            return f"{self.spec.name} is {value:g}{unit}, must be {self.shown}"
        if self.low is not None and value < self.low:
            return f"{self.spec.name} {value:g}{unit}, must be at least {self.low:g}{unit}"
        if self.high is not None and value > self.high:
            return f"{self.spec.name} {value:g}{unit}, must be at most {self.high:g}{unit}"
        return None


class RestbusMonitor(can.Listener):
    """Latest values of the precondition signals, from the frames on the bus."""

    def __init__(
        self,
        database: cantools.database.can.Database,
        conditions: Sequence[PreconditionSpec],
        *,
        max_age_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_age_s = max_age_s
        self._clock = clock
        self._database = database
        self._conditions = [self._compile(database, spec) for spec in conditions]
        self._frames: dict[int, Any] = {
            c.frame_id: database.get_message_by_frame_id(c.frame_id) for c in self._conditions
        }
        self._values: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _compile(database: cantools.database.can.Database, spec: PreconditionSpec) -> _Condition:
        for message in database.messages:
            for signal in message.signals:
                if signal.name != spec.signal:
                    continue
                equals: float | None = None
                shown = ""
                if isinstance(spec.equals, str):
                    choices = {str(v): int(k) for k, v in (signal.choices or {}).items()}
                    if spec.equals not in choices:
                        known = ", ".join(choices) or "none"
                        raise PreconditionConfigError(
                            f"precondition on {spec.signal}: {spec.equals!r} is not one of its "
                            f"values ({known})"
                        )
                    equals = float(choices[spec.equals])
                    shown = spec.equals
                elif spec.equals is not None:
                    equals = float(spec.equals)
                    shown = f"{equals:g}"
                return _Condition(
                    spec=spec,
                    frame_id=message.frame_id,
                    unit=signal.unit or "",
                    low=spec.min,
                    high=spec.max,
                    equals=equals,
                    shown=shown,
                )
        raise PreconditionConfigError(f"precondition on {spec.signal}: the DBC has no such signal")

    @property
    def signals(self) -> list[str]:
        """The signals the monitor watches."""
        return [c.spec.signal for c in self._conditions]

    def now(self) -> float:
        """Return the monitor's clock reading."""
        return self._clock()

    def on_message_received(self, msg: can.Message) -> None:
        """Decode a frame that carries a watched signal (a notifier listener)."""
        message = self._frames.get(msg.arbitration_id)
        if message is None or msg.is_error_frame or msg.is_remote_frame:
            return
        try:
            decoded = message.decode(bytes(msg.data), decode_choices=False, scaling=True)
        except Exception:
            return
        at = self._clock()
        with self._lock:
            for name, value in decoded.items():
                if isinstance(value, int | float):
                    self._values[name] = (float(value), at)

    def value(self, signal: str) -> float | None:
        """Return the latest value of ``signal``, if one arrived."""
        with self._lock:
            entry = self._values.get(signal)
        return None if entry is None else entry[0]

    def unmet(self, *, since: float | None = None, stale_ok: bool = False) -> list[str]:
        """Return the conditions that do not hold now, in words (empty: all hold)."""
        now = self._clock()
        reasons: list[str] = []
        with self._lock:
            values = dict(self._values)
        for condition in self._conditions:
            entry = values.get(condition.spec.signal)
            if entry is None:
                reasons.append(f"{condition.spec.name}: no {condition.spec.signal} frame seen")
                continue
            value, at = entry
            if since is not None and at < since:
                reasons.append(f"{condition.spec.name}: no fresh {condition.spec.signal} yet")
                continue
            if not stale_ok and now - at > self.max_age_s:
                reasons.append(
                    f"{condition.spec.name}: {condition.spec.signal} not seen for {now - at:.1f} s"
                )
                continue
            why = condition.judge(value)
            if why is not None:
                reasons.append(why)
        return reasons


class AlwaysMet:
    """A precondition source for a vehicle without conditions (or a bench that has none)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock

    def now(self) -> float:
        """Return the clock reading."""
        return self._clock()

    def unmet(self, *, since: float | None = None, stale_ok: bool = False) -> list[str]:
        """Nothing is ever unmet."""
        return []


__all__ = ["AlwaysMet", "PreconditionConfigError", "PreconditionSource", "RestbusMonitor"]

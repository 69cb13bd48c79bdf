"""Cyclic status frames of one ECU, encoded with cantools from its live state.

Each message of the DBC whose sender is the ECU (its name upper-cased) is
sent every ``GenMsgCycleTime`` by python-can's thread-based cyclic task; its
modifier callback re-encodes the frame from the ECU's state just before each
transmission, so signals, rolling counters and the running version are live.
The thread-based task is used on purpose: some interfaces' own periodic
sending (kernel BCM, the remote bus) would ignore the modifier.
Signal names are ``<ECU>_<Name>``; :func:`signal_values` gives each ``Name``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import can
import cantools.database
from can.broadcastmanager import ThreadBasedCyclicSendTask

log = logging.getLogger(__name__)

ValueSource = Callable[[], dict[str, float]]


class Restbus:
    """The cyclic frames of one ECU on ``bus``; :meth:`set_enabled` starts and stops them."""

    def __init__(
        self,
        bus: can.BusABC,
        database: cantools.database.can.Database,
        node: str,
        values: ValueSource,
        send_lock: threading.Lock | None = None,
    ) -> None:
        self.bus = bus
        self.node = node.upper()
        self._values = values
        self._messages = [
            m for m in database.messages if self.node in m.senders and (m.cycle_time or 0) > 0
        ]
        self._counters: dict[int, int] = {}
        self._tasks: list[Any] = []
        self._lock = threading.Lock()
        self._send_lock = send_lock or threading.Lock()
        self._enabled = False

    @property
    def messages(self) -> list[str]:
        """Names of the cyclic messages this ECU sends."""
        return [m.name for m in self._messages]

    @property
    def enabled(self) -> bool:
        """Whether the frames are being sent."""
        return self._enabled

    def encode(self, message: Any) -> bytes:
        """Encode ``message`` from the current values (advancing its rolling counter)."""
        values = self._values()
        counter = (self._counters.get(message.frame_id, -1) + 1) & 0x0F
        self._counters[message.frame_id] = counter
        data: dict[str, float] = {}
        prefix = f"{self.node}_"
        for signal in message.signals:
            name = signal.name.removeprefix(prefix)
            if name.endswith("Counter"):
                data[signal.name] = counter
            else:
                raw = values.get(name, 0)
                low = signal.minimum if signal.minimum is not None else raw
                high = signal.maximum if signal.maximum is not None else raw
                data[signal.name] = min(max(raw, low), high)
        encoded: bytes = message.encode(data, strict=False)
        return encoded

    def set_enabled(self, enabled: bool) -> None:
        """Start or stop every cyclic frame of the ECU."""
        with self._lock:
            if enabled == self._enabled:
                return
            self._enabled = enabled
            if enabled:
                self._start()
            else:
                self._stop()

    def _start(self) -> None:
        for message in self._messages:
            frame = can.Message(
                arbitration_id=message.frame_id,
                is_extended_id=message.is_extended_frame,
                data=self.encode(message),
            )

            def modify(msg: can.Message, message: Any = message) -> None:
                msg.data = bytearray(self.encode(message))

            task = ThreadBasedCyclicSendTask(
                self.bus,
                self._send_lock,
                frame,
                (message.cycle_time or 0) / 1000,
                on_error=self._on_error,
                modifier_callback=modify,
            )
            self._tasks.append(task)

    def _on_error(self, exc: Exception) -> bool:
        log.debug("restbus %s stopped: %s", self.node, exc)
        return False

    def _stop(self) -> None:
        for task in self._tasks:
            task.stop()
        self._tasks.clear()

"""One simulated ECU on a python-can bus: ISO-TP endpoints, UDS server thread, restbus.

The protocol logic is :class:`~ecu_sim.uds.server.UdsServer`; this module is
the thin threaded layer around it. Frames reach the ECU from its vehicle's
dispatcher (a listener on the bus's one notifier), go through can-isotp
transport layers (physical and functional addresses), and the reassembled
requests are served on the thread that reassembled them, under one lock, so
the server never sees two requests at once; a timer thread runs what the
server schedules (NRC 0x78 reminders, S3, delayed replies, power restore).
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import can
import isotp

from ecu_sim.faults import FaultInjector
from ecu_sim.flash import BootReport
from ecu_sim.nvm import Nvm
from ecu_sim.restbus import Restbus
from ecu_sim.state import VehicleState
from ecu_sim.uds.server import Outgoing, UdsServer
from ota_formats.uds import BootStatus, Session
from ota_formats.vehicle import EcuSpec, VehicleSpec

log = logging.getLogger(__name__)

_IDLE_WAKEUP_S = 0.1


def _version_parts(version: str) -> tuple[int, int, int]:
    pieces = [*version.split("."), "0", "0", "0"][:3]
    parts = [int(p) if p.isdigit() and int(p) < 255 else 255 for p in pieces]
    return parts[0], parts[1], parts[2]


class _StackPump:
    """A can-isotp transport layer fed from a queue, and a thread moving what it reassembles."""

    def __init__(
        self,
        name: str,
        address: isotp.Address,
        params: dict[str, Any],
        transmit: Callable[[isotp.CanMessage], None],
        deliver: Callable[[bytes], None],
    ) -> None:
        self.name = name
        self.frames: queue.Queue[isotp.CanMessage] = queue.Queue()
        self.stack = isotp.TransportLayer(
            rxfn=self._read, txfn=transmit, address=address, params=params
        )
        self._deliver = deliver
        self._thread: threading.Thread | None = None
        self._running = False

    def _read(self, timeout: float) -> isotp.CanMessage | None:
        try:
            return self.frames.get(timeout=timeout)
        except queue.Empty:
            return None

    def start(self) -> None:
        self.stack.start()
        self._running = True
        self._thread = threading.Thread(target=self._pump, name=self.name, daemon=True)
        self._thread.start()

    def restart(self) -> None:
        """Drop every partial transfer, as a power cycle does."""
        self.stack.stop()
        while not self.frames.empty():
            self.frames.get_nowait()
        self.stack.start()

    def stop(self) -> None:
        self._running = False
        self.stack.stop()
        if self._thread is not None:
            self._thread.join(1.0)

    def _pump(self) -> None:
        while self._running:
            data = self.stack.recv(block=True, timeout=0.05)
            if data is not None and self._running:
                try:
                    self._deliver(bytes(data))
                except Exception:
                    # A dead pump would leave a deaf ECU; log and keep serving.
                    log.exception("%s: request handling failed", self.name)


class SimulatedEcu:
    """A simulated ECU; build it through :class:`~ecu_sim.vehicle.SimulatedVehicle`."""

    def __init__(
        self,
        spec: EcuSpec,
        vehicle: VehicleSpec,
        bus: can.BusABC,
        state: VehicleState,
        nvm_dir: Path,
        *,
        database: Any = None,
        clock: Callable[[], float] = time.monotonic,
        faults: FaultInjector | None = None,
        send_lock: threading.Lock | None = None,
    ) -> None:
        self.spec = spec
        # Not every python-can interface may be sent on from several threads at once.
        self._send_lock = send_lock or threading.Lock()
        self.vehicle = vehicle
        self.bus = bus
        self.state = state
        self.faults = faults or FaultInjector()
        self.clock = clock
        self.server = UdsServer(spec, vehicle, Nvm(nvm_dir), state, self.faults, clock)
        self._lock = threading.RLock()
        self._wakeup = threading.Event()
        self._timer_due = 0.0
        self._scheduled: list[tuple[float, int, bytes]] = []
        self._sequence = 0
        self._thread: threading.Thread | None = None
        self._running = False
        self._listening = False
        params = spec.isotp.params(fd=vehicle.can.fd)
        mode = isotp.AddressingMode.Normal_11bits
        self._physical = _StackPump(
            f"{spec.name}-physical",
            isotp.Address(mode, txid=spec.response_id, rxid=spec.request_id),
            params,
            self._transmit,
            lambda data: self._process(data, functional=False),
        )
        # Functional requests are single frames; the replies go out on the physical stack.
        self._functional = _StackPump(
            f"{spec.name}-functional",
            isotp.Address(mode, txid=spec.response_id, rxid=vehicle.functional_request_id),
            params,
            self._transmit,
            lambda data: self._process(data, functional=True),
        )
        self.restbus = (
            Restbus(bus, database, spec.name, self.signal_values, self._send_lock)
            if database is not None
            else None
        )

    # -- life cycle ------------------------------------------------------------------

    def start(self) -> BootReport:
        """Power the ECU up and start serving."""
        with self._lock:
            report = self.server.power_on()
            self._listening = True
        self._physical.start()
        self._functional.start()
        self._running = True
        self._thread = threading.Thread(target=self._run, name=f"ecu-{self.spec.name}", daemon=True)
        self._thread.start()
        return report

    def stop(self) -> None:
        """Stop serving; NVM keeps its state (as after a power-off)."""
        with self._lock:
            self._running = False
            self._listening = False
            if self.restbus is not None:
                self.restbus.set_enabled(False)
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(2.0)
        stopper = threading.Thread(target=self._functional.stop)
        stopper.start()
        self._physical.stop()
        stopper.join()
        with self._lock:
            self._listening = False
            if self.server.powered:
                self.server.power_off()

    # -- frames in and out ---------------------------------------------------------------

    def on_frame(self, msg: can.Message, functional: bool) -> None:
        """Take a frame addressed to this ECU (called on the notifier's thread)."""
        if not self._listening:
            return
        frame = isotp.CanMessage(
            arbitration_id=msg.arbitration_id,
            data=bytes(msg.data),
            extended_id=msg.is_extended_id,
            is_fd=msg.is_fd,
            bitrate_switch=msg.bitrate_switch,
        )
        (self._functional if functional else self._physical).frames.put(frame)

    def _transmit(self, frame: isotp.CanMessage) -> None:
        if not self._listening:
            return
        message = can.Message(
            arbitration_id=frame.arbitration_id,
            data=frame.data,
            is_extended_id=frame.is_extended_id,
            is_fd=frame.is_fd,
            bitrate_switch=frame.bitrate_switch,
        )
        with self._send_lock:
            self.bus.send(message)

    def _process(self, payload: bytes, *, functional: bool) -> None:
        """Serve one request on the thread of the stack that reassembled it."""
        with self._lock:
            was_powered = self.server.powered
            outgoing = self.server.handle(payload, functional=functional)
            outgoing += self.server.poll()
            self._dispatch(outgoing, was_powered)
            # Wake the timer thread only if something is now due before it planned to wake.
            wake = self._next_wakeup() < self._timer_due
        if wake:
            self._wakeup.set()

    def _run(self) -> None:
        """Timer thread: 0x78 reminders, end of slow operations, S3, delayed replies."""
        while self._running:
            with self._lock:
                self._timer_due = self._next_wakeup()
                timeout = max(0.0, self._timer_due - self.clock())
            self._wakeup.wait(timeout)
            self._wakeup.clear()
            try:
                with self._lock:
                    was_powered = self.server.powered
                    self._dispatch(self.server.poll(), was_powered)
            except Exception:
                log.exception("ECU %s: timer handling failed", self.spec.name)
                time.sleep(_IDLE_WAKEUP_S)

    def _dispatch(self, outgoing: list[Outgoing], was_powered: bool) -> None:
        self._after_change(was_powered)
        for out in outgoing:
            self._sequence += 1
            heapq.heappush(self._scheduled, (out.at, self._sequence, out.payload))
        self._send_due()

    def _next_wakeup(self) -> float:
        """Clock time the timer thread has to run next (called with the lock held)."""
        deadlines = [self.clock() + _IDLE_WAKEUP_S]
        nxt = self.server.next_deadline()
        if nxt is not None:
            deadlines.append(nxt)
        if self._scheduled:
            deadlines.append(self._scheduled[0][0])
        return min(deadlines)

    def _send_due(self) -> None:
        now = self.clock()
        while self._scheduled and self._scheduled[0][0] <= now:
            _, _, payload = heapq.heappop(self._scheduled)
            if self.server.powered:
                self._physical.stack.send(payload)

    def _after_change(self, was_powered: bool) -> None:
        powered = self.server.powered
        if was_powered and not powered:
            self._scheduled.clear()
            self._listening = False
        if not self._running:
            return
        if powered and not was_powered:
            self._physical.restart()
            self._functional.restart()
            self._listening = True
        if self.restbus is not None:
            self.restbus.set_enabled(self.server.app_transmitting)

    def _wake(self) -> None:
        self._wakeup.set()

    # -- scripting -------------------------------------------------------------------------

    def power_off(self, restore_after_s: float | None = None) -> None:
        """Cut the supply now (volatile state lost); back after ``restore_after_s`` if given."""
        with self._lock:
            was = self.server.powered
            if was:
                self.server.power_off(restore_after_s)
            self._after_change(was)
        self._wake()

    def power_on(self) -> BootReport | None:
        """Restore the supply; the ECU boots from its NVM. ``None`` if it was on."""
        with self._lock:
            was = self.server.powered
            report = None if was else self.server.power_on()
            self._after_change(was)
        self._wake()
        return report

    def reset(self) -> BootReport:
        """Reset the ECU as an ECUReset would."""
        with self._lock:
            report = self.server.reset()
            self._after_change(True)
        self._wake()
        return report

    def set_dtc(self, code: int) -> bool:
        """Report a fault: record DTC ``code`` (unless DTC setting is off)."""
        with self._lock:
            return self.server.set_dtc(code)

    @property
    def powered(self) -> bool:
        """Whether the ECU has power."""
        return self.server.powered

    @property
    def session(self) -> Session:
        """Its active diagnostic session."""
        return self.server.session

    @property
    def version(self) -> str:
        """The version of the running application (``""`` if none or powered off)."""
        with self._lock:
            return self.server.boot.active_version if self.server.powered else ""

    @property
    def boot_status(self) -> BootStatus:
        """Its boot status record (DID 0xF1A0)."""
        with self._lock:
            return self.server.boot.boot_status()

    @property
    def dtcs(self) -> dict[int, int]:
        """Stored DTCs and their status bytes."""
        with self._lock:
            return dict(self.server.boot.record.dtcs)

    def signal_values(self) -> dict[str, float]:
        """Values of the ECU's restbus signals, by name without the ECU prefix."""
        snap = self.state.snapshot()
        server = self.server
        version = server.bootloader.active_version if server.bootloader else ""
        major, minor, patch = _version_parts(version)
        record = server.bootloader.record if server.bootloader else None
        return {
            "KL15": int(snap["ignition"]),
            "KL30": int(snap["kl30"]),
            "EngineSpeed": snap["engine_speed_rpm"],
            "VehicleSpeed": snap["vehicle_speed_kph"],
            "CommActive": 1,
            "BatteryVoltage": snap["battery_voltage_v"],
            "BatteryCurrent": snap["battery_current_a"],
            "StateOfCharge": snap["state_of_charge_pct"],
            "DoorsLocked": int(snap["doors_locked"]),
            "ParkingBrake": int(snap["parking_brake"]),
            "ActiveBank": (record.active_bank or 0) if record else 0,
            "SwMajor": major,
            "SwMinor": minor,
            "SwPatch": patch,
            "AntiRollback": record.anti_rollback_counter if record else 0,
        }

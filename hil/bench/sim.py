"""The ``sim`` bench process: the simulated vehicle with a power supply and an ignition relay.

:class:`SimBench` runs what a real bench has, simulated, for other processes to use
through the very drivers a real bench needs:

- the vehicle's simulated ECUs (:class:`ecu_sim.SimulatedVehicle`) on a CAN bus:
  by default a python-can-remote hub on 127.0.0.1 (a free port) that any process
  joins with ``interface = "remote"``; or any python-can bus given (vcan, a real
  adapter);
- a simulated Korad supply (:class:`~hil.instruments.sim.SimKoradPsu`) on a loopback
  TCP port, wired to the ECUs' supply: below ``brownout_volts`` at the output every
  ECU loses power (its NVM stays), above it they boot again; the measured voltage
  is the vehicle's battery voltage (restbus ``BMS_BatteryVoltage``, the ECUs' own
  programming voltage check);
- a simulated LCUS relay board on another loopback port, whose channel 1 is
  terminal 15: it sets the vehicle's ignition (restbus ``*_KL15``).

It writes the bus and the two ports to the state file
(:func:`hil.bench.simstate.state_file`), which the built-in ``sim`` bench reads.
The wiring acts as soon as a command reaches an instrument (before its reply),
and a poll catches changes made to the simulated instruments directly.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import can
import can.interfaces.virtual

from ecu_sim import Ignition, SimulatedVehicle, VehicleState, demo_vehicle
from hil.bench.bench import Bench
from hil.bench.config import sim_bench
from hil.bench.errors import BenchError
from hil.bench.paths import ENV_STATE_DIR
from hil.bench.paths import state_dir as default_state_dir
from hil.bench.simstate import (
    IGNITION_CHANNEL,
    NOMINAL_AMPS,
    NOMINAL_VOLTS,
    RELAY_CHANNELS,
    STATE_FILE,
    SimBenchState,
)
from hil.instruments.sim import SimKoradPsu, SimLcusBoard, SimSession
from ota_formats.vehicle import VehicleSpec

LOAD_OHMS = 24.0
"""The ECUs as a resistive load: 0.5 A at 12 V."""
BROWNOUT_VOLTS = 6.0
"""Below this output voltage the simulated ECUs have no power."""

_channels = itertools.count()
_JOIN_S = 5.0


class _WiredSession(SimSession):
    """A simulated instrument's session that reports every command it carried out."""

    def __init__(self, inner: SimSession, changed: Callable[[], None]) -> None:
        self._inner = inner
        self._changed = changed

    @property
    def pending(self) -> bool:
        return self._inner.pending

    def feed(self, data: bytes) -> list[bytes]:
        replies = self._inner.feed(data)
        self._changed()
        return replies

    def idle(self) -> list[bytes]:
        replies = self._inner.idle()
        self._changed()
        return replies


class WiredKoradPsu(SimKoradPsu):
    """A simulated Korad supply that calls ``on_change`` after each command."""

    def __init__(self, on_change: Callable[[], None], **options: Any) -> None:
        super().__init__(**options)
        self.on_change = on_change

    def session(self) -> SimSession:
        """Return a new connection's command framing, wired."""
        return _WiredSession(super().session(), self.on_change)


class WiredLcusBoard(SimLcusBoard):
    """A simulated LCUS board that calls ``on_change`` after each frame."""

    def __init__(self, on_change: Callable[[], None], **options: Any) -> None:
        super().__init__(**options)
        self.on_change = on_change

    def session(self) -> SimSession:
        """Return a new connection's frame parser, wired."""
        return _WiredSession(super().session(), self.on_change)


class SimBench:
    """The simulated vehicle, its supply and its ignition relay, for the ``sim`` bench.

    Args:
        vehicle: the vehicle to simulate (default: the bundled demo vehicle).
        vehicle_file: the file ``vehicle`` was read from, for the clients (default: its source).
        state_dir: where to write the state file (default: :func:`hil.bench.paths.state_dir`).
        nvm_dir: the ECUs' NVM (default: ``<state_dir>/sim-bench/nvm``, kept between runs).
        bus_config: ``can.Bus`` keyword arguments of a bus the clients can reach; default:
            a python-can-remote hub on 127.0.0.1.
        env: the environment the default ``state_dir`` comes from.
        powered: start with the supply on at its nominal voltage (else off, ECUs unpowered).
        ignition: start with the ignition relay on.
        load_ohms: the ECUs as a load on the supply.
        brownout_volts: below it at the supply's output the ECUs have no power.
        poll_s: how often changes made to the simulated instruments directly are applied.
    """

    def __init__(
        self,
        *,
        vehicle: VehicleSpec | None = None,
        vehicle_file: Path | None = None,
        state_dir: Path | None = None,
        nvm_dir: Path | None = None,
        bus_config: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        powered: bool = True,
        ignition: bool = True,
        load_ohms: float = LOAD_OHMS,
        brownout_volts: float = BROWNOUT_VOLTS,
        poll_s: float = 0.05,
    ) -> None:
        self.spec = vehicle or demo_vehicle()
        source = vehicle_file or self.spec.source
        if source is None:
            raise BenchError("the sim bench needs a vehicle read from a file (clients read it too)")
        self.vehicle_file = Path(source).resolve()
        self.state_dir = state_dir if state_dir is not None else default_state_dir(env)
        self.state_file = self.state_dir / STATE_FILE
        self.nvm_dir = nvm_dir if nvm_dir is not None else self.state_dir / "sim-bench" / "nvm"
        self.bus_config = dict(bus_config) if bus_config is not None else None
        self.powered_at_start = powered
        self.ignition_at_start = ignition
        self.load_ohms = load_ohms
        self.brownout_volts = brownout_volts
        self.poll_s = poll_s
        self.channel: str | None = None
        """The virtual channel of the ECUs behind the hub (``None`` with ``bus_config``)."""
        self.vehicle_state = VehicleState()
        self.psu = WiredKoradPsu(self._apply, tcp=True, pty=False)
        self.relays = WiredLcusBoard(
            self._apply, channels=RELAY_CHANNELS, answers_query=True, tcp=True, pty=False
        )
        self._vehicle: SimulatedVehicle | None = None
        self._ecu_bus: can.BusABC | None = None
        self._hub: Any = None
        self._hub_thread: threading.Thread | None = None
        self._poll_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wiring = threading.Lock()
        self._supply_powered: bool | None = None
        self._state: SimBenchState | None = None
        self._started = False

    # -- what it serves -----------------------------------------------------------------

    @property
    def vehicle(self) -> SimulatedVehicle:
        """The running simulated vehicle."""
        if self._vehicle is None:
            raise BenchError("the sim bench is not started")
        return self._vehicle

    @property
    def state(self) -> SimBenchState:
        """What the state file says."""
        if self._state is None:
            raise BenchError("the sim bench is not started")
        return self._state

    @property
    def client_bus_config(self) -> dict[str, Any]:
        """``can.Bus`` keyword arguments that reach the ECUs from another process."""
        return dict(self.state.bus)

    def bench(self) -> Bench:
        """Return the ``sim`` bench as clients resolve it, from this instance's state file."""
        return sim_bench({ENV_STATE_DIR: str(self.state_dir)})

    @property
    def supply_powered(self) -> bool:
        """Whether the supply powers the ECUs now."""
        return bool(self._supply_powered)

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Serve the bus, the instruments and the ECUs; write the state file."""
        if self._started:
            raise BenchError("the sim bench was already started")
        running = SimBenchState.read(self.state_file)
        if running is not None:
            raise BenchError(
                f"a sim bench is already running (pid {running.pid}, {self.state_file})"
            )
        self._started = True
        try:
            client_bus = self._open_bus()
            self._start_instruments()
            self.vehicle_state.update(
                ignition=Ignition.ON if self.ignition_at_start else Ignition.OFF
            )
            vehicle = SimulatedVehicle(
                self.spec, self._ecu_bus_or_fail(), state_dir=self.nvm_dir, state=self.vehicle_state
            )
            vehicle.start()
            self._supply_powered = True
            self._vehicle = vehicle
            self._apply()
            self._poll_thread = threading.Thread(
                target=self._poll, name="sim-bench-wiring", daemon=True
            )
            self._poll_thread.start()
            self._state = SimBenchState(
                pid=os.getpid(),
                bus=client_bus,
                power_port=self.psu.tcp_url,
                relay_port=self.relays.tcp_url,
                vehicle=str(self.vehicle_file),
                nvm_dir=str(self.nvm_dir),
            )
            self._state.write(self.state_file)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything (the ECUs' NVM stays) and remove the state file."""
        self._stop.set()
        if self._state is not None:
            self._state.remove(self.state_file)
        if self._poll_thread is not None:
            self._poll_thread.join(_JOIN_S)
        if self._vehicle is not None:
            self._vehicle.stop()
        self.psu.close()
        self.relays.close()
        if self._hub is not None:
            self._hub.shutdown()
            self._hub.server_close()
            if self._hub_thread is not None:
                self._hub_thread.join(_JOIN_S)
            for client in list(self._hub.clients):
                with contextlib.suppress(Exception):
                    client.close()
        if self._ecu_bus is not None:
            self._ecu_bus.shutdown()
        channel = self.channel
        if channel is not None:
            # The hub's buses of clients that just left close a moment later.
            deadline = time.monotonic() + _JOIN_S
            while channel in can.interfaces.virtual.channels and time.monotonic() < deadline:
                time.sleep(0.02)

    def __enter__(self) -> Self:
        return self.start() if not self._started else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _ecu_bus_or_fail(self) -> can.BusABC:
        assert self._ecu_bus is not None
        return self._ecu_bus

    def _open_bus(self) -> dict[str, Any]:
        if self.bus_config is not None:
            self._ecu_bus = can.Bus(**self.bus_config)
            return dict(self.bus_config)
        from can_remote import RemoteServer

        self.channel = f"hil-sim-bench-{os.getpid()}-{next(_channels)}"
        fd = self.spec.can.fd
        self._ecu_bus = can.Bus(interface="virtual", channel=self.channel, fd=fd)
        self._hub = RemoteServer("127.0.0.1", 0, interface="virtual", channel=self.channel)
        self._hub_thread = threading.Thread(
            target=self._hub.serve_forever, name="sim-bench-hub", daemon=True
        )
        self._hub_thread.start()
        return {"interface": "remote", "channel": f"ws://127.0.0.1:{self._hub.server_port}/"}

    def _start_instruments(self) -> None:
        with self.psu.lock:
            output = self.psu.channel(1)
            output.load_ohms = self.load_ohms
            output.current_limit_a = NOMINAL_AMPS
            output.set_voltage_v = NOMINAL_VOLTS
            output.output_on = self.powered_at_start
        with self.relays.lock:
            self.relays.relays[IGNITION_CHANNEL] = self.ignition_at_start
        self.psu.start()
        self.relays.start()

    # -- the wiring ---------------------------------------------------------------------

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._apply()

    def _apply(self) -> None:
        """Carry the instruments' outputs to the vehicle: supply -> ECU power, relay -> KL15."""
        vehicle = self._vehicle
        if vehicle is None or self._stop.is_set():
            return
        with self._wiring:
            # Read without the instruments' locks: a session calls this holding its own.
            volts = self.psu.channels[0].measured_voltage_v
            ignition = self.relays.relays.get(IGNITION_CHANNEL, False)
            powered = volts >= self.brownout_volts
            self.vehicle_state.update(
                battery_voltage_v=round(volts, 2),
                kl30=powered,
                ignition=Ignition.ON if ignition else Ignition.OFF,
            )
            if powered == self._supply_powered:
                return
            self._supply_powered = powered
            for ecu in vehicle.ecus.values():
                if powered:
                    ecu.power_on()
                else:
                    ecu.power_off()

"""A simulated vehicle: its ECUs on one python-can bus, behind the bus's one notifier."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import can
import cantools.database

from ecu_sim.ecu import SimulatedEcu
from ecu_sim.errors import EcuSimError
from ecu_sim.faults import FaultInjector
from ecu_sim.state import VehicleState
from ota_formats.vehicle import VehicleSpec


class SimulatedVehicle:
    """The ECUs of ``spec`` (or those named in ``ecus``) serving on ``bus``.

    ``state_dir`` holds each ECU's NVM in a sub-directory named after it; without
    one, a temporary directory is used and removed by :meth:`stop`. Pass the
    bus's ``notifier`` if other listeners already share it; otherwise the vehicle
    makes its own. Use as a context manager, or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        spec: VehicleSpec,
        bus: can.BusABC,
        *,
        state_dir: str | Path | None = None,
        ecus: Iterable[str] | None = None,
        notifier: can.Notifier | None = None,
        state: VehicleState | None = None,
        clock: Callable[[], float] = time.monotonic,
        restbus: bool = True,
    ) -> None:
        self.spec = spec
        self.bus = bus
        self.state = state or VehicleState()
        self._own_dir = state_dir is None
        self.state_dir = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="hil-ecu-"))
        names = list(ecus) if ecus is not None else [e.name for e in spec.ecus]
        if not names:
            raise EcuSimError("a vehicle needs at least one ECU")
        database = self._load_dbc() if restbus else None
        self.ecus: dict[str, SimulatedEcu] = {}
        send_lock = threading.Lock()
        for name in names:
            ecu_spec = spec.ecu(name)
            self.ecus[name] = SimulatedEcu(
                ecu_spec,
                spec,
                bus,
                self.state,
                self.state_dir / name,
                database=database,
                clock=clock,
                faults=FaultInjector(),
                send_lock=send_lock,
            )
        self._routes: dict[int, list[tuple[SimulatedEcu, bool]]] = {}
        for ecu in self.ecus.values():
            self._routes.setdefault(ecu.spec.request_id, []).append((ecu, False))
            self._routes.setdefault(spec.functional_request_id, []).append((ecu, True))
        self._notifier = notifier
        self._own_notifier = notifier is None
        self._started = False

    def _load_dbc(self) -> Any:
        path = self.spec.dbc_path()
        if path is None:
            return None
        try:
            return cantools.database.load_file(str(path))
        except (OSError, cantools.database.UnsupportedDatabaseFormatError) as exc:
            raise EcuSimError(f"cannot load DBC {path}: {exc}") from exc

    def ecu(self, name: str) -> SimulatedEcu:
        """Return the running ECU called ``name``."""
        try:
            return self.ecus[name]
        except KeyError:
            raise EcuSimError(
                f"no simulated ECU {name!r} (running: {', '.join(self.ecus)})"
            ) from None

    def on_message_received(self, msg: can.Message) -> None:
        """Route a frame to the ECUs it addresses (a notifier listener)."""
        if msg.is_error_frame or msg.is_remote_frame or msg.is_extended_id:
            return
        route = self._routes.get(msg.arbitration_id)
        if route:
            for ecu, functional in route:
                ecu.on_frame(msg, functional)

    def start(self, *, wait_booted: bool = True) -> SimulatedVehicle:
        """Power up every ECU and start listening (by default, until they have booted)."""
        if self._started:
            return self
        if self._notifier is None:
            self._notifier = can.Notifier(self.bus, [], timeout=0.1)
        self._notifier.add_listener(self.on_message_received)
        for ecu in self.ecus.values():
            ecu.start()
        self._started = True
        if wait_booted:
            self.wait_booted()
        return self

    def wait_booted(self, timeout_s: float = 10.0) -> None:
        """Block until every powered ECU has finished booting and answers requests."""
        deadline = time.monotonic() + timeout_s
        for ecu in self.ecus.values():
            while ecu.server.powered and ecu.server.is_booting() and time.monotonic() < deadline:
                time.sleep(0.005)

    def stop(self) -> None:
        """Stop every ECU (their NVM keeps its state) and release the notifier."""
        if not self._started:
            return
        self._started = False
        assert self._notifier is not None
        try:
            self._notifier.remove_listener(self.on_message_received)
        except ValueError:
            pass
        # Stopping joins ISO-TP threads; do the ECUs side by side.
        stoppers = [threading.Thread(target=ecu.stop) for ecu in self.ecus.values()]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        if self._own_notifier:
            self._notifier.stop()
            self._notifier = None
        if self._own_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> SimulatedVehicle:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

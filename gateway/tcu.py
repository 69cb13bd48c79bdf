"""The telematics unit: inventory over UDS, check-ins with the backend, deployments.

:class:`Gateway` puts the parts together for one vehicle on one CAN bus: a
:class:`~gateway.diag.DiagChannel` per ECU (wrapped as an
:class:`~gateway.orchestrator.EcuPort`), a
:class:`~gateway.preconditions.RestbusMonitor` on the bus's notifier, a
:class:`~gateway.backend.BackendClient` on the gRPC channel the caller made
(mTLS with the vehicle's certificate, or plain on loopback), the state file
and the downloaded images in ``state_dir``. :meth:`Gateway.run` is the TCU's
life: read the inventory, register, finish a deployment a restart
interrupted, then check in at the backend's interval and carry out what it
offers, riding out backend outages with backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import can
import cantools.database
import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.backend import BackendClient, Backoff, EcuInventory
from gateway.diag import DiagChannel
from gateway.errors import BackendRefused, BackendUnavailable
from gateway.flasher import Flasher, FlashProgress, FlashResult, RollbackResult
from gateway.inventory import EcuReading, read_ecu
from gateway.orchestrator import DeploymentOutcome, UpdateOrchestrator
from gateway.preconditions import AlwaysMet, PreconditionConfigError, RestbusMonitor
from gateway.state import FileStateStore
from ota_formats.vehicle import EcuSpec, VehicleSpec

log = logging.getLogger(__name__)

ACTIONABLE = frozenset({"pending", "notified", "downloading", "installing"})


class UdsEcuPort:
    """One ECU as the orchestrator sees it, over UDS on a :class:`DiagChannel`."""

    def __init__(
        self,
        channel: DiagChannel,
        *,
        trust_anchors: Sequence[Ed25519PublicKey],
        flasher_options: dict[str, Any] | None = None,
    ) -> None:
        self.channel = channel
        self.name = channel.ecu.name
        self.trust_anchors = list(trust_anchors)
        self.flasher_options = dict(flasher_options or {})

    def _flasher(self, **options: Any) -> Flasher:
        return Flasher(
            self.channel,
            trust_anchors=self.trust_anchors,
            **{**self.flasher_options, **options},
        )

    def read(self) -> EcuReading:
        """Identification and boot status."""
        return read_ecu(self.channel, self.name)

    def flash(
        self,
        image: bytes,
        *,
        should_abort: Callable[[], str | None],
        on_progress: Callable[[FlashProgress], None],
    ) -> FlashResult:
        """Flash ``image``, leaving it on trial for the vehicle-level confirmation."""
        return self._flasher(
            confirm=False, should_abort=should_abort, on_progress=on_progress
        ).flash(image)

    def confirm(self) -> None:
        """Confirm the running image."""
        self._flasher().confirm_image()

    def activate_previous(self) -> RollbackResult:
        """Switch back to the other bank's image."""
        return self._flasher().activate_previous()


def load_database(vehicle: VehicleSpec) -> cantools.database.can.Database | None:
    """Load the vehicle's DBC, if it names one."""
    path = vehicle.dbc_path()
    if path is None:
        return None
    try:
        database = cantools.database.load_file(str(path))
    except (OSError, cantools.database.UnsupportedDatabaseFormatError) as exc:
        raise PreconditionConfigError(f"cannot load DBC {path}: {exc}") from exc
    assert isinstance(database, cantools.database.can.Database)
    return database


class Gateway:
    """The TCU of one vehicle."""

    def __init__(
        self,
        vehicle: VehicleSpec,
        bus: can.BusABC,
        notifier: can.Notifier,
        channel: grpc.Channel,
        *,
        state_dir: str | Path,
        release_keys: Sequence[Ed25519PublicKey],
        ecus: Sequence[str] | None = None,
        backoff: Backoff | None = None,
        checkin_interval_s: float | None = None,
        precondition_timeout_s: float | None = None,
        flasher_options: dict[str, Any] | None = None,
        download_chunk_size: int = 0,
        on_event: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.vehicle = vehicle
        self.state_dir = Path(state_dir)
        self.checkin_interval_s = checkin_interval_s
        self.on_event = on_event
        self.client = BackendClient(
            channel, vehicle.vin, release_keys=release_keys, backoff=backoff
        )
        names = list(ecus) if ecus is not None else [e.name for e in vehicle.ecus]
        specs: list[EcuSpec] = [vehicle.ecu(name) for name in names]
        self._notifier = notifier
        self._channels = [DiagChannel(bus, notifier, vehicle, spec) for spec in specs]
        anchors = vehicle.trust_anchor_keys()
        self.ports = {
            c.ecu.name: UdsEcuPort(c, trust_anchors=anchors, flasher_options=flasher_options)
            for c in self._channels
        }
        update = vehicle.update
        database = load_database(vehicle) if update.preconditions else None
        self.monitor: RestbusMonitor | AlwaysMet
        if update.preconditions:
            if database is None:
                raise PreconditionConfigError(
                    "the vehicle's update preconditions need its DBC (the 'dbc' key)"
                )
            self.monitor = RestbusMonitor(
                database,
                update.preconditions,
                max_age_s=update.signal_max_age_ms / 1000,
                clock=clock,
            )
        else:
            self.monitor = AlwaysMet(clock)
        self.store = FileStateStore(self.state_dir)
        self.orchestrator = UpdateOrchestrator(
            self.client,
            self.ports,
            self.monitor,
            self.store,
            self.state_dir / "artifacts",
            trust_anchors=anchors,
            precondition_timeout_s=(
                precondition_timeout_s
                if precondition_timeout_s is not None
                else update.precondition_timeout_s
            ),
            download_chunk_size=download_chunk_size,
            clock=clock,
            on_event=on_event,
        )
        self.outcomes: list[DeploymentOutcome] = []
        self.last_inventory: list[EcuInventory] = []
        self.registered = False
        self._opened = False

    # ----------------------------------------------------------- life cycle
    def open(self) -> Gateway:
        """Start the ISO-TP layers and the restbus monitor."""
        if not self._opened:
            for channel in self._channels:
                channel.open()
            if isinstance(self.monitor, RestbusMonitor):
                self._notifier.add_listener(self.monitor)
            self._opened = True
        return self

    def close(self) -> None:
        """Stop listening and release the ISO-TP layers."""
        if not self._opened:
            return
        self._opened = False
        if isinstance(self.monitor, RestbusMonitor):
            try:
                self._notifier.remove_listener(self.monitor)
            except ValueError:
                pass
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> Gateway:
        return self.open()

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---------------------------------------------------------------- steps
    def read_inventory(self) -> list[EcuInventory]:
        """Read every ECU's identification and boot status (unreadable ECUs are left out)."""
        self.last_inventory = self.orchestrator.inventory()
        return self.last_inventory

    def start(self) -> None:
        """Read the inventory, register with the backend, and finish an interrupted deployment."""
        inventory = self.read_inventory()
        self.client.register(inventory, model=self.vehicle.model)
        self.registered = True
        self._event(
            f"registered {self.vehicle.vin}: "
            + ", ".join(f"{e.name} {e.software_version}" for e in inventory)
        )
        self._resume()

    def _resume(self) -> None:
        outcome = self.orchestrator.resume()
        if outcome is not None:
            self.outcomes.append(outcome)
            # What the check-ins report must be what the ECUs run now.
            self.read_inventory()

    def poll(self) -> float:
        """Check in once, carry out what the backend offers; return the wait before the next."""
        if not self.registered:
            self.start()
        elif self.orchestrator.pending() is not None:
            self._resume()
        notices, interval = self.client.check_in(
            state="idle", inventory=self.last_inventory or self.read_inventory()
        )
        for notice in notices:
            if notice.state not in ACTIONABLE:
                continue
            self._event(f"deployment {notice.deployment_id} ({notice.state}) offered")
            outcome = self.orchestrator.run(notice.deployment_id)
            if outcome is not None:
                self.outcomes.append(outcome)
                self.read_inventory()
        if notices:
            return 0.0
        return self.checkin_interval_s if self.checkin_interval_s is not None else float(interval)

    def run(self, stop: threading.Event, *, until: Callable[[], bool] | None = None) -> None:
        """Live until ``stop`` is set (or ``until()`` holds): check in, update, wait."""
        delay = 0.0
        while not stop.is_set():
            try:
                delay = self.poll()
            except BackendUnavailable as exc:
                self._event(f"backend unreachable: {exc}")
                delay = self.checkin_interval_s or 5.0
            except BackendRefused as exc:
                self._event(f"backend refused: {exc}")
                delay = self.checkin_interval_s or 5.0
            if until is not None and until():
                return
            if delay > 0:
                stop.wait(delay)

    def _event(self, text: str) -> None:
        log.info("%s", text)
        if self.on_event is not None:
            self.on_event(text)


__all__ = ["ACTIONABLE", "Gateway", "UdsEcuPort", "load_database"]

"""A wire-fidelity world: the real backend, simulated vehicles and their gateways in one process.

:class:`WireWorld` starts the bundled backend on a free loopback port (SQLite
in a data directory, or a database URL), and for each vehicle its simulated
ECUs on an in-process virtual CAN bus and its :class:`~gateway.tcu.Gateway`
on a thread of its own, over real gRPC and real ISO-TP frames.
:class:`Operator` is the operator's side of the backend (upload, release,
campaign). The demo, the end-to-end tests and the benchmarks drive the OTA
flow through these, and so can scenarios.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can
import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backend_stub.api import (
    campaign_pb2,
    campaign_pb2_grpc,
    common_pb2,
    device_pb2,
    device_pb2_grpc,
    update_pb2,
    update_pb2_grpc,
)
from backend_stub.pki import write_private_key
from backend_stub.server import BackendConfig, RunningBackend, serve
from ecu_sim import SimulatedVehicle
from gateway.backend import Backoff
from gateway.orchestrator import DeploymentOutcome
from gateway.tcu import Gateway
from ota_formats import build_image
from ota_formats.signing import dev_private_key
from ota_formats.vehicle import EcuSpec, VehicleSpec

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 30.0
UPLOAD_CHUNK = 256 * 1024
TERMINAL_CAMPAIGN_STATES = ("completed", "aborted")
_channels = itertools.count()


def payload(ecu: str, version: str, size: int) -> bytes:
    """Return a deterministic application payload of ``size`` bytes for ``ecu`` at ``version``."""
    block = hashlib.sha256(f"{ecu}-{version}".encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def signed_image(
    ecu: EcuSpec,
    version: str,
    counter: int,
    *,
    size: int = 64 * 1024,
    key: Ed25519PrivateKey | None = None,
    hardware_id: str | None = None,
) -> bytes:
    """Return a signed image for ``ecu`` (the development key unless ``key`` is given)."""
    return build_image(
        payload(ecu.name, version, size),
        hardware_id=hardware_id or ecu.hardware_id,
        version=version,
        anti_rollback_counter=counter,
        private_key=key or dev_private_key(),
    )


def upload_requests(
    data: bytes, filename: str, chunk_size: int = UPLOAD_CHUNK
) -> Iterator[update_pb2.UploadArtifactRequest]:
    """Return the UploadArtifact request stream for ``data``: the header, then the chunks."""
    yield update_pb2.UploadArtifactRequest(
        header=update_pb2.ArtifactHeader(
            size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), filename=filename
        )
    )
    for start in range(0, len(data), chunk_size):
        yield update_pb2.UploadArtifactRequest(data=data[start : start + chunk_size])


def _state(value: int, enum: Any = common_pb2.ActionState) -> str:
    name: str = enum.Name(value)
    return name.split("_STATE_", 1)[-1].lower()


class Operator:
    """The operator's calls to the backend, over a channel with operator rights."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.update = update_pb2_grpc.UpdateServiceStub(channel)  # type: ignore[no-untyped-call]
        self.device = device_pb2_grpc.DeviceServiceStub(channel)  # type: ignore[no-untyped-call]
        self.campaigns = campaign_pb2_grpc.CampaignServiceStub(channel)  # type: ignore[no-untyped-call]

    def upload(self, data: bytes, filename: str = "image.bin") -> str:
        """Upload an artifact; return its SHA-256."""
        artifact = self.update.UploadArtifact(
            upload_requests(data, filename), timeout=CALL_TIMEOUT_S
        )
        return str(artifact.sha256)

    def create_release(
        self, name: str, version: str, images: Sequence[tuple[str, bytes]]
    ) -> update_pb2.Release:
        """Upload ``images`` (ECU, signed image, in flashing order) and create a release."""
        entries = [
            update_pb2.ReleaseImage(ecu=ecu, sha256=self.upload(data, f"{ecu}-{version}.bin"))
            for ecu, data in images
        ]
        release: update_pb2.Release = self.update.CreateRelease(
            update_pb2.CreateReleaseRequest(
                name=name, version=version, images=entries, request_id=uuid.uuid4().hex
            ),
            timeout=CALL_TIMEOUT_S,
        )
        return release

    def start_campaign(
        self,
        release_id: str,
        vins: Sequence[str],
        *,
        name: str = "campaign",
        max_retries: int = 0,
        action_timeout_s: int = 0,
        waves: Sequence[int] = (),
        success_threshold_pct: float | None = None,
        error_threshold_pct: float | None = None,
    ) -> str:
        """Create and start a campaign of ``release_id`` on ``vins``; return its id."""
        request = campaign_pb2.CreateCampaignRequest(
            name=name,
            release_id=release_id,
            filter=common_pb2.VehicleFilter(vins=list(vins)),
            waves=[campaign_pb2.WaveSpec(count=n) for n in waves],
            max_retries=max_retries,
            action_timeout_s=action_timeout_s,
            request_id=uuid.uuid4().hex,
        )
        if success_threshold_pct is not None:
            request.success_threshold_pct = success_threshold_pct
        if error_threshold_pct is not None:
            request.error_threshold_pct = error_threshold_pct
        campaign = self.campaigns.CreateCampaign(request, timeout=CALL_TIMEOUT_S)
        self.campaigns.StartCampaign(
            campaign_pb2.CampaignRequest(campaign_id=campaign.campaign_id), timeout=CALL_TIMEOUT_S
        )
        return str(campaign.campaign_id)

    def campaign(self, campaign_id: str) -> campaign_pb2.Campaign:
        """Return the campaign's status."""
        campaign: campaign_pb2.Campaign = self.campaigns.GetCampaign(
            campaign_pb2.CampaignRequest(campaign_id=campaign_id), timeout=CALL_TIMEOUT_S
        )
        return campaign

    def campaign_state(self, campaign_id: str) -> str:
        """Return the campaign's state, e.g. ``running`` or ``completed``."""
        return _state(self.campaign(campaign_id).state, common_pb2.CampaignState)

    def counts(self, campaign_id: str) -> dict[str, int]:
        """Return the action counts by state over all waves."""
        return {_state(c.state): int(c.count) for c in self.campaign(campaign_id).counts if c.count}

    def actions(self, campaign_id: str) -> list[campaign_pb2.Action]:
        """Every action of the campaign."""
        return list(
            self.campaigns.ListActions(
                campaign_pb2.ListActionsRequest(campaign_id=campaign_id, page_size=1000),
                timeout=CALL_TIMEOUT_S,
            ).actions
        )

    def action(self, campaign_id: str, vin: str) -> campaign_pb2.Action:
        """Return the action of ``vin`` in the campaign."""
        for action in self.actions(campaign_id):
            if action.vin == vin:
                return action
        raise LookupError(f"campaign {campaign_id} has no action for {vin}")

    def events(self, campaign_id: str, *, wait_s: float = 0.5) -> list[campaign_pb2.CampaignEvent]:
        """Return the campaign's events so far (the stream ends once the campaign ended)."""
        events: list[campaign_pb2.CampaignEvent] = []
        stream = self.campaigns.WatchCampaign(
            campaign_pb2.WatchCampaignRequest(campaign_id=campaign_id), timeout=wait_s
        )
        try:
            events.extend(stream)
        except grpc.RpcError as exc:
            if exc.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        return events

    def vehicle(self, vin: str) -> device_pb2.Vehicle:
        """Return the backend's record of a vehicle."""
        vehicle: device_pb2.Vehicle = self.device.GetVehicle(
            device_pb2.GetVehicleRequest(vin=vin), timeout=CALL_TIMEOUT_S
        )
        return vehicle

    def wait_action(
        self,
        campaign_id: str,
        vin: str,
        states: Sequence[str] = ("succeeded", "failed", "rolled_back", "canceled"),
        *,
        timeout_s: float = 60.0,
    ) -> campaign_pb2.Action:
        """Wait until the vehicle's action is in one of ``states``; return it."""
        deadline = time.monotonic() + timeout_s
        while True:
            action = self.action(campaign_id, vin)
            if _state(action.state) in states:
                return action
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{vin} in {campaign_id} is still {_state(action.state)} after {timeout_s} s"
                )
            time.sleep(0.05)

    def wait_campaign(self, campaign_id: str, *, timeout_s: float = 60.0) -> campaign_pb2.Campaign:
        """Wait until the campaign completed or was aborted; return it."""
        deadline = time.monotonic() + timeout_s
        while True:
            campaign = self.campaign(campaign_id)
            if _state(campaign.state, common_pb2.CampaignState) in TERMINAL_CAMPAIGN_STATES:
                return campaign
            if time.monotonic() > deadline:
                raise TimeoutError(f"campaign {campaign_id} still running after {timeout_s} s")
            time.sleep(0.05)


def action_state(action: campaign_pb2.Action) -> str:
    """Return the short name of an action's state."""
    return _state(action.state)


@dataclass
class WireVehicle:
    """One simulated vehicle of a :class:`WireWorld`: its ECUs, its bus, its gateway."""

    spec: VehicleSpec
    sim: SimulatedVehicle
    ecu_bus: can.BusABC
    tester_bus: can.BusABC
    notifier: can.Notifier
    gateway_dir: Path
    gateway: Gateway | None = None
    outcomes: list[DeploymentOutcome] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def vin(self) -> str:
        """The vehicle's VIN."""
        return self.spec.vin

    def versions(self) -> dict[str, str]:
        """Return what each ECU runs, read from the simulated ECUs themselves."""
        return {name: ecu.version for name, ecu in self.sim.ecus.items()}


class WireWorld:
    """The backend and vehicles with gateways, all on loopback and virtual buses."""

    def __init__(
        self,
        directory: str | Path,
        vehicles: Sequence[VehicleSpec],
        *,
        db_url: str | None = None,
        checkin_interval_s: float = 0.2,
        gateway_options: dict[str, Any] | None = None,
        on_event: Callable[[str, str], None] | None = None,
        start_gateways: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.specs = list(vehicles)
        self.db_url = db_url
        self.checkin_interval_s = checkin_interval_s
        self.gateway_options = dict(gateway_options or {})
        self.on_event = on_event
        self.start_gateways = start_gateways
        self.backend: RunningBackend | None = None
        self.port = 0
        self.vehicles: dict[str, WireVehicle] = {}
        self._operator_channel: grpc.Channel | None = None
        self.operator: Operator

    # ---------------------------------------------------------------- backend
    def _serve(self) -> RunningBackend:
        key = self.directory / "release_signing_key.pem"
        if not key.exists():
            write_private_key(key, Ed25519PrivateKey.generate())
        return serve(
            BackendConfig(
                data_dir=self.directory / "backend",
                release_key=key,
                listen=f"127.0.0.1:{self.port}",
                db_url=self.db_url,
                insecure=True,
                tick_interval_s=0.2,
            )
        )

    def stop_backend(self) -> None:
        """Stop the backend (at once: calls in flight fail, as in a crash of the service)."""
        if self.backend is not None:
            self.backend.stop(0)
            self.backend = None

    def start_backend(self) -> None:
        """Start the backend again on the same port and data."""
        if self.backend is None:
            self.backend = self._serve()

    def restart_backend(self, down_s: float = 0.0) -> None:
        """Stop the backend, stay down ``down_s`` seconds, start it again."""
        self.stop_backend()
        time.sleep(down_s)
        self.start_backend()

    # --------------------------------------------------------------- gateways
    def start_gateway(self, vin: str) -> Gateway:
        """Start (or start again) the gateway of ``vin`` on its own thread."""
        vehicle = self.vehicles[vin]
        if vehicle._thread is not None and vehicle._thread.is_alive():
            assert vehicle.gateway is not None
            return vehicle.gateway
        assert self.backend is not None
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")

        def event(text: str) -> None:
            vehicle.events.append(text)
            if self.on_event is not None:
                self.on_event(vin, text)

        options = {
            "backoff": Backoff(initial_s=0.05, max_s=0.5, give_up_after_s=60.0),
            "checkin_interval_s": self.checkin_interval_s,
            **self.gateway_options,
        }
        gateway = Gateway(
            vehicle.spec,
            vehicle.tester_bus,
            vehicle.notifier,
            channel,
            state_dir=vehicle.gateway_dir,
            release_keys=[self.backend.release_public_key],
            on_event=event,
            **options,
        ).open()
        # One list across restarts of the gateway: outcomes are visible while it runs.
        gateway.outcomes = vehicle.outcomes
        vehicle.gateway = gateway
        vehicle._stop = threading.Event()

        def life() -> None:
            try:
                gateway.run(vehicle._stop)
            except BaseException as exc:
                log.exception("gateway of %s stopped", vin)
                vehicle.errors.append(exc)
            finally:
                gateway.close()
                channel.close()

        vehicle._thread = threading.Thread(target=life, name=f"gateway-{vin}", daemon=True)
        vehicle._thread.start()
        return gateway

    def stop_gateway(self, vin: str, timeout_s: float = 60.0) -> None:
        """Ask the gateway of ``vin`` to stop after its current step, and wait for it."""
        vehicle = self.vehicles[vin]
        vehicle._stop.set()
        if vehicle._thread is not None:
            vehicle._thread.join(timeout_s)
            vehicle._thread = None

    # ------------------------------------------------------------- life cycle
    def __enter__(self) -> WireWorld:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.backend = self._serve()
        self.port = self.backend.port
        self._operator_channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.operator = Operator(self._operator_channel)
        try:
            for spec in self.specs:
                channel = f"wire-{os.getpid()}-{next(_channels)}"
                fd = spec.can.fd
                ecu_bus = can.Bus(interface="virtual", channel=channel, fd=fd)
                tester_bus = can.Bus(interface="virtual", channel=channel, fd=fd)
                sim = SimulatedVehicle(
                    spec, ecu_bus, state_dir=self.directory / spec.vin / "ecus"
                ).start()
                notifier = can.Notifier(tester_bus, [], timeout=0.1)
                self.vehicles[spec.vin] = WireVehicle(
                    spec=spec,
                    sim=sim,
                    ecu_bus=ecu_bus,
                    tester_bus=tester_bus,
                    notifier=notifier,
                    gateway_dir=self.directory / spec.vin / "gateway",
                )
            if self.start_gateways:
                for vin in self.vehicles:
                    self.start_gateway(vin)
                # A campaign targets registered vehicles only: return once each one is.
                deadline = time.monotonic() + CALL_TIMEOUT_S
                for vin, vehicle in self.vehicles.items():
                    while vehicle.gateway is None or not vehicle.gateway.registered:
                        if vehicle.errors or time.monotonic() > deadline:
                            raise TimeoutError(f"the gateway of {vin} did not register")
                        time.sleep(0.01)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop gateways, vehicles and the backend."""
        for vin in list(self.vehicles):
            self.stop_gateway(vin)
        for vehicle in self.vehicles.values():
            vehicle.notifier.stop()
            vehicle.sim.stop()
            vehicle.tester_bus.shutdown()
            vehicle.ecu_bus.shutdown()
        self.vehicles.clear()
        if self._operator_channel is not None:
            self._operator_channel.close()
            self._operator_channel = None
        self.stop_backend()

    def vehicle(self, vin: str | None = None) -> WireVehicle:
        """Return the vehicle ``vin`` (the only one when not given)."""
        if vin is None:
            if len(self.vehicles) != 1:
                raise LookupError("several vehicles: name one")
            return next(iter(self.vehicles.values()))
        return self.vehicles[vin]

    def release_for(
        self,
        vin: str,
        version: str,
        counter: int,
        *,
        size: int = 64 * 1024,
        ecus: Sequence[str] | None = None,
        name: str = "release",
        key: Ed25519PrivateKey | None = None,
    ) -> update_pb2.Release:
        """Build signed images of ``version`` for the vehicle's ECUs and create a release."""
        spec = self.vehicles[vin].spec
        names = list(ecus) if ecus is not None else [e.name for e in spec.ecus]
        images = [
            (n, signed_image(spec.ecu(n), version, counter, size=size, key=key)) for n in names
        ]
        return self.operator.create_release(name, version, images)


__all__ = [
    "Operator",
    "WireVehicle",
    "WireWorld",
    "action_state",
    "payload",
    "signed_image",
    "upload_requests",
]

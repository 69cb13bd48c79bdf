"""A wire-fidelity world: the real backend, simulated vehicles and their gateways in one process.

:class:`WireWorld` starts the bundled backend on a free loopback port (SQLite
in a data directory, or a database URL), and for each vehicle its simulated
ECUs on an in-process virtual CAN bus and its :class:`~gateway.tcu.Gateway`
on a thread of its own, over real gRPC and real ISO-TP frames.
:class:`Operator` is the operator's side of the backend (upload, release,
campaign). The demo, the end-to-end tests and the benchmarks drive the OTA
flow through these, and so can scenarios.

Faults outside the ECUs have their place here too. Each gateway reaches its
bus through a :class:`FaultyBus`, which can lose frames in either direction
(:meth:`WireWorld.lose_frames`) and feeds trace writers
(:meth:`WireWorld.add_trace`); with ``proxy_backend`` each gateway reaches the
backend through a loopback :class:`LinkProxy`, which can cut the link
(:meth:`WireWorld.partition`). :meth:`WireWorld.kill_gateway` stops a gateway
the way a crash of the TCU would, in the middle of whatever it was doing.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import itertools
import logging
import math
import os
import random
import shutil
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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
from scenarios.core import ScenarioError

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 30.0
UPLOAD_CHUNK = 256 * 1024
TERMINAL_CAMPAIGN_STATES = ("completed", "aborted")
_channels = itertools.count()
# gRPC's default reconnect backoff grows to two minutes: on loopback, after a backend
# restart or a cut link, come back within a second instead.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


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


Direction = Literal["both", "to_ecus", "to_gateway"]


@dataclass
class LossRule:
    """Frames lost between a gateway and its ECUs, as a bad harness or a noisy bus loses them.

    A frame that matches (direction, CAN id) is dropped with ``probability``,
    until ``count`` frames were dropped or ``until`` (a ``time.monotonic()``
    instant) has passed, whichever comes first.
    """

    probability: float = 1.0
    count: int | None = None
    can_ids: frozenset[int] = frozenset()
    direction: Direction = "both"
    until: float = math.inf
    rng: random.Random = field(default_factory=random.Random)
    dropped: int = 0

    @property
    def exhausted(self) -> bool:
        """Whether the rule drops no more frames (its count reached or its time up)."""
        spent = self.count is not None and self.dropped >= self.count
        return spent or time.monotonic() >= self.until

    def drops(self, msg: can.Message, outgoing: bool) -> bool:
        """Return whether this frame is lost (and count it)."""
        if self.exhausted:
            return False
        if self.direction == ("to_gateway" if outgoing else "to_ecus"):
            return False
        if self.can_ids and msg.arbitration_id not in self.can_ids:
            return False
        if self.probability < 1.0 and self.rng.random() >= self.probability:
            return False
        self.dropped += 1
        return True


class TesterLink:
    """What every gateway of one vehicle shares on its side of the bus: loss rules, trace listeners.

    It outlives a gateway: after :meth:`WireWorld.kill_gateway` the next gateway's
    bus applies the same rules and feeds the same traces.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rules: list[LossRule] = []
        self.listeners: list[can.Listener] = []
        self.sent = 0
        self.received = 0
        self.dropped = 0

    def add_rule(self, rule: LossRule) -> None:
        """Start losing frames by ``rule``."""
        with self._lock:
            self.rules.append(rule)

    def remove_rule(self, rule: LossRule) -> None:
        """Stop losing frames by ``rule``."""
        with self._lock, contextlib.suppress(ValueError):
            self.rules.remove(rule)

    def add_listener(self, listener: can.Listener) -> None:
        """Give ``listener`` every frame the gateway sends or receives from now on."""
        with self._lock:
            self.listeners.append(listener)

    def remove_listener(self, listener: can.Listener) -> None:
        """Stop giving frames to ``listener`` (returns once it is no longer called)."""
        with self._lock, contextlib.suppress(ValueError):
            self.listeners.remove(listener)

    def passes(self, msg: can.Message, *, outgoing: bool) -> bool:
        """Return whether ``msg`` crosses the link; hand the frames that do to the listeners."""
        with self._lock:
            if any(rule.drops(msg, outgoing) for rule in self.rules):
                self.dropped += 1
                return False
            if outgoing:
                self.sent += 1
            else:
                self.received += 1
            if self.listeners:
                seen = msg
                if outgoing:
                    # What a trace shows as the gateway's transmission, stamped when it left.
                    seen = copy.copy(msg)
                    seen.timestamp = time.time()
                    seen.is_rx = False
                for listener in self.listeners:
                    listener.on_message_received(seen)
            return True


class FaultyBus(can.BusABC):
    """A bus seen through a :class:`TesterLink`: frames may be lost, the node may die.

    Wraps the bus a gateway was given. :meth:`sever` models a node that lost
    power: it sends nothing and hears nothing from then on.
    """

    def __init__(self, bus: can.BusABC, link: TesterLink) -> None:
        self.bus = bus
        self.link = link
        self.severed = False
        self.channel_info = f"{bus.channel_info} (through a faulty link)"
        self._can_protocol = bus.protocol
        super().__init__(channel=self.channel_info)

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        """Transmit ``msg``, unless the link loses it or the node is dead."""
        if self.severed or not self.link.passes(msg, outgoing=True):
            return
        self.bus.send(msg, timeout)

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        msg = self.bus.recv(timeout)
        if msg is None or self.severed or not self.link.passes(msg, outgoing=False):
            return None, False
        return msg, False

    def sever(self) -> None:
        """Take the node off the bus for good."""
        self.severed = True

    def shutdown(self) -> None:
        """Sever the node and release the wrapped bus."""
        self.severed = True
        super().shutdown()
        self.bus.shutdown()


class LinkProxy:
    """A TCP proxy on 127.0.0.1 between one gateway and the backend; it can cut the link.

    While cut, open connections are reset and new ones are accepted and reset
    at once, as a dead mobile link or a dropping firewall makes a client see
    it; :meth:`restore` lets connections through again. Every connection
    reaches the backend's port anew, so a restarted backend is found.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self.port: int = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._cut = False
        self._closed = False
        self.connections = 0
        """Connections passed through to the backend."""
        self.refused = 0
        """Connections reset because the link was cut (or the backend was down)."""
        self._thread = threading.Thread(
            target=self._accept, name=f"link-proxy-{self.port}", daemon=True
        )
        self._thread.start()

    @property
    def is_cut(self) -> bool:
        """Whether the link is cut."""
        return self._cut

    def cut(self) -> None:
        """Reset every open connection and refuse new ones."""
        with self._lock:
            self._cut = True
            pairs = list(self._pairs)
        for pair in pairs:
            self._drop(pair)

    def restore(self) -> None:
        """Let connections through again."""
        with self._lock:
            self._cut = False

    def close(self) -> None:
        """Cut the link and stop listening."""
        self._closed = True
        self.cut()
        self._thread.join(5.0)
        self._server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut or self._closed:
                self._reset(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2.0)
            except OSError:
                self._reset(client)
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = (client, upstream)
            with self._lock:
                if self._cut:
                    self._reset(client)
                    upstream.close()
                    continue
                self._pairs.add(pair)
                self.connections += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink, pair), daemon=True).start()

    def _reset(self, sock: socket.socket) -> None:
        self.refused += 1
        _close_with_reset(sock)

    def _pump(
        self, source: socket.socket, sink: socket.socket, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(pair)

    def _drop(self, pair: tuple[socket.socket, socket.socket]) -> None:
        with self._lock:
            if pair not in self._pairs:
                return
            self._pairs.discard(pair)
        client, upstream = pair
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        _close_with_reset(client)
        upstream.close()


def _close_with_reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        # Linger 0: the peer sees a reset, as when a link dies, not an orderly end of stream.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@dataclass
class GatewayLife:
    """One run of a vehicle's gateway, from its start to its stop or death."""

    number: int
    """1 for the first gateway of the vehicle, 2 after a restart, ..."""
    gateway: Gateway
    started_at: float
    """``time.monotonic()`` at the start."""
    killed_at: float | None = None
    """``time.monotonic()`` when :meth:`WireWorld.kill_gateway` killed it."""

    @property
    def alive(self) -> bool:
        """Whether the gateway was not killed."""
        return self.killed_at is None


def _snapshot(source: Path, target: Path) -> None:
    """Copy a directory that a live process may be writing, as a crash would leave it on disk.

    Files are replaced atomically by the gateway, so each copy is an old or a
    new version; a temporary file is a write in flight, not yet part of the state.
    """
    target.mkdir(parents=True, exist_ok=True)
    if not source.is_dir():
        return
    for path in sorted(source.rglob("*")):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        elif path.suffix != ".tmp":
            destination.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                shutil.copyfile(path, destination)


@dataclass
class WireVehicle:
    """One simulated vehicle of a :class:`WireWorld`: its ECUs, its bus, its gateway."""

    spec: VehicleSpec
    sim: SimulatedVehicle
    ecu_bus: can.BusABC
    tester_bus: can.BusABC
    notifier: can.Notifier
    gateway_dir: Path
    """The current gateway's state directory (a copy of the last one after a kill)."""
    gateway: Gateway | None = None
    outcomes: list[DeploymentOutcome] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    channel: str = ""
    """The virtual CAN channel of the vehicle's bus."""
    link: TesterLink = field(default_factory=TesterLink)
    proxy: LinkProxy | None = None
    """The current gateway's link to the backend (with ``proxy_backend``)."""
    partitioned: bool = False
    lives: list[GatewayLife] = field(default_factory=list)
    """Every gateway started for this vehicle, the current one last."""
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _alive: threading.Event = field(default_factory=threading.Event)

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
        proxy_backend: bool = False,
        on_gateway: Callable[[str, GatewayLife], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.specs = list(vehicles)
        self.db_url = db_url
        self.checkin_interval_s = checkin_interval_s
        self.gateway_options = dict(gateway_options or {})
        self.on_event = on_event
        self.start_gateways = start_gateways
        self.proxy_backend = proxy_backend
        """Each gateway reaches the backend through a :class:`LinkProxy` (to cut its link)."""
        self.on_gateway = on_gateway
        """Called with each gateway made (also after a restart) before its thread starts."""
        self.backend: RunningBackend | None = None
        self.port = 0
        self.vehicles: dict[str, WireVehicle] = {}
        self._operator_channel: grpc.Channel | None = None
        self._dead: list[tuple[threading.Event, threading.Thread]] = []
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
        target = self.port
        if self.proxy_backend:
            if vehicle.proxy is None:
                vehicle.proxy = LinkProxy(self.port)
                if vehicle.partitioned:
                    vehicle.proxy.cut()
            target = vehicle.proxy.port
        channel = grpc.insecure_channel(f"127.0.0.1:{target}", options=CHANNEL_OPTIONS)
        alive = threading.Event()
        alive.set()

        def event(text: str) -> None:
            # A killed gateway's thread runs on, cut off: what it says is not heard.
            if not alive.is_set():
                return
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
        vehicle._stop = stop = threading.Event()
        vehicle._alive = alive
        record = GatewayLife(len(vehicle.lives) + 1, gateway, time.monotonic())
        vehicle.lives.append(record)
        if self.on_gateway is not None:
            self.on_gateway(vin, record)

        def life() -> None:
            try:
                gateway.run(stop)
            except BaseException as exc:
                if alive.is_set():
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

    def kill_gateway(self, vin: str) -> GatewayLife:
        """Kill the gateway of ``vin`` at once, as a crash or a power loss of the TCU would.

        A thread cannot be killed, so the gateway is cut off from everything
        it could change: its state directory is copied as it is now, and the
        next gateway (:meth:`start_gateway`) starts from the copy; its node is
        taken off the bus; its link to the backend is closed; its events and
        outcomes are no longer recorded. Its thread runs on, deaf and mute,
        until its calls time out. Needs ``proxy_backend``.
        """
        vehicle = self.vehicles[vin]
        if not self.proxy_backend:
            raise ScenarioError("kill_gateway needs a world made with proxy_backend=True")
        if vehicle._thread is None or vehicle.gateway is None:
            raise ScenarioError(f"the gateway of {vin} is not running: nothing to kill")
        life = vehicle.lives[-1]
        life.killed_at = time.monotonic()
        # The disk first: whatever the gateway writes from now on belongs to the dead one.
        state_dir = self.directory / vin / f"gateway-{life.number + 1}"
        _snapshot(vehicle.gateway_dir, state_dir)
        vehicle._alive.clear()
        assert isinstance(vehicle.tester_bus, FaultyBus)
        vehicle.tester_bus.sever()
        vehicle.notifier.stop()
        vehicle.tester_bus.shutdown()
        if vehicle.proxy is not None:
            vehicle.proxy.close()
            vehicle.proxy = None
        vehicle.gateway.outcomes = []
        # Cut off, it would retry the backend for a minute before it gives up: give up now.
        client = vehicle.gateway.client
        client.backoff = dataclasses.replace(client.backoff, give_up_after_s=0.0)
        vehicle._stop.set()
        self._dead.append((vehicle._stop, vehicle._thread))
        vehicle._thread = None
        vehicle.gateway = None
        vehicle.gateway_dir = state_dir
        vehicle.tester_bus, vehicle.notifier = self._tester_side(
            vehicle.spec, vehicle.channel, vehicle.link
        )
        return life

    # ------------------------------------------------------------------ links
    def partition(self, vin: str) -> LinkProxy:
        """Cut the network between the gateway of ``vin`` and the backend (``proxy_backend``)."""
        vehicle = self.vehicles[vin]
        if not self.proxy_backend:
            raise ScenarioError("partition needs a world made with proxy_backend=True")
        vehicle.partitioned = True
        if vehicle.proxy is None:
            vehicle.proxy = LinkProxy(self.port)
        vehicle.proxy.cut()
        return vehicle.proxy

    def heal(self, vin: str) -> None:
        """End the partition of ``vin``."""
        vehicle = self.vehicles[vin]
        vehicle.partitioned = False
        if vehicle.proxy is not None:
            vehicle.proxy.restore()

    def lose_frames(self, vin: str, rule: LossRule) -> LossRule:
        """Lose frames between the gateway of ``vin`` and its ECUs by ``rule``; return it."""
        self.vehicles[vin].link.add_rule(rule)
        return rule

    def end_frame_loss(self, vin: str, rule: LossRule) -> None:
        """Stop losing frames by ``rule``."""
        self.vehicles[vin].link.remove_rule(rule)

    def add_trace(self, vin: str, listener: can.Listener) -> None:
        """Give ``listener`` every frame the gateway of ``vin`` sends or receives (e.g. a writer).

        Frames a loss rule drops are not given: they did not cross. The gateway's
        own frames arrive with ``is_rx`` false.
        """
        self.vehicles[vin].link.add_listener(listener)

    def remove_trace(self, vin: str, listener: can.Listener) -> None:
        """Stop giving frames to ``listener``."""
        self.vehicles[vin].link.remove_listener(listener)

    @staticmethod
    def _tester_side(
        spec: VehicleSpec, channel: str, link: TesterLink
    ) -> tuple[FaultyBus, can.Notifier]:
        bus = FaultyBus(can.Bus(interface="virtual", channel=channel, fd=spec.can.fd), link)
        return bus, can.Notifier(bus, [], timeout=0.1)

    # ------------------------------------------------------------- life cycle
    def __enter__(self) -> WireWorld:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.backend = self._serve()
        self.port = self.backend.port
        self._operator_channel = grpc.insecure_channel(
            f"127.0.0.1:{self.port}", options=CHANNEL_OPTIONS
        )
        self.operator = Operator(self._operator_channel)
        try:
            for spec in self.specs:
                channel = f"wire-{os.getpid()}-{next(_channels)}"
                ecu_bus = can.Bus(interface="virtual", channel=channel, fd=spec.can.fd)
                link = TesterLink()
                tester_bus, notifier = self._tester_side(spec, channel, link)
                sim = SimulatedVehicle(
                    spec, ecu_bus, state_dir=self.directory / spec.vin / "ecus"
                ).start()
                self.vehicles[spec.vin] = WireVehicle(
                    spec=spec,
                    sim=sim,
                    ecu_bus=ecu_bus,
                    tester_bus=tester_bus,
                    notifier=notifier,
                    gateway_dir=self.directory / spec.vin / "gateway",
                    channel=channel,
                    link=link,
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
        for stop, _thread in self._dead:
            # Killed gateways hold nothing of the world any more; they end on their own.
            stop.set()
        for vehicle in self.vehicles.values():
            vehicle.notifier.stop()
            vehicle.sim.stop()
            vehicle.tester_bus.shutdown()
            vehicle.ecu_bus.shutdown()
            if vehicle.proxy is not None:
                vehicle.proxy.close()
                vehicle.proxy = None
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

    def tamper_artifact(self, sha256: str, offset: int | None = None) -> int:
        """Flip one byte of a stored artifact (the middle one by default); return its offset.

        What a corrupted disk or an intruder would do: the gateway must refuse it.
        """
        path = self.directory / "backend" / "artifacts" / sha256[:2] / sha256
        data = bytearray(path.read_bytes())
        where = len(data) // 2 if offset is None else offset
        if where >= len(data):
            raise ValueError(f"offset {where} is beyond the image ({len(data)} bytes)")
        data[where] ^= 0xFF
        path.write_bytes(bytes(data))
        return where

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
    "CHANNEL_OPTIONS",
    "FaultyBus",
    "GatewayLife",
    "LinkProxy",
    "LossRule",
    "Operator",
    "TesterLink",
    "WireVehicle",
    "WireWorld",
    "action_state",
    "payload",
    "signed_image",
    "upload_requests",
]

"""Fixtures: real virtual buses (one channel per test), the demo vehicle, testers."""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import can
import can.interfaces.virtual
import pytest
from can_remote import RemoteServer
from helpers import RawTester, wait_for
from hypothesis import settings

from ecu_sim import SimulatedVehicle, demo_vehicle
from gateway import DiagChannel
from ota_formats.vehicle import VehicleSpec, load_vehicle

FILES = Path(__file__).parent / "files"
_channels = itertools.count()

# udsoncan logs every NRC and timeout at error level; the assertions say what matters.
logging.getLogger("UdsClient").setLevel(logging.CRITICAL)

# In CI, property tests draw their examples from a seed derived from each test:
# a failure there can be replayed, and a green run stays green. Elsewhere they
# stay random and keep exploring (``--hypothesis-seed`` replays a local find).
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


def vcan_problem(channel: str) -> str | None:
    """Why a SocketCAN test cannot run here, or ``None`` if it can."""
    if not hasattr(socket, "AF_CAN"):
        return "this kernel/Python has no AF_CAN (SocketCAN)"
    try:
        with socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW) as sock:
            sock.bind((channel,))
    except OSError as exc:
        return f"SocketCAN interface {channel!r} unavailable: {exc.strerror}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``socketcan`` tests, with the reason, where AF_CAN or the vcan interface is missing.

    There, tests/test_vcan_vm.py runs them in a QEMU VM whose kernel has both.
    """
    problem = vcan_problem(os.environ.get("HIL_VCAN", "vcan0"))
    for item in items:
        if problem is not None and "socketcan" in item.keywords:
            reason = f"{problem} (tests/test_vcan_vm.py runs them in a VM)"
            item.add_marker(pytest.mark.skip(reason=reason))
    # ``bench`` tests are left to the hil plugin, which runs them when ``--bench``
    # names a real bench and skips them, saying so, on the simulated one.


@pytest.fixture
def files() -> Path:
    """The directory of test data files."""
    return FILES


@pytest.fixture
def demo() -> VehicleSpec:
    """The bundled demo vehicle."""
    return demo_vehicle()


@pytest.fixture
def fd_vehicle(files: Path) -> VehicleSpec:
    """A CAN FD vehicle (64-byte frames)."""
    return load_vehicle(files / "fd_vehicle.toml")


@pytest.fixture(autouse=True)
def no_leaked_buses() -> Iterator[None]:
    """Fail any test that leaves a virtual bus open."""
    before = set(can.interfaces.virtual.channels)
    yield
    leaked = set(can.interfaces.virtual.channels) - before
    assert not leaked, f"virtual bus channel(s) left open: {leaked}"


@pytest.fixture
def channel(request: pytest.FixtureRequest) -> str:
    """A virtual channel name of this test's own."""
    return f"{request.node.name}-{os.getpid()}-{next(_channels)}"


class World:
    """A simulated vehicle and a tester on one virtual channel."""

    def __init__(self, spec: VehicleSpec, channel: str, state_dir: Path, ecus=None) -> None:
        fd = spec.can.fd
        self.channel = channel
        self.spec = spec
        self.state_dir = state_dir
        self.ecu_bus = can.Bus(interface="virtual", channel=channel, fd=fd)
        self.bus = can.Bus(interface="virtual", channel=channel, fd=fd)
        self.notifier = can.Notifier(self.bus, [], timeout=0.05)
        self.vehicle = SimulatedVehicle(spec, self.ecu_bus, state_dir=state_dir, ecus=ecus)
        self._closers: list[Callable[[], None]] = []
        self._raw: dict[str, RawTester] = {}
        self.vehicle.start()

    def sniff(self) -> list[can.Message]:
        """Record every frame on the bus, from every node, from now on."""
        bus = can.Bus(interface="virtual", channel=self.channel, fd=self.spec.can.fd)
        frames: list[can.Message] = []
        notifier = can.Notifier(bus, [frames.append], timeout=0.05)

        def close() -> None:
            notifier.stop()
            bus.shutdown()

        self._closers.append(close)
        return frames

    def raw(self, ecu: str = "ecm") -> RawTester:
        """A raw tester for ``ecu`` (one per ECU, made on first use)."""
        if ecu not in self._raw:
            self._raw[ecu] = RawTester(self.bus, self.notifier, self.spec, self.spec.ecu(ecu))
            self._closers.append(self._raw[ecu].close)
        return self._raw[ecu]

    def diag(self, ecu: str = "ecm") -> DiagChannel:
        channel = DiagChannel(self.bus, self.notifier, self.spec, self.spec.ecu(ecu)).open()
        self._closers.append(channel.close)
        return channel

    def restart_vehicle(self) -> None:
        """Stop every ECU (NVM kept) and start a fresh simulated vehicle on the same bus."""
        self.vehicle.stop()
        self.vehicle = SimulatedVehicle(self.spec, self.ecu_bus, state_dir=self.state_dir)
        self.vehicle.start()

    def close(self) -> None:
        for closer in reversed(self._closers):
            closer()
        self.vehicle.stop()
        self.notifier.stop()
        self.bus.shutdown()
        self.ecu_bus.shutdown()


@pytest.fixture
def make_world(channel: str, tmp_path: Path) -> Iterator[Callable[..., World]]:
    """Build a :class:`World` for a vehicle spec (closed at the end of the test)."""
    worlds: list[World] = []
    counter = itertools.count()

    def build(spec: VehicleSpec, ecus=None) -> World:
        index = next(counter)
        world = World(spec, f"{channel}-{index}", tmp_path / f"state{index}", ecus)
        worlds.append(world)
        return world

    yield build
    for world in worlds:
        world.close()


@pytest.fixture
def world(make_world: Callable[..., World], demo: VehicleSpec) -> World:
    """The demo vehicle with a tester, on a virtual bus."""
    return make_world(demo)


# ---------------------------------------------------------------- backend stores
PG_ENV = "HIL_TEST_POSTGRES_URL"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search path is a fresh schema of this test's own."""
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"{PG_ENV} is not set: no PostgreSQL server to test against")
    import uuid

    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    joiner = "&" if "?" in url else "?"
    try:
        yield f"{url}{joiner}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Each store implementation in turn."""
    return str(request.param)


@pytest.fixture
def store(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest):
    """A fresh, empty store of each kind (PostgreSQL where its URL is given)."""
    from backend_stub.store import MemoryStore
    from backend_stub.store.sql import SqlStore, sqlite_url

    if store_kind == "memory":
        made = MemoryStore()
    elif store_kind == "sqlite":
        made = SqlStore(sqlite_url(tmp_path))
    else:
        made = SqlStore(request.getfixturevalue("pg_url"))
    yield made
    made.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_db(request: pytest.FixtureRequest) -> str | None:
    """The backend's database: its SQLite file (None), or a PostgreSQL URL where given."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def backend(tmp_path: Path, backend_db: str | None):
    """The bundled backend on 127.0.0.1, a free port, without TLS (SQLite and PostgreSQL)."""
    from backend_stub.server import BackendConfig, serve

    running = serve(
        BackendConfig(
            data_dir=tmp_path / "backend",
            listen="127.0.0.1:0",
            db_url=backend_db,
            insecure=True,
            metrics_listen="127.0.0.1:0",
            tick_interval_s=0.05,
        )
    )
    yield running
    running.stop(0)


@pytest.fixture
def client(backend):
    """Stubs of the three services over a loopback channel to ``backend``."""
    import grpc
    from backend_helpers import Client

    channel = grpc.insecure_channel(f"127.0.0.1:{backend.port}")
    yield Client(channel)
    channel.close()


@pytest.fixture
def remote(channel: str) -> Iterator[str]:
    """python-can-remote's server on a free loopback port, sharing this test's virtual channel."""
    server = RemoteServer("127.0.0.1", 0, interface="virtual", channel=channel)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"ws://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()
    thread.join(5)
    wait_for(lambda: channel not in can.interfaces.virtual.channels, timeout=5)

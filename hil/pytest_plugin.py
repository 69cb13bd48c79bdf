"""A pytest plugin for tests against a bench: fixtures, options and markers.

Installed with the package, it is registered through the ``pytest11`` entry point, so
any test suite gets it without a ``conftest.py``::

    def test_vin(uds):
        vin = uds["ecm"].read_data_by_identifier(0xF190).service_data.values[0xF190]
        assert len(vin) == 17

    def test_power_cut(power, uds):
        power.off()
        ...

Options: ``--bench NAME`` and ``--hil-config FILE`` pick the bench as ``hil`` does
(command line > ``HIL_BENCH``/``HIL_CONFIG`` > ``hil.toml`` > the built-in ``sim``
bench); ``--trace-dir DIR`` is where the ``trace`` fixture writes its files (default:
the test's own temporary directory). On the ``sim`` bench, when no ``hil bench sim run``
is running, the plugin starts one in this process for the session.

Fixtures: ``bench`` (the resolved :class:`~hil.bench.Bench`), ``rig`` (its
:class:`~hil.bench.BenchConnection`), ``vehicle`` (the simulated vehicle on the
``sim`` bench; the bench's ECUs on a real one), ``uds`` (a udsoncan client per ECU),
``power``, ``ignition``, ``backend`` (the bundled OTA backend on a free loopback port)
and ``trace`` (the test's CAN frames as BLF, ASC and candump log files, named in the
JUnit report).

Markers: ``bench`` (needs real bench hardware: skipped on the simulated bench) and
``socketcan`` (needs ``AF_CAN``: skipped where the kernel or Python lacks it).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import can
import pytest

if TYPE_CHECKING:  # imported when used: pytest loads this plugin in every run
    from udsoncan.client import Client

    from backend_stub.server import RunningBackend
    from ecu_sim import SimulatedVehicle
    from hil.bench.bench import Bench, BenchConnection, BenchEcu, PowerControl, RelayLine
    from hil.bench.sim import SimBench  # noqa: F401 (for the stash key)

_RESOLVED = pytest.StashKey["Bench | None"]()
_SIM = pytest.StashKey["SimBench | None"]()

BENCH_MARKER = "bench: needs real bench hardware (skipped on the simulated bench)"
SOCKETCAN_MARKER = "socketcan: needs a kernel with AF_CAN (SocketCAN); skipped where it is missing"

TRACE_FORMATS = ("blf", "asc", "log")
"""The files of the ``trace`` fixture: BLF, ASC and candump log (``CanutilsLogWriter``)."""


# ---------------------------------------------------------------------------- options


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--bench``, ``--hil-config`` and ``--trace-dir``."""
    group = parser.getgroup("hil", "HIL bench (hil.pytest_plugin)")
    group.addoption(
        "--bench",
        dest="hil_bench",
        metavar="NAME",
        default=None,
        help="the bench to test against (default: $HIL_BENCH, hil.toml, else 'sim')",
    )
    group.addoption(
        "--hil-config",
        dest="hil_config",
        metavar="FILE",
        default=None,
        help="the hil.toml that defines the benches (default: $HIL_CONFIG, else found)",
    )
    group.addoption(
        "--trace-dir",
        dest="hil_trace_dir",
        metavar="DIR",
        default=None,
        help="where the 'trace' fixture writes its BLF/ASC/log files (default: the test's tmp)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers; check a bench named on the command line up front."""
    config.addinivalue_line("markers", BENCH_MARKER)
    config.addinivalue_line("markers", SOCKETCAN_MARKER)
    config.stash[_SIM] = None
    config.stash[_RESOLVED] = None
    if config.getoption("hil_bench", None) or config.getoption("hil_config", None):
        from hil.bench.errors import BenchError

        try:
            config.stash[_RESOLVED] = _resolve(config)
        except BenchError as exc:
            raise pytest.UsageError(f"hil: {exc}") from exc


def _resolve(config: pytest.Config) -> Bench:
    resolved = config.stash.get(_RESOLVED, None)
    if resolved is None:
        from hil.bench.config import resolve_bench

        resolved = resolve_bench(
            config.getoption("hil_bench", None), config_file=config.getoption("hil_config", None)
        )
        config.stash[_RESOLVED] = resolved
    return resolved


# ---------------------------------------------------------------------------- markers


def socketcan_problem() -> str | None:
    """Why SocketCAN cannot be used here, or ``None`` if it can."""
    if not hasattr(socket, "AF_CAN"):
        return "this platform's Python has no AF_CAN (SocketCAN)"
    try:
        socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW).close()
    except OSError as exc:
        return f"this kernel has no AF_CAN (SocketCAN): {exc.strerror}"
    return None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``socketcan`` tests without AF_CAN and ``bench`` tests on the simulated bench."""
    socketcan: str | bool | None = False  # not looked at yet
    simulated: str | bool | None = False
    for item in items:
        if item.get_closest_marker("socketcan") is not None:
            if socketcan is False:
                socketcan = socketcan_problem()
            if socketcan is not None:
                item.add_marker(pytest.mark.skip(reason=f"needs SocketCAN: {socketcan}"))
        if item.get_closest_marker("bench") is not None:
            if simulated is False:
                simulated = _simulated_bench(config)
            if simulated is not None:
                item.add_marker(pytest.mark.skip(reason=f"needs real bench hardware: {simulated}"))


def _simulated_bench(config: pytest.Config) -> str | None:
    from hil.bench.errors import BenchError

    try:
        resolved = _resolve(config)
    except BenchError as exc:
        raise pytest.UsageError(f"hil: {exc}") from exc
    return f"bench {resolved.name!r} is simulated" if resolved.simulated else None


# ---------------------------------------------------------------------------- the bench


@pytest.fixture(scope="session")
def bench(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    """Yield the bench of ``--bench``/``HIL_BENCH``/``hil.toml``, else ``sim`` (started)."""
    resolved = _resolve(pytestconfig)
    if not (resolved.simulated and resolved.unavailable is not None):
        resolved.require_available()
        yield resolved
        return

    from hil.bench.sim import SimBench

    sim = SimBench(state_dir=tmp_path_factory.mktemp("hil-sim-bench")).start()
    pytestconfig.stash[_SIM] = sim
    try:
        yield sim.bench()
    finally:
        pytestconfig.stash[_SIM] = None
        sim.stop()


@pytest.fixture(scope="session")
def rig(bench: Bench) -> Iterator[BenchConnection]:
    """Yield the connection to the bench (parts opened on first use); close it at the end."""
    with bench.connect() as connection:
        yield connection


@pytest.fixture(scope="session")
def vehicle(bench: Bench, pytestconfig: pytest.Config) -> SimulatedVehicle | list[BenchEcu]:
    """Return what the bench drives: the simulated vehicle on the ``sim`` bench, else its ECUs.

    The simulated vehicle is reachable for fault injection only when the plugin runs the
    sim bench in this process; with ``hil bench sim run`` in another, tests using it skip.
    """
    if not bench.simulated:
        return list(bench.ecus.values())
    sim = pytestconfig.stash.get(_SIM, None)
    if sim is None:
        pytest.skip(
            "the sim bench runs in another process: its simulated vehicle is not reachable "
            "from here (stop 'hil bench sim run' to let the plugin start one in-process)"
        )
    return sim.vehicle


class UdsClients(Mapping[str, "Client"]):
    """A udsoncan client per ECU of the bench, opened on first use (``uds["ecm"]``)."""

    def __init__(self, rig: BenchConnection) -> None:
        self._rig = rig

    def __getitem__(self, ecu: str) -> Client:
        if ecu not in self._rig.bench.ecus:
            known = ", ".join(self._rig.bench.ecus) or "none"
            raise KeyError(f"bench {self._rig.bench.name} has no ECU {ecu!r} (it has: {known})")
        return self._rig.uds(ecu)

    def __iter__(self) -> Iterator[str]:
        return iter(self._rig.bench.ecus)

    def __len__(self) -> int:
        return len(self._rig.bench.ecus)

    def __repr__(self) -> str:
        return f"<UdsClients of bench {self._rig.bench.name}: {', '.join(self)}>"


@pytest.fixture
def uds(rig: BenchConnection) -> UdsClients:
    """Return a ready udsoncan client per ECU name: ``uds["ecm"]``."""
    return UdsClients(rig)


@pytest.fixture
def power(rig: BenchConnection) -> PowerControl:
    """Return the bench's power supply."""
    return rig.power


@pytest.fixture
def ignition(rig: BenchConnection) -> RelayLine:
    """Return the bench's ignition relay line (terminal 15)."""
    return rig.ignition


# ---------------------------------------------------------------------------- the backend


@dataclass(frozen=True)
class BackendAddress:
    """The bundled backend started for a test."""

    host: str
    port: int
    server: RunningBackend = field(repr=False)

    @property
    def address(self) -> str:
        """``host:port``, for ``grpc.insecure_channel``."""
        return f"{self.host}:{self.port}"


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[BackendAddress]:
    """Yield the bundled backend on 127.0.0.1, a free port, without TLS; stop it after."""
    from backend_stub.server import BackendConfig, serve

    running = serve(
        BackendConfig(
            data_dir=tmp_path / "backend",
            listen="127.0.0.1:0",
            insecure=True,
            metrics_listen="127.0.0.1:0",
            tick_interval_s=0.05,
        )
    )
    try:
        yield BackendAddress("127.0.0.1", running.port, running)
    finally:
        running.stop(0)


# ---------------------------------------------------------------------------- the trace


class TraceRecorder(can.Listener):
    """Writes every frame it is given to a BLF, an ASC and a candump log file.

    It listens on the bench bus's notifier (frames received) and, unless the bus
    receives its own messages, on the bus's ``send`` (frames sent, marked ``Tx``).
    """

    def __init__(self, directory: Path, stem: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.paths = {fmt: directory / f"{stem}.{fmt}" for fmt in TRACE_FORMATS}
        self.frames: list[can.Message] = []
        self._lock = threading.Lock()
        self._closed = False
        self._writers: list[can.Listener] = [
            can.BLFWriter(self.paths["blf"]),
            can.ASCWriter(self.paths["asc"]),
            can.CanutilsLogWriter(self.paths["log"]),
        ]

    def on_message_received(self, msg: can.Message) -> None:
        """Write ``msg`` to every file (ignored once stopped)."""
        with self._lock:
            if self._closed:
                return
            self.frames.append(msg)
            for writer in self._writers:
                writer.on_message_received(msg)

    def sent(self, msg: can.Message) -> None:
        """Record a frame the bench sent."""
        self.on_message_received(
            can.Message(
                timestamp=time.time(),
                arbitration_id=msg.arbitration_id,
                is_extended_id=msg.is_extended_id,
                is_remote_frame=msg.is_remote_frame,
                is_fd=msg.is_fd,
                bitrate_switch=msg.bitrate_switch,
                dlc=msg.dlc,
                data=msg.data,
                channel=msg.channel,
                is_rx=False,
            )
        )

    def stop(self) -> None:
        """Close the files."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for writer in self._writers:
                writer.stop()


def _own_messages(bench: Bench) -> bool:
    return bool(bench.bus.options.get("receive_own_messages"))


def _trace_stem(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_") or "trace"


@pytest.fixture
def trace(
    rig: BenchConnection,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> Iterator[TraceRecorder]:
    """Record the test's CAN frames to BLF, ASC and candump log files.

    The files are under ``--trace-dir`` (named after the test) or in the test's
    temporary directory, and named in the test's ``user_properties`` (``trace_blf``,
    ``trace_asc``, ``trace_log``), which ``--junitxml`` writes as properties.
    """
    given = request.config.getoption("hil_trace_dir", None)
    if given:
        recorder = TraceRecorder(Path(given), _trace_stem(request.node.nodeid))
    else:
        recorder = TraceRecorder(tmp_path, "trace")
    for fmt, path in recorder.paths.items():
        # As record_property does, without its warning under junit_family=xunit2.
        request.node.user_properties.append((f"trace_{fmt}", str(path)))
    bus = rig.bus
    notifier = rig.notifier
    hooked = not _own_messages(rig.bench)
    if hooked:
        send = bus.send

        def traced_send(msg: can.Message, timeout: float | None = None) -> None:
            send(msg, timeout)
            recorder.sent(msg)

        bus.send = traced_send  # type: ignore[method-assign]
    notifier.add_listener(recorder)
    try:
        yield recorder
    finally:
        notifier.remove_listener(recorder)
        if hooked:
            del bus.send
        recorder.stop()

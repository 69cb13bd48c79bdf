"""The gateway's parts on their own: restbus preconditions, persisted state, CLI refusals."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import can
import cantools
import pytest
from helpers import wait_for

from ecu_sim import SimulatedVehicle, demo_vehicle
from ecu_sim.state import Ignition
from gateway.preconditions import PreconditionConfigError, RestbusMonitor
from gateway.state import (
    DeploymentRecord,
    EcuRecord,
    EcuState,
    FileStateStore,
    GatewayState,
    MemoryStateStore,
    Phase,
    StateError,
)
from hil.cli import main
from ota_formats.vehicle import PreconditionSpec, VehicleFileError, parse_vehicle


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def database() -> cantools.database.can.Database:
    path = demo_vehicle().dbc_path()
    assert path is not None
    return cantools.database.load_file(str(path))


def _frame(database, name: str, **signals: float) -> can.Message:
    message = database.get_message_by_name(name)
    data = {s.name: 0 for s in message.signals}
    data.update(signals)
    return can.Message(
        arbitration_id=message.frame_id, data=message.encode(data), is_extended_id=False
    )


def test_monitor_judges_each_condition_in_words(database) -> None:
    clock = FakeClock()
    monitor = RestbusMonitor(database, demo_vehicle().update.preconditions, clock=clock)
    assert monitor.unmet() == [
        "ignition: no BCM_KL15 frame seen",
        "vehicle speed: no ECM_VehicleSpeed frame seen",
        "engine speed: no ECM_EngineSpeed frame seen",
        "battery voltage: no BMS_BatteryVoltage frame seen",
    ]
    monitor.on_message_received(_frame(database, "BCM_Status", BCM_KL15=2))
    monitor.on_message_received(_frame(database, "ECM_Status", ECM_VehicleSpeed=30))
    monitor.on_message_received(_frame(database, "BMS_Status", BMS_BatteryVoltage=11.2))
    assert monitor.unmet() == [
        "vehicle speed 30 km/h, must be at most 0.5 km/h",
        "battery voltage 11.2 V, must be at least 12 V",
    ]
    monitor.on_message_received(_frame(database, "ECM_Status", ECM_VehicleSpeed=0))
    monitor.on_message_received(_frame(database, "BMS_Status", BMS_BatteryVoltage=12.6))
    monitor.on_message_received(_frame(database, "BCM_Status", BCM_KL15=1))
    assert monitor.unmet() == ["ignition is 1, must be On"]
    monitor.on_message_received(_frame(database, "BCM_Status", BCM_KL15=2))
    assert monitor.unmet() == []


def test_monitor_stale_and_fresh_values(database) -> None:
    clock = FakeClock()
    specs = [PreconditionSpec(signal="ECM_VehicleSpeed", label="speed", max=0.5)]
    monitor = RestbusMonitor(database, specs, max_age_s=1.0, clock=clock)
    monitor.on_message_received(_frame(database, "ECM_Status"))
    clock.now += 1.5
    assert monitor.unmet() == ["speed: ECM_VehicleSpeed not seen for 1.5 s"]
    # While ECUs are programmed the bus is silent: the last value counts.
    assert monitor.unmet(stale_ok=True) == []
    assert monitor.unmet(since=clock.now) == ["speed: no fresh ECM_VehicleSpeed yet"]
    monitor.on_message_received(_frame(database, "ECM_Status"))
    assert monitor.unmet(since=clock.now) == []


def test_monitor_ignores_malformed_and_foreign_frames(database) -> None:
    clock = FakeClock()
    specs = [PreconditionSpec(signal="ECM_VehicleSpeed", label="speed", max=0.5)]
    monitor = RestbusMonitor(database, specs, clock=clock)
    monitor.on_message_received(_frame(database, "ECM_Status"))
    monitor.on_message_received(
        can.Message(arbitration_id=0xC0, data=b"\x01", is_extended_id=False)
    )
    monitor.on_message_received(can.Message(arbitration_id=0x123, data=b"\xff" * 8))
    assert monitor.value("ECM_VehicleSpeed") == 0.0
    assert monitor.unmet() == []


def test_monitor_refuses_unknown_signals_and_values(database) -> None:
    with pytest.raises(PreconditionConfigError, match="no such signal"):
        RestbusMonitor(database, [PreconditionSpec(signal="ECM_Nope", max=1)])
    with pytest.raises(PreconditionConfigError, match="'Run' is not one of its values"):
        RestbusMonitor(database, [PreconditionSpec(signal="BCM_KL15", equals="Run")])


def test_precondition_spec_validation() -> None:
    data = demo_vehicle().model_dump(by_alias=True)
    data["update"] = {"precondition": [{"signal": "ECM_VehicleSpeed"}]}
    with pytest.raises(VehicleFileError, match="give min, max or equals"):
        parse_vehicle(data)
    data["update"] = {"precondition": [{"signal": "X", "min": 2, "max": 1}]}
    with pytest.raises(VehicleFileError, match="min is above max"):
        parse_vehicle(data)


def test_monitor_on_the_live_restbus(channel: str, tmp_path: Path) -> None:
    spec = demo_vehicle()
    database = cantools.database.load_file(str(spec.dbc_path()))
    ecu_bus = can.Bus(interface="virtual", channel=channel)
    bus = can.Bus(interface="virtual", channel=channel)
    monitor = RestbusMonitor(database, spec.update.preconditions)
    notifier = can.Notifier(bus, [monitor], timeout=0.05)
    try:
        with SimulatedVehicle(spec, ecu_bus, state_dir=tmp_path) as sim:
            assert wait_for(lambda: monitor.unmet() == [], timeout=5)
            sim.state.update(vehicle_speed_kph=42.0, ignition=Ignition.ACC)
            assert wait_for(lambda: len(monitor.unmet()) == 2, timeout=5)
            assert "vehicle speed 42 km/h" in " ".join(monitor.unmet())
            assert "ignition is 1, must be On" in monitor.unmet()
    finally:
        notifier.stop()
        bus.shutdown()
        ecu_bus.shutdown()


def _state() -> GatewayState:
    return GatewayState(
        deployment=DeploymentRecord(
            deployment_id="dep-7",
            attempt=2,
            release_id="rel-3",
            phase=Phase.INSTALLING,
            ecus=[
                EcuRecord("ecm", "1.0.0", "1.1.0", image="aa", state=EcuState.FLASHED),
                EcuRecord("bms", "1.0.0", "1.1.0", image="bb", state=EcuState.FLASHING),
            ],
            final_report_id="r1",
        ),
        finished=["dep-1#1"],
        kept_images={"ecm": "cc"},
    )


@pytest.mark.parametrize("kind", ["file", "memory"])
def test_state_round_trip(kind: str, tmp_path: Path) -> None:
    store = FileStateStore(tmp_path) if kind == "file" else MemoryStateStore()
    assert store.load() == GatewayState()
    state = _state()
    store.save(state)
    loaded = store.load()
    assert loaded == state
    assert loaded.deployment is not None
    assert loaded.deployment.ecu("bms").state is EcuState.FLASHING
    # The store keeps a copy: changing the loaded state changes nothing stored.
    loaded.deployment.phase = Phase.REPORTING
    assert store.load().deployment.phase is Phase.INSTALLING


def test_state_file_is_replaced_atomically_and_checked(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    store.save(_state())
    assert not list(tmp_path.glob("*.tmp"))
    assert json.loads(store.path.read_text())["format"] == "hil-gateway-state/1"
    store.path.write_text('{"format": "something else"}')
    with pytest.raises(StateError, match="unknown gateway state format"):
        store.load()
    store.path.write_text("{not json")
    with pytest.raises(StateError, match="not a gateway state file"):
        store.load()


def test_state_saves_from_threads_never_tear(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(30):
                state = _state()
                state.finished = [f"dep-{n}#{i}"]
                store.save(state)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert store.load().finished[0].startswith("dep-")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "127.0.0.1:1"], "give --tls-dir DIR"),
        (["--insecure", "--backend", "10.1.2.3:50051"], "loopback"),
        (["--insecure", "--backend", "127.0.0.1:1"], "needs --release-key"),
        (["--insecure", "--release-key", "/nonexistent.pem"], "--release-key"),
        (["--insecure", "--checkin-interval", "0"], "--checkin-interval must be above 0"),
        (["--tls-dir", "/nonexistent-pki", "--backend", "127.0.0.1:1"], "nonexistent-pki"),
    ],
)
def test_gateway_cli_refuses_bad_arguments(args, message, capsys) -> None:
    assert main(["gateway", "run", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ")
    assert message in err
    assert len(err.splitlines()) == 1


class RecordingBackend:
    def __init__(self) -> None:
        self.reports: list[tuple[str, dict]] = []

    def report(self, deployment_id: str, state: str, **fields) -> tuple[str, bool]:
        self.reports.append((state, fields))
        return state, False


def test_reporter_coalesces_and_paces_progress_but_never_delays_a_state_change() -> None:
    from gateway.orchestrator import Reporter

    backend = RecordingBackend()
    reporter = Reporter(backend, "dep-1", progress_interval_s=60.0)
    try:
        for pct in range(100):
            reporter.post("installing", coalesce=True, progress_pct=pct)
        reporter.post("installing", detail="ecm flashed", progress_pct=100)
        # The state change goes out at once, behind at most the newest pending progress.
        assert wait_for(lambda: any(f.get("detail") for _, f in backend.reports), timeout=10)
    finally:
        reporter.close()
    progress = [f["progress_pct"] for _, f in backend.reports if "detail" not in f]
    assert len(progress) <= 2
    assert progress[-1] == 99
    assert backend.reports[-1][1]["detail"] == "ecm flashed"

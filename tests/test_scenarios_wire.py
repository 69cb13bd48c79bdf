"""The wire-fidelity scenarios and the fault library, run through the scenario framework.

Each scenario runs through :func:`scenarios.core.execute` with small images:
the real backend over gRPC on loopback, simulated ECUs on virtual buses, a
gateway thread per vehicle. A run is judged by its own checks (asserted by
name), and again here from what it left: the outcomes, the timeline, the
traces. The faults that act outside the ECUs (frame loss, network partition)
are also shown to do what they claim, against observers of their own.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path

import can
import pytest

from ecu_sim import demo_vehicle
from scenarios.builtin.wire_scenarios import (
    NEW,
    OLD,
    FlashParams,
    FlashScenario,
    FleetWireParams,
    FleetWireScenario,
    Rig,
    RollbackScenario,
    demo_spec,
    expected_course,
    fleet_vin,
    wave_sizes,
)
from scenarios.core import (
    ProcessGenerator,
    Run,
    Scenario,
    ScenarioError,
    ThreadBridge,
    execute,
)
from scenarios.faults import (
    FaultTarget,
    FrameLoss,
    NetworkPartition,
    PowerCut,
    inject,
    parse_faults,
)
from scenarios.registry import builtin_scenarios, load_scenario_file, make_params
from scenarios.wire import LossRule, WireWorld

pytestmark = pytest.mark.timeout(180)

ECUS = ("ecm", "bms", "bcm")


def passed(run: Run, name: str) -> bool:
    """Whether the run has a check of this name and it held."""
    found = [c for c in run.checks if c.name == name]
    assert found, f"no check {name!r} in {[c.name for c in run.checks]}"
    return all(c.passed for c in found)


def failures(run: Run) -> str:
    """The run's error and failed checks, for an assertion message."""
    failed = [f"{c.name}: {c.detail}" for c in run.checks if not c.passed]
    return f"error={run.error!r} failed={failed}"


# ---------------------------------------------------------------- fault models
def test_fault_tables_validate_with_clear_errors(tmp_path: Path) -> None:
    faults = parse_faults(
        [
            {"kind": "power-cut", "ecu": "bcm", "offset": 6000, "restore_after_s": 0.3},
            {"kind": "nrc", "ecu": "bms", "service": 0x36, "code": 0x72},
            {"kind": "network-partition", "during_flash_of": "bms", "duration_s": 2},
            {"kind": "frame-loss", "probability": 0.5, "duration_s": 1, "can_ids": [0x7E9]},
        ]
    )
    assert [f.kind for f in faults] == ["power-cut", "nrc", "network-partition", "frame-loss"]
    assert isinstance(faults[0], PowerCut) and faults[0].offset == 6000

    with pytest.raises(ScenarioError, match=r"faults\.0: Input tag 'meteor-strike'.*'power-cut'"):
        parse_faults([{"kind": "meteor-strike", "ecu": "bms"}])
    with pytest.raises(ScenarioError, match=r"faults\.0\.nrc\.code: Field required"):
        parse_faults([{"kind": "nrc", "ecu": "bms", "service": 0x36}])
    with pytest.raises(ScenarioError, match=r"faults\.0\.slow-erase\.colour: unknown key"):
        parse_faults([{"kind": "slow-erase", "ecu": "bms", "duration_s": 1, "colour": "red"}])
    with pytest.raises(ScenarioError, match="give offset, at_s or during_flash_of"):
        parse_faults([{"kind": "power-cut", "ecu": "bcm"}])
    with pytest.raises(ScenarioError, match="the loss must end"):
        parse_faults([{"kind": "frame-loss", "probability": 0.1}])
    with pytest.raises(ScenarioError, match="NRC 0x78"):
        parse_faults([{"kind": "nrc", "ecu": "bms", "service": 0x31, "code": 0x78}])
    with pytest.raises(ScenarioError, match="not both"):
        parse_faults(
            [{"kind": "gateway-restart", "at_s": 1, "during_flash_of": "bms", "down_s": 1}]
        )

    # In a scenario's parameters, and in a scenario file's [[params.faults]] tables.
    with pytest.raises(
        ScenarioError, match=r"params\.faults\.1\.boot-failure\.ecu: Field required"
    ):
        make_params(
            FlashScenario,
            {"faults": [{"kind": "boot-failure", "ecu": "bms"}, {"kind": "boot-failure"}]},
        )
    path = tmp_path / "flash.toml"
    path.write_text(
        'scenario = "flash"\n[params]\nimage_kib = 4\n'
        '[[params.faults]]\nkind = "nrc"\necu = "bms"\nservice = 0x36\ncode = 0x72\n'
        '[[params.faults]]\nkind = "gateway-restart"\nduring_flash_of = "bcm"\n'
    )
    loaded = load_scenario_file(path)
    params = make_params(loaded.scenario, loaded.params)
    assert isinstance(params, FlashParams)
    assert [f.kind for f in params.faults] == ["nrc", "gateway-restart"]
    path.write_text('scenario = "flash"\n[[params.faults]]\nkind = "power-outage"\necu = "bms"\n')
    with pytest.raises(
        ScenarioError, match=re.escape(f"{path}: params.faults.0: Input tag 'power-outage'")
    ):
        load_scenario_file(path)


def test_a_fault_naming_an_unknown_ecu_fails_the_run_before_the_world_is_built(
    tmp_path: Path,
) -> None:
    params = make_params(FlashScenario, {"faults": [{"kind": "boot-failure", "ecu": "gps"}]})
    run = execute(FlashScenario, params, seed=1, directory=tmp_path)
    assert not run.passed
    assert run.error == "faults.0 (boot-failure): no ECU 'gps' (known: ecm, bms, bcm)"
    assert not (tmp_path / "world").exists()


def test_the_scenarios_are_registered_and_their_parameters_validated() -> None:
    known = builtin_scenarios()
    for name in ("flash", "rollback", "fleet-wire"):
        assert known[name].fidelity == "wire"
    with pytest.raises(ScenarioError, match="a case is named twice"):
        make_params(RollbackScenario, {"cases": ["tampered", "tampered"]})
    with pytest.raises(ScenarioError, match=r"params\.cases\.0: Input should be"):
        make_params(RollbackScenario, {"cases": ["lightning"]})
    with pytest.raises(ScenarioError, match="would depend on timing"):
        # Wave 1 (2 vehicles) passes 50% success with one success, and pauses at 50% errors.
        make_params(FleetWireScenario, {"success_threshold_pct": 50, "error_threshold_pct": 50})
    with pytest.raises(ScenarioError, match="failing_vehicle must be below vehicles"):
        make_params(FleetWireScenario, {"vehicles": 3, "failing_vehicle": 3})


def test_the_expected_course_of_a_fleet_campaign_follows_the_engine_rules() -> None:
    assert wave_sizes(5, [1, 2]) == [1, 2, 2]
    assert wave_sizes(3, [1, 5]) == [1, 2]
    assert wave_sizes(4, []) == [4]
    course = expected_course(FleetWireParams())
    assert (course.sizes, course.wave_of) == ([1, 2, 2], [0, 1, 1, 2, 2])
    assert (course.failing_wave, course.pause) == (1, "error threshold")
    # One failure in 2 is 50%: below a 60% error threshold, and 1 of 2 succeeded < 95%.
    below = expected_course(FleetWireParams(error_threshold_pct=60))
    assert below.pause == "success threshold"
    assert below.pause_reason_prefix() == "wave 1 ended with"
    passes = expected_course(FleetWireParams(error_threshold_pct=60, success_threshold_pct=50))
    assert passes.pause == ""
    assert expected_course(FleetWireParams(failing_vehicle=None)).pause == ""


# ------------------------------------------------------------- the scenarios
def test_flash_updates_every_ecu_and_leaves_a_timeline_and_a_trace(tmp_path: Path) -> None:
    params = make_params(FlashScenario, {"image_kib": 4})
    run = execute(FlashScenario, params, seed=1, directory=tmp_path)
    assert run.passed, failures(run)
    for name in (
        "backend: action succeeded",
        "backend: campaign completed",
        "gateway: outcome succeeded and acknowledged",
        "ecus: every ECU runs the new version",
        "ecus: new image confirmed in the other bank, previous one kept",
        "backend: inventory updated",
    ):
        assert passed(run, name)

    # The outcome, read again.
    [outcome] = run.outcomes
    vin = demo_vehicle().vin
    assert (outcome["vin"], outcome["state"], outcome["gateway_state"]) == (
        vin,
        "succeeded",
        "succeeded",
    )
    assert outcome["versions"] == dict.fromkeys(ECUS, NEW)
    assert set(outcome["flash_s"]) == set(ECUS)
    # Per ECU, the UDS steps in the flasher's order, each within the run, none failed.
    for ecu in ECUS:
        steps = [s for s in run.spans if s.lane == f"{vin}/{ecu}"]
        names = [s.step for s in steps]
        assert names[:3] == ["check image", "identify", "extended session"], names
        assert names.index("erase") < names.index("transfer") < names.index("verify")
        assert names[-1] == "confirm"
        assert all(s.ok for s in steps)
        assert all(0 <= a.start <= a.end <= b.start + 1e-6 for a, b in itertools.pairwise(steps))
    ecm_transfer = next(s for s in run.spans if s.lane == f"{vin}/ecm" and s.step == "transfer")
    bms_transfer = next(s for s in run.spans if s.lane == f"{vin}/bms" and s.step == "transfer")
    assert ecm_transfer.end <= bms_transfer.start  # flashed one after the other
    vehicle_phases = [s.step for s in run.spans if s.lane == vin]
    assert vehicle_phases == ["download and verify", "install"]
    # The gateway's events reached the log through the bridge.
    texts = [e.detail for e in run.log.entries if e.source == vin and e.kind == "gateway"]
    assert any(t.startswith("registered ") for t in texts)
    assert any(": flashing bms 1.0.0 -> 1.1.0" in t for t in texts)
    # The CAN trace has both directions of the diagnostic traffic.
    trace = tmp_path / run.attachments[f"trace {vin}"]
    text = trace.read_text()
    assert "7E0             Tx" in text and "7E8             Rx" in text
    assert "7E2             Tx" in text and "7EA             Rx" in text
    assert run.series["campaign"]
    assert run.figures["flash_ecm_s"] > 0
    assert run.figures["image_bytes"] == 4096


def test_flash_rides_out_a_network_partition_a_backend_restart_and_a_slow_erase(
    tmp_path: Path,
) -> None:
    faults = [
        {"kind": "network-partition", "during_flash_of": "ecm", "duration_s": 1.5},
        {"kind": "backend-restart", "during_flash_of": "bcm", "down_s": 1.0},
        {"kind": "slow-erase", "ecu": "bcm", "duration_s": 1.0},
    ]
    params = make_params(FlashScenario, {"image_kib": 4, "faults": faults})
    run = execute(FlashScenario, params, seed=2, directory=tmp_path)
    assert run.passed, failures(run)
    assert passed(run, "faults: every fault applied")
    logged = [(e.kind, e.detail) for e in run.log.entries if e.source == "fault"]
    assert ("backend-restart", "backend started again") in logged
    assert any(k == "network-partition" and "link restored" in d for k, d in logged)
    # The backend went down while bcm was being flashed: its erase alone took a second.
    assert run.outcomes[0]["flash_s"]["bcm"] >= 1.0
    erase = next(s for s in run.spans if s.lane.endswith("/bcm") and s.step == "erase")
    assert erase.end - erase.start >= 1.0


@pytest.mark.slow
def test_rollback_cases_leave_consistent_vehicles_and_correct_records(tmp_path: Path) -> None:
    params = make_params(RollbackScenario, {"image_kib": 8})
    run = execute(RollbackScenario, params, seed=3, directory=tmp_path)
    assert run.passed, failures(run)
    cases = {o["case"]: o for o in run.outcomes}
    assert list(cases) == ["power-cut", "boot-failure", "tampered", "gateway-restart"]
    for case, outcome in cases.items():
        state = outcome["state"]
        version = NEW if state == "succeeded" else OLD
        assert passed(run, f"{case}: backend state")
        assert passed(run, f"{case}: every ECU runs {version} ({state})")
        assert passed(run, f"{case}: boot status sane")
        assert passed(run, f"{case}: backend inventory is what the ECUs run")
        assert passed(run, f"{case}: the gateway reports what the backend recorded")
        if state != "succeeded":
            assert passed(run, f"{case}: failure step and reason recorded")

    # Read again from the outcomes: state, where it failed, what the ECUs run.
    power = cases["power-cut"]
    assert (power["state"], power["failure_step"]) == ("rolled_back", "bcm: transfer")
    assert power["versions"] == dict.fromkeys(ECUS, OLD)
    boot = cases["boot-failure"]
    assert (boot["state"], boot["failure_step"]) == ("rolled_back", "bms: verify")
    assert "failed its trial boot" in boot["failure_reason"]
    assert set(boot["flash_s"]) == {"ecm", "bms"}  # bcm never started
    tampered = cases["tampered"]
    assert (tampered["state"], tampered["failure_step"]) == ("failed", "verify image")
    assert tampered["flash_s"] == {}
    restart = cases["gateway-restart"]
    assert restart["state"] in ("succeeded", "rolled_back")
    expected = NEW if restart["state"] == "succeeded" else OLD
    assert restart["versions"] == dict.fromkeys(ECUS, expected)
    assert restart["attempts"] == 1
    assert passed(
        run, "gateway-restart: gateway killed mid-flash, the next one resumed the deployment"
    )
    # The timeline shows the flash the dead gateway left, cut at its death.
    killed = [s for s in run.spans if s.detail == "gateway killed"]
    assert any(s.lane == f"gateway-restart/{demo_vehicle().vin}/bms" for s in killed)
    assert any(s.step == "install (resumed)" for s in run.spans)
    # A trace per case.
    assert len([k for k in run.attachments if k.startswith("trace ")]) == 4


@pytest.mark.slow
def test_fleet_wire_pauses_at_the_error_threshold_then_completes_after_resume(
    tmp_path: Path,
) -> None:
    params = make_params(FleetWireScenario, {"image_kib": 4})
    run = execute(FleetWireScenario, params, seed=4, directory=tmp_path)
    assert run.passed, failures(run)
    for name in (
        "waves: sizes",
        "waves: each vehicle in its wave (VIN order)",
        "waves: every vehicle notified after its wave started",
        "threshold: campaign paused on wave 1 (error threshold)",
        "threshold: later waves not notified while paused",
        "campaign: final state",
        "campaign: counts",
    ):
        assert passed(run, name)
    # Read again: the failing vehicle rolled back, every other one updated, by wave.
    states = {o["vin"]: (o["wave"], o["state"]) for o in run.outcomes}
    failing = fleet_vin(1)
    assert states == {
        fleet_vin(0): (0, "succeeded"),
        failing: (1, "rolled_back"),
        fleet_vin(2): (1, "succeeded"),
        fleet_vin(3): (2, "succeeded"),
        fleet_vin(4): (2, "succeeded"),
    }
    for outcome in run.outcomes:
        expected = OLD if outcome["vin"] == failing else NEW
        assert outcome["versions"] == dict.fromkeys(ECUS, expected), outcome
        assert outcome["gateway_state"] == outcome["state"]
    paused = [
        e for e in run.log.entries if e.source == "operator" and e.detail.startswith("paused")
    ]
    assert len(paused) == 1
    assert "error threshold reached in wave 1: 1 of 2 vehicle(s) failed" in paused[0].detail
    # Each vehicle has its own gateway, lane and trace.
    for index in range(5):
        assert f"trace {fleet_vin(index)}" in run.attachments
        assert any(s.lane == f"{fleet_vin(index)}/bcm" for s in run.spans) == (index != 1)
    assert run.figures["vehicles_updated"] == 4


@pytest.mark.slow
def test_fleet_wire_without_a_pause_when_the_thresholds_allow_one_failure(tmp_path: Path) -> None:
    params = make_params(
        FleetWireScenario,
        {
            "vehicles": 3,
            "waves": [1],
            "image_kib": 2,
            "failing_vehicle": 2,
            "success_threshold_pct": 50,
            "error_threshold_pct": 60,
            # A fault of no vehicle in particular, while the first wave updates.
            "faults": [{"kind": "backend-restart", "at_s": 0.5, "down_s": 0.5}],
        },
    )
    run = execute(FleetWireScenario, params, seed=5, directory=tmp_path)
    assert run.passed, failures(run)
    assert passed(run, "threshold: campaign not paused")
    assert passed(run, "faults: every fault applied")
    assert [(o["wave"], o["state"]) for o in run.outcomes] == [
        (0, "succeeded"),
        (1, "succeeded"),
        (1, "rolled_back"),
    ]
    assert not any(e.detail.startswith("paused") for e in run.log.entries if e.source == "operator")


# ------------------------------------------------- faults outside the ECUs
@pytest.fixture
def bare_world(tmp_path: Path) -> Iterator[WireWorld]:
    """The demo vehicle and the backend, without a gateway: the test is the tester."""
    with WireWorld(tmp_path / "world", [demo_spec()], start_gateways=False) as world:
        yield world


class _Frames(can.Listener):
    """Every frame a node received, kept."""

    def __init__(self) -> None:
        self.frames: list[can.Message] = []

    def on_message_received(self, msg: can.Message) -> None:
        self.frames.append(msg)

    def of(self, can_id: int, count: int, *, timeout: float = 10.0) -> list[can.Message]:
        """The frames of ``can_id``: once ``count`` came, and any more that come soon after.

        The ECUs' cyclic frames arrive all the while: only ``can_id`` counts.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self._matching(can_id)) < count:
            time.sleep(0.01)
        # A grace period: a frame that should not have come would come now.
        time.sleep(0.3)
        return self._matching(can_id)

    def _matching(self, can_id: int) -> list[can.Message]:
        return [m for m in list(self.frames) if m.arbitration_id == can_id]


def _send(bus: can.BusABC, can_id: int, values: range) -> None:
    for value in values:
        bus.send(can.Message(arbitration_id=can_id, data=[value], is_extended_id=False))


def _values(frames: list[can.Message]) -> list[int]:
    return [m.data[0] for m in frames]


def test_frame_loss_drops_frames_between_the_gateway_side_and_the_ecus(
    bare_world: WireWorld,
) -> None:
    vehicle = bare_world.vehicle()
    # An independent node on the same bus sees what crossed it.
    sniffer = can.Bus(interface="virtual", channel=vehicle.channel)
    on_wire = _Frames()
    sniffing = can.Notifier(sniffer, [on_wire], timeout=0.05)
    heard, traced = _Frames(), _Frames()
    vehicle.notifier.add_listener(heard)
    bare_world.add_trace(vehicle.vin, traced)
    try:
        # Towards the ECUs: 3 of 10 frames of one id lost; the other id is not touched.
        rule = bare_world.lose_frames(
            vehicle.vin, LossRule(count=3, can_ids=frozenset({0x5A5}), direction="to_ecus")
        )
        _send(vehicle.tester_bus, 0x5A5, range(10))
        _send(vehicle.tester_bus, 0x5A4, range(10))
        assert _values(on_wire.of(0x5A4, 10)) == list(range(10))
        assert _values(on_wire.of(0x5A5, 7)) == list(range(3, 10))
        assert rule.dropped == 3 and rule.exhausted
        # The trace has what crossed, as the gateway side's transmissions.
        traced_out = traced.of(0x5A5, 7)
        assert _values(traced_out) == list(range(3, 10))
        assert not any(m.is_rx for m in traced_out)
        bare_world.end_frame_loss(vehicle.vin, rule)

        # Towards the gateway side, until ended: every frame of the id lost.
        window = bare_world.lose_frames(
            vehicle.vin, LossRule(can_ids=frozenset({0x5A6}), direction="to_gateway")
        )
        _send(vehicle.ecu_bus, 0x5A6, range(5))
        assert len(on_wire.of(0x5A6, 5)) == 5  # they were on the bus
        assert heard.of(0x5A6, 0) == []
        assert window.dropped == 5
        # The rule is one way: the gateway side's own frames of that id still go out.
        _send(vehicle.tester_bus, 0x5A6, range(9, 10))
        assert _values(on_wire.of(0x5A6, 6))[5:] == [9]
        bare_world.end_frame_loss(vehicle.vin, window)
        _send(vehicle.ecu_bus, 0x5A6, range(5))
        assert _values(heard.of(0x5A6, 5)) == list(range(5))
        assert vehicle.link.dropped == 8
    finally:
        bare_world.remove_trace(vehicle.vin, traced)
        vehicle.notifier.remove_listener(heard)
        sniffing.stop()
        sniffer.shutdown()


class _RestbusLossProbe(Scenario):
    """The gateway's own restbus monitor loses the ECM's status frames, then gets them back."""

    name = "test-restbus-loss"
    summary = "frame loss towards the gateway starves its precondition monitor"
    fidelity = "wire"

    def main(self) -> ProcessGenerator:
        run = self.run
        bridge = ThreadBridge(run.env)
        rig = Rig(run, bridge, "world", [demo_spec()])
        yield from rig.settle()
        vehicle = rig.world.vehicle()
        assert vehicle.gateway is not None
        monitor = vehicle.gateway.monitor
        yield from bridge.wait_until(lambda: not monitor.unmet(), timeout_s=10, what="restbus")
        target = FaultTarget(run, rig.world, bridge, vin=vehicle.vin)
        loss = FrameLoss(can_ids=[0xC0], direction="to_gateway", duration_s=2.5)  # ECM_Status
        process = run.env.process(inject(target, loss))
        yield from bridge.wait_until(
            lambda: any("ECM_VehicleSpeed not seen" in u for u in monitor.unmet()),
            timeout_s=2.4,
            what="the gateway missing ECM_VehicleSpeed",
        )
        run.check("starved", True, "; ".join(monitor.unmet()))
        yield process
        yield from bridge.wait_until(lambda: not monitor.unmet(), timeout_s=5, what="recovery")
        run.check("recovered", True)
        run.figure("dropped", vehicle.link.dropped)


def test_frame_loss_starves_the_gateways_restbus_monitor_until_it_ends(tmp_path: Path) -> None:
    run = execute(_RestbusLossProbe, make_params(_RestbusLossProbe, {}), seed=6, directory=tmp_path)
    assert run.passed, failures(run)
    starved = next(c for c in run.checks if c.name == "starved")
    assert "vehicle speed: ECM_VehicleSpeed not seen for" in starved.detail
    assert "ignition" not in starved.detail  # BCM's frames were not touched
    # ECM_Status is sent every 100 ms: about 25 lost in 2.5 s.
    assert 10 <= run.figures["dropped"] <= 40
    lost = [
        e.detail for e in run.log.entries if e.source == "fault" and "frame(s) lost" in e.detail
    ]
    assert lost == [f"{demo_spec().vin}: frame loss over, {run.figures['dropped']} frame(s) lost"]


class _PartitionProbe(Scenario):
    """An idle gateway's check-ins stop reaching the backend while its link is cut."""

    name = "test-partition"
    summary = "a network partition between one gateway and the backend"
    fidelity = "wire"

    def main(self) -> ProcessGenerator:
        run = self.run
        bridge = ThreadBridge(run.env)
        rig = Rig(run, bridge, "world", [demo_spec()])
        yield from rig.settle()
        world = rig.world
        vin = world.vehicle().vin

        def checkins() -> int:
            # The operator's own channel: the partition is the gateway's alone.
            return int(world.operator.vehicle(vin).checkins)

        yield from bridge.wait_until(lambda: checkins() >= 3, timeout_s=10, what="check-ins")
        target = FaultTarget(run, world, bridge, vin=vin)
        process = run.env.process(inject(target, NetworkPartition(duration_s=2.5)))
        # Whatever was in flight when the link was cut has failed by now.
        yield run.env.timeout(0.5)
        cut = checkins()
        yield run.env.timeout(1.5)
        run.figure("checkins_after_cut", cut)
        run.figure("checkins_later", checkins())
        proxy = world.vehicle(vin).proxy
        assert proxy is not None
        run.figure("refused", proxy.refused)
        run.figure("connections_before_heal", proxy.connections)
        yield process
        yield from bridge.wait_until(lambda: checkins() > cut + 2, timeout_s=15, what="recovery")
        run.check("check-ins resumed", True)
        run.figure("connections_after_heal", proxy.connections)


def test_network_partition_cuts_the_gateway_off_and_it_recovers_after(tmp_path: Path) -> None:
    run = execute(_PartitionProbe, make_params(_PartitionProbe, {}), seed=7, directory=tmp_path)
    assert run.passed, failures(run)
    figures = run.figures
    # Not one check-in reached the backend during the partition, though the gateway tried.
    assert figures["checkins_later"] == figures["checkins_after_cut"]
    assert figures["refused"] > 0
    # After it, the gateway connected again through the same link.
    assert figures["connections_after_heal"] > figures["connections_before_heal"]
    events = [e.detail for e in run.log.entries if e.kind == "network-partition"]
    assert events[0].endswith("link to the backend cut for 2.5 s")
    assert "link restored" in events[1]

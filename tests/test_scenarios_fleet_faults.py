"""The fault library in the modeled fleet: each kind, read back from the backend and the vehicles.

Small fleets of one healthy population (no failure of their own) under one
campaign, so that what fails is what a fault did. Each run keeps its world,
and the assertions read the backend's actions and events, the vehicles'
software and the faults' own log.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import pytest

from backend_stub.model import Action, ActionState, Campaign, CampaignEvent
from backend_stub.service import Page
from scenarios.builtin.fleet_scenarios import FleetParams, FleetScenario
from scenarios.core import ProcessGenerator, Run, Scenario, ScenarioError, execute
from scenarios.fleet import FleetWorld, fleet_vin
from scenarios.fleet_faults import S3_S, FleetFaults
from scenarios.registry import load_scenario_file, make_params

pytestmark = pytest.mark.timeout(120)

HEALTHY = [
    {
        "label": "healthy",
        "share": 1.0,
        "ecus": [
            {"name": "ecm", "hardware_id": "HIL-ECM-HW01"},
            {"name": "bms", "hardware_id": "HIL-BMS-HW01"},
            {"name": "bcm", "hardware_id": "HIL-BCM-HW01"},
        ],
    }
]
NO_FAILURES = {"download": 0.0, "flash": 0.0, "boot": 0.0}
# One wave of every vehicle, never paused: what happens to each vehicle is its own.
ONE_WAVE = {"waves": [], "error_threshold_pct": 100.0, "success_threshold_pct": 0.0}
_RUNS = itertools.count()
CONSISTENT = (
    "every vehicle runs what its action says",
    "backend inventory matches every vehicle",
    "no vehicle left mid-update",
)


class _Keeping(FleetScenario):
    """The fleet scenario, keeping its world for the test to read."""

    kept: ClassVar[list[tuple[FleetWorld, FleetFaults | None]]] = []

    def _judge(self, world: FleetWorld, pauses: list[tuple[float, Campaign]]) -> None:
        super()._judge(world, pauses)
        type(self).kept = [(world, self.faults)]


class Outcome:
    """A finished run and what it left: the world, the backend's actions, the faults."""

    def __init__(self, run: Run) -> None:
        assert run.error == "", run.error
        self.run = run
        self.world, self.faults = _Keeping.kept[0]
        page = Page(size=1000)
        self.actions: dict[str, Action] = {
            a.vin: a for a in self.world.backend.list_actions(self.world.campaign_id, (), page)
        }
        self.events: list[CampaignEvent] = self.world.backend_events()

    def states(self) -> Counter[str]:
        return Counter(a.state.value for a in self.actions.values())

    def of(self, vin: str) -> list[CampaignEvent]:
        return [e for e in self.events if e.vin == vin]

    def outcomes_of(self, vin: str) -> list[tuple[str, str]]:
        """Each outcome the backend recorded for ``vin``: (state, 'step: reason')."""
        final = {ActionState.SUCCEEDED, ActionState.FAILED, ActionState.ROLLED_BACK}
        return [
            (e.action_state.value, e.detail)
            for e in self.of(vin)
            if e.kind == "action" and e.action_state in final
        ]

    def moment(self, vin: str, state: ActionState) -> list[float]:
        return [e.at for e in self.of(vin) if e.kind == "action" and e.action_state is state]

    def install_s(self, vin: str) -> float:
        """From the installing report to the outcome of ``vin``'s last attempt."""
        installing = self.moment(vin, ActionState.INSTALLING)[-1]
        ended = max(
            at
            for state in (ActionState.SUCCEEDED, ActionState.FAILED, ActionState.ROLLED_BACK)
            for at in self.moment(vin, state)
        )
        return ended - installing

    def fault_log(self, kind: str | None = None) -> list[str]:
        return [
            e.detail
            for e in self.run.log.entries
            if e.source == "fault" and (kind is None or e.kind == kind)
        ]

    def consistent(self) -> bool:
        names = {c.name: c.passed for c in self.run.checks}
        return all(names[name] for name in CONSISTENT)

    def runs(self, vin: str) -> set[str]:
        return {e.software_version for e in self.world.cars[vin].ecus}


def run_fleet(
    tmp_path: Path, faults: list[dict[str, Any]], *, seed: int = 5, **values: Any
) -> Outcome:
    params = make_params(
        _Keeping,
        {
            "vehicles": 200,
            "population": HEALTHY,
            "failure": NO_FAILURES,
            "campaign": ONE_WAVE,
            "expect": "any",
            **values,
            "faults": faults,
        },
    )
    directory = tmp_path / f"run-{next(_RUNS)}"
    return Outcome(execute(_Keeping, params, seed=seed, directory=directory))


# ------------------------------------------------------------------ parameters
def test_fault_parameters_name_the_key(tmp_path: Path) -> None:
    def refused(faults: list[dict[str, Any]], pattern: str) -> None:
        with pytest.raises(ScenarioError, match=pattern):
            make_params(_Keeping, {"vehicles": 50, "faults": faults})

    refused(
        [{"kind": "boot-failure", "ecu": "bms", "vin": fleet_vin(50)}],
        r"params\.faults\.0\.boot-failure\.vin: no vehicle 'SMFLEET0000000050' in this fleet "
        r"of 50 \(SMFLEET0000000000 \.\. SMFLEET0000000049\)",
    )
    refused(
        [
            {"kind": "slow-erase", "ecu": "bms", "duration_s": 3},
            {"kind": "nrc", "ecu": "gps", "service": 0x27, "code": 0x22},
        ],
        r"params\.faults\.1\.nrc\.ecu: no ECU 'gps' in the release \(known: ecm, bms, bcm\)",
    )
    refused(
        [{"kind": "power-cut", "ecu": "bcm", "during_flash_of": "bcm"}],
        r"params\.faults\.0\.power-cut\.during_flash_of: in a fleet, name the vehicle \(vin\)",
    )
    refused(
        [{"kind": "backend-restart", "vin": fleet_vin(1), "during_flash_of": "radio"}],
        r"params\.faults\.0\.backend-restart\.during_flash_of: no ECU 'radio'",
    )
    # The fault models' own rules, as in the wire scenarios.
    refused([{"kind": "frame-loss", "probability": 0.1}], "the loss must end")
    refused([{"kind": "power-cut", "ecu": "bcm"}], "give offset, at_s or during_flash_of")

    # A scenario file's [[params.faults]] tables, checked before anything runs.
    path = tmp_path / "fleet.toml"
    path.write_text(
        'scenario = "fleet"\n[params]\nvehicles = 20\n'
        '[[params.faults]]\nkind = "backend-restart"\nat_s = 600\ndown_s = 3600\n'
        '[[params.faults]]\nkind = "network-partition"\nvin = "SMFLEET0000000020"\n'
        "duration_s = 60\n"
    )
    with pytest.raises(
        ScenarioError, match=r"fleet\.toml: params\.faults\.1\.network-partition\.vin: no vehicle"
    ):
        load_scenario_file(path)
    path.write_text(path.read_text().replace("SMFLEET0000000020", "SMFLEET0000000019"))
    loaded = load_scenario_file(path)
    params = make_params(loaded.scenario, loaded.params)
    assert isinstance(params, FleetParams)
    assert [f.kind for f in params.faults] == ["backend-restart", "network-partition"]


# ------------------------------------------------------------ no effect, same run
def test_a_fault_without_effect_leaves_the_run_as_it_was(tmp_path: Path) -> None:
    # The faulted vehicle process draws and waits as the plain one does: with a
    # fault that changes nothing (an NRC on a service no flash sends), the run's
    # log is the plain run's, line for line, plus the fault's own lines.
    values: dict[str, Any] = {"vehicles": 2000, "on_pause": "resume", "expect": "any"}
    plain = execute(_Keeping, make_params(_Keeping, values), seed=3, directory=tmp_path / "plain")
    faulted = execute(
        _Keeping,
        make_params(
            _Keeping,
            {**values, "faults": [{"kind": "nrc", "ecu": "bms", "service": 0x19, "code": 0x22}]},
        ),
        seed=3,
        directory=tmp_path / "faulted",
    )
    assert plain.passed and faulted.passed
    lines = [e.line() for e in faulted.log.entries if e.source != "fault"]
    assert lines == [e.line() for e in plain.log.entries]
    assert [e.detail for e in faulted.log.entries if e.source == "fault"] == [
        "bms of every vehicle: no effect, a flash does not use service 0x19"
    ]
    # The same goes for a fault whose moment never comes.
    late = run_fleet(tmp_path, [{"kind": "gateway-restart", "at_s": 1e9, "down_s": 5}])
    assert late.fault_log() == ["not triggered: at_s=1e+09 never came"]
    assert late.states() == {"succeeded": 200}


# ------------------------------------------------------------- backend and link
def test_the_operator_resumes_only_once_the_backend_answers(tmp_path: Path) -> None:
    down_at, down_s = 35_000.0, 20_000.0
    out = run_fleet(
        tmp_path,
        [{"kind": "backend-restart", "at_s": down_at, "down_s": down_s}],
        vehicles=200,
        failure={"download": 0.0, "flash": 0.2, "boot": 0.0},
        campaign={"waves": [{"percent": 50}], "error_threshold_pct": 10.0},
        on_pause="resume",
        review_h=4.0,
        expect="completed",
    )
    assert out.run.passed, [c for c in out.run.checks if not c.passed]
    log = [(e.at, e.source, e.kind) for e in out.run.log.entries]
    paused = [at for at, source, kind in log if (source, kind) == ("campaign", "paused")]
    resumed = [at for at, source, kind in log if (source, kind) == ("operator", "resume")]
    # The first review ends while the backend is down (the premise of this test) ...
    assert paused[0] < down_at < paused[0] + 4 * 3600 + 1800 < down_at + down_s
    # ... so the operator's call is refused, and the resume waits for the backend.
    refused = [at for at, source, kind in log if (source, kind) == ("operator", "refused")]
    assert len(refused) == 1 and down_at < refused[0] < down_at + down_s
    assert down_at + down_s <= resumed[0] <= down_at + down_s + 1800
    assert not [e for e in out.events if down_at < e.at < down_at + down_s]


def test_a_six_hour_backend_restart_refuses_calls_and_loses_no_report(tmp_path: Path) -> None:
    start, down = 1800.0, 6 * 3600.0
    out = run_fleet(
        tmp_path,
        [{"kind": "backend-restart", "at_s": start, "down_s": down}],
        vehicles=300,
        campaign={"waves": [{"percent": 30}], "error_threshold_pct": 100.0},
        expect="completed",
    )
    assert out.run.passed, [c for c in out.run.checks if not c.passed]
    assert out.faults is not None
    refused = out.faults.refused_total
    assert refused > 1000
    assert out.run.figures["refused calls"] == refused
    assert out.fault_log("backend-restart") == [
        "backend stopped for 21600 s",
        f"backend started again; {refused} call(s) refused meanwhile",
    ]
    # The backend took nothing from a vehicle while it was down ...
    assert not [e for e in out.events if e.vin and start < e.at < start + down]
    # ... the vehicles that tried came back after it ...
    late = [vin for vin in out.faults.refused if out.moment(vin, ActionState.SUCCEEDED)]
    assert late
    assert all(out.moment(vin, ActionState.SUCCEEDED)[0] >= start + down for vin in late)
    # ... and every outcome arrived, exactly once, matching the vehicle.
    assert out.states() == {"succeeded": 300}
    for vin in out.actions:
        assert [state for state, _ in out.outcomes_of(vin)] == ["succeeded"]
        assert out.runs(vin) == {"2.0.0"}
    assert out.consistent()


def test_a_partition_of_one_vehicle_delays_that_vehicle_only(tmp_path: Path) -> None:
    vin = fleet_vin(7)
    cut_s = 2 * 86400.0
    out = run_fleet(
        tmp_path, [{"kind": "network-partition", "vin": vin, "at_s": 0, "duration_s": cut_s}]
    )
    assert out.faults is not None
    assert set(out.faults.refused) == {vin}
    assert out.fault_log()[-1] == (
        f"{vin}: link restored; {out.faults.refused[vin]} call(s) refused meanwhile"
    )
    # Its first check-in got through once the link was back; others were served before.
    assert out.moment(vin, ActionState.NOTIFIED)[0] >= cut_s
    others = [v for v in out.actions if v != vin]
    assert min(out.moment(v, ActionState.NOTIFIED)[0] for v in others) < cut_s
    assert out.states() == {"succeeded": 200}
    assert out.consistent()


def test_a_backend_restart_while_a_vehicle_flashes_stalls_downloads(tmp_path: Path) -> None:
    vin = fleet_vin(4)
    out = run_fleet(
        tmp_path,
        [{"kind": "backend-restart", "vin": vin, "during_flash_of": "bms", "down_s": 3600}],
        # A slow link: many vehicles are downloading at any moment.
        connectivity={"bandwidth_median_mbps": 0.02},
    )
    stopped = next(e for e in out.run.log.entries if e.source == "fault")
    assert re.fullmatch(
        r"backend stopped for 3600 s; \d+ download\(s\) in progress stall", stopped.detail
    )
    # It stopped as that vehicle reached bms's programming session, and that
    # vehicle, flashing offline, still finished; its outcome waited for the backend.
    installing = out.moment(vin, ActionState.INSTALLING)[0]
    assert installing < stopped.at < installing + out.world.bus.flash_s(512 * 1024 + 256 * 1024)
    assert out.moment(vin, ActionState.SUCCEEDED)[0] >= stopped.at + 3600
    assert out.faults is not None and out.faults.refused_total > 0
    assert out.states() == {"succeeded": 200}
    assert out.consistent()


# -------------------------------------------------------------------- gateway
def test_gateway_restarts_mid_download_and_mid_flash_end_consistent(tmp_path: Path) -> None:
    flashed = fleet_vin(9)
    out = run_fleet(
        tmp_path,
        [
            {"kind": "gateway-restart", "at_s": 4 * 3600, "down_s": 120},
            {"kind": "gateway-restart", "vin": flashed, "during_flash_of": "bms", "down_s": 30},
        ],
        connectivity={"bandwidth_median_mbps": 0.02},
    )
    killed = out.fault_log("gateway-restart")
    fleet_kill = next(line for line in killed if "working on an update killed" in line)
    assert " download" in fleet_kill, fleet_kill
    assert f"{flashed}: gateway killed (install)" in killed
    # Every gateway came back, registered again and finished its deployment.
    assert out.run.figures["backend calls"]["register"] >= 2
    assert out.states() == {"succeeded": 200}
    assert out.consistent()
    # Mid-flash: bms is flashed again from the start after the restart, so the
    # installation took the downtime, the part of bms done before, and bms again.
    bus = out.world.bus
    normal = sum(bus.flash_s(kib * 1024) for kib in (512, 256, 128))
    took = out.install_s(flashed)
    assert normal + 30 < took < normal + 30 + S3_S + bus.flash_s(256 * 1024)


# ---------------------------------------------------------------- ECU faults
def test_boot_failure_rolls_one_vehicle_back_while_its_peers_succeed(tmp_path: Path) -> None:
    vin = fleet_vin(7)
    out = run_fleet(tmp_path, [{"kind": "boot-failure", "ecu": "bms", "vin": vin}])
    # Both attempts (one retry) failed at bms's trial boot, after ecm was flashed.
    outcomes = out.outcomes_of(vin)
    assert [state for state, _ in outcomes] == ["rolled_back", "rolled_back"]
    assert all(
        detail.startswith("bms: boot: the new image failed its trial boot")
        for _, detail in outcomes
    )
    action = out.actions[vin]
    assert (action.state, action.failure_step, action.attempts) == (
        ActionState.ROLLED_BACK,
        "bms: boot",
        2,
    )
    assert out.runs(vin) == {"1.0.0"}
    assert out.world.backend_vehicles()[vin].ecus == out.world.cars[vin].ecus
    assert out.states() == {"succeeded": 199, "rolled_back": 1}
    assert out.fault_log()[-1] == "took effect 2 time(s)"
    assert out.consistent()


def test_power_cut_fails_or_rolls_back_by_where_it_strikes(tmp_path: Path) -> None:
    first, last, fleetwide = fleet_vin(1), fleet_vin(2), fleet_vin(3)
    out = run_fleet(
        tmp_path,
        [
            # The first ECU: nothing flashed before it, nothing to roll back.
            {"kind": "power-cut", "ecu": "ecm", "vin": first, "during_flash_of": "ecm"},
            # The last ECU, 60000 bytes into its transfer: ecm and bms go back.
            {
                "kind": "power-cut",
                "ecu": "bcm",
                "vin": last,
                "offset": 60000,
                "restore_after_s": 600,
            },
        ],
        campaign={**ONE_WAVE, "max_retries": 0},
    )
    assert out.outcomes_of(first) == [
        (
            "failed",
            "ecm: programming session: power lost during the programming session: "
            "the ECU stopped answering",
        )
    ]
    assert out.outcomes_of(last) == [
        (
            "rolled_back",
            "bcm: transfer: power lost at byte 60000 of the transfer: the ECU stopped "
            "answering (power-cut fault)",
        )
    ]
    # The cut came where the bus model puts byte 60000: 4 fixed steps after ecm and bms.
    bus = out.world.bus
    before = bus.flash_s(512 * 1024) + bus.flash_s(256 * 1024)
    at_cut = before + 9 * bus.fixed_s / 13 + bus.erase_s + bus.transfer_s(60000)
    rollback = 2 * (bus.fixed_s + bus.boot_s)
    assert out.install_s(last) == pytest.approx(at_cut + rollback)
    for vin in (first, last):
        assert out.runs(vin) == {"1.0.0"}
    assert out.actions[fleetwide].state is ActionState.SUCCEEDED
    assert out.states() == {"succeeded": 198, "failed": 1, "rolled_back": 1}
    # A power-back time the model does not keep is not dropped in silence.
    armed = [line for line in out.fault_log("power-cut") if "armed" in line]
    assert armed == [
        f"{last} bcm: power cut armed at byte 60000 of the next transfer "
        "(restore_after_s=600 is not modeled: the ECU runs its previous image when the "
        "gateway next reads it)"
    ]
    assert out.consistent()


def test_a_power_cut_at_a_moment_hits_every_vehicle_flashing_that_ecu(tmp_path: Path) -> None:
    # Find when the first vehicle flashes bcm in a run without faults (1 s into bcm:
    # its transfer), then cut bcm's power there in the same run with the fault.
    plain = run_fleet(tmp_path, [], seed=11)
    bus = plain.world.bus
    into_bcm = bus.flash_s(512 * 1024) + bus.flash_s(256 * 1024) + 1.0
    vin = min(plain.actions, key=lambda v: plain.moment(v, ActionState.INSTALLING)[0])
    at = plain.moment(vin, ActionState.INSTALLING)[0] + into_bcm
    out = run_fleet(
        tmp_path,
        [{"kind": "power-cut", "ecu": "bcm", "at_s": at}],
        seed=11,
        campaign={**ONE_WAVE, "max_retries": 0},
    )
    assert out.fault_log() == ["1 vehicle(s) bcm: power off while flashing"]
    assert out.outcomes_of(vin) == [
        (
            "rolled_back",
            "bcm: transfer: power lost during the transfer: the ECU stopped answering",
        )
    ]
    assert out.states() == {"succeeded": 199, "rolled_back": 1}
    assert out.consistent()


def test_slow_erase_lengthens_that_vehicles_installation(tmp_path: Path) -> None:
    vin = fleet_vin(7)
    out = run_fleet(tmp_path, [{"kind": "slow-erase", "ecu": "bms", "vin": vin, "duration_s": 600}])
    bus = out.world.bus
    normal = sum(bus.flash_s(kib * 1024) for kib in (512, 256, 128))
    # The erase takes 600 s instead of the bus model's erase time; nothing else changes.
    assert out.install_s(vin) == pytest.approx(normal + 600 - bus.erase_s)
    others = {round(out.install_s(v), 6) for v in out.actions if v != vin}
    assert others == {round(normal, 6)}
    assert out.states() == {"succeeded": 200}
    assert out.fault_log()[-1] == "took effect 1 time(s)"


def test_nrc_fails_the_step_that_sends_the_service_and_names_the_code(tmp_path: Path) -> None:
    refused, transfer = fleet_vin(3), fleet_vin(4)
    out = run_fleet(
        tmp_path,
        [
            {"kind": "nrc", "vin": refused, "ecu": "bms", "service": 0x27, "code": 0x22},
            {"kind": "nrc", "vin": transfer, "ecu": "ecm", "service": 0x36, "code": 0x72},
            # Not a service a flash sends: no effect.
            {"kind": "nrc", "ecu": "bcm", "service": 0x14, "code": 0x31, "count": 5},
        ],
    )
    # Refused once (count 1): the retry went through.
    assert out.outcomes_of(refused) == [
        ("rolled_back", "bms: security access: negative response 0x22 (ConditionsNotCorrect)"),
        ("succeeded", ""),
    ]
    assert out.outcomes_of(transfer) == [
        ("failed", "ecm: transfer: block 0x01: negative response 0x72 (GeneralProgrammingFailure)"),
        ("succeeded", ""),
    ]
    assert "bcm of every vehicle: no effect, a flash does not use service 0x14" in out.fault_log()
    assert out.states() == {"succeeded": 200}
    assert out.consistent()


def test_frame_loss_fails_the_flashes_it_overlaps(tmp_path: Path) -> None:
    start, length = 30000.0, 20000.0
    out = run_fleet(
        tmp_path,
        [
            {"kind": "frame-loss", "at_s": start, "duration_s": length, "probability": 0.001},
        ],
        campaign={**ONE_WAVE, "max_retries": 0},
    )
    over = out.fault_log()[-1]
    assert over.startswith("every vehicle: frame loss over; ")
    failures = {
        vin: detail
        for vin in out.actions
        for state, detail in out.outcomes_of(vin)
        if state != "succeeded"
    }
    assert failures and all("frame-loss fault" in detail for detail in failures.values())
    assert over.endswith(f", {len(failures)} failed")
    # Each failed while the frames were being lost ...
    for vin in failures:
        ended = max(out.moment(vin, ActionState.FAILED) + out.moment(vin, ActionState.ROLLED_BACK))
        assert start <= ended <= start + length + 10
    # ... most in a transfer, where a lost flow control frame is fatal.
    assert Counter(d.split(": ")[1] for d in failures.values()).most_common(1)[0][0] == "transfer"
    # Flashes entirely outside the window succeeded.
    assert all(
        out.actions[v].state is ActionState.SUCCEEDED
        for v in out.actions
        if out.moment(v, ActionState.INSTALLING)[0] > start + length
    )
    assert out.consistent()


def test_frame_loss_on_one_ecus_ids_fails_only_its_flashes(tmp_path: Path) -> None:
    out = run_fleet(
        tmp_path,
        [
            {
                "kind": "frame-loss",
                "at_s": 0,
                "duration_s": 400000,
                "probability": 0.0005,
                "can_ids": [0x7E9],  # bms's responses
            }
        ],
        campaign={**ONE_WAVE, "max_retries": 0},
    )
    failed = [a for a in out.actions.values() if a.state is not ActionState.SUCCEEDED]
    assert failed
    assert {a.failure_step.split(": ")[0] for a in failed} == {"bms"}
    assert all(a.state is ActionState.ROLLED_BACK for a in failed)  # ecm had been flashed
    assert out.consistent()


# --------------------------------------------------------------------- artifact
def test_a_tampered_artifact_fails_every_download_and_pauses_the_campaign(
    tmp_path: Path,
) -> None:
    out = run_fleet(
        tmp_path,
        [{"kind": "tampered-artifact", "ecu": "bms"}],
        campaign={"waves": [{"percent": 5}]},  # 3 % error threshold
        expect="auto-pause",
    )
    assert out.run.passed, [c for c in out.run.checks if not c.passed]
    campaign = out.world.campaign()
    assert campaign.auto_paused and campaign.pause_reason.startswith("error threshold")
    # The stored bytes really changed; the release still names the signed digest.
    release = out.world.backend.get_release(out.world.release_id)
    image = next(i for i in release.images if i.ecu == "bms")
    stored = hashlib.sha256(out.world.backend.artifacts.path(image.sha256).read_bytes())
    assert stored.hexdigest() != image.sha256
    tried = [a for a in out.actions.values() if a.attempts]
    assert tried
    for action in tried:
        # Failed, or granted its retry, which the pause holds back.
        assert action.state in (ActionState.FAILED, ActionState.PENDING)
        assert [state for state, _ in out.outcomes_of(action.vin)] == ["failed"] * action.attempts
        assert action.failure_step == "download"
        assert action.failure_reason == (
            f"artifact for bms has SHA-256 {stored.hexdigest()}, the signed release names "
            f"{image.sha256}: refused"
        )
        assert out.moment(action.vin, ActionState.INSTALLING) == []
        assert out.runs(action.vin) == {"1.0.0"}
    assert out.consistent()


# ---------------------------------------------------------------- determinism
def test_same_seed_and_faults_give_the_same_log(tmp_path: Path) -> None:
    faults: list[dict[str, Any]] = [
        {"kind": "backend-restart", "at_s": 20000, "down_s": 7200},
        {"kind": "network-partition", "at_s": 50000, "duration_s": 3600},
        {"kind": "gateway-restart", "at_s": 60000, "down_s": 60},
        {"kind": "frame-loss", "at_s": 70000, "duration_s": 3600, "probability": 0.0002},
        {"kind": "boot-failure", "ecu": "bcm", "vin": fleet_vin(5)},
    ]
    first = run_fleet(tmp_path, faults, seed=9, vehicles=500)
    second = run_fleet(tmp_path, faults, seed=9, vehicles=500)
    other = run_fleet(tmp_path, faults, seed=10, vehicles=500)
    assert first.run.log.digest() == second.run.log.digest()
    assert [e.line() for e in first.run.log.entries] == [e.line() for e in second.run.log.entries]
    assert other.run.log.digest() != first.run.log.digest()
    assert first.consistent() and other.consistent()


# ------------------------------------------------- a cancel the vehicle missed
class _AbortWhileOutOfReach(Scenario):
    """One vehicle installs while its link is cut; the operator aborts meanwhile."""

    name = "abort-while-out-of-reach"
    fidelity = "modeled"
    Params = FleetParams
    time_limit_s = 11 * 86400.0
    plan: ClassVar[dict[str, float]] = {}
    kept: ClassVar[list[tuple[FleetWorld, FleetFaults]]] = []

    def main(self) -> ProcessGenerator:
        run = self.run
        params = run.params
        assert isinstance(params, FleetParams)
        world = FleetWorld(run, params)
        world.build()
        faults = FleetFaults(world, params.faults)
        world.start_campaign(params.campaign)
        faults.start()
        type(self).kept = [(world, faults)]
        if "abort_at" in self.plan:
            yield run.env.timeout(self.plan["abort_at"])
            world.abort("the operator stops the campaign")
        yield run.env.timeout(10 * 86400 - run.now)
        faults.finish()


def test_an_abort_the_vehicle_could_not_hear_leaves_it_updated_and_canceled(
    tmp_path: Path,
) -> None:
    # The real gateway reports "installing" on its reporter thread and flashes
    # anyway; out of reach, it cannot learn of a cancel. Once back, its outcome
    # is refused, and its next check-in tells the backend what it runs.
    vin = fleet_vin(0)
    values = {"vehicles": 20, "population": HEALTHY, "failure": NO_FAILURES, "campaign": ONE_WAVE}

    def run(faults: list[dict[str, Any]], plan: dict[str, float]) -> FleetWorld:
        _AbortWhileOutOfReach.plan = plan
        params = make_params(_AbortWhileOutOfReach, {**values, "faults": faults})
        done = execute(_AbortWhileOutOfReach, params, seed=2, directory=tmp_path / f"{len(plan)}")
        assert done.error == "", done.error
        return _AbortWhileOutOfReach.kept[0][0]

    # Without effect, a fault leaves the run as it was: find when vin installs.
    plain = run([{"kind": "nrc", "ecu": "ecm", "service": 0x19, "code": 0x22}], {})
    installing = next(
        e.at
        for e in plain.backend_events()
        if e.vin == vin and e.action_state is ActionState.INSTALLING
    )
    cut = [{"kind": "network-partition", "vin": vin, "at_s": installing - 1, "duration_s": 7200}]
    world = run(cut, {"abort_at": installing + 10})
    action = next(
        a for a in world.backend.list_actions(world.campaign_id, (), Page(size=100)) if a.vin == vin
    )
    assert action.state is ActionState.CANCELED
    assert {e.software_version for e in world.cars[vin].ecus} == {"2.0.0"}
    assert world.backend_vehicles()[vin].ecus == world.cars[vin].ecus
    wrong_vehicle, wrong_backend = world.disagreements()
    assert (wrong_vehicle, wrong_backend) == (1, 0)

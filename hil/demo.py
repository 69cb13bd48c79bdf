"""The end-to-end OTA demo on the embedded defaults.

The bundled backend (SQLite in a temporary data directory, gRPC on
loopback), the demo vehicle's three simulated ECUs on an in-process virtual
CAN bus and its gateway, and three campaigns run by the operator:

1. a signed release of 1.1.0 for all three ECUs: every ECU updated;
2. a release of 1.2.0 whose second ECU fails its trial boot: that ECU
   reverts on its own, the gateway rolls the first one back, the third is
   never touched, and the vehicle runs 1.1.0 everywhere again;
3. a release whose stored image was tampered with on the backend's disk
   after it was signed: the gateway refuses it before any ECU is touched.

Every outcome is checked against the backend's record and the ECUs
themselves.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecu_sim import demo_vehicle
from gateway.orchestrator import DeploymentOutcome
from ota_formats.uds import DTC_BOOT_REVERTED
from ota_formats.vehicle import VehicleSpec
from scenarios.wire import WireWorld, action_state

IMAGE_BYTES = 64 * 1024
DEPLOYMENT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class DemoCase:
    """One campaign of the demo and what it must lead to."""

    title: str
    version: str
    counter: int
    expect_state: str
    """The deployment's final state as the backend records it."""
    expect_versions: str
    """What every ECU runs afterwards."""
    expect_campaign: str
    fail_boot: str | None = None
    tamper: str | None = None


@dataclass
class DemoOutcome:
    """A case, what happened, and whether it is what was expected."""

    case: DemoCase
    vin: str
    deployment: DeploymentOutcome | None
    action_state: str
    campaign_state: str
    campaign_note: str
    versions: dict[str, str]
    duration_s: float
    problems: list[str] = field(default_factory=list)

    @property
    def as_expected(self) -> bool:
        """Whether every check held."""
        return not self.problems


def demo_cases() -> list[DemoCase]:
    """Return the demo's campaigns, in order."""
    return [
        DemoCase("update", "1.1.0", 2, "succeeded", "1.1.0", "completed"),
        DemoCase(
            "boot failure",
            "1.2.0",
            3,
            "rolled_back",
            "1.1.0",
            "paused",
            fail_boot="bms",
        ),
        DemoCase("tampered", "1.3.0", 4, "failed", "1.1.0", "paused", tamper="bcm"),
    ]


def _bank_records(world: WireWorld, vin: str) -> dict[str, Any]:
    sim = world.vehicle(vin).sim
    return {
        name: (ecu.boot_status, [b.sha256 for b in ecu.server.boot.record.banks])
        for name, ecu in sim.ecus.items()
    }


def _judge(
    world: WireWorld,
    case: DemoCase,
    outcome: DemoOutcome,
    banks_before: dict[str, Any],
) -> None:
    vin = world.vehicle().vin
    problems = outcome.problems
    if outcome.action_state != case.expect_state:
        problems.append(f"backend records {outcome.action_state}, expected {case.expect_state}")
    deployment = outcome.deployment
    if deployment is None:
        problems.append("the gateway reported no outcome")
    elif deployment.state != case.expect_state:
        problems.append(f"the gateway ended {deployment.state}, expected {case.expect_state}")
    wrong = {n: v for n, v in outcome.versions.items() if v != case.expect_versions}
    if wrong:
        problems.append(f"ECUs run {wrong}, expected {case.expect_versions} everywhere")
    if outcome.campaign_state != case.expect_campaign:
        problems.append(f"campaign is {outcome.campaign_state}, expected {case.expect_campaign}")
    sim = world.vehicle(vin).sim
    if case.fail_boot is not None:
        if DTC_BOOT_REVERTED not in sim.ecu(case.fail_boot).dtcs:
            problems.append(f"{case.fail_boot} has no DTC of its reverted boot")
        if deployment is not None and not deployment.failure_step.startswith(case.fail_boot):
            problems.append(f"failure at {deployment.failure_step!r}, expected {case.fail_boot}")
    if case.tamper is not None:
        if deployment is not None and deployment.failure_step != "verify image":
            problems.append(f"refused at {deployment.failure_step!r}, expected 'verify image'")
        if _bank_records(world, vin) != banks_before:
            problems.append("an ECU was programmed although the release did not verify")


def run_demo(
    *,
    vehicle: VehicleSpec | None = None,
    directory: Path | None = None,
    image_bytes: int = IMAGE_BYTES,
    on_case: Callable[[DemoCase], None] | None = None,
    on_event: Callable[[str], None] | None = None,
) -> list[DemoOutcome]:
    """Run every demo campaign on a fresh world; return the judged outcomes."""
    spec = vehicle or demo_vehicle()
    outcomes: list[DemoOutcome] = []
    with tempfile.TemporaryDirectory(prefix="hil-demo-") as tmp:
        root = directory or Path(tmp)
        with WireWorld(
            root,
            [spec],
            on_event=(lambda _vin, text: on_event(text)) if on_event else None,
        ) as world:
            wire = world.vehicle(spec.vin)
            for case in demo_cases():
                if on_case is not None:
                    on_case(case)
                started = time.monotonic()
                release = world.release_for(
                    spec.vin, case.version, case.counter, size=image_bytes, name=case.title
                )
                if case.tamper is not None:
                    entry = next(i for i in release.images if i.ecu == case.tamper)
                    world.tamper_artifact(entry.sha256)
                if case.fail_boot is not None:
                    wire.sim.ecu(case.fail_boot).faults.fail_boot()
                banks_before = _bank_records(world, spec.vin)
                seen = len(wire.outcomes)
                campaign_id = world.operator.start_campaign(
                    release.release_id, [spec.vin], name=case.title
                )
                action = world.operator.wait_action(
                    campaign_id, spec.vin, timeout_s=DEPLOYMENT_TIMEOUT_S
                )
                deadline = time.monotonic() + 10.0
                while len(wire.outcomes) <= seen and time.monotonic() < deadline:
                    time.sleep(0.02)
                deployment = wire.outcomes[seen] if len(wire.outcomes) > seen else None
                campaign = world.operator.campaign(campaign_id)
                state = world.operator.campaign_state(campaign_id)
                note = campaign.pause_reason or ""
                outcome = DemoOutcome(
                    case=case,
                    vin=spec.vin,
                    deployment=deployment,
                    action_state=action_state(action),
                    campaign_state=state,
                    campaign_note=note,
                    versions=wire.versions(),
                    duration_s=time.monotonic() - started,
                )
                _judge(world, case, outcome, banks_before)
                outcomes.append(outcome)
                for ecu in wire.sim.ecus.values():
                    ecu.faults.clear()
    return outcomes


__all__ = ["DemoCase", "DemoOutcome", "demo_cases", "run_demo"]

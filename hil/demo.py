"""The end-to-end demo on the embedded defaults: in-process virtual CAN, the demo vehicle.

It builds signed images, flashes all three ECUs, shows a rollback (an image
whose boot is made to fail) and two refused images (a foreign signature and a
downgrade), and checks every outcome against what is expected.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import can
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ecu_sim import SimulatedVehicle, demo_vehicle
from gateway import DiagChannel, Flasher, FlashResult, FlashStep
from hil.cli._bus import virtual_channel
from ota_formats import build_image
from ota_formats.signing import dev_private_key
from ota_formats.uds import DTC_BOOT_REVERTED, BootResult
from ota_formats.vehicle import VehicleSpec

IMAGE_BYTES = 128 * 1024


@dataclass
class DemoCase:
    """One flash of the demo and what it should do."""

    title: str
    ecu: str
    version: str
    counter: int
    expect_ok: bool
    expect_step: FlashStep | None = None
    expect_version_after: str | None = None
    signer: str = "development key"
    fail_boot: bool = False
    size_bytes: int = IMAGE_BYTES


@dataclass
class DemoOutcome:
    """A case, its result, and whether the result is the expected one."""

    case: DemoCase
    result: FlashResult
    as_expected: bool
    note: str


def demo_cases() -> list[DemoCase]:
    """Return the demo's flashes, in order."""
    cases = [
        DemoCase("update", name, "1.1.0", 2, True, expect_version_after="1.1.0")
        for name in ("ecm", "bms", "bcm")
    ]
    cases += [
        DemoCase(
            "boot fails",
            "bms",
            "1.2.0",
            3,
            False,
            FlashStep.VERIFY,
            "1.1.0",
            fail_boot=True,
        ),
        DemoCase(
            "foreign key",
            "bcm",
            "1.2.0",
            3,
            False,
            FlashStep.CHECK_DEPENDENCIES,
            "1.1.0",
            signer="unknown key",
            size_bytes=32 * 1024,
        ),
        DemoCase(
            "downgrade",
            "ecm",
            "1.0.1",
            1,
            False,
            FlashStep.CHECK_DEPENDENCIES,
            "1.1.0",
            size_bytes=32 * 1024,
        ),
    ]
    return cases


def _payload(case: DemoCase) -> bytes:
    block = hashlib.sha256(f"{case.ecu}-{case.version}".encode()).digest()
    return (block * (case.size_bytes // len(block) + 1))[: case.size_bytes]


def _judge(case: DemoCase, result: FlashResult, sim: SimulatedVehicle) -> tuple[bool, str]:
    if case.expect_ok:
        ok = result.ok and result.version_after == case.expect_version_after
        return ok, "runs the new image" if ok else "expected a successful update"
    failed_where = result.failure is not None and result.failure.step == case.expect_step
    runs = result.version_after == case.expect_version_after
    note = f"refused at {case.expect_step}" if failed_where else "unexpected failure step"
    if case.fail_boot:
        status = result.boot_status_after
        reverted = status is not None and status.last_boot_result == BootResult.REVERTED
        dtc = DTC_BOOT_REVERTED in sim.ecu(case.ecu).dtcs
        note = "reverted to the previous bank, DTC stored" if reverted and dtc else "no revert"
        return failed_where and runs and reverted and dtc, note
    return failed_where and runs, note


def run_demo(
    *,
    vehicle: VehicleSpec | None = None,
    state_dir: Path | None = None,
    on_case: Callable[[DemoCase], None] | None = None,
    flash: Callable[[Flasher, bytes], FlashResult] | None = None,
) -> list[DemoOutcome]:
    """Run every demo case on a fresh in-process bus; return the judged outcomes."""
    spec = vehicle or demo_vehicle()
    channel = virtual_channel("hil-demo")
    fd = spec.can.fd
    ecu_bus = can.Bus(interface="virtual", channel=channel, fd=fd)
    tester = can.Bus(interface="virtual", channel=channel, fd=fd)
    dev_key = dev_private_key()
    foreign_key = Ed25519PrivateKey.generate()
    outcomes: list[DemoOutcome] = []
    with tempfile.TemporaryDirectory(prefix="hil-demo-") as tmp:
        directory = state_dir or Path(tmp)
        notifier = can.Notifier(tester, [], timeout=0.1)
        try:
            with SimulatedVehicle(spec, ecu_bus, state_dir=directory) as sim:
                for case in demo_cases():
                    if on_case is not None:
                        on_case(case)
                    target = sim.ecu(case.ecu)
                    if case.fail_boot:
                        target.faults.fail_boot()
                    key = dev_key if case.signer == "development key" else foreign_key
                    image = build_image(
                        _payload(case),
                        hardware_id=target.spec.hardware_id,
                        version=case.version,
                        anti_rollback_counter=case.counter,
                        private_key=key,
                    )
                    with DiagChannel(tester, notifier, spec, target.spec) as diag:
                        flasher = Flasher(diag)
                        result = flash(flasher, image) if flash else flasher.flash(image)
                    ok, note = _judge(case, result, sim)
                    outcomes.append(DemoOutcome(case, result, ok, note))
                    target.faults.clear()
                    time.sleep(0.05)
        finally:
            notifier.stop()
            tester.shutdown()
            ecu_bus.shutdown()
    return outcomes

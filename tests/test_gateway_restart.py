"""The gateway killed mid-flash and started again: ``hil gateway run`` as a child process.

The backend and the simulated vehicle run in this process; the gateway runs
in its own, reaching the vehicle's virtual bus through python-can-remote's
server on loopback. It is SIGKILLed while it transfers the second ECU's
image, then started again from the same state directory: it must finish the
deployment (or roll it back when the resumed flash fails), and report it once.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import can
import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import HilRun, wait_for

from backend_stub.pki import write_private_key
from backend_stub.server import BackendConfig, serve
from ecu_sim import SimulatedVehicle, demo_vehicle
from ota_formats.uds import Session
from scenarios.wire import Operator, action_state, signed_image

pytestmark = pytest.mark.timeout(240)

IMAGE_BYTES = 96 * 1024


def gateway_process(*args: str) -> HilRun:
    """``hil gateway run ARGS`` in a child process."""
    return HilRun("gateway", "run", *args)


@pytest.fixture
def rig(tmp_path: Path, channel: str, remote: str) -> Iterator[dict]:
    spec = demo_vehicle().with_overrides(ecu_defaults={"timing": {"erase_time_ms": 0}})
    key = tmp_path / "release.pem"
    write_private_key(key, Ed25519PrivateKey.generate())
    backend = serve(
        BackendConfig(
            data_dir=tmp_path / "backend",
            listen="127.0.0.1:0",
            insecure=True,
            release_key=key,
            tick_interval_s=0.2,
        )
    )
    bus = can.Bus(interface="virtual", channel=channel)
    sim = SimulatedVehicle(spec, bus, state_dir=tmp_path / "ecus").start()
    operator_channel = grpc.insecure_channel(f"127.0.0.1:{backend.port}")
    args = [
        "--insecure",
        "--backend",
        f"127.0.0.1:{backend.port}",
        "--release-key",
        str(key),
        "--state-dir",
        str(tmp_path / "gateway"),
        "--checkin-interval",
        "0.2",
        "-i",
        "remote",
        "-c",
        remote,
    ]
    try:
        yield {
            "spec": spec,
            "sim": sim,
            "operator": Operator(operator_channel),
            "args": args,
            "state": tmp_path / "gateway",
        }
    finally:
        operator_channel.close()
        sim.stop()
        bus.shutdown()
        backend.stop(0)


def _start_update(rig: dict) -> str:
    spec = rig["spec"]
    images = [(e.name, signed_image(e, "1.1.0", 2, size=IMAGE_BYTES)) for e in spec.ecus]
    release = rig["operator"].create_release("r", "1.1.0", images)
    return rig["operator"].start_campaign(release.release_id, [spec.vin], max_retries=0)


def _kill_while_transferring(rig: dict, gateway: HilRun, ecu: str) -> None:
    """SIGKILL the gateway once ``ecu`` is in its programming session, mid-transfer."""
    sim = rig["sim"]
    gateway.wait_for_line(f"flashing {ecu}", 60)
    assert wait_for(lambda: sim.ecu(ecu).session == Session.PROGRAMMING, timeout=30)
    # Let part of the image cross the bus, not all of it.
    assert wait_for(lambda: sim.ecu(ecu).server.boot.downloading, timeout=30)
    gateway.stop(signal.SIGKILL)
    assert gateway.process.returncode == -signal.SIGKILL


def test_killed_mid_flash_resumes_and_completes(rig: dict) -> None:
    sim, operator, spec = rig["sim"], rig["operator"], rig["spec"]
    first = gateway_process(*rig["args"])
    try:
        first.wait_for_line("registered", 60)
        campaign = _start_update(rig)
        _kill_while_transferring(rig, first, "bms")
    finally:
        if first.process.poll() is None:
            first.stop(signal.SIGKILL)
    # Killed half way: ecm runs its new image on trial, bms and bcm the old one.
    assert sim.ecu("ecm").version == "1.1.0"
    assert sim.ecu("ecm").boot_status.anti_rollback_counter == 1
    assert sim.ecu("bms").version == "1.0.0"
    assert sim.ecu("bcm").version == "1.0.0"
    assert (rig["state"] / "gateway.json").is_file()
    assert action_state(operator.action(campaign, spec.vin)) == "installing"

    second = gateway_process(*rig["args"])
    try:
        action = operator.wait_action(campaign, spec.vin, timeout_s=120)
    finally:
        second.stop(signal.SIGTERM)
    assert action_state(action) == "succeeded", second.text
    assert action.attempts == 1
    assert "resuming" in second.text
    for name in ("ecm", "bms", "bcm"):
        ecu = sim.ecu(name)
        assert ecu.version == "1.1.0"
        # Confirmed: the anti-rollback counter rose to the new image's.
        assert ecu.boot_status.anti_rollback_counter == 2
    # ecm was kept from the first run, not flashed again.
    assert second.text.count("flashing ecm") == 0
    assert operator.campaign_state(campaign) == "completed"
    inventory = {e.name: e.software_version for e in operator.vehicle(spec.vin).ecus}
    assert inventory == {"ecm": "1.1.0", "bms": "1.1.0", "bcm": "1.1.0"}


def test_killed_mid_flash_then_failing_ecu_rolls_back_after_restart(rig: dict) -> None:
    sim, operator, spec = rig["sim"], rig["operator"], rig["spec"]
    first = gateway_process(*rig["args"])
    try:
        first.wait_for_line("registered", 60)
        campaign = _start_update(rig)
        _kill_while_transferring(rig, first, "bms")
    finally:
        if first.process.poll() is None:
            first.stop(signal.SIGKILL)
    # The resumed flash of bms will fail its trial boot.
    sim.ecu("bms").faults.fail_boot()
    bcm_banks = [b.sha256 for b in sim.ecu("bcm").server.boot.record.banks]

    second = gateway_process(*rig["args"])
    try:
        action = operator.wait_action(campaign, spec.vin, timeout_s=120)
    finally:
        second.stop(signal.SIGTERM)
    assert action_state(action) == "rolled_back", second.text
    assert action.failure_step.startswith("bms")
    # The whole vehicle is back on its previous versions; bcm was never touched.
    assert {n: e.version for n, e in sim.ecus.items()} == {
        "ecm": "1.0.0",
        "bms": "1.0.0",
        "bcm": "1.0.0",
    }
    assert [b.sha256 for b in sim.ecu("bcm").server.boot.record.banks] == bcm_banks
    assert "rolling back ecm" in second.text

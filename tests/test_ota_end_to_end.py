"""End to end: the real backend over gRPC, the real gateway, the simulated demo vehicle.

Every test runs a :class:`~scenarios.wire.WireWorld` of its own in ``tmp_path``:
the bundled backend on a loopback port (SQLite), the demo vehicle's three ECUs on
a virtual CAN bus, and the vehicle's gateway on a thread. The operator drives
campaigns over the operator API; each outcome is judged twice: from the backend
(action state, failure step and reason, the campaign's events, the vehicle's
inventory) and from the simulated ECUs themselves (versions, boot status, bank
records, DTCs).
"""

from __future__ import annotations

import copy
import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import wait_for

from backend_stub.api import campaign_pb2, common_pb2, update_pb2
from backend_stub.service import OtaBackend
from ecu_sim import demo_vehicle
from ecu_sim.nvm import NvmRecord
from gateway.backend import BackendClient, Backoff, EcuInventory
from gateway.errors import BackendRefused
from gateway.orchestrator import DeploymentOutcome
from ota_formats.signing import public_key_bytes
from ota_formats.uds import DTC_BOOT_REVERTED, NO_BANK, BootResult, Session
from ota_formats.vehicle import VehicleSpec
from scenarios.wire import WireVehicle, WireWorld, action_state, signed_image

pytestmark = pytest.mark.timeout(120)

ECUS = ("ecm", "bms", "bcm")
IMAGE_BYTES = 12 * 1024
OLD, NEW = "1.0.0", "1.1.0"
DEPLOYMENT_TIMEOUT_S = 60.0
SPEED_UNMET = "vehicle speed 30 km/h, must be at most 0.5 km/h"


def fast_vehicle(**overrides: object) -> VehicleSpec:
    """The demo vehicle with instant erase and quick boots (the protocol is unchanged)."""
    return demo_vehicle().with_overrides(
        ecu_defaults={"timing": {"erase_time_ms": 0, "boot_time_ms": 5}}, **overrides
    )


@pytest.fixture
def make_world(tmp_path: Path) -> Iterator[Callable[..., WireWorld]]:
    """Build started :class:`WireWorld` s (closed at the end of the test)."""
    worlds: list[WireWorld] = []

    def make(*specs: VehicleSpec, **options: object) -> WireWorld:
        world = WireWorld(
            tmp_path / f"world{len(worlds)}",
            list(specs) or [fast_vehicle()],
            **options,
        )
        worlds.append(world)
        return world.__enter__()

    yield make
    for world in worlds:
        # A gateway stops between deployments: let one that waits for its preconditions end.
        for wire in world.vehicles.values():
            wire.sim.state.update(vehicle_speed_kph=0)
        world.close()


@pytest.fixture
def world(make_world: Callable[..., WireWorld]) -> WireWorld:
    """The fast demo vehicle with its gateway, and the backend."""
    return make_world()


# ------------------------------------------------------------------ helpers
@dataclass
class Deployed:
    """A campaign of one vehicle, as the backend and the gateway ended it."""

    campaign_id: str
    action: campaign_pb2.Action
    outcome: DeploymentOutcome
    events: list[campaign_pb2.CampaignEvent]

    @property
    def state(self) -> str:
        return action_state(self.action)

    @property
    def reports(self) -> list[str]:
        """The details of the vehicle's reports, in the order the backend recorded them."""
        return [e.detail for e in self.events if e.kind == "vehicle_report"]

    @property
    def final_report(self) -> str:
        """The detail of the report that ended the deployment."""
        final = [
            e
            for e in self.events
            if e.kind == "vehicle_report"
            and common_pb2.ActionState.Name(e.action_state) == f"ACTION_STATE_{self.state.upper()}"
        ]
        assert len(final) == 1, self.reports
        return final[0].detail


def start_campaign(world: WireWorld, release_id: str, *, force: bool = False) -> str:
    """Create and start a campaign of ``release_id`` on the world's only vehicle."""
    if not force:
        return world.operator.start_campaign(release_id, [world.vehicle().vin])
    campaigns = world.operator.campaigns
    created = campaigns.CreateCampaign(
        campaign_pb2.CreateCampaignRequest(
            name="forced",
            release_id=release_id,
            filter=common_pb2.VehicleFilter(vins=[world.vehicle().vin]),
            force=True,
            request_id=uuid.uuid4().hex,
        ),
        timeout=30,
    )
    campaigns.StartCampaign(
        campaign_pb2.CampaignRequest(campaign_id=created.campaign_id), timeout=30
    )
    return str(created.campaign_id)


def backend_back(world: WireWorld) -> None:
    """Start the backend again and wait until the operator's channel has reconnected."""
    world.start_backend()
    grpc.channel_ready_future(world.operator.channel).result(timeout=30)


def outcome_of(wire: WireVehicle, deployment_id: str) -> DeploymentOutcome:
    """The gateway's own account of a deployment (it follows the final report)."""
    assert wait_for(
        lambda: any(o.deployment_id == deployment_id for o in wire.outcomes), timeout=15
    ), (wire.events, wire.errors)
    return next(o for o in wire.outcomes if o.deployment_id == deployment_id)


def finish(world: WireWorld, campaign_id: str) -> Deployed:
    """Wait for the vehicle's action to end; collect what the backend and gateway recorded."""
    wire = world.vehicle()
    action = world.operator.wait_action(campaign_id, wire.vin, timeout_s=DEPLOYMENT_TIMEOUT_S)
    outcome = outcome_of(wire, action.deployment_id)
    return Deployed(campaign_id, action, outcome, world.operator.events(campaign_id))


def deploy(world: WireWorld, release_id: str, *, force: bool = False) -> Deployed:
    """Run a campaign of ``release_id`` to its end."""
    return finish(world, start_campaign(world, release_id, force=force))


def make_release(
    world: WireWorld,
    version: str,
    counters: dict[str, int],
    *,
    sizes: dict[str, int] | None = None,
    hardware: dict[str, str] | None = None,
    compatible: dict[str, list[str]] | None = None,
) -> update_pb2.Release:
    """Upload images (ECU order of ``counters``) and create a release of them."""
    spec = world.vehicle().spec
    operator = world.operator
    entries = []
    for name, counter in counters.items():
        image = signed_image(
            spec.ecu(name),
            version,
            counter,
            size=(sizes or {}).get(name, IMAGE_BYTES),
            hardware_id=(hardware or {}).get(name),
        )
        entries.append(
            update_pb2.ReleaseImage(
                ecu=name,
                sha256=operator.upload(image),
                compatible_hardware_ids=(compatible or {}).get(name, []),
            )
        )
    release: update_pb2.Release = operator.update.CreateRelease(
        update_pb2.CreateReleaseRequest(
            name=f"release-{version}",
            version=version,
            images=entries,
            request_id=uuid.uuid4().hex,
        ),
        timeout=30,
    )
    return release


def nvm(wire: WireVehicle) -> dict[str, NvmRecord]:
    """A copy of every ECU's NVM record (banks, counters, DTCs, boot count)."""
    return {name: copy.deepcopy(ecu.server.boot.record) for name, ecu in wire.sim.ecus.items()}


def inventory(world: WireWorld) -> dict[str, tuple[str, int, int]]:
    """The backend's record of each ECU: (software version, active bank, anti-rollback)."""
    vehicle = world.operator.vehicle(world.vehicle().vin)
    return {e.name: (e.software_version, e.active_bank, e.anti_rollback) for e in vehicle.ecus}


def assert_rolled_back_by_bank_switch(wire: WireVehicle, name: str, before: NvmRecord) -> None:
    """The ECU runs its previous image from its old bank; the new one is still in the other."""
    ecu = wire.sim.ecu(name)
    record = ecu.server.boot.record
    status = ecu.boot_status
    assert ecu.version == OLD
    assert (status.active_bank, status.pending_bank) == (0, NO_BANK)
    # Never confirmed: the anti-rollback counter did not rise.
    assert status.anti_rollback_counter == before.anti_rollback_counter == 1
    assert record.banks[0] == before.banks[0]
    # A bank switch, not a re-flash: the new image is left valid in the other bank.
    assert (record.banks[1].state, record.banks[1].version) == ("valid", NEW)
    assert DTC_BOOT_REVERTED not in ecu.dtcs


def assert_untouched(wire: WireVehicle, names: tuple[str, ...], before: dict[str, NvmRecord]):
    """Nothing was written to these ECUs: their whole NVM record is as it was."""
    after = nvm(wire)
    for name in names:
        assert after[name] == before[name], name
        assert wire.sim.ecu(name).version == OLD
        assert wire.sim.ecu(name).session == Session.DEFAULT


# ------------------------------------------------------------------- 1. success
def test_multi_ecu_update_succeeds_is_confirmed_and_refuses_a_later_downgrade(
    world: WireWorld,
) -> None:
    wire = world.vehicle()
    before = nvm(wire)
    release = world.release_for(wire.vin, NEW, 2, size=IMAGE_BYTES)
    done = deploy(world, release.release_id)

    # The backend: succeeded, campaign completed, the new inventory.
    assert done.state == "succeeded", f"{done.action.failure_step}: {done.action.failure_reason}"
    assert (done.action.failure_step, done.action.failure_reason) == ("", "")
    assert done.action.progress_pct == 100
    assert done.action.attempts == 1
    assert world.operator.campaign_state(done.campaign_id) == "completed"
    assert inventory(world) == {name: (NEW, 1, 2) for name in ECUS}
    # Per-ECU progress reached the backend's event log, in the release's order.
    reports = done.reports
    milestones = [m for name in ECUS for m in (f"flashing {name}", f"{name} flashed")]
    positions = [
        next(i for i, text in enumerate(reports) if text.startswith(m)) for m in milestones
    ]
    assert positions == sorted(positions), reports
    for name in ECUS:
        assert f"{name} confirmed {OLD}->{NEW} at confirm" in done.final_report
    # The gateway says the same.
    assert done.outcome.state == "succeeded"
    assert done.outcome.acknowledged
    assert [(e.name, str(e.state), e.version_after) for e in done.outcome.ecus] == [
        (name, "confirmed", NEW) for name in ECUS
    ]

    # The ECUs: new version from the other bank, confirmed (counter raised), old bank kept.
    assert wire.versions() == dict.fromkeys(ECUS, NEW)
    for name in ECUS:
        ecu = wire.sim.ecu(name)
        status = ecu.boot_status
        record = ecu.server.boot.record
        assert (status.active_bank, status.pending_bank) == (1, NO_BANK)
        assert status.anti_rollback_counter == 2
        assert status.last_boot_result == BootResult.OK
        assert record.confirmed
        assert record.banks[0] == before[name].banks[0]
        assert (record.banks[1].version, record.banks[1].anti_rollback_counter) == (NEW, 2)

    # A release with a lower anti-rollback counter is refused before any ECU is touched.
    confirmed = nvm(wire)
    downgrade = world.release_for(wire.vin, "1.0.1", 1, size=IMAGE_BYTES)
    refused = deploy(world, downgrade.release_id)
    assert refused.state == "failed"
    assert refused.action.failure_step == "check release"
    assert "ecm: downgrade refused" in refused.action.failure_reason
    assert "counter 1" in refused.action.failure_reason
    assert refused.outcome.state == "failed"
    assert inventory(world) == {name: (NEW, 1, 2) for name in ECUS}
    assert nvm(wire) == confirmed
    assert wire.versions() == dict.fromkeys(ECUS, NEW)


# ------------------------------------------------- 2. failure of each ECU in turn
@pytest.mark.parametrize("failing", ECUS)
def test_failed_boot_of_each_ecu_rolls_back_the_ones_before(world: WireWorld, failing: str) -> None:
    wire = world.vehicle()
    index = ECUS.index(failing)
    earlier, later = ECUS[:index], ECUS[index + 1 :]
    before = nvm(wire)
    release = world.release_for(wire.vin, NEW, 2, size=IMAGE_BYTES)
    wire.sim.ecu(failing).faults.fail_boot()
    done = deploy(world, release.release_id)

    # Nothing to roll back when the first ECU fails: the orchestrator reports failed.
    expected = "rolled_back" if earlier else "failed"
    assert done.state == expected
    assert done.outcome.state == expected
    assert done.action.failure_step == f"{failing}: verify"
    assert "failed its trial boot" in done.action.failure_reason
    assert world.operator.campaign_state(done.campaign_id) == "paused"
    assert inventory(world) == {name: (OLD, 0, 1) for name in ECUS}
    final = done.final_report
    for name in earlier:
        assert f"{name} rolled_back {OLD}->{NEW}" in final
        assert any(r.startswith(f"rolling back {name}") for r in done.reports)
    assert f"{failing} failed {OLD}->{NEW} at verify" in final
    for name in later:
        assert f"{name} not_started" in final
        assert not any(r.startswith(f"flashing {name}") for r in done.reports)
    states = {e.name: str(e.state) for e in done.outcome.ecus}
    assert states == {
        **dict.fromkeys(earlier, "rolled_back"),
        failing: "failed",
        **dict.fromkeys(later, "not_started"),
    }

    # Every ECU runs its previous version again.
    assert wire.versions() == dict.fromkeys(ECUS, OLD)
    for name in earlier:
        assert_rolled_back_by_bank_switch(wire, name, before[name])
    # The failing ECU reverted on its own, rejected the new image and stored a DTC.
    ecu = wire.sim.ecu(failing)
    record = ecu.server.boot.record
    assert ecu.boot_status.last_boot_result == BootResult.REVERTED
    assert (ecu.boot_status.active_bank, ecu.boot_status.anti_rollback_counter) == (0, 1)
    assert DTC_BOOT_REVERTED in ecu.dtcs
    assert record.banks[0] == before[failing].banks[0]
    assert (record.banks[1].state, record.banks[1].version) == ("rejected", NEW)
    # The ECUs after it were never touched.
    assert_untouched(wire, later, before)


@pytest.mark.parametrize(
    ("failing", "arm", "reason"),
    [
        pytest.param(
            "bms",
            lambda faults: faults.force_nrc(0x36, 0x72, count=1),
            "negative response 0x72",
            id="bms-nrc-on-transfer",
        ),
        pytest.param(
            "bcm",
            lambda faults: faults.power_cut_at(6000, restore_after_s=0.3),
            "no response",
            id="bcm-power-cut-mid-transfer",
        ),
    ],
)
def test_failure_mid_transfer_rolls_back_the_ecus_before(
    world: WireWorld, failing: str, arm: Callable[..., None], reason: str
) -> None:
    wire = world.vehicle()
    index = ECUS.index(failing)
    earlier, later = ECUS[:index], ECUS[index + 1 :]
    before = nvm(wire)
    release = world.release_for(wire.vin, NEW, 2, size=IMAGE_BYTES)
    arm(wire.sim.ecu(failing).faults)
    done = deploy(world, release.release_id)

    assert done.state == "rolled_back"
    assert done.outcome.state == "rolled_back"
    assert done.action.failure_step == f"{failing}: transfer"
    assert reason in done.action.failure_reason
    assert inventory(world) == {name: (OLD, 0, 1) for name in ECUS}
    for name in earlier:
        assert f"{name} rolled_back {OLD}->{NEW}" in done.final_report
    assert f"{failing} failed {OLD}->{NEW} at transfer" in done.final_report

    assert wire.versions() == dict.fromkeys(ECUS, OLD)
    for name in earlier:
        assert_rolled_back_by_bank_switch(wire, name, before[name])
    # The interrupted download left no image in the failing ECU's other bank.
    ecu = wire.sim.ecu(failing)
    record = ecu.server.boot.record
    assert (ecu.boot_status.active_bank, ecu.boot_status.pending_bank) == (0, NO_BANK)
    assert ecu.boot_status.anti_rollback_counter == 1
    assert record.banks[0] == before[failing].banks[0]
    assert record.banks[1].state == "erased"
    assert DTC_BOOT_REVERTED not in ecu.dtcs
    # It was restarted (power cut, or the gateway's reset after the failure): it booted again.
    assert record.boot_count > before[failing].boot_count
    assert_untouched(wire, later, before)


# ------------------------------------------------- 3. interrupted download resumed
class DownloadTap:
    """Records every Download the backend serves; stalls the first one of one artifact.

    The stall holds the stream after ``stall_after`` bytes so that the test can
    take the backend down while the gateway holds a partial file.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, stall_sha: str, stall_after: int):
        self.stall_sha = stall_sha
        self.stall_after = stall_after
        self.calls: list[dict] = []
        self.stalled = threading.Event()
        self.go_on = threading.Event()
        original = OtaBackend.download
        tap = self

        def download(
            backend: OtaBackend, sha256: str, *, offset: int, chunk_size: int, vin: str | None
        ) -> Iterator[tuple[int, bytes, int]]:
            chunks = original(backend, sha256, offset=offset, chunk_size=chunk_size, vin=vin)
            first = not any(c["sha256"] == sha256 for c in tap.calls)
            call = {"sha256": sha256, "offset": offset, "bytes": 0}
            tap.calls.append(call)

            def stream() -> Iterator[tuple[int, bytes, int]]:
                try:
                    for item in chunks:
                        if first and sha256 == tap.stall_sha and call["bytes"] >= stall_after:
                            tap.stalled.set()
                            tap.go_on.wait(30)
                            return
                        yield item
                        # Counted once gRPC took the chunk and asked for the next.
                        call["bytes"] += len(item[1])
                finally:
                    chunks.close()

            return stream()

        monkeypatch.setattr(OtaBackend, "download", download)

    def of(self, sha256: str) -> list[dict]:
        return [c for c in self.calls if c["sha256"] == sha256]


def test_download_interrupted_by_a_backend_outage_resumes_from_its_offset(
    make_world: Callable[..., WireWorld], monkeypatch: pytest.MonkeyPatch
) -> None:
    chunk = 1024
    world = make_world(gateway_options={"download_chunk_size": chunk})
    wire = world.vehicle()
    before = nvm(wire)
    sizes = {"ecm": 64 * 1024, "bms": 8 * 1024, "bcm": 8 * 1024}
    release = make_release(world, NEW, dict.fromkeys(ECUS, 2), sizes=sizes)
    images = {i.ecu: i for i in release.images}
    ecm = images["ecm"]
    tap = DownloadTap(monkeypatch, ecm.sha256, stall_after=24 * chunk)
    campaign = start_campaign(world, release.release_id)

    part = wire.gateway_dir / "artifacts" / f"{ecm.sha256}.part"
    assert tap.stalled.wait(30), wire.events
    # The gateway holds some of the image on disk when the backend goes away.
    assert wait_for(lambda: part.is_file() and part.stat().st_size > 0, timeout=10)
    assert wait_for(
        lambda: action_state(world.operator.action(campaign, wire.vin)) == "downloading", 10
    )
    seen = part.stat().st_size
    world.stop_backend()
    tap.go_on.set()
    # The broken stream leaves the gateway what it received; nothing more arrives meanwhile.
    time.sleep(0.5)
    interrupted_at = part.stat().st_size
    assert 0 < seen <= interrupted_at <= tap.stall_after < ecm.size_bytes
    assert not (wire.gateway_dir / "artifacts" / ecm.sha256).exists()
    backend_back(world)

    done = finish(world, campaign)
    assert done.state == "succeeded", f"{done.action.failure_step}: {done.action.failure_reason}"
    assert done.outcome.state == "succeeded"
    assert inventory(world) == {name: (NEW, 1, 2) for name in ECUS}
    assert done.action.attempts == 1

    # The backend served the ecm image from 0 until the outage, then only from the offset
    # of the partial file the gateway kept: what the gateway held was not sent again.
    calls = tap.of(ecm.sha256)
    assert (calls[0]["offset"], calls[0]["bytes"]) == (0, tap.stall_after)
    assert len(calls) >= 2
    assert all(c["offset"] == interrupted_at for c in calls[1:]), calls
    assert sum(c["bytes"] for c in calls[1:]) == ecm.size_bytes - interrupted_at
    for name in ("bms", "bcm"):
        assert [(c["offset"], c["bytes"]) for c in tap.of(images[name].sha256)] == [
            (0, images[name].size_bytes)
        ]
    # The gateway kept the complete, verified image for a later rollback.
    kept = wire.gateway_dir / "artifacts" / ecm.sha256
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == ecm.sha256
    assert not part.exists()

    # The ECUs run what was downloaded.
    assert wire.versions() == dict.fromkeys(ECUS, NEW)
    for name in ECUS:
        record = wire.sim.ecu(name).server.boot.record
        assert (
            record.banks[1].sha256
            == hashlib.sha256(
                (wire.gateway_dir / "artifacts" / images[name].sha256).read_bytes()
            ).hexdigest()
        )
        assert record.banks[0] == before[name].banks[0]
        assert wire.sim.ecu(name).boot_status.anti_rollback_counter == 2


# ------------------------------------------------ 4. backend restarted mid-flash
def test_backend_restart_while_flashing_does_not_stop_the_update(world: WireWorld) -> None:
    wire = world.vehicle()
    bms = wire.sim.ecu("bms")
    release = world.release_for(wire.vin, NEW, 2, size=IMAGE_BYTES)
    # bms erases slowly (answering 0x78 meanwhile): the backend goes down during its flash.
    bms.faults.slow_erase(3.0)
    campaign = start_campaign(world, release.release_id)

    assert wait_for(lambda: any("flashing bms" in e for e in wire.events), timeout=30)
    assert wait_for(lambda: bms.session == Session.PROGRAMMING, timeout=10)
    world.stop_backend()
    time.sleep(1.0)
    # The flash went on without the backend.
    assert bms.session == Session.PROGRAMMING
    assert wire.sim.ecu("ecm").version == NEW
    assert not wire.outcomes
    backend_back(world)

    done = finish(world, campaign)
    assert done.state == "succeeded", f"{done.action.failure_step}: {done.action.failure_reason}"
    assert done.action.attempts == 1
    assert done.outcome.state == "succeeded"
    assert done.outcome.acknowledged
    assert world.operator.campaign_state(campaign) == "completed"
    assert inventory(world) == {name: (NEW, 1, 2) for name in ECUS}
    # No report was lost across the restart: every milestone reached the backend, in order.
    reports = done.reports
    milestones = [m for name in ECUS for m in (f"flashing {name}", f"{name} flashed")]
    positions = [
        next(i for i, text in enumerate(reports) if text.startswith(m)) for m in milestones
    ]
    assert positions == sorted(positions), reports

    assert wire.versions() == dict.fromkeys(ECUS, NEW)
    for name in ECUS:
        status = wire.sim.ecu(name).boot_status
        assert (status.active_bank, status.anti_rollback_counter) == (1, 2)


# ----------------------------------------------------------- 5. preconditions
def test_deployment_waits_for_preconditions_then_succeeds(world: WireWorld) -> None:
    wire = world.vehicle()
    before = nvm(wire)
    wire.sim.state.update(vehicle_speed_kph=30)
    release = world.release_for(wire.vin, NEW, 2, size=IMAGE_BYTES)
    campaign = start_campaign(world, release.release_id)

    waiting = f"waiting for preconditions: {SPEED_UNMET}"

    def reported_waiting() -> bool:
        return any(e.detail == waiting for e in world.operator.events(campaign, wait_s=0.2))

    assert wait_for(reported_waiting, timeout=30, interval=0.1), wire.events
    # Downloaded and verified, but no ECU programmed while the vehicle moves.
    assert action_state(world.operator.action(campaign, wire.vin)) == "downloading"
    time.sleep(0.5)
    assert action_state(world.operator.action(campaign, wire.vin)) == "downloading"
    assert not any("flashing" in e for e in wire.events)
    assert len(list((wire.gateway_dir / "artifacts").iterdir())) == len(ECUS)
    assert_untouched(wire, ECUS, before)
    assert inventory(world) == {name: (OLD, 0, 1) for name in ECUS}

    wire.sim.state.update(vehicle_speed_kph=0)
    done = finish(world, campaign)
    assert done.state == "succeeded", f"{done.action.failure_step}: {done.action.failure_reason}"
    reports = done.reports
    assert (
        reports.index(waiting)
        < reports.index("preconditions met")
        < reports.index(next(r for r in reports if r.startswith("flashing ecm")))
    )
    assert inventory(world) == {name: (NEW, 1, 2) for name in ECUS}
    assert wire.versions() == dict.fromkeys(ECUS, NEW)
    for name in ECUS:
        assert wire.sim.ecu(name).boot_status.anti_rollback_counter == 2


def test_preconditions_lost_mid_update_abort_and_roll_back(
    world: WireWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire = world.vehicle()
    before = nvm(wire)
    release = world.release_for(wire.vin, NEW, 2, size=IMAGE_BYTES)
    # The hook: the vehicle drives off the moment the gateway has flashed ecm.
    assert wire.gateway is not None
    port = wire.gateway.orchestrator.ecus["ecm"]
    flash = port.flash
    drove_off = threading.Event()

    def flash_then_drive_off(image, **options):
        result = flash(image, **options)
        if result.ok:
            wire.sim.state.update(vehicle_speed_kph=30)
            drove_off.set()
        return result

    monkeypatch.setattr(port, "flash", flash_then_drive_off)
    done = deploy(world, release.release_id)

    assert drove_off.is_set()
    assert done.state == "rolled_back", done.reports
    assert done.outcome.state == "rolled_back"
    assert done.action.failure_step == "bms: preconditions"
    assert f"lost during the update: {SPEED_UNMET}" in done.action.failure_reason
    assert "ecm rolled_back" in done.final_report
    assert "bms failed" in done.final_report and "bcm not_started" in done.final_report
    assert inventory(world) == {name: (OLD, 0, 1) for name in ECUS}

    assert wire.versions() == dict.fromkeys(ECUS, OLD)
    assert_rolled_back_by_bank_switch(wire, "ecm", before["ecm"])
    assert_untouched(wire, ("bms", "bcm"), before)


# --------------------------------------------------- 6. refusals, nothing flashed
FOREIGN_KEY = Ed25519PrivateKey.generate()
"""A signing key neither the backend nor the vehicle trusts."""
OTHER_ANCHOR = public_key_bytes(Ed25519PrivateKey.generate().public_key()).hex()
"""The trust anchor of a vehicle that does not trust the development key."""


def _tampered(world: WireWorld) -> str:
    release = world.release_for(world.vehicle().vin, NEW, 2, size=IMAGE_BYTES)
    sha = next(i.sha256 for i in release.images if i.ecu == "bcm")
    path = world.directory / "backend" / "artifacts" / sha[:2] / sha
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return start_campaign(world, release.release_id)


def _foreign_signature(world: WireWorld) -> str:
    # The backend takes only images its trusted keys signed: foreign and unsigned are refused.
    spec = world.vehicle().spec
    foreign = signed_image(spec.ecu("ecm"), NEW, 2, size=IMAGE_BYTES, key=FOREIGN_KEY)
    for data in (foreign, b"\x00" * IMAGE_BYTES):
        with pytest.raises(grpc.RpcError) as refused:
            world.operator.upload(data)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "not an acceptable signed image" in refused.value.details()
    # Images the backend trusts, for a vehicle whose trust anchor is another key.
    release = world.release_for(world.vehicle().vin, NEW, 2, size=IMAGE_BYTES)
    return start_campaign(world, release.release_id)


def _foreign_hardware(world: WireWorld) -> str:
    counters = dict.fromkeys(ECUS, 2)
    release = make_release(world, NEW, counters, hardware={"bms": "OTHER-HW"})
    # The backend targets no vehicle with other hardware unless forced.
    with pytest.raises(grpc.RpcError) as refused:
        start_campaign(world, release.release_id)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "compatible hardware" in refused.value.details()
    return start_campaign(world, release.release_id, force=True)


def _declared_compatible_hardware(world: WireWorld) -> str:
    # The release says the OTHER-HW image also fits the bms; the ECU accepts only its own.
    release = make_release(
        world,
        NEW,
        dict.fromkeys(ECUS, 2),
        hardware={"bms": "OTHER-HW"},
        compatible={"bms": ["OTHER-HW", "HIL-BMS-HW01"]},
    )
    return start_campaign(world, release.release_id)


def _downgrade(world: WireWorld) -> str:
    # Factory counters are 2 (see the overrides); only bcm's image goes below.
    release = make_release(world, NEW, {"ecm": 3, "bms": 3, "bcm": 1})
    return start_campaign(world, release.release_id)


@pytest.mark.parametrize(
    ("setup", "overrides", "step", "reason"),
    [
        pytest.param(_tampered, {}, "verify image", "artifact for bcm has SHA-256", id="tampered"),
        pytest.param(
            _foreign_signature,
            {"signing": {"trust_anchors": [OTHER_ANCHOR]}},
            "verify image",
            "ecm: the image does not verify",
            id="foreign-signature",
        ),
        pytest.param(
            _foreign_hardware,
            {},
            "check release",
            "bms: the image is for hardware 'OTHER-HW', the ECU is 'HIL-BMS-HW01'",
            id="foreign-hardware",
        ),
        pytest.param(
            _declared_compatible_hardware,
            {},
            "check release",
            "bms: the image is for hardware 'OTHER-HW', the ECU is 'HIL-BMS-HW01'",
            id="declared-compatible-hardware",
        ),
        pytest.param(
            _downgrade,
            {"ecu_defaults": {"anti_rollback_counter": 2}},
            "check release",
            "bcm: downgrade refused",
            id="downgrade",
        ),
    ],
)
def test_refused_before_any_ecu_is_touched(
    make_world: Callable[..., WireWorld],
    setup: Callable[[WireWorld], str],
    overrides: dict[str, object],
    step: str,
    reason: str,
) -> None:
    spec = fast_vehicle()
    if overrides:
        spec = spec.with_overrides(**overrides)
    world = make_world(spec)
    wire = world.vehicle()
    before = nvm(wire)
    counter = before["ecm"].anti_rollback_counter
    done = finish(world, setup(world))

    assert done.state == "failed", done.reports
    assert done.action.failure_step == step
    assert reason in done.action.failure_reason
    assert (done.outcome.state, done.outcome.failure_step) == ("failed", step)
    assert world.operator.campaign_state(done.campaign_id) == "paused"
    # The ECUs the gateway had looked at when it refused: none of them was started.
    assert "not_started" in done.final_report
    for name in ECUS:
        for state in ("flashing", "flashed", "confirmed", "rolled_back"):
            assert f"{name} {state}" not in done.final_report
    assert not any(r.startswith("flashing") for r in done.reports)
    assert inventory(world) == {name: (OLD, 0, counter) for name in ECUS}

    assert not any("flashing" in e for e in wire.events)
    assert_untouched(wire, ECUS, before)


# ------------------------------------------- 7. another vehicle's deployment
OTHER_VIN = "WHLDMV00000000002"


def test_a_vehicle_cannot_read_download_or_report_another_vehicles_deployment(
    world: WireWorld, tmp_path: Path
) -> None:
    wire = world.vehicle()
    before = nvm(wire)
    # Vehicle A waits (it drives) with its deployment in progress and its images allowed.
    wire.sim.state.update(vehicle_speed_kph=30)
    release = world.release_for(wire.vin, NEW, 2, size=IMAGE_BYTES)
    campaign = start_campaign(world, release.release_id)
    assert wait_for(lambda: any("waiting for preconditions" in e for e in wire.events), 30)
    deployment_id = world.operator.action(campaign, wire.vin).deployment_id

    assert world.backend is not None
    channel = grpc.insecure_channel(f"127.0.0.1:{world.port}")
    try:

        def client(vin: str) -> BackendClient:
            return BackendClient(
                channel,
                vin,
                release_keys=[world.backend.release_public_key],
                backoff=Backoff(initial_s=0.05, max_s=0.2, give_up_after_s=5.0),
            )

        own, other = client(wire.vin), client(OTHER_VIN)
        other.register(
            [EcuInventory(name=e.name, hardware_id=e.hardware_id) for e in wire.spec.ecus],
            model="hil-demo",
        )
        # B is offered nothing, and every request naming A's deployment is refused.
        assert other.check_in()[0] == []
        with pytest.raises(BackendRefused) as refused:
            other.deployment(deployment_id)
        assert refused.value.code == "PERMISSION_DENIED"
        with pytest.raises(BackendRefused) as refused:
            other.deployment("dep-999999")
        assert refused.value.code == "NOT_FOUND"
        manifest = own.deployment(deployment_id).manifest  # A may read its own
        entry = manifest.images[0]
        with pytest.raises(BackendRefused) as refused:
            other.download(entry, tmp_path / "other")
        assert refused.value.code == "PERMISSION_DENIED"
        # Not a byte of it reached B (the client leaves at most an empty partial file).
        assert all(p.stat().st_size == 0 for p in (tmp_path / "other").iterdir())
        forged = [
            EcuInventory(name=e.name, hardware_id=e.hardware_id, software_version="6.6.6")
            for e in wire.spec.ecus
        ]
        with pytest.raises(BackendRefused) as refused:
            other.report(
                deployment_id, "failed", failure_step="x", failure_reason="forged", inventory=forged
            )
        assert refused.value.code == "PERMISSION_DENIED"
        # The same artifact is served to A: the refusals are about who asks.
        path = own.download(entry, tmp_path / "own")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
    finally:
        channel.close()

    action = world.operator.action(campaign, wire.vin)
    assert action_state(action) == "downloading"
    assert (action.failure_step, action.failure_reason) == ("", "")
    # The forged report's inventory was recorded for neither vehicle.
    assert inventory(world) == {name: (OLD, 0, 1) for name in ECUS}
    assert [e.software_version for e in world.operator.vehicle(OTHER_VIN).ecus] == ["", "", ""]
    assert_untouched(wire, ECUS, before)

    # A's deployment goes on unaffected.
    wire.sim.state.update(vehicle_speed_kph=0)
    done = finish(world, campaign)
    assert done.state == "succeeded", f"{done.action.failure_step}: {done.action.failure_reason}"
    assert done.action.attempts == 1
    assert {e.vin for e in done.events if e.vin} == {wire.vin}
    assert not any("forged" in r for r in done.reports)
    assert inventory(world) == {name: (NEW, 1, 2) for name in ECUS}
    assert wire.versions() == dict.fromkeys(ECUS, NEW)
    for name in ECUS:
        assert wire.sim.ecu(name).boot_status.anti_rollback_counter == 2

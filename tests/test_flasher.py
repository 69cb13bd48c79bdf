"""The UDS flasher against the simulated vehicle: the full sequence and its failure reports."""

from __future__ import annotations

import threading
import time

import cantools
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import make_image, wait_for

from gateway import DiagnosticError, DiagnosticTimeout, Flasher, FlashStep, RoutineRefused
from ota_formats.uds import DTC_BOOT_REVERTED, NO_BANK, BootResult, Session


def flash(world, ecu: str, image: bytes, **options):
    return Flasher(world.diag(ecu), **options).flash(image)


@pytest.mark.parametrize("vehicle_fixture", ["demo", "fd_vehicle"])
def test_full_sequence_classic_and_fd(request, make_world, vehicle_fixture):
    spec = request.getfixturevalue(vehicle_fixture)
    world = make_world(spec)
    frames = world.sniff()
    image = make_image(spec.ecu("ecm"), "2.0.0", 2, size=40_000)
    steps: list[FlashStep] = []
    result = flash(world, "ecm", image, on_progress=lambda p: steps.append(p.step))
    assert result.ok, result.failure
    assert (result.version_before, result.version_after) == ("1.0.0", "2.0.0")
    assert result.boot_status_after is not None
    assert result.boot_status_after.active_bank == 1
    # Confirmed by default: the counter rose, and the result reports it as the ECU keeps it.
    assert result.confirmed
    assert result.boot_status_after.anti_rollback_counter == 2
    assert world.vehicle.ecu("ecm").version == "2.0.0"
    assert world.vehicle.ecu("ecm").server.boot.record.confirmed
    assert list(dict.fromkeys(steps)) == list(FlashStep)
    diag = [m for m in frames if m.arbitration_id in (0x7E0, 0x7E8)]
    if spec.can.fd:
        assert any(m.is_fd and len(m.data) == 64 for m in diag)
    else:
        assert all(not m.is_fd and len(m.data) == 8 for m in diag)

    # Functional requests went out on 0x7DF: 10 83, 85 82, 28 83 01, then the restore.
    def functional() -> list[bytes]:
        data = [bytes(m.data) for m in list(frames) if m.arbitration_id == 0x7DF]
        return [d[1 : 1 + d[0]] if d[0] else d[2 : 2 + d[1]] for d in data]

    expected = [bytes.fromhex(h) for h in ("1083", "8582", "288301", "288001", "8581", "1081")]
    assert wait_for(lambda: all(e in functional() for e in expected)), functional()
    sent = functional()
    assert [sent.index(e) for e in expected] == sorted(sent.index(e) for e in expected)
    # The fingerprint was written.
    assert world.vehicle.ecu("ecm").server.boot.record.dids[0xF198] == b"HILTESTER1".hex()


def test_block_counter_wraps(make_world, demo):
    spec = demo.with_overrides(ecu_defaults={"max_block_length": 66})
    world = make_world(spec, ecus=["ecm"])
    frames = world.sniff()
    image = make_image(spec.ecu("ecm"), size=64 * 300)
    result = flash(world, "ecm", image)
    assert result.ok, result.failure
    # First frames of TransferData carry 0x36 and the counter: 1..FF, 00, 01 ...
    counters = [
        m.data[3]
        for m in frames
        if m.arbitration_id == 0x7E0 and m.data[0] >> 4 == 1 and m.data[2] == 0x36
    ]
    assert counters[:3] == [1, 2, 3]
    assert counters[254:258] == [0xFF, 0x00, 0x01, 0x02]


def test_slow_erase_is_waited_for_and_others_kept_in_session(make_world, demo):
    spec = demo.with_overrides(ecu_defaults={"timing": {"s3_ms": 600}})
    world = make_world(spec)
    world.vehicle.ecu("ecm").faults.slow_erase(2.0, pending_interval_s=0.02)
    bms = world.vehicle.ecu("bms")
    seen: list[Session] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.05):
            seen.append(bms.session)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = flash(world, "ecm", make_image(spec.ecu("ecm")), keepalive_interval_s=0.2)
    finally:
        stop.set()
        watcher.join()
    assert result.ok, result.failure
    assert result.step_durations_s[FlashStep.ERASE] >= 2.0
    # bms stayed in the extended session through a 2 s erase with S3 = 0.6 s: TesterPresent.
    extended = [s for s in seen if s == Session.EXTENDED]
    assert len(extended) >= 30
    assert wait_for(lambda: bms.session == Session.DEFAULT)


def test_communication_control_silences_other_ecus_during_flash(world):
    db = cantools.database.load_file(str(world.spec.dbc_path()))
    frames: list[tuple[float, int]] = []
    world.notifier.add_listener(lambda m: frames.append((time.monotonic(), m.arbitration_id)))
    world.vehicle.ecu("ecm").faults.slow_erase(1.0)
    marks: dict[str, float] = {}

    def progress(event) -> None:
        marks.setdefault(str(event.step), time.monotonic())

    result = flash(world, "ecm", make_image(world.spec.ecu("ecm")), on_progress=progress)
    assert result.ok
    bms_status = db.get_message_by_name("BMS_Status").frame_id
    start, end = marks["erase"] + 0.15, marks["request download"]
    during = [t for t, i in frames if i == bms_status and start <= t <= end]
    assert end - start > 0.6
    assert during == []
    # After the flash, communication is enabled again.
    assert wait_for(lambda: any(i == bms_status and t > time.monotonic() - 0.15 for t, i in frames))


def test_transfer_retries_a_block_whose_reply_was_lost(world):
    world.vehicle.ecu("ecm").faults.drop_responses(1, service=0x36)
    result = flash(world, "ecm", make_image(world.spec.ecu("ecm"), size=20_000))
    assert result.ok, result.failure
    assert result.retries == 1


def test_failure_reports_step_and_nrc(world):
    world.vehicle.ecu("ecm").faults.force_nrc(0x36, 0x72, count=1)
    result = flash(world, "ecm", make_image(world.spec.ecu("ecm")))
    assert not result.ok
    assert result.failure.step == FlashStep.TRANSFER
    assert result.failure.nrc == 0x72
    assert "0x72 (GeneralProgrammingFailure)" in result.failure.reason
    assert result.version_after == "1.0.0"


def test_timeout_is_reported_as_timeout(world):
    world.vehicle.ecu("ecm").faults.drop_responses(None, service=0x34)
    result = flash(world, "ecm", make_image(world.spec.ecu("ecm")))
    assert result.failure.step == FlashStep.REQUEST_DOWNLOAD
    assert result.failure.timeout and result.failure.nrc is None
    assert result.version_after == "1.0.0"


def test_corrupted_block_fails_the_memory_check(world):
    world.vehicle.ecu("ecm").faults.corrupt_block(2)
    result = flash(world, "ecm", make_image(world.spec.ecu("ecm")))
    assert result.failure.step == FlashStep.CHECK_MEMORY
    assert result.version_after == "1.0.0"
    assert result.boot_status_after.active_bank == 0


def test_power_cut_mid_transfer_then_restore(world):
    world.vehicle.ecu("ecm").faults.power_cut_at(10_000, restore_after_s=0.3)
    result = flash(world, "ecm", make_image(world.spec.ecu("ecm"), size=30_000))
    assert not result.ok
    assert result.failure.step == FlashStep.TRANSFER
    assert result.failure.timeout
    assert "retry got negative response 0x7F" in result.failure.reason
    # The ECU came back on its old image.
    assert result.version_after == "1.0.0"
    assert world.vehicle.ecu("ecm").server.power_cuts == 1


def test_boot_failure_reverts_and_flasher_says_so(world):
    ecm = world.vehicle.ecu("ecm")
    ecm.faults.fail_boot()
    result = flash(world, "ecm", make_image(world.spec.ecu("ecm"), "3.0.0", 3))
    assert result.failure.step == FlashStep.VERIFY
    assert "failed its trial boot" in result.failure.reason
    assert result.version_after == "1.0.0"
    assert result.boot_status_after.last_boot_result == BootResult.REVERTED
    assert result.boot_status_after.anti_rollback_counter == 1
    assert DTC_BOOT_REVERTED in ecm.dtcs
    # A later good image still goes in.
    ok = flash(world, "ecm", make_image(world.spec.ecu("ecm"), "3.0.1", 3))
    assert ok.ok, ok.failure


def test_boot_failure_below_the_limit_still_boots(world):
    world.vehicle.ecu("ecm").faults.fail_boot(times=2)
    result = flash(world, "ecm", make_image(world.spec.ecu("ecm")))
    assert result.ok, result.failure
    assert result.boot_status_after.last_boot_result == BootResult.OK


@pytest.mark.parametrize(
    ("variant", "status"),
    [
        ("foreign key", "signature invalid"),
        ("hardware", "hardware mismatch"),
        ("downgrade", "rollback refused"),
    ],
)
def test_ecu_refuses_bad_images(world, variant, status):
    ecm = world.spec.ecu("ecm")
    assert flash(world, "ecm", make_image(ecm, "2.0.0", 5)).ok
    if variant == "foreign key":
        image = make_image(ecm, "2.1.0", 6, key=Ed25519PrivateKey.generate())
    elif variant == "hardware":
        image = make_image(ecm, "2.1.0", 6, hardware_id="HIL-BMS-HW01")
    else:
        image = make_image(ecm, "1.9.0", 4)
    result = flash(world, "ecm", image, check_compatibility=False)
    assert result.failure.step == FlashStep.CHECK_DEPENDENCIES
    assert status in result.failure.reason
    assert result.version_after == "2.0.0"
    assert world.vehicle.ecu("ecm").boot_status.pending_bank == 0xFF


def test_tampered_payload_is_refused(world):
    image = bytearray(make_image(world.spec.ecu("ecm")))
    image[-10] ^= 0xFF
    # The tester sees the SHA-256 mismatch itself ...
    result = flash(world, "ecm", bytes(image))
    assert result.failure.step == FlashStep.CHECK_IMAGE
    assert "SHA-256" in result.failure.reason
    # ... and so does the ECU when the tester does not look.
    result = flash(world, "ecm", bytes(image), check_compatibility=False)
    assert result.failure.step == FlashStep.CHECK_DEPENDENCIES
    assert "image invalid" in result.failure.reason
    assert result.version_after == "1.0.0"


def test_flasher_checks_hardware_before_erasing(world):
    image = make_image(world.spec.ecu("ecm"), hardware_id="HIL-BMS-HW01")
    result = flash(world, "ecm", image)
    assert result.failure.step == FlashStep.IDENTIFY
    assert "HIL-BMS-HW01" in result.failure.reason
    assert world.vehicle.ecu("ecm").server.boot.record.banks[1].state == "erased"


def test_preconditions_not_met(world):
    world.vehicle.state.update(vehicle_speed_kph=12.0)
    result = flash(world, "ecm", make_image(world.spec.ecu("ecm")))
    assert result.failure.step == FlashStep.PRECONDITIONS
    assert "vehicle moving" in result.failure.reason


def test_lost_reset_reply_is_not_a_failure(world):
    world.vehicle.ecu("ecm").faults.drop_responses(1, service=0x11)
    result = flash(world, "ecm", make_image(world.spec.ecu("ecm")))
    assert result.ok, result.failure
    assert result.version_after == "2.0.0"


def test_negative_reply_to_a_functional_step_is_reported(world):
    world.vehicle.ecu("ecm").faults.force_nrc(0x85, 0x22, count=1)
    result = flash(world, "ecm", make_image(world.spec.ecu("ecm")))
    assert result.failure.step == FlashStep.DISABLE_DTC_SETTING
    assert result.failure.nrc == 0x22
    assert result.version_after == "1.0.0"


def test_same_version_that_reverts_is_a_failure(world):
    ecm = world.spec.ecu("ecm")
    assert flash(world, "ecm", make_image(ecm, "2.0.0", 2)).ok
    world.vehicle.ecu("ecm").faults.fail_boot()
    result = flash(world, "ecm", make_image(ecm, "2.0.0", 2))
    assert not result.ok
    assert result.failure.step == FlashStep.VERIFY
    assert result.version_after == "2.0.0"
    assert result.short_outcome == "did not boot"


def test_tester_refuses_an_untrusted_image_before_touching_the_ecu(world):
    ecm = world.spec.ecu("ecm")
    image = make_image(ecm, "2.1.0", 6, key=Ed25519PrivateKey.generate())
    frames = world.sniff()
    result = flash(world, "ecm", image, trust_anchors=world.spec.trust_anchor_keys())
    assert result.failure.step == FlashStep.CHECK_IMAGE
    assert "not trusted" in result.failure.reason
    assert result.short_outcome == "refused by tester"
    time.sleep(0.2)
    assert not [m for m in frames if m.arbitration_id in (0x7E0, 0x7DF)]
    good = flash(world, "ecm", make_image(ecm), trust_anchors=world.spec.trust_anchor_keys())
    assert good.ok, good.failure


def record(world, ecu: str = "ecm"):
    return world.vehicle.ecu(ecu).server.boot.record


def test_flash_without_confirm_leaves_the_image_on_trial(world):
    ecm = world.spec.ecu("ecm")
    steps: list[FlashStep] = []
    result = flash(
        world,
        "ecm",
        make_image(ecm, "2.0.0", 5),
        confirm=False,
        on_progress=lambda p: steps.append(p.step),
    )
    assert result.ok, result.failure
    assert not result.confirmed
    assert FlashStep.CONFIRM not in steps and steps[-1] == FlashStep.VERIFY
    assert result.boot_status_after.anti_rollback_counter == 1
    assert (record(world).confirmed, record(world).anti_rollback_counter) == (False, 1)
    # The counter was not raised: the previous version's image is still accepted.
    back = flash(world, "ecm", make_image(ecm, "1.0.1", 1), confirm=False)
    assert back.ok, back.failure
    assert back.version_after == "1.0.1"


def test_confirm_image_raises_the_counter_and_refuses_a_downgrade(world):
    ecm = world.spec.ecu("ecm")
    assert flash(world, "ecm", make_image(ecm, "2.0.0", 5), confirm=False).ok
    flasher = Flasher(world.diag("ecm"))
    flasher.confirm_image()
    assert (record(world).confirmed, record(world).anti_rollback_counter) == (True, 5)
    assert world.vehicle.ecu("ecm").session == Session.DEFAULT
    flasher.confirm_image()  # idempotent
    assert record(world).anti_rollback_counter == 5
    result = flash(world, "ecm", make_image(ecm, "1.0.1", 1), check_compatibility=False)
    assert result.failure.step == FlashStep.CHECK_DEPENDENCIES
    assert "rollback refused" in result.failure.reason


def test_confirm_image_reports_a_negative_response(world):
    world.vehicle.ecu("ecm").faults.force_nrc(0x31, 0x22, count=1)
    with pytest.raises(DiagnosticError) as caught:
        Flasher(world.diag("ecm")).confirm_image()
    assert caught.value.nrc == 0x22
    assert "ecm: confirm image: routine 0xFF02: negative response 0x22" in str(caught.value)
    assert world.vehicle.ecu("ecm").session == Session.DEFAULT


def test_confirm_image_reports_a_timeout(world):
    world.vehicle.ecu("ecm").faults.drop_responses(1, service=0x27)
    with pytest.raises(DiagnosticTimeout, match="confirm image: security access: no response"):
        Flasher(world.diag("ecm")).confirm_image()


def test_confirm_image_without_a_valid_image_is_refused(world):
    ecm = world.vehicle.ecu("ecm")
    ecm.power_off()
    (world.state_dir / "ecm" / "bank_a.bin").write_bytes(b"garbage")
    ecm.power_on()
    assert wait_for(lambda: not ecm.server.is_booting())
    with pytest.raises(RoutineRefused, match="no valid image \\(status 0x01\\)") as caught:
        Flasher(world.diag("ecm")).confirm_image()
    assert (caught.value.routine, caught.value.status) == (0xFF02, 0x01)


def test_confirm_step_failure_is_reported_at_confirm(world):
    armed: list[bool] = []

    def progress(event) -> None:
        # The next RoutineControl, the confirm's, gets 0x72.
        if event.step == FlashStep.CONFIRM and not armed:
            armed.append(True)
            world.vehicle.ecu("ecm").faults.force_nrc(0x31, 0x72, count=1)

    result = flash(
        world, "ecm", make_image(world.spec.ecu("ecm"), "2.0.0", 5), on_progress=progress
    )
    assert not result.ok
    assert result.failure.step == FlashStep.CONFIRM and result.failure.nrc == 0x72
    assert not result.confirmed
    # The new image runs, on trial; nothing was reset to recover.
    assert result.version_after == "2.0.0"
    assert (record(world).confirmed, record(world).anti_rollback_counter) == (False, 1)


def test_activate_previous_after_an_unconfirmed_update(world):
    ecm = world.spec.ecu("ecm")
    assert flash(world, "ecm", make_image(ecm, "2.0.0", 5), confirm=False).ok
    flasher = Flasher(world.diag("ecm"))
    result = flasher.activate_previous()
    assert result.ok, result.reason
    assert (result.ecu, result.reason) == ("ecm", "")
    assert (result.version_before, result.version_after) == ("2.0.0", "1.0.0")
    status = result.boot_status_after
    assert (status.active_bank, status.pending_bank) == (0, NO_BANK)
    assert status.last_boot_result == BootResult.OK
    assert status.anti_rollback_counter == 1
    assert result.duration_s > 0
    rec = record(world)
    assert not rec.confirmed
    assert (rec.banks[1].state, rec.banks[1].version) == ("valid", "2.0.0")
    # And forward again: the newer bank stayed valid.
    forward = flasher.activate_previous()
    assert forward.ok, forward.reason
    assert (forward.version_before, forward.version_after) == ("1.0.0", "2.0.0")
    assert forward.boot_status_after.active_bank == 1


def test_activate_previous_refused_after_a_confirm(world):
    ecm = world.spec.ecu("ecm")
    assert flash(world, "ecm", make_image(ecm, "2.0.0", 5)).ok
    result = Flasher(world.diag("ecm")).activate_previous()
    assert not result.ok
    assert "rollback refused (status 0x02)" in result.reason
    assert (result.version_before, result.version_after) == ("2.0.0", "2.0.0")
    assert result.boot_status_after.active_bank == 1
    assert result.boot_status_after.pending_bank == NO_BANK
    assert world.vehicle.ecu("ecm").session == Session.DEFAULT


def test_activate_previous_without_a_previous_image(world):
    result = Flasher(world.diag("ecm")).activate_previous()
    assert not result.ok
    assert "no valid image (status 0x01)" in result.reason
    assert result.version_after == "1.0.0"
    assert result.boot_status_after.active_bank == 0


def test_activate_previous_whose_image_fails_to_boot(world):
    ecm = world.spec.ecu("ecm")
    assert flash(world, "ecm", make_image(ecm, "2.0.0", 5), confirm=False).ok
    world.vehicle.ecu("ecm").faults.fail_boot()
    result = Flasher(world.diag("ecm")).activate_previous()
    assert not result.ok
    assert "failed its trial boot" in result.reason
    assert result.version_after == "2.0.0"
    assert result.boot_status_after.last_boot_result == BootResult.REVERTED


def test_activate_previous_when_the_ecu_stays_silent(world):
    world.vehicle.ecu("ecm").faults.drop_responses(None)
    result = Flasher(world.diag("ecm")).activate_previous()
    assert not result.ok
    assert "no response" in result.reason
    assert (result.version_before, result.version_after, result.boot_status_after) == (
        None,
        None,
        None,
    )


def test_should_abort_during_the_transfer(world):
    ecm = world.spec.ecu("ecm")
    frames = world.sniff()
    progress: list = []

    def should_abort() -> str | None:
        started = any(p.step == FlashStep.TRANSFER and p.bytes_sent > 0 for p in progress)
        return "ignition off" if started else None

    result = flash(
        world,
        "ecm",
        make_image(ecm, "2.0.0", 5, size=40_000),
        on_progress=progress.append,
        should_abort=should_abort,
    )
    assert not result.ok
    assert result.failure.step == FlashStep.TRANSFER
    assert result.failure.aborted
    assert result.failure.reason == "aborted: ignition off"
    assert result.short_outcome == "aborted"
    # Exactly one TransferData block went out (a first frame of 0x36 on the request id).
    blocks = [
        m for m in frames if m.arbitration_id == 0x7E0 and m.data[0] >> 4 == 1 and m.data[2] == 0x36
    ]
    assert len(blocks) == 1
    # The ECU was restarted out of its bootloader and runs its old image.
    assert result.version_after == "1.0.0"
    assert world.vehicle.ecu("ecm").version == "1.0.0"
    rec = record(world)
    assert (rec.active_bank, rec.pending_bank, rec.anti_rollback_counter) == (0, None, 1)
    assert rec.banks[1].state == "erased"
    assert wait_for(lambda: world.vehicle.ecu("bms").session == Session.DEFAULT)
    # And the vehicle got its communication back.
    sent = [bytes(m.data[1:4]) for m in list(frames) if m.arbitration_id == 0x7DF]
    assert b"\x28\x80\x01" in sent


@pytest.mark.parametrize(
    ("step", "version_after"),
    [
        (FlashStep.CHECK_IMAGE, None),
        (FlashStep.PRECONDITIONS, "1.0.0"),
        (FlashStep.ERASE, "1.0.0"),
        (FlashStep.CONFIRM, "2.0.0"),
    ],
)
def test_should_abort_at_the_start_of_a_step(world, step, version_after):
    ecm = world.spec.ecu("ecm")
    current: list[FlashStep] = []
    asked: list[FlashStep] = []

    def should_abort() -> str | None:
        asked.append(current[-1])
        return "operator" if current[-1] == step else None

    result = flash(
        world,
        "ecm",
        make_image(ecm, "2.0.0", 5),
        on_progress=lambda p: current.append(p.step),
        should_abort=should_abort,
    )
    assert result.failure.step == step and result.failure.aborted
    assert result.version_after == version_after
    assert asked[-1] == step
    assert not result.confirmed
    assert record(world).anti_rollback_counter == 1

"""The UDS server and bootloader as pure logic, driven by a fake clock (no threads, no bus)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from helpers import FakeClock, make_image

from ecu_sim.faults import FaultInjector
from ecu_sim.nvm import Nvm
from ecu_sim.state import VehicleState
from ecu_sim.uds.server import UdsServer
from ota_formats.uds import (
    DTC_BOOT_REVERTED,
    DTC_IMAGE_INVALID,
    ActivatePreviousStatus,
    BootResult,
    ConfirmStatus,
    security_key,
)


class Ecu:
    """A server with a fake clock and helpers that speak hex."""

    def __init__(self, spec, vehicle, directory: Path, faults: FaultInjector | None = None) -> None:
        self.clock = FakeClock()
        self.faults = faults or FaultInjector()
        self.spec = spec
        self.vehicle = vehicle
        self.directory = directory
        self.server = UdsServer(
            spec, vehicle, Nvm(directory), VehicleState(), self.faults, self.clock
        )
        self.server.power_on()
        self.clock.advance(1.0)

    def send(self, hexstr: str) -> list[str]:
        return [o.payload.hex() for o in self.server.handle(bytes.fromhex(hexstr.replace(" ", "")))]

    def one(self, hexstr: str) -> str:
        replies = self.send(hexstr)
        assert len(replies) == 1, replies
        return replies[0]

    def poll(self) -> list[str]:
        return [o.payload.hex() for o in self.server.poll()]

    def unlock(self, level: int) -> None:
        seed = bytes.fromhex(self.one(f"27{level:02x}"))[2:]
        assert (
            self.one(f"27{level + 1:02x}" + security_key(self.spec.security_secret, seed).hex())
            == f"67{level + 1:02x}"
        )

    def program(self, image: bytes) -> str:
        """Download ``image`` up to the dependency check; return the FF01 reply."""
        if self.server.session == 0x02:
            assert self.send("1081") == []
            self.clock.advance(1.0)
        assert self.one("1003").startswith("5003")
        assert self.one("1002").startswith("5002")
        self.unlock(0x11)
        assert self.send(f"3101ff00 44 00010000 {len(image):08x}") == ["7f3178"]
        self.clock.advance(self.spec.timing.erase_time_ms / 1000)
        assert self.poll() == ["7101ff0000"]
        assert self.one(f"340044 00010000 {len(image):08x}") == "74200fff"
        counter = 1
        for offset in range(0, len(image), 4093):
            assert (
                self.one(f"36{counter:02x}" + image[offset : offset + 4093].hex())
                == f"76{counter:02x}"
            )
            counter = (counter + 1) & 0xFF
        assert self.one("37") == "77"
        crc = struct.pack(">I", zlib.crc32(image)).hex()
        assert self.one("31010202" + crc) == "7101020200"
        return self.one("3101ff01")

    def reset(self) -> None:
        assert self.one("1101") == "5101"
        self.clock.advance(1.0)

    def secured_routine(self, rid: int) -> str:
        """Start routine ``rid`` in the extended session at level 01; return the reply."""
        if self.server.session == 0x02:
            assert self.send("1081") == []
            self.clock.advance(1.0)
        assert self.one("1003").startswith("5003")
        self.unlock(0x01)
        return self.one(f"3101{rid:04x}")

    def confirm(self) -> str:
        return self.secured_routine(0xFF02)

    def activate_previous(self) -> str:
        return self.secured_routine(0xFF03)

    def power_cycle(self) -> None:
        self.server.power_off()
        self.server.power_on()
        self.clock.advance(1.0)


@pytest.fixture
def ecu(demo, tmp_path) -> Ecu:
    return Ecu(demo.ecu("ecm"), demo, tmp_path / "ecm")


def test_security_lockout_expires_after_the_delay(ecu):
    ecu.one("1003")
    for _ in range(3):
        ecu.one("2701")
        ecu.one("270200000000")
    assert ecu.one("2701") == "7f2737"
    ecu.clock.advance(9.9)
    assert ecu.one("2701") == "7f2737"
    ecu.clock.advance(0.2)
    assert ecu.one("2701").startswith("6701")
    assert ecu.server.boot.record.security_lockout is False
    assert ecu.server.boot.record.failed_key_attempts == 0


def test_security_lockout_delay_restarts_at_power_up(ecu):
    ecu.one("1003")
    for _ in range(3):
        ecu.one("2701")
        ecu.one("270200000000")
    ecu.clock.advance(5.0)
    ecu.power_cycle()
    ecu.one("1003")
    ecu.clock.advance(8.0)
    assert ecu.one("2701") == "7f2737"
    ecu.clock.advance(1.5)
    assert ecu.one("2701").startswith("6701")


def test_failed_key_attempts_survive_power_cycles(ecu):
    ecu.one("1003")
    ecu.one("2701")
    assert ecu.one("270200000000") == "7f2735"
    ecu.power_cycle()
    ecu.one("1003")
    ecu.one("2701")
    assert ecu.one("270200000000") == "7f2735"
    ecu.power_cycle()
    ecu.one("1003")
    ecu.one("2701")
    assert ecu.one("270200000000") == "7f2736"


def test_s3_timeout(ecu):
    ecu.one("1003")
    ecu.unlock(0x01)
    ecu.clock.advance(4.9)
    assert ecu.poll() == []
    assert ecu.one("22f186") == "62f18603"
    ecu.clock.advance(5.01)
    assert ecu.poll() == []
    assert ecu.one("22f186") == "62f18601"
    assert ecu.server.vars.security_level is None


def test_s3_timeout_in_programming_session_restarts_the_ecu(ecu):
    boots = ecu.server.boot.record.boot_count
    ecu.one("1003")
    ecu.one("1002")
    ecu.clock.advance(5.1)
    ecu.poll()
    assert ecu.server.boot.record.boot_count == boots + 1
    ecu.clock.advance(1.0)
    assert ecu.one("22f186") == "62f18601"


def test_response_pending_timing(ecu):
    ecu.faults.slow_erase(1.0, pending_interval_s=0.3)
    ecu.one("1003")
    ecu.one("1002")
    ecu.unlock(0x11)
    assert ecu.send("3101ff00 44 00010000 00001000") == ["7f3178"]
    assert ecu.server.next_deadline() == pytest.approx(ecu.clock.now + 0.3)
    ecu.clock.advance(0.29)
    assert ecu.poll() == []
    ecu.clock.advance(0.02)
    assert ecu.poll() == ["7f3178"]
    assert ecu.send("22f186") == ["7f2221"]
    ecu.clock.advance(0.3)
    assert ecu.poll() == ["7f3178"]
    ecu.clock.advance(0.4)
    assert ecu.poll() == ["7101ff0000"]
    assert ecu.poll() == []


def test_short_operation_needs_no_response_pending(demo, tmp_path):
    spec = demo.with_overrides(ecu_defaults={"timing": {"erase_time_ms": 20}})
    e = Ecu(spec.ecu("ecm"), spec, tmp_path / "ecm")
    e.one("1003")
    e.one("1002")
    e.unlock(0x11)
    assert e.send("3101ff00 44 00010000 00001000") == []
    e.clock.advance(0.02)
    assert e.poll() == ["7101ff0000"]


def test_new_image_boots_on_trial_unconfirmed_until_the_confirm(ecu):
    image = make_image(ecu.spec, "2.0.0", 7)
    assert ecu.program(image) == "7101ff0100"
    assert ecu.server.boot.record.pending_bank == 1
    assert ecu.server.boot.record.confirmed
    assert ecu.one("22f189").startswith("62f189" + b"1.0.0".hex())
    ecu.reset()
    rec = ecu.server.boot.record
    # Active, but on trial: the stored counter has not moved.
    assert (rec.active_bank, rec.pending_bank, rec.anti_rollback_counter) == (1, None, 1)
    assert not rec.confirmed
    assert ecu.one("22f1a0") == "62f1a0" + "01ff00" + "00000001" + "00"
    assert ecu.one("22f189").startswith("62f189" + b"2.0.0".hex())
    # The previous image is kept in bank A.
    assert rec.banks[0].state == "valid" and rec.banks[0].version == "1.0.0"
    assert ecu.confirm() == "7101ff0200"
    rec = ecu.server.boot.record
    assert (rec.anti_rollback_counter, rec.confirmed) == (7, True)
    assert ecu.one("22f1a0") == "62f1a0" + "01ff00" + "00000007" + "00"
    stored = Nvm(ecu.directory).load()
    assert (stored.anti_rollback_counter, stored.confirmed) == (7, True)
    assert ecu.one("3103ff02") == "7103ff0200"


def test_confirm_is_idempotent_and_writes_nothing_the_second_time(ecu, monkeypatch):
    assert ecu.program(make_image(ecu.spec, "2.0.0", 7)) == "7101ff0100"
    ecu.reset()
    assert ecu.confirm() == "7101ff0200"
    saves = []
    monkeypatch.setattr(Nvm, "save", lambda self, record: saves.append(record))
    assert ecu.one("3101ff02") == "7101ff0200"
    assert saves == []
    assert ecu.server.boot.record.anti_rollback_counter == 7


def test_factory_image_is_confirmed(ecu):
    assert ecu.server.boot.record.confirmed
    assert ecu.confirm() == "7101ff02" + f"{ConfirmStatus.CONFIRMED:02x}"
    assert ecu.server.boot.record.anti_rollback_counter == 1


def test_confirm_without_a_valid_image(ecu):
    (ecu.directory / "bank_a.bin").write_bytes(b"garbage")
    ecu.power_cycle()
    assert ecu.server.last_boot.result == BootResult.NO_VALID_IMAGE
    assert ecu.confirm() == "7101ff02" + f"{ConfirmStatus.NO_VALID_IMAGE:02x}"


def test_confirm_waits_while_an_image_awaits_its_trial_boot(ecu):
    assert ecu.program(make_image(ecu.spec, "2.0.0", 7)) == "7101ff0100"
    # Still in the programming session at level 11: the routine is there, conditions are not.
    assert ecu.one("3101ff02") == "7f3122"
    assert ecu.server.boot.record.anti_rollback_counter == 1


def test_unconfirmed_update_does_not_block_the_previous_version(ecu):
    assert ecu.program(make_image(ecu.spec, "2.0.0", 7)) == "7101ff0100"
    ecu.reset()
    assert ecu.program(make_image(ecu.spec, "1.0.1", 1)) == "7101ff0100"
    ecu.reset()
    assert ecu.one("22f189").startswith("62f189" + b"1.0.1".hex())


def test_confirm_makes_a_downgrade_refused(ecu):
    assert ecu.program(make_image(ecu.spec, "2.0.0", 7)) == "7101ff0100"
    ecu.reset()
    assert ecu.confirm() == "7101ff0200"
    assert ecu.program(make_image(ecu.spec, "1.0.1", 1)) == "7101ff0103"
    assert ecu.program(make_image(ecu.spec, "2.0.1", 7)) == "7101ff0100"


def test_activate_previous_after_an_unconfirmed_update(ecu):
    assert ecu.program(make_image(ecu.spec, "2.0.0", 7)) == "7101ff0100"
    ecu.reset()
    assert ecu.activate_previous() == "7101ff03" + f"{ActivatePreviousStatus.PENDING:02x}"
    assert ecu.server.boot.record.pending_bank == 0
    # A repeat (say, after a lost reply) changes nothing.
    assert ecu.one("3101ff03") == "7101ff0300"
    ecu.reset()
    rec = ecu.server.boot.record
    assert (rec.active_bank, rec.pending_bank, rec.anti_rollback_counter) == (0, None, 1)
    assert rec.last_boot_result == BootResult.OK and not rec.confirmed
    assert ecu.one("22f189").startswith("62f189" + b"1.0.0".hex())
    # The newer image stays valid in its bank: it can be activated again.
    assert (rec.banks[1].state, rec.banks[1].version) == ("valid", "2.0.0")
    assert ecu.activate_previous() == "7101ff0300"
    ecu.reset()
    assert ecu.server.boot.record.active_bank == 1
    assert ecu.one("22f189").startswith("62f189" + b"2.0.0".hex())


def test_activate_previous_works_in_the_programming_session(ecu):
    assert ecu.program(make_image(ecu.spec, "2.0.0", 7)) == "7101ff0100"
    ecu.reset()
    ecu.one("1003")
    ecu.one("1002")
    ecu.unlock(0x11)
    assert ecu.one("3101ff03") == "7101ff0300"
    assert ecu.send("1081") == []  # leaving programming restarts: bank A boots on trial
    ecu.clock.advance(1.0)
    assert ecu.server.boot.record.active_bank == 0
    ecu.one("1003")
    ecu.one("1002")
    ecu.unlock(0x11)
    assert ecu.one("3101ff02") == "7101ff0200"
    assert ecu.server.boot.record.confirmed


def test_activate_previous_refused_after_a_confirm_of_a_higher_counter(ecu):
    assert ecu.program(make_image(ecu.spec, "2.0.0", 7)) == "7101ff0100"
    ecu.reset()
    assert ecu.confirm() == "7101ff0200"
    assert ecu.activate_previous() == "7101ff03" + f"{ActivatePreviousStatus.ROLLBACK_REFUSED:02x}"
    assert ecu.server.boot.record.pending_bank is None
    ecu.reset()
    assert ecu.one("22f189").startswith("62f189" + b"2.0.0".hex())


def test_activate_previous_with_an_equal_counter_after_a_confirm(ecu):
    assert ecu.program(make_image(ecu.spec, "1.0.1", 1)) == "7101ff0100"
    ecu.reset()
    assert ecu.confirm() == "7101ff0200"
    assert ecu.activate_previous() == "7101ff0300"
    ecu.reset()
    assert ecu.one("22f189").startswith("62f189" + b"1.0.0".hex())


def test_activate_previous_without_a_previous_image(ecu):
    assert ecu.server.boot.record.banks[1].state == "erased"
    assert ecu.activate_previous() == "7101ff03" + f"{ActivatePreviousStatus.NO_VALID_IMAGE:02x}"
    assert ecu.server.boot.record.pending_bank is None


def test_activate_previous_refuses_a_corrupt_previous_bank(ecu):
    assert ecu.program(make_image(ecu.spec, "2.0.0", 7)) == "7101ff0100"
    ecu.reset()
    bank_a = ecu.directory / "bank_a.bin"
    data = bytearray(bank_a.read_bytes())
    data[100] ^= 0x01
    bank_a.write_bytes(bytes(data))
    assert ecu.activate_previous() == "7101ff0301"
    assert ecu.server.boot.record.pending_bank is None


def test_activate_previous_that_fails_its_trial_boot_reverts(ecu):
    assert ecu.program(make_image(ecu.spec, "2.0.0", 7)) == "7101ff0100"
    ecu.reset()
    ecu.faults.fail_boot()
    assert ecu.activate_previous() == "7101ff0300"
    ecu.reset()
    assert ecu.server.last_boot.attempts == ecu.spec.timing.max_boot_attempts
    rec = ecu.server.boot.record
    assert rec.last_boot_result == BootResult.REVERTED
    assert (rec.active_bank, rec.pending_bank) == (1, None)
    assert rec.banks[0].state == "rejected"
    assert ecu.one("22f189").startswith("62f189" + b"2.0.0".hex())


class PowerLost(BaseException):
    """Raised where the supply drops: nothing after it runs, nothing in memory survives."""


@pytest.mark.parametrize(
    "cut",
    ["before first write", "after first write", "during the attempt", "before last write"],
)
def test_power_cut_during_the_boot_after_activate_previous(ecu, monkeypatch, cut):
    assert ecu.program(make_image(ecu.spec, "2.0.0", 7)) == "7101ff0100"
    ecu.reset()
    assert ecu.activate_previous() == "7101ff0300"
    original = Nvm.save
    writes = []

    def save(self, record):
        writes.append(1)
        if cut == "before first write" or (cut == "before last write" and len(writes) == 2):
            raise PowerLost(cut)
        original(self, record)
        if cut == "after first write":
            raise PowerLost(cut)

    def attempt() -> bool:
        raise PowerLost(cut)

    with monkeypatch.context() as patch:
        patch.setattr(Nvm, "save", save)
        if cut == "during the attempt":
            patch.setattr(ecu.faults, "take_boot_failure", attempt)
        with pytest.raises(PowerLost):
            ecu.reset()
    # Power comes back: a fresh ECU on the same NVM boots a valid image, the previous one.
    fresh = Ecu(ecu.spec, ecu.vehicle, ecu.directory)
    assert fresh.server.app_valid
    assert fresh.server.last_boot.result == BootResult.OK
    rec = fresh.server.boot.record
    assert (rec.active_bank, rec.pending_bank, rec.boot_attempts) == (0, None, 0)
    assert fresh.one("22f189").startswith("62f189" + b"1.0.0".hex())
    assert (rec.banks[1].state, rec.banks[1].version) == ("valid", "2.0.0")


def test_a_pending_image_below_the_stored_counter_is_never_started(ecu):
    assert ecu.program(make_image(ecu.spec, "2.0.0", 7)) == "7101ff0100"
    ecu.reset()
    assert ecu.confirm() == "7101ff0200"
    # A record that no routine would write: bank A (counter 1) pending below the counter 7.
    ecu.server.boot.record.pending_bank = 0
    ecu.server.boot.save()
    ecu.power_cycle()
    rec = ecu.server.boot.record
    assert (rec.active_bank, rec.pending_bank, rec.anti_rollback_counter) == (1, None, 7)
    assert ecu.one("22f189").startswith("62f189" + b"2.0.0".hex())


def test_old_record_without_the_confirmed_flag_loads_confirmed(ecu):
    import json

    ecu.server.power_off()
    path = ecu.directory / "nvm.json"
    data = json.loads(path.read_text())
    del data["confirmed"]
    path.write_text(json.dumps(data))
    again = Ecu(ecu.spec, ecu.vehicle, ecu.directory)
    assert again.server.boot.record.confirmed
    assert again.server.app_valid


def test_boot_failures_revert_after_the_limit(ecu):
    ecu.faults.fail_boot()
    assert ecu.program(make_image(ecu.spec, "2.0.0", 7)) == "7101ff0100"
    ecu.reset()
    report = ecu.server.last_boot
    assert report.attempts == 3 and report.result == BootResult.REVERTED
    rec = ecu.server.boot.record
    assert rec.active_bank == 0 and rec.pending_bank is None
    assert rec.banks[1].state == "rejected"
    assert rec.anti_rollback_counter == 1
    assert DTC_BOOT_REVERTED in rec.dtcs
    # It takes the ECU three boot times to come back.
    assert ecu.server.booting_until > ecu.clock.now - 1.0 + 0.14


def test_boot_attempts_count_across_power_cuts(ecu, monkeypatch):
    assert ecu.program(make_image(ecu.spec, "2.0.0", 7)) == "7101ff0100"
    attempts = []

    def fail_then_cut() -> bool:
        attempts.append(1)
        if len(attempts) == 2:
            raise KeyboardInterrupt("power lost during the second attempt")
        return True

    monkeypatch.setattr(ecu.faults, "take_boot_failure", fail_then_cut)
    with pytest.raises(KeyboardInterrupt):
        ecu.reset()
    # Nothing in memory survives; what is on disk says two attempts were started.
    assert Nvm(ecu.directory).load().boot_attempts == 2
    failing = FaultInjector()
    failing.fail_boot()
    fresh = Ecu(ecu.spec, ecu.vehicle, ecu.directory, failing)  # the third attempt, the last
    assert fresh.server.last_boot.attempts == 1
    rec = fresh.server.boot.record
    assert rec.active_bank == 0 and rec.last_boot_result == BootResult.REVERTED


def test_corrupt_active_bank_boots_the_other_valid_bank(ecu):
    assert ecu.program(make_image(ecu.spec, "2.0.0", 1)) == "7101ff0100"
    ecu.reset()
    bank_b = ecu.directory / "bank_b.bin"
    data = bytearray(bank_b.read_bytes())
    data[500] ^= 0xFF
    bank_b.write_bytes(bytes(data))
    ecu.power_cycle()
    rec = ecu.server.boot.record
    assert rec.active_bank == 0 and rec.last_boot_result == BootResult.ACTIVE_INVALID
    assert DTC_IMAGE_INVALID in rec.dtcs
    assert ecu.one("22f189").startswith("62f189" + b"1.0.0".hex())


def test_fallback_to_an_older_bank_obeys_anti_rollback(ecu):
    assert ecu.program(make_image(ecu.spec, "2.0.0", 7)) == "7101ff0100"
    ecu.reset()
    assert ecu.confirm() == "7101ff0200"
    bank_b = ecu.directory / "bank_b.bin"
    bank_b.write_bytes(bank_b.read_bytes()[:-1] + b"\x00")
    ecu.power_cycle()
    assert ecu.server.last_boot.result == BootResult.NO_VALID_IMAGE
    assert not ecu.server.app_valid
    assert ecu.server.boot.record.anti_rollback_counter == 7


def test_s3_restarts_when_a_long_operation_ends(ecu):
    ecu.faults.slow_erase(8.0, pending_interval_s=2.0)
    ecu.one("1003")
    ecu.one("1002")
    ecu.unlock(0x11)
    assert ecu.send("3101ff00 44 00010000 00001000") == ["7f3178"]
    for _ in range(4):
        ecu.clock.advance(2.0)
        ecu.poll()
    assert ecu.server.session == 0x02
    ecu.clock.advance(4.9)
    assert ecu.poll() == []
    assert ecu.server.session == 0x02 and ecu.server.unlocked(0x11)
    ecu.clock.advance(0.2)
    ecu.poll()
    assert ecu.server.session == 0x01


def test_functional_request_while_busy_gets_busy_repeat(ecu):
    ecu.one("1003")
    ecu.one("1002")
    ecu.unlock(0x11)
    assert ecu.send("3101ff00 44 00010000 00001000") == ["7f3178"]
    replies = [o.payload.hex() for o in ecu.server.handle(bytes.fromhex("22f186"), functional=True)]
    assert replies == ["7f2221"]
    assert [o.payload.hex() for o in ecu.server.handle(b"\x3e\x80", functional=True)] == []


def test_nvm_failures_give_general_programming_failure(ecu, monkeypatch):
    from ecu_sim.errors import NvmError
    from ecu_sim.nvm import Nvm as NvmClass

    image = make_image(ecu.spec, "2.0.0", 7)
    ecu.one("1003")
    ecu.one("1002")
    ecu.unlock(0x11)

    def broken(self, bank):
        raise NvmError("flash erase failed")

    with monkeypatch.context() as patch:
        patch.setattr(NvmClass, "erase_bank", broken)
        assert ecu.send("3101ff00 44 00010000 00001000") == ["7f3172"]
    assert ecu.program(image) == "7101ff0100"
    assert ecu.server.boot.record.pending_bank == 1


def test_failed_record_write_leaves_memory_as_stored(ecu, monkeypatch):
    from ecu_sim.errors import NvmError
    from ecu_sim.nvm import Nvm as NvmClass

    image = make_image(ecu.spec, "2.0.0", 7)
    original = NvmClass.save
    calls = []

    def failing_once(self, record):
        if record.pending_bank is not None and not calls:
            calls.append(1)
            raise NvmError("disk full")
        original(self, record)

    monkeypatch.setattr(NvmClass, "save", failing_once)
    assert ecu.program(image) == "7f3172"
    assert ecu.server.boot.record.pending_bank is None
    assert ecu.server.boot.record.banks[1].state == "erased"
    ecu.one("1101")
    ecu.clock.advance(1.0)
    assert ecu.one("22f189").startswith("62f189" + b"1.0.0".hex())


def test_no_valid_image_stays_in_the_bootloader(ecu):
    (ecu.directory / "bank_a.bin").write_bytes(b"garbage")
    ecu.power_cycle()
    assert ecu.server.last_boot.result == BootResult.NO_VALID_IMAGE
    assert not ecu.server.app_transmitting
    assert ecu.one("22f189") == "62f189" + "20" * 16
    # It can still be programmed.
    assert ecu.program(make_image(ecu.spec, "2.0.0", 7)) == "7101ff0100"
    ecu.reset()
    assert ecu.server.app_valid


def test_erasing_the_pending_bank_clears_pending(ecu):
    assert ecu.program(make_image(ecu.spec, "2.0.0", 7)) == "7101ff0100"
    ecu.one("1001")  # leaving programming restarts: the pending image boots
    ecu.clock.advance(1.0)
    assert ecu.server.boot.record.active_bank == 1
    assert ecu.program(make_image(ecu.spec, "2.0.1", 7)) == "7101ff0100"
    assert ecu.server.boot.record.pending_bank == 0
    # A new erase (of the same bank) before a reset forgets the pending image.
    assert ecu.send("3101ff00 44 00010000 00001000") == ["7f3178"]
    assert ecu.server.boot.record.pending_bank is None


def test_downgrade_equal_counter_is_accepted(ecu):
    assert ecu.program(make_image(ecu.spec, "2.0.0", 7)) == "7101ff0100"
    ecu.reset()
    assert ecu.confirm() == "7101ff0200"
    assert ecu.program(make_image(ecu.spec, "1.9.0", 6)) == "7101ff0103"
    assert ecu.program(make_image(ecu.spec, "2.0.1", 7)) == "7101ff0100"


def test_fault_power_cut_at_offset(ecu):
    ecu.faults.power_cut_at(5000, restore_after_s=0.5)
    image = make_image(ecu.spec, "2.0.0", 7, size=12_000)
    ecu.one("1003")
    ecu.one("1002")
    ecu.unlock(0x11)
    ecu.send(f"3101ff00 44 00010000 {len(image):08x}")
    ecu.clock.advance(0.2)
    ecu.poll()
    ecu.one(f"340044 00010000 {len(image):08x}")
    assert ecu.one("3601" + image[:4093].hex()) == "7601"
    assert ecu.send("3602" + image[4093:8186].hex()) == []
    assert not ecu.server.powered
    assert (ecu.directory / "bank_b.bin").stat().st_size == 5000
    assert ecu.server.next_deadline() == pytest.approx(ecu.clock.now + 0.5)
    ecu.clock.advance(0.5)
    ecu.poll()
    assert ecu.server.powered
    ecu.clock.advance(1.0)
    assert ecu.one("22f189").startswith("62f189" + b"1.0.0".hex())

"""Cyclic status frames: live state via cantools, stopped by 0x28 and by the bootloader."""

from __future__ import annotations

import itertools
import time

import cantools
import pytest
from helpers import RawTester, wait_for


@pytest.fixture
def db(world):
    return cantools.database.load_file(str(world.spec.dbc_path()))


def frames_of(frames, frame_id, since):
    return [m for m in list(frames) if m.arbitration_id == frame_id and m.timestamp >= since]


def test_frames_carry_live_state_and_rolling_counters(world, db):
    frames = world.sniff()
    world.vehicle.state.update(vehicle_speed_kph=42.5, battery_voltage_v=13.1, ignition=1)
    start = time.time()
    time.sleep(0.6)
    ecm_status = db.get_message_by_name("ECM_Status")
    bms_status = db.get_message_by_name("BMS_Status")
    bcm_status = db.get_message_by_name("BCM_Status")
    ecm = frames_of(frames, ecm_status.frame_id, start + 0.15)
    assert 3 <= len(ecm) <= 7  # 100 ms cycle
    decoded = [db.decode_message(m.arbitration_id, m.data) for m in ecm]
    assert all(d["ECM_VehicleSpeed"] == pytest.approx(42.5) for d in decoded)
    counters = [d["ECM_Counter"] for d in decoded]
    assert all((b - a) % 16 == 1 for a, b in itertools.pairwise(counters))
    bms = db.decode_message(
        bms_status.frame_id, frames_of(frames, bms_status.frame_id, start + 0.15)[-1].data
    )
    assert bms["BMS_BatteryVoltage"] == pytest.approx(13.1)
    bcm = db.decode_message(
        bcm_status.frame_id, frames_of(frames, bcm_status.frame_id, start + 0.15)[-1].data
    )
    assert str(bcm["BCM_KL15"]) == "Acc"


def test_software_info_frame_reports_the_running_version(world, db):
    frames = world.sniff()
    info = db.get_message_by_name("BMS_SwInfo")
    assert wait_for(lambda: frames_of(frames, info.frame_id, 0), timeout=2.5)
    decoded = db.decode_message(info.frame_id, frames_of(frames, info.frame_id, 0)[-1].data)
    assert (decoded["BMS_SwMajor"], decoded["BMS_SwMinor"], decoded["BMS_SwPatch"]) == (1, 0, 0)
    assert decoded["BMS_AntiRollback"] == 1


def test_communication_control_really_stops_and_resumes_frames(world, db):
    frames = world.sniff()
    t: RawTester = world.raw("bms")
    status = db.get_message_by_name("BMS_Status").frame_id
    other = db.get_message_by_name("ECM_Status").frame_id
    assert t.ask("1003") == "5003003201f4"
    assert t.ask("280301") == "6803"
    stopped = time.time()
    time.sleep(0.5)
    assert frames_of(frames, status, stopped + 0.05) == []
    assert len(frames_of(frames, other, stopped + 0.05)) >= 3
    # Network management only: normal frames unaffected, still off.
    assert t.ask("280002") == "6800"
    time.sleep(0.3)
    assert frames_of(frames, status, stopped + 0.05) == []
    assert t.ask("280001") == "6800"
    resumed = time.time()
    assert wait_for(lambda: frames_of(frames, status, resumed), timeout=1)


def test_return_to_default_session_re_enables_communication(world, db):
    frames = world.sniff()
    t = world.raw("bcm")
    status = db.get_message_by_name("BCM_Status").frame_id
    t.ask("1003")
    assert t.ask("280101") == "6801"
    time.sleep(0.3)
    quiet = time.time()
    time.sleep(0.3)
    assert frames_of(frames, status, quiet) == []
    assert t.ask("1001") == "5001003201f4"
    back = time.time()
    assert wait_for(lambda: frames_of(frames, status, back), timeout=1)


def test_programming_session_stops_the_application_frames(world, db):
    frames = world.sniff()
    t = world.raw("ecm")
    status = db.get_message_by_name("ECM_Status").frame_id
    t.ask("1003")
    assert t.ask("1002") == "5002003201f4"
    entered = time.time()
    time.sleep(0.5)
    assert frames_of(frames, status, entered + 0.05) == []
    # Leaving the bootloader (10 01) restarts the ECU and its application.
    assert t.ask("1001") == "5001003201f4"
    left = time.time()
    assert wait_for(lambda: frames_of(frames, status, left + 0.06), timeout=1.5)


def test_power_off_silences_the_ecu_and_power_on_boots_it(world, db):
    frames = world.sniff()
    ecm = world.vehicle.ecu("ecm")
    status = db.get_message_by_name("ECM_Status").frame_id
    t = world.raw("ecm")
    ecm.power_off()
    off = time.time()
    assert t.request("22f186", timeout=0.2) == []
    time.sleep(0.3)
    assert frames_of(frames, status, off + 0.05) == []
    assert ecm.power_on() is not None
    on = time.time()
    assert wait_for(lambda: frames_of(frames, status, on), timeout=1)
    assert wait_for(lambda: t.request("22f186", timeout=0.1) == [bytes.fromhex("62f18601")])

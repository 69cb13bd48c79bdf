"""Every UDS service and every NRC of the wire contract, exact bytes, over real ISO-TP frames."""

from __future__ import annotations

import struct
import zlib

import pytest
from helpers import RawTester, make_image, wait_for

from ecu_sim.errors import NvmError
from ecu_sim.nvm import BankWriter
from ota_formats.uds import security_key

ECM_SECRET = bytes(range(16))
SIZE = 4096
ERASE = "3101ff00" + "44" + "00010000" + f"{SIZE:08x}"
DOWNLOAD = "340044" + "00010000" + f"{SIZE:08x}"


def unlock(t: RawTester, level: int, secret: bytes = ECM_SECRET) -> None:
    seed_reply = bytes.fromhex(t.ask(f"27{level:02x}"))
    assert seed_reply[:2] == bytes([0x67, level])
    key = security_key(secret, seed_reply[2:])
    assert t.ask(f"27{level + 1:02x}" + key.hex()) == f"67{level + 1:02x}"


def enter(t: RawTester, state: str) -> None:
    """Bring the ECU into a named state."""
    if state == "default":
        return
    assert t.ask("1003") == "5003003201f4"
    if state == "extended":
        return
    if state == "extended_unlocked":
        unlock(t, 0x01)
        return
    assert t.ask("1002") == "5002003201f4"
    if state == "programming":
        return
    unlock(t, 0x11)
    if state == "programming_unlocked":
        return
    replies = t.request(ERASE, timeout=1.0)
    assert replies[-1].hex() == "7101ff0000"
    if state == "erased":
        return
    assert t.ask(DOWNLOAD) == "74200fff"
    if state == "downloading":
        return
    raise AssertionError(state)


CASES = [
    # state, request, reply (hex)
    # -- service not supported, in session, security
    ("default", "23", "7f2311"),
    ("default", "ba01", "7fba11"),
    ("default", "7f", "7f7f11"),
    ("default", "2701", "7f277f"),
    ("default", "2803 01", "7f287f"),
    ("default", "8502", "7f857f"),
    ("default", "3101 0203", "7f317f"),
    ("default", "2ef190" + "57" * 17, "7f2e7f"),
    ("default", "3400440001000000001000", "7f347f"),
    ("extended", "3400440001000000001000", "7f347f"),
    ("programming", "3400440001000000001000", "7f3433"),
    ("programming", "360100", "7f3633"),
    ("programming", "37", "7f3733"),
    # -- sub-functions
    ("default", "10", "7f1013"),
    ("default", "1004", "7f1012"),
    ("default", "1002", "7f107e"),
    ("programming", "1003", "7f107e"),
    ("default", "100300", "7f1013"),
    ("default", "11", "7f1113"),
    ("default", "1104", "7f1112"),
    ("default", "110100", "7f1113"),
    ("default", "3e", "7f3e13"),
    ("default", "3e01", "7f3e12"),
    ("default", "3e0000", "7f3e13"),
    ("default", "3e00", "7e00"),
    ("default", "1905", "7f1912"),
    ("default", "1902", "7f1913"),
    ("default", "190aff", "7f1913"),
    ("extended", "2703", "7f2712"),
    ("extended", "2711", "7f277e"),
    ("programming", "2701", "7f277e"),
    ("extended", "270100", "7f2713"),
    ("extended", "2702aabb", "7f2713"),
    ("extended", "270200000000", "7f2724"),
    ("extended", "8503", "7f8512"),
    ("extended", "8502", "c502"),
    ("extended", "8501", "c501"),
    ("extended", "2804 01", "7f2812"),
    ("extended", "2801", "7f2813"),
    ("extended", "2801 0100", "7f2813"),
    ("extended", "2801 00", "7f2831"),
    ("extended", "2803 01", "6803"),
    ("extended", "2800 03", "6800"),
    # -- ReadDataByIdentifier
    ("default", "22", "7f2213"),
    ("default", "22f1", "7f2213"),
    ("default", "22f189f1", "7f2213"),
    ("default", "22" + "f189" * 17, "7f2213"),
    ("default", "221234", "7f2231"),
    ("default", "22f186", "62f18601"),
    ("extended", "22f186", "62f18603"),
    ("default", "22f190", "62f190" + b"WHLDMV00000000001".hex()),
    ("default", "22f189", "62f189" + b"1.0.0".hex() + "20" * 11),
    ("default", "221234f191", "62f191" + b"HIL-ECM-HW01".hex() + "20" * 4),
    ("default", "22f1a0", "62f1a000ff000000000100"),
    ("default", "22f198", "62f198" + "00" * 10),
    # -- ClearDiagnosticInformation / ReadDTCInformation
    ("default", "14ffff", "7f1413"),
    ("default", "14123456", "7f1431"),
    ("default", "14ffffff", "54"),
    ("default", "14010100", "54"),
    ("default", "1901ff", "59012f010000"),
    ("default", "1902ff", "59022f"),
    ("default", "190a", "590a2f01010000f0004600f0009600"),
    # -- WriteDataByIdentifier
    ("extended", "2ef190" + b"WHLDMV00000000002".hex(), "7f2e33"),
    ("extended_unlocked", "2ef190" + b"WHLDMV00000000002".hex(), "6ef190"),
    ("extended_unlocked", "2ef190" + b"WHLDMV0000000000I".hex(), "7f2e31"),
    ("extended_unlocked", "2ef19057", "7f2e13"),
    ("extended_unlocked", "2ef190", "7f2e13"),
    ("extended_unlocked", "2ef18901", "7f2e31"),
    ("extended_unlocked", "2ef198" + "31" * 10, "7f2e31"),
    ("programming_unlocked", "2ef198" + "31" * 10, "6ef198"),
    ("programming_unlocked", "2ef199251123", "6ef199"),
    ("programming_unlocked", "2ef1992511aa", "7f2e31"),
    ("programming", "2ef198" + "31" * 10, "7f2e33"),
    # -- RoutineControl
    ("extended", "3101", "7f3113"),
    ("extended", "310102", "7f3113"),
    ("extended", "3102 0203", "7f3112"),
    ("extended", "3101 1234", "7f3131"),
    ("extended", "3101 ff00" + "44" + "00010000" + "00001000", "7f3131"),
    ("extended", "3101 0203", "71010203" + "00"),
    ("extended", "3101 0203 00", "7f3113"),
    ("extended", "3103 0203", "7f3124"),
    ("programming", "3101 ff00" + "44" + "00010000" + "00001000", "7f3133"),
    ("programming", "3101 0203", "71010203" + "00"),
    ("programming_unlocked", "3101 ff00 440001", "7f3113"),
    ("programming_unlocked", "3101 ff00" + "33" + "00010000" + "00001000", "7f3131"),
    ("programming_unlocked", "3101 ff00" + "44" + "00020000" + "00001000", "7f3131"),
    ("programming_unlocked", "3101 ff00" + "44" + "00010000" + "00000000", "7f3131"),
    ("programming_unlocked", "3101 ff00" + "44" + "00010000" + "00400001", "7f3131"),
    ("programming_unlocked", "3101 0202 00000000", "7f3124"),
    ("programming_unlocked", "3101 0202 0000", "7f3113"),
    ("programming_unlocked", "3101 ff01", "7f3124"),
    ("programming_unlocked", "3101 ff01 00", "7f3113"),
    # confirm image (FF02), activate previous image (FF03): extended at 01, programming at 11
    ("default", "3101 ff02", "7f317f"),
    ("default", "3101 ff03", "7f317f"),
    ("extended", "3101 ff02", "7f3133"),
    ("extended", "3101 ff03", "7f3133"),
    ("extended", "3101 ff02 00", "7f3133"),
    ("programming", "3101 ff02", "7f3133"),
    ("programming", "3101 ff03", "7f3133"),
    ("extended_unlocked", "3101 ff04", "7f3131"),
    ("extended_unlocked", "3101 ff02 00", "7f3113"),
    ("extended_unlocked", "3101 ff03 0000", "7f3113"),
    ("extended_unlocked", "3103 ff02", "7f3124"),
    ("extended_unlocked", "3101 ff02", "7101ff0200"),
    ("extended_unlocked", "3101 ff03", "7101ff0301"),
    ("programming_unlocked", "3101 ff02 00", "7f3113"),
    ("programming_unlocked", "3101 ff02", "7101ff0200"),
    ("programming_unlocked", "3101 ff03", "7101ff0301"),
    # -- RequestDownload / TransferData / RequestTransferExit
    ("programming_unlocked", "3400", "7f3413"),
    ("programming_unlocked", "340044 00010000", "7f3413"),
    ("programming_unlocked", "340045" + "00" * 9, "7f3431"),
    ("programming_unlocked", "340000", "7f3431"),
    ("programming_unlocked", "341144" + "00010000" + "00001000", "7f3431"),
    ("programming_unlocked", "340022" + "0001" + "1000", "7f3431"),
    ("programming_unlocked", "340044" + "00020000" + "00001000", "7f3431"),
    ("programming_unlocked", DOWNLOAD, "7f3470"),
    ("erased", "340044" + "00010000" + f"{SIZE + 1:08x}", "7f3470"),
    ("erased", DOWNLOAD, "74200fff"),
    ("downloading", DOWNLOAD, "7f3422"),
    ("programming_unlocked", "360100", "7f3624"),
    ("programming_unlocked", "36", "7f3613"),
    ("programming_unlocked", "3601", "7f3613"),
    ("downloading", "360200", "7f3673"),
    ("downloading", "3600" + "00" * 4, "7f3673"),
    ("downloading", "3601" + "00" * 16, "7601"),
    ("downloading", "37", "7f3724"),
    ("programming_unlocked", "37", "7f3724"),
]


@pytest.mark.parametrize(("state", "request_hex", "reply"), CASES)
def test_request_gets_exact_reply(world, state, request_hex, reply):
    tester = world.raw("ecm")
    enter(tester, state)
    assert tester.ask(request_hex.replace(" ", ""), timeout=0.5) == reply


def test_dtc_reports_follow_stored_dtcs(world):
    t = world.raw("ecm")
    ecm = world.vehicle.ecu("ecm")
    assert ecm.set_dtc(0x010100)
    assert t.ask("1901ff") == "59012f010001"
    assert t.ask("190108") == "59012f010001"
    assert t.ask("190140") == "59012f010000"
    assert t.ask("1902ff") == "59022f0101002f"
    assert t.ask("190a") == "590a2f0101002ff0004600f0009600"
    assert t.ask("14010100") == "54"
    assert t.ask("1902ff") == "59022f"


def test_dtc_setting_off_stops_recording(world):
    t = world.raw("ecm")
    ecm = world.vehicle.ecu("ecm")
    enter(t, "extended")
    assert t.ask("8502") == "c502"
    assert not ecm.set_dtc(0x010100)
    assert t.ask("1902ff") == "59022f"
    assert t.ask("8501") == "c501"
    assert ecm.set_dtc(0x010100)
    assert t.ask("1902ff") == "59022f0101002f"


def test_suppressed_positive_responses(world):
    t = world.raw("ecm")
    assert t.request("3e80") == []
    assert t.request("1083") == []
    assert t.ask("22f186") == "62f18603"
    assert t.request("8582") == []
    assert t.request("2883 01") == []
    # An NRC is still sent when the positive reply is suppressed.
    assert t.ask("2884 01") == "7f2812"
    assert t.request("1081") == []
    assert t.ask("22f186") == "62f18601"


def test_security_access_attempts_lockout_and_power_cycle(world):
    t = world.raw("ecm")
    enter(t, "extended")
    for expected in ("7f2735", "7f2735", "7f2736"):
        seed = t.ask("2701")
        assert seed.startswith("6701") and len(seed) == 12 and seed[4:] != "00000000"
        assert t.ask("2702 00000000".replace(" ", "")) == expected
    assert t.ask("2701") == "7f2737"
    assert t.ask("270200000000") == "7f2724"
    # The lockout survives a power cycle.
    ecm = world.vehicle.ecu("ecm")
    ecm.power_off()
    ecm.power_on()
    assert wait_for(lambda: not ecm.server.is_booting())
    enter(t, "extended")
    assert t.ask("2701") == "7f2737"


def test_security_access_seed_is_single_use_and_zero_when_unlocked(world):
    t = world.raw("ecm")
    enter(t, "extended")
    seed = bytes.fromhex(t.ask("2701"))[2:]
    key = security_key(ECM_SECRET, seed)
    assert t.ask("2702" + key.hex()) == "6702"
    assert t.ask("2702" + key.hex()) == "7f2724"
    assert t.ask("2701") == "670100000000"
    # A session change locks again.
    assert t.ask("1003") == "5003003201f4"
    assert t.ask("2701") != "670100000000"


def test_programming_session_needs_preconditions(world):
    t = world.raw("ecm")
    world.vehicle.state.update(vehicle_speed_kph=30.0)
    enter(t, "extended")
    assert t.ask("31010203") == "7101020301"
    assert t.ask("1002") == "7f1022"
    world.vehicle.state.update(vehicle_speed_kph=0.0, ignition=0, battery_voltage_v=10.0)
    assert t.ask("31010203") == "7101020306"
    world.vehicle.state.update(ignition=2, battery_voltage_v=12.5)
    assert t.ask("1002") == "5002003201f4"


def test_erase_sends_response_pending_then_result(world):
    t = world.raw("ecm")
    enter(t, "programming_unlocked")
    replies = [r.hex() for r in t.request(ERASE, timeout=1.0)]
    assert replies == ["7f3178", "7101ff0000"]
    assert t.ask("3103ff00") == "7103ff0000"


def test_slow_erase_floods_response_pending_and_busy_repeat(world):
    t = world.raw("ecm")
    world.vehicle.ecu("ecm").faults.slow_erase(0.6, pending_interval_s=0.05)
    enter(t, "programming_unlocked")
    t.drain()
    t.stack.send(bytes.fromhex(ERASE))
    first = t.stack.recv(block=True, timeout=0.3)
    assert bytes(first).hex() == "7f3178"
    # Another request while the erase runs: busy, repeat later.
    t.stack.send(bytes.fromhex("22f186"))
    replies = [bytes(first).hex()]
    while replies[-1] != "7101ff0000":
        data = t.stack.recv(block=True, timeout=1.0)
        assert data is not None, replies
        replies.append(bytes(data).hex())
    assert "7f2221" in replies
    pending = [r for r in replies if r == "7f3178"]
    assert len(pending) >= 5
    assert replies[-1] == "7101ff0000"


def test_full_download_sequence_and_transfer_details(world):
    t = world.raw("ecm")
    image = make_image(world.spec.ecu("ecm"), size=SIZE - 152)
    assert len(image) == SIZE
    enter(t, "downloading")
    assert t.ask("3601" + image[:2000].hex()) == "7601"
    # The same block again (a lost reply): acknowledged, not written twice.
    assert t.ask("3601" + image[:2000].hex()) == "7601"
    assert t.ask("37") == "7f3724"
    assert t.ask("3602" + image[2000:].hex() + "00") == "7f3631"
    assert t.ask("3602" + image[2000:].hex()) == "7602"
    # Every byte is in: another block is out of sequence.
    assert t.ask("3603" + "00" * 4) == "7f3624"
    assert t.ask("37") == "77"
    assert t.ask("3101ff01") == "7f3124"
    assert t.ask("31010202" + "00000000") == "7101020201"
    assert t.ask("3101ff01") == "7f3124"
    crc = struct.pack(">I", zlib.crc32(image)).hex()
    assert t.ask("31010202" + crc) == "7101020200"
    assert t.ask("3101ff01") == "7101ff0100"
    assert t.ask("22f1a0") == "62f1a000010000000001" + "00"
    assert t.ask("1101") == "5101"
    assert wait_for(lambda: t.request("3e00", timeout=0.05) == [bytes.fromhex("7e00")])
    # The new image runs on trial: the stored anti-rollback counter is still 1 ...
    assert t.ask("22f189f1a0") == (
        "62f189" + b"2.0.0".hex() + "20" * 11 + "f1a0" + "01ff000000000100"
    )
    # ... until the tester confirms it.
    enter(t, "extended_unlocked")
    assert t.ask("3101ff02") == "7101ff0200"
    assert t.ask("3103ff02") == "7103ff0200"
    assert t.ask("22f1a0") == "62f1a0" + "01ff000000000200"


def test_low_voltage_and_write_failure_during_transfer(world, monkeypatch):
    t = world.raw("ecm")
    enter(t, "downloading")
    world.vehicle.state.update(battery_voltage_v=9.5)
    assert t.ask("3601" + "00" * 16) == "7f3693"
    world.vehicle.state.update(battery_voltage_v=12.6)

    def broken(self, offset, data):
        raise NvmError("flash write failed")

    monkeypatch.setattr(BankWriter, "write_at", broken)
    assert t.ask("3601" + "00" * 16) == "7f3672"


def test_block_longer_than_announced_is_refused(make_world, demo):
    spec = demo.with_overrides(ecu_defaults={"max_block_length": 258})
    t = make_world(spec).raw("ecm")
    enter(t, "erased")
    assert t.ask(DOWNLOAD) == "74200102"
    assert t.ask("3601" + "00" * 257) == "7f3613"
    assert t.ask("3601" + "00" * 256) == "7601"


def test_response_too_long(make_world, demo):
    spec = demo.with_overrides(ecu_defaults={"isotp": {"max_frame_size": 40}})
    t = make_world(spec).raw("ecm")
    assert t.ask("22f190") == "62f190" + b"WHLDMV00000000001".hex()
    assert t.ask("22f190f189f187") == "7f2214"


def test_functional_requests(world):
    ecm, bms = world.raw("ecm"), world.raw("bms")
    # Answered on each ECU's own response id.
    assert [r.hex() for r in ecm.functional("1003")] == ["5003003201f4"]
    assert [r.hex() for r in bms.collect(0.05)] == ["5003003201f4"]
    # NRCs 0x11, 0x12, 0x31, 0x7E, 0x7F are not sent for functional requests.
    for request in ("23", "1004", "221234", "2711", "3e01", "2ef1890102"):
        assert ecm.functional(request) == [], request
    ecm.functional("1001")
    assert ecm.functional("8502") == []
    # Other NRCs are.
    assert [r.hex() for r in ecm.functional("100300")] == ["7f1013"]
    # 3E 80 to all keeps every session alive; replies suppressed.
    assert ecm.functional("1083") == []
    assert ecm.functional("3e80") == []
    assert ecm.ask("22f186") == "62f18603"
    assert bms.ask("22f186") == "62f18603"


def test_s3_timeout_returns_to_default_session(make_world, demo):
    spec = demo.with_overrides(ecu_defaults={"timing": {"s3_ms": 300}})
    world = make_world(spec)
    t = world.raw("ecm")
    enter(t, "extended_unlocked")
    assert wait_for(lambda: world.vehicle.ecu("ecm").session == 1, timeout=2.0)
    assert t.ask("22f186") == "62f18601"
    # TesterPresent keeps it.
    enter(t, "extended")
    for _ in range(6):
        assert t.request("3e80", timeout=0.1) == []
    assert t.ask("22f186") == "62f18603"


def test_ecu_reset_restarts_and_drops_the_session(world):
    t = world.raw("ecm")
    enter(t, "extended")
    assert t.ask("1103") == "5103"
    ecm = world.vehicle.ecu("ecm")
    assert wait_for(lambda: not ecm.server.is_booting())
    assert t.ask("22f186") == "62f18601"
    assert t.request("1181") == []
    assert wait_for(lambda: not ecm.server.is_booting())
    assert ecm.server.boot.record.boot_count >= 3


def test_forced_nrc_dropped_and_delayed_responses(world):
    t = world.raw("ecm")
    faults = world.vehicle.ecu("ecm").faults
    faults.force_nrc(0x22, 0x22, count=1)
    assert t.ask("22f186") == "7f2222"
    assert t.ask("22f186") == "62f18601"
    faults.drop_responses(1)
    assert t.request("22f186", timeout=0.2) == []
    assert t.ask("22f186") == "62f18601"
    faults.delay_responses(0.3, 1)
    assert t.request("22f186", timeout=0.15) == []
    assert [r.hex() for r in t.collect(0.5)] == ["62f18601"]

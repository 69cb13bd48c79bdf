"""Shared formats: the signed image, the vehicle file, fault specifications, boot status."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ecu_sim.errors import FaultSpecError
from ecu_sim.faults import FaultInjector, parse_fault
from ota_formats import (
    HEADER_SIZE,
    ImageFormatError,
    ImageIntegrityError,
    SignatureError,
    VehicleFileError,
    build_image,
    load_vehicle,
    parse_image,
    verify_image,
)
from ota_formats.signing import dev_private_key, dev_public_key, key_id
from ota_formats.uds import BootStatus, dtc_text, security_key
from ota_formats.vehicle import parse_vehicle

KEY = dev_private_key()


def image(payload=b"application", **fields):
    args = {
        "hardware_id": "HW-1",
        "version": "1.2.3",
        "anti_rollback_counter": 5,
        "private_key": KEY,
    }
    args.update(fields)
    return build_image(payload, **args)


def test_image_layout_is_exact():
    data = image(b"\x01\x02\x03")
    assert len(data) == HEADER_SIZE + 3 == 155
    assert data[:8] == b"HSWI\x01\x00\x00\x98"
    assert data[8:24] == b"HW-1" + bytes(12)
    assert data[24:40] == b"1.2.3" + bytes(11)
    assert data[40:48] == bytes.fromhex("00000005 00000003")
    assert data[48:80] == hashlib.sha256(b"\x01\x02\x03").digest()
    assert data[80:88] == key_id(dev_public_key())
    dev_public_key().verify(data[88:152], data[:88])
    assert data[152:] == b"\x01\x02\x03"


def test_verify_accepts_a_good_image():
    parsed = verify_image(image(), [dev_public_key()])
    assert (parsed.header.hardware_id, parsed.header.version) == ("HW-1", "1.2.3")
    assert parsed.header.anti_rollback_counter == 5


def test_tampered_payload_header_and_foreign_key_are_refused():
    data = bytearray(image())
    data[-1] ^= 1
    with pytest.raises(ImageIntegrityError):
        verify_image(bytes(data), [dev_public_key()])
    data = bytearray(image())
    data[40 + 3] = 9  # anti-rollback counter raised without re-signing
    with pytest.raises(SignatureError, match="does not verify"):
        verify_image(bytes(data), [dev_public_key()])
    foreign = image(private_key=Ed25519PrivateKey.generate())
    with pytest.raises(SignatureError, match="not trusted"):
        verify_image(foreign, [dev_public_key()])
    with pytest.raises(ImageIntegrityError):
        verify_image(image()[:-2], [dev_public_key()])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than"),
        (b"XXXX" + bytes(200), "bad magic"),
        (b"HSWI\x02" + bytes(200), "format version 2"),
        (b"HSWI\x01\x01" + bytes(200), "reserved byte"),
    ],
)
def test_malformed_images(data, message):
    with pytest.raises(ImageFormatError, match=message):
        parse_image(data)


@pytest.mark.parametrize(
    "fields",
    [{"hardware_id": ""}, {"version": "x" * 17}, {"version": "é"}, {"anti_rollback_counter": -1}],
)
def test_bad_header_fields(fields):
    with pytest.raises(ImageFormatError):
        image(**fields)


def test_security_key_algorithm():
    # HMAC-SHA256(000102..0f, 11223344), first four bytes.
    import hmac

    secret = bytes(range(16))
    seed = bytes.fromhex("11223344")
    assert security_key(secret, seed) == hmac.new(secret, seed, hashlib.sha256).digest()[:4]
    assert len(security_key(secret, seed)) == 4


def test_boot_status_layout():
    status = BootStatus(1, 0xFF, 2, 0x01020304, 1)
    assert status.pack().hex() == "01ff020102030401"
    assert BootStatus.unpack(status.pack()) == status
    with pytest.raises(ValueError):
        BootStatus.unpack(b"\x00")


def test_dtc_text():
    assert dtc_text(0xF00096) == "U3000-96"
    assert dtc_text(0x010100) == "P0101-00"


def test_demo_vehicle_contract(demo):
    assert [(e.name, e.request_id, e.response_id) for e in demo.ecus] == [
        ("ecm", 0x7E0, 0x7E8),
        ("bms", 0x7E1, 0x7E9),
        ("bcm", 0x7E2, 0x7EA),
    ]
    assert demo.functional_request_id == 0x7DF
    assert demo.can.bitrate_bps == 500_000 and not demo.can.fd
    assert [e.security_secret.hex() for e in demo.ecus] == [
        "000102030405060708090a0b0c0d0e0f",
        "101112131415161718191a1b1c1d1e1f",
        "202122232425262728292a2b2c2d2e2f",
    ]
    assert demo.trust_anchor_keys()[0].public_bytes_raw() == dev_public_key().public_bytes_raw()
    assert demo.dbc_path().exists()
    timing = demo.ecu("ecm").timing
    assert (timing.p2_ms, timing.p2_star_ms, timing.s3_ms) == (50, 5000, 5000)


def test_vehicle_file_errors_name_file_and_key(files, tmp_path):
    with pytest.raises(VehicleFileError, match=r"bad_vin\.toml: vin: a VIN has 17"):
        load_vehicle(files / "bad_vin.toml")
    with pytest.raises(VehicleFileError, match="cannot read vehicle file"):
        load_vehicle(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("name = [")
    with pytest.raises(VehicleFileError, match="invalid TOML"):
        load_vehicle(broken)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"ecu": [{"name": "ecm", "request_id": 0x7E0}]},
            r"ecu\[ecm\]\.response_id: Field required",
        ),
        ({"functional_request_id": 0x7E0}, "must all differ"),
        ({"isotp": {"tx_data_length": 64}}, "needs can.fd"),
        ({"isotp": {"tx_data_length": 60}}, r"ecu\[ecm\]\.isotp\.tx_data_length: must be one of"),
        ({"timing": {"p2_star_ms": 5005}}, "multiple of 10"),
        ({"signing": {"trust_anchors": ["abcd"]}}, "32 bytes"),
        ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
    ],
)
def test_vehicle_validation(demo, change, message):
    data = demo.model_dump(by_alias=True)
    data["ecu"] = [dict(e) for e in data["ecu"]]
    for key, value in change.items():
        if key == "ecu":
            data["ecu"][0] = {k: v for k, v in data["ecu"][0].items() if k != "response_id"}
        elif key in ("isotp", "timing"):
            data["ecu"][0][key] = {**data["ecu"][0][key], **value}
        else:
            data[key] = value
    with pytest.raises(VehicleFileError, match=message):
        parse_vehicle(data)


def test_vehicle_defaults_and_overrides(demo):
    fd = demo.with_overrides(can={"fd": True}, ecu_defaults={"timing": {"erase_time_ms": 0}})
    assert fd.can.fd and all(e.timing.erase_time_ms == 0 for e in fd.ecus)
    assert fd.ecu("ecm").isotp.params(fd=True)["tx_data_length"] == 64
    with pytest.raises(VehicleFileError, match="has no ECU 'tcu'"):
        demo.ecu("tcu")


@pytest.mark.parametrize(
    "text",
    [
        "ecm:drop",
        "ecm:drop=3",
        "bms:delay=200,2",
        "ecm:nrc=0x36,0x72",
        "ecm:nrc=0x36,0x72,1",
        "ecm:slow-erase=8",
        "ecm:slow-erase=8,5",
        "bcm:corrupt-block=3",
        "bms:fail-boot",
        "bms:fail-boot=2",
        "ecm:power-cut-at=65536",
        "ecm:power-cut-at=65536,1.5",
    ],
)
def test_fault_specs(text):
    spec = parse_fault(text)
    assert spec.ecu == text.split(":")[0]
    spec.apply(FaultInjector())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ecm", "must look like"),
        ("ecm:melt", "unknown fault kind"),
        ("ecm:nrc=0x36", "nrc=SID,NRC"),
        ("ecm:nrc=0x36,0x78", "cannot be forced"),
        ("ecm:delay=abc", "not a number"),
        ("ecm:corrupt-block=0", "counted from 1"),
        ("ecm:power-cut-at=-5", "negative"),
    ],
)
def test_bad_fault_specs(text, message):
    with pytest.raises(FaultSpecError, match=message):
        parse_fault(text)

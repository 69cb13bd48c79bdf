"""Example bench tests, as a test engineer writes them with the ``hil`` pytest plugin.

They need nothing but the package: the plugin's fixtures reach the bench named by
``--bench`` (or ``HIL_BENCH``, ``hil.toml``), else the simulated ``sim`` bench, which
it starts in this process when ``hil bench sim run`` is not running::

    pytest examples                  # the sim bench
    pytest examples --bench lab      # a real bench from hil.toml
    pytest examples --trace-dir traces --junitxml report.xml

The images are signed with the development key the demo vehicle trusts; on a real
bench, sign them with the key its ``trust_anchors`` name. Each test uses an ECU of its
own, so they pass in any order.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import pytest
from udsoncan.exceptions import TimeoutException

from gateway.flasher import FlashProgress, FlashStep
from hil.bench import flash_on_bench
from ota_formats import build_image
from ota_formats.signing import dev_private_key

VIN = 0xF190
SOFTWARE_VERSION = 0xF189


def image(bench, ecu: str, version: str, counter: int, size_bytes: int = 16 * 1024) -> bytes:
    """A signed image of ``version`` with anti-rollback counter ``counter`` for ``ecu``."""
    seed = hashlib.sha256(f"{ecu}-{version}".encode()).digest()
    payload = (seed * (size_bytes // len(seed) + 1))[:size_bytes]
    assert bench.vehicle is not None, f"bench {bench.name} names no vehicle file"
    hardware_id = bench.vehicle.ecu(ecu).hardware_id
    return build_image(
        payload,
        hardware_id=hardware_id,
        version=version,
        anti_rollback_counter=counter,
        private_key=dev_private_key(),
    )


def version_of(client) -> str:
    return client.read_data_by_identifier(SOFTWARE_VERSION).service_data.values[SOFTWARE_VERSION]


def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def answers(client) -> bool:
    try:
        version_of(client)
    except TimeoutException:
        return False
    return True


@pytest.fixture(autouse=True)
def powered(power, ignition):
    """Every test starts with the supply at its nominal voltage and the ignition on."""
    power.on()
    ignition.on()


# ---------------------------------------------------------------------------- sessions and DIDs


@pytest.mark.parametrize("ecu", ["ecm", "bms", "bcm"])
def test_identification_dids(uds, ecu):
    values = uds[ecu].read_data_by_identifier([VIN, SOFTWARE_VERSION]).service_data.values
    assert len(values[VIN]) == 17
    assert values[SOFTWARE_VERSION].count(".") == 2


def test_extended_session_and_back(uds):
    ecm = uds["ecm"]
    assert ecm.change_session(3).positive  # extended
    assert ecm.tester_present().positive
    assert ecm.change_session(1).positive  # default
    assert version_of(ecm)


# ---------------------------------------------------------------------------- updates


def test_flash_a_new_version(rig, bench, uds, trace):
    before = version_of(uds["ecm"])
    result = flash_on_bench(rig, "ecm", image(bench, "ecm", "2.0.0", 2), yes=True)
    assert result.ok, result.failure
    assert (result.version_before, result.version_after) == (before, "2.0.0")
    assert version_of(uds["ecm"]) == "2.0.0"
    assert trace.frames  # the flash is in the test's BLF/ASC/log trace


def test_power_cut_during_transfer_keeps_the_old_version(rig, bench, uds, power):
    bms = uds["bms"]
    before = version_of(bms)
    cut: list[FlashProgress] = []

    def cut_power_halfway(progress: FlashProgress) -> None:
        halfway = progress.bytes_sent * 2 >= progress.bytes_total
        if progress.step == FlashStep.TRANSFER and halfway and not cut:
            cut.append(progress)
            power.off()

    update = image(bench, "bms", "2.0.0", 2)
    flasher_client = rig.diag("bms").client
    flasher_client.set_config("p2_timeout", 0.3)  # give up quickly on the unpowered ECU
    try:
        result = flash_on_bench(rig, "bms", update, yes=True, on_progress=cut_power_halfway)
    finally:
        flasher_client.set_config("p2_timeout", bench.ecu("bms").uds.p2_timeout_s)
    assert cut and not result.ok
    assert result.failure is not None and result.failure.step == FlashStep.TRANSFER
    power.on()
    assert eventually(lambda: answers(bms))
    assert version_of(bms) == before  # the running bank was never touched

    again = flash_on_bench(rig, "bms", update, yes=True)
    assert again.ok, again.failure
    assert version_of(bms) == "2.0.0"


def test_rollback_is_refused(rig, bench, uds):
    assert flash_on_bench(rig, "bcm", image(bench, "bcm", "3.0.0", 5), yes=True).ok
    result = flash_on_bench(rig, "bcm", image(bench, "bcm", "2.9.0", 4), yes=True)
    assert not result.ok
    assert result.failure is not None and "rollback refused" in result.failure.reason
    assert version_of(uds["bcm"]) == "3.0.0"


def test_new_image_failing_its_boot_rolls_back_to_the_previous_one(rig, bench, uds, vehicle):
    if not hasattr(vehicle, "ecu"):
        pytest.skip(
            "needs an ECU whose boot can be made to fail (the sim bench); on a real bench, "
            "flash an image built to fail its self-test instead"
        )
    ecm = uds["ecm"]
    before = version_of(ecm)
    faults = vehicle.ecu("ecm").faults
    faults.fail_boot()  # every trial boot of the new image fails
    try:
        result = flash_on_bench(rig, "ecm", image(bench, "ecm", "4.0.0", 6), yes=True)
    finally:
        faults.clear()
    assert not result.ok
    assert eventually(lambda: answers(ecm))
    assert version_of(ecm) == before  # back on the previous bank

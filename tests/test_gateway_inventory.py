"""The gateway reads each ECU's identification and boot status over real UDS."""

from __future__ import annotations

from helpers import make_image

from gateway import Flasher
from gateway.inventory import read_ecu
from ota_formats.uds import NO_BANK


def test_inventory_of_every_demo_ecu(world, demo):
    for spec in demo.ecus:
        reading = read_ecu(world.diag(spec.name), spec.name)
        inv = reading.inventory
        assert (inv.name, inv.hardware_id, inv.part_number, inv.serial_number) == (
            spec.name,
            spec.hardware_id,
            spec.part_number,
            spec.serial_number,
        )
        assert inv.software_version == spec.software_version
        assert reading.boot.pending_bank == NO_BANK and not reading.update_pending


def test_inventory_follows_a_flash(world, demo):
    channel = world.diag("bms")
    before = read_ecu(channel, "bms").inventory
    result = Flasher(channel).flash(make_image(demo.ecu("bms"), "2.5.0", 3))
    assert result.ok, result.failure
    after = read_ecu(channel, "bms").inventory
    assert after.software_version == "2.5.0"
    assert after.anti_rollback == 3
    assert after.active_bank != before.active_bank

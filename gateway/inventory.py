"""The vehicle's inventory as the gateway reads it over UDS, one ECU at a time.

Identification DIDs (part number 0xF187, application software version 0xF189,
serial number 0xF18C, hardware id 0xF191) and the boot status record (0xF1A0)
come in one ReadDataByIdentifier request per ECU, in the default session.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.backend import EcuInventory
from gateway.diag import DiagChannel
from gateway.errors import DiagnosticError
from ota_formats.uds import NO_BANK, BootStatus, Did

INVENTORY_DIDS = (
    Did.PART_NUMBER,
    Did.APP_SOFTWARE_VERSION,
    Did.SERIAL_NUMBER,
    Did.HARDWARE_ID,
    Did.BOOT_STATUS,
)


@dataclass(frozen=True)
class EcuReading:
    """One ECU's identification and boot status."""

    inventory: EcuInventory
    boot: BootStatus

    @property
    def update_pending(self) -> bool:
        """Whether a new image waits for its trial boot."""
        return self.boot.pending_bank != NO_BANK


def read_ecu(channel: DiagChannel, name: str) -> EcuReading:
    """Read ECU ``name``'s identification and boot status over ``channel``."""
    reply = channel.call(lambda c: c.read_data_by_identifier(list(INVENTORY_DIDS)))
    if reply is None:
        raise DiagnosticError(f"{name}: no reply to ReadDataByIdentifier")
    values = reply.service_data.values
    boot = values[Did.BOOT_STATUS]
    assert isinstance(boot, BootStatus)
    return EcuReading(
        inventory=EcuInventory(
            name=name,
            hardware_id=str(values[Did.HARDWARE_ID]),
            part_number=str(values[Did.PART_NUMBER]),
            software_version=str(values[Did.APP_SOFTWARE_VERSION]),
            serial_number=str(values[Did.SERIAL_NUMBER]),
            active_bank=boot.active_bank,
            anti_rollback=boot.anti_rollback_counter,
        ),
        boot=boot,
    )

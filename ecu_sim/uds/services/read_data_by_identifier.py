"""ReadDataByIdentifier (0x22)."""

from __future__ import annotations

from udsoncan import Request, services

from ecu_sim.uds.server import NegativeResponse, Nrc, ServiceHandler, UdsServer
from ota_formats.uds import DID_SIZES, Did, pad_ascii

MAX_DIDS_PER_REQUEST = 16


def did_value(server: UdsServer, did: int) -> bytes | None:
    """Return the record of ``did``, or ``None`` if the ECU does not serve it."""
    spec = server.spec
    record = server.boot.record
    if did == Did.ACTIVE_SESSION:
        return bytes([server.session])
    if did == Did.PART_NUMBER:
        return pad_ascii(spec.part_number, DID_SIZES[did])
    if did == Did.APP_SOFTWARE_VERSION:
        return pad_ascii(server.boot.active_version, DID_SIZES[did])
    if did == Did.SERIAL_NUMBER:
        return pad_ascii(spec.serial_number, DID_SIZES[did])
    if did == Did.HARDWARE_ID:
        return pad_ascii(spec.hardware_id, DID_SIZES[did])
    if did == Did.BOOT_STATUS:
        return server.boot.boot_status().pack()
    if did in (Did.VIN, Did.TESTER_SERIAL, Did.PROGRAMMING_DATE):
        stored = record.dids.get(did)
        if stored is not None:
            return bytes.fromhex(stored)
        if did == Did.VIN:
            return server.vehicle.vin.encode("ascii")
        return bytes(DID_SIZES[did])
    return None


class ReadDataByIdentifier(ServiceHandler):
    """Reads one or more DIDs; unknown DIDs are skipped, all unknown gives NRC 0x31."""

    service = services.ReadDataByIdentifier

    def handle(self, server: UdsServer, request: Request, payload: bytes) -> bytes:
        """Each DID appears in the reply as its 2-byte identifier followed by its record."""
        body = payload[1:]
        if not body or len(body) % 2 or len(body) // 2 > MAX_DIDS_PER_REQUEST:
            raise NegativeResponse(Nrc.INCORRECT_LENGTH)
        reply = bytearray()
        for index in range(0, len(body), 2):
            did = int.from_bytes(body[index : index + 2], "big")
            value = did_value(server, did)
            if value is not None:
                reply += did.to_bytes(2, "big") + value
        if not reply:
            raise NegativeResponse(Nrc.REQUEST_OUT_OF_RANGE, "no supported DID")
        if len(reply) + 1 > server.spec.isotp.max_frame_size:
            raise NegativeResponse(Nrc.RESPONSE_TOO_LONG)
        return bytes(reply)

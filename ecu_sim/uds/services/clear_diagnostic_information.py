"""ClearDiagnosticInformation (0x14)."""

from __future__ import annotations

from udsoncan import Request, services

from ecu_sim.uds.server import NegativeResponse, Nrc, ServiceHandler, UdsServer

ALL_GROUPS = 0xFFFFFF


class ClearDiagnosticInformation(ServiceHandler):
    """Clears all DTCs (group 0xFFFFFF) or one supported DTC."""

    service = services.ClearDiagnosticInformation

    def handle(self, server: UdsServer, request: Request, payload: bytes) -> bytes:
        """GroupOfDTC is 3 bytes; a memory selection byte is not supported."""
        if len(payload) != 4:
            raise NegativeResponse(Nrc.INCORRECT_LENGTH)
        group = int.from_bytes(payload[1:4], "big")
        record = server.boot.record
        if group == ALL_GROUPS:
            record.dtcs.clear()
        elif group in server.supported_dtcs():
            record.dtcs.pop(group, None)
        else:
            raise NegativeResponse(Nrc.REQUEST_OUT_OF_RANGE, f"DTC group 0x{group:06X}")
        server.boot.save()
        return b""

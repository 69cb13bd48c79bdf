"""ECUReset (0x11)."""

from __future__ import annotations

from udsoncan import Request, services

from ecu_sim.uds.server import NegativeResponse, Nrc, ServiceHandler, SubFunction, UdsServer


class EcuReset(ServiceHandler):
    """hardReset, keyOffOnReset and softReset: all restart the ECU through its bootloader."""

    service = services.ECUReset
    subfunctions = {
        services.ECUReset.ResetType.hardReset: SubFunction(),
        services.ECUReset.ResetType.keyOffOnReset: SubFunction(),
        services.ECUReset.ResetType.softReset: SubFunction(),
    }

    def handle(self, server: UdsServer, request: Request, payload: bytes) -> bytes:
        """Answer, then reset (the new image, if one is pending, is tried)."""
        if len(payload) != 2:
            raise NegativeResponse(Nrc.INCORRECT_LENGTH)
        assert request.subfunction is not None
        server.request_reset()
        return bytes([request.subfunction])

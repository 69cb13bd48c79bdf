"""TesterPresent (0x3E)."""

from __future__ import annotations

from udsoncan import Request, services

from ecu_sim.uds.server import NegativeResponse, Nrc, ServiceHandler, SubFunction, UdsServer


class TesterPresent(ServiceHandler):
    """Keeps a non-default session alive; usually sent as 3E 80 (no reply)."""

    service = services.TesterPresent
    subfunctions = {0x00: SubFunction()}

    def handle(self, server: UdsServer, request: Request, payload: bytes) -> bytes:
        """Nothing to do beyond restarting S3, which every request does."""
        if len(payload) != 2:
            raise NegativeResponse(Nrc.INCORRECT_LENGTH)
        return b"\x00"

"""RequestTransferExit (0x37)."""

from __future__ import annotations

from udsoncan import Request, services

from ecu_sim.errors import NvmError
from ecu_sim.flash import SequenceError
from ecu_sim.uds.server import NegativeResponse, Nrc, ServiceHandler, UdsServer
from ota_formats.uds import SecurityLevel, Session


class RequestTransferExit(ServiceHandler):
    """Ends a download once every requested byte has arrived; the bank is synced."""

    service = services.RequestTransferExit
    sessions = frozenset({Session.PROGRAMMING})
    security = SecurityLevel.PROGRAMMING

    def handle(self, server: UdsServer, request: Request, payload: bytes) -> bytes:
        """End the download (a transferRequestParameterRecord is ignored)."""
        try:
            server.boot.transfer_exit()
        except SequenceError as exc:
            raise NegativeResponse(Nrc.REQUEST_SEQUENCE_ERROR, str(exc)) from exc
        except NvmError as exc:
            raise NegativeResponse(Nrc.GENERAL_PROGRAMMING_FAILURE, str(exc)) from exc
        return b""

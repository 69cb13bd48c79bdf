"""CommunicationControl (0x28)."""

from __future__ import annotations

from udsoncan import Request, services

from ecu_sim.uds.server import (
    NON_DEFAULT_SESSIONS,
    NegativeResponse,
    Nrc,
    ServiceHandler,
    SubFunction,
    UdsServer,
)

_NORMAL = 0x01


class CommunicationControl(ServiceHandler):
    """Enables or disables the application's normal transmission and reception."""

    service = services.CommunicationControl
    sessions = NON_DEFAULT_SESSIONS
    subfunctions = {
        services.CommunicationControl.ControlType.enableRxAndTx: SubFunction(),
        services.CommunicationControl.ControlType.enableRxAndDisableTx: SubFunction(),
        services.CommunicationControl.ControlType.disableRxAndEnableTx: SubFunction(),
        services.CommunicationControl.ControlType.disableRxAndTx: SubFunction(),
    }

    def handle(self, server: UdsServer, request: Request, payload: bytes) -> bytes:
        """Apply the control type to normal (1), NM (2) or both (3) message types."""
        if len(payload) != 3:
            raise NegativeResponse(Nrc.INCORRECT_LENGTH)
        comm_type = payload[2] & 0x03
        if comm_type == 0:
            raise NegativeResponse(Nrc.REQUEST_OUT_OF_RANGE, "communicationType 0")
        assert request.subfunction is not None
        control = request.subfunction
        if comm_type & _NORMAL:
            server.vars.comm_tx_enabled = control in (0x00, 0x02)
            server.vars.comm_rx_enabled = control in (0x00, 0x01)
        return bytes([control])
